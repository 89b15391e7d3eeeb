"""The one trainer. `train(cfg)` runs any mode end to end and returns the summary dict.

Sections: setup -> data -> backbone and learner -> optimiser -> resume -> loop -> outputs.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from ..data.dataset import DemoDataset
from ..errors import ConfigError, VLAPrefixError
from ..models import VLA, build_backbone
from ..prefix.io import save_prefix
from ..sim.registry import load_task_modules, resolve_tasks
from ..utils.atomic import atomic_directory, atomic_write_bytes, atomic_write_json
from ..utils.progress import progress_bar
from .checkpoint import (checkpoint_dir, checkpoint_state, load_checkpoint, missing_statistics, restore_state,
                         save_checkpoint, trainable_state)
from .config import MODES, TrainConfig
from .data import ChunkDataset, StepBatchSampler, load_training_data, normalization_stats
from .distributed import DistContext, loss_terms, session
from .loggers import NullLogger, RunLogger
from .modes import BACKBONE_MODES, FRESH_MODES, PREFIX_MODES, make_learner, merge_lora
from .validation import validate


class TrainingError(VLAPrefixError):
    """Training cannot go on (e.g. the loss became NaN)."""


# ---------------------------------------------------------------------- helpers
def select_tasks(cfg: TrainConfig):
    name = cfg.task or ("pretrain" if cfg.mode == "pretrain" else "heldout")
    if isinstance(name, (list, tuple)):
        name = ",".join(map(str, name))
    tasks = resolve_tasks(cfg.suite, name)
    if cfg.mode == "pretrain":
        leaked = [t.id for t in tasks if t.split == "heldout"]
        if leaked:
            raise ConfigError(f"pretraining must not see held-out tasks, but task={name!r} includes {leaked}")
    return tasks


def lr_at(step: int, cfg: TrainConfig, base_lr: float) -> float:
    """Linear warm-up, then cosine decay to 10% of `base_lr`."""
    o = cfg.optim
    if step < o.warmup_steps:
        return base_lr * (step + 1) / o.warmup_steps
    progress = (step - o.warmup_steps) / max(1, o.steps - o.warmup_steps)
    return base_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def vision_trains(cfg: TrainConfig) -> bool:
    return cfg.mode in BACKBONE_MODES and "vision" not in cfg.freeze


def feature_cache_valid(cfg: TrainConfig) -> bool:
    """Frozen vision encoder, no augmentation and no encoder-site prompts: its outputs can be computed once."""
    if vision_trains(cfg) or cfg.data.augment_shift > 0:
        return False
    return not (cfg.mode == "prefix" and cfg.prefix.visual.site == "encoder" and cfg.prefix.visual.length > 0)


@torch.no_grad()
def cache_visual_features(backbone: VLA, dataset: ChunkDataset, device: str, batch: int = 256) -> torch.Tensor:
    frames = np.stack(list(dataset.frames()))
    out = [backbone.encode_images(torch.from_numpy(frames[i : i + batch]).to(device)).cpu()
           for i in range(0, len(frames), batch)]
    return torch.cat(out)


def to_device(batch: dict, device: str) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def count_summary(mode: str, learner, backbone_params: int) -> dict:
    if mode in PREFIX_MODES:
        one = next(iter(learner.prefixes.values()))
        deployed = one.deployed_params()
        return {"trainable_params": deployed, "training_params": one.training_params(),
                "trainable_pct": 100.0 * deployed / backbone_params, "prefix_bytes": one.deployed_bytes(),
                "n_prefixes": len(learner.prefixes)}
    n = sum(p.numel() for p in learner.trainable_parameters())
    return {"trainable_params": n, "training_params": n, "trainable_pct": 100.0 * n / backbone_params}


# ---------------------------------------------------------------------- the run
def build_learner(cfg: TrainConfig, run_dir: Path, ctx: DistContext, tasks) -> tuple:
    """The mode's learner around its backbone: a fresh one (pretrain/scratch: built from `cfg.model`, with the
    tokenizer saved in <run>/checkpoints/tokenizer when resuming, normalised on the training episodes) or the
    frozen base (`cfg.base`). -> (learner, training episodes, backbone parameter count, base fingerprint or None)."""
    task_ids = [t.id for t in tasks]
    variants = instruction_variants(cfg, tasks)
    if cfg.mode in FRESH_MODES:
        corpus = [s for v in variants.values() for s in v]
        saved = run_dir / "checkpoints" / "tokenizer"  # a resumed run keeps the tokenizer it started with
        if not ctx.is_main:
            ctx.barrier()  # DDP: rank 0 writes the tokenizer first; the others load that one
        reuse = (cfg.resume or not ctx.is_main) and saved.is_dir()
        tokenizer = AutoTokenizer.from_pretrained(str(saved)) if reuse else None
        data_spec = DemoDataset(cfg.data.path).spec  # the backbone takes the training data's cameras
        model_cfg = OmegaConf.merge(cfg.model, {"config": {"n_cameras": data_spec["n_cameras"],
                                                           "cameras": data_spec["cameras"]}})
        backbone = build_backbone(model_cfg, corpus=corpus, tokenizer=tokenizer)
        if not saved.is_dir() and ctx.is_main:
            with atomic_directory(saved) as tmp:
                backbone.tokenizer.save_pretrained(str(tmp))
        if ctx.is_main:
            ctx.barrier()
    else:
        if not cfg.base:
            raise ConfigError(f"mode={cfg.mode} adapts a base VLA: set base=<dir of a pretrained VLA> "
                              "(make one with `python -m vla_prefix.train mode=pretrain`)")
        backbone = VLA.from_pretrained(cfg.base)
    base_fingerprint = backbone.fingerprint() if cfg.mode not in FRESH_MODES else None
    episodes = load_training_data(cfg.data.path, task_ids, cfg.data.n_demos, backbone.vision.img_size,
                                  backbone.config.n_cameras)
    if cfg.mode in FRESH_MODES:
        backbone.set_normalization(**normalization_stats(episodes))
    backbone_params = backbone.num_parameters()
    learner = make_learner(cfg.mode, backbone, task_ids, {t.id: t.instruction for t in tasks},
                           cfg.prefix, cfg.lora, cfg.seed, cfg.freeze).to(cfg.device)
    return learner, episodes, backbone_params, base_fingerprint


def instruction_variants(cfg: TrainConfig, tasks) -> dict[str, list[str]]:
    """task id -> the instructions it trains on: its own, then its paraphrases (if data.paraphrases)."""
    return {t.id: [t.instruction] + (list(t.paraphrases) if cfg.data.paraphrases else []) for t in tasks}


def train(cfg: TrainConfig, run_dir: str | Path) -> dict:
    """Train per `cfg`, writing checkpoints, outputs and train_summary.json into `run_dir`.

    Under `torchrun` (WORLD_SIZE > 1): data-parallel over the ranks (see distributed.py); rank 0 logs,
    validates and writes every file; every rank returns the summary.
    """
    with session(cfg.device) as ctx:
        return _train(cfg if ctx.device == cfg.device else replace(cfg, device=ctx.device), run_dir, ctx)


def _train(cfg: TrainConfig, run_dir: str | Path, ctx: DistContext) -> dict:
    t0 = time.perf_counter()
    run_dir = Path(ctx.broadcast_object(str(run_dir)))  # Hydra's timestamped dir may differ per rank
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {cfg.mode!r}")
    if cfg.val.ties not in ("first", "last"):
        raise ConfigError(f"val.ties must be first or last, got {cfg.val.ties!r}")
    if cfg.precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision must be fp32 or bf16, got {cfg.precision!r}")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible; use device=cpu")
    if checkpoint_dir(run_dir).exists() and not cfg.resume:
        raise ConfigError(f"{run_dir} already holds a checkpoint; pass resume=true to continue it, "
                          "or choose another out_dir (nothing is overwritten)")
    if cfg.optim.batch_size < ctx.world_size:
        raise ConfigError(f"optim.batch_size={cfg.optim.batch_size} is the global batch, split over "
                          f"{ctx.world_size} processes: make it at least {ctx.world_size}")
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    load_task_modules(cfg.task_modules)

    # ---- data
    tasks = select_tasks(cfg)
    task_ids = [t.id for t in tasks]
    variants = instruction_variants(cfg, tasks)

    # ---- backbone and learner
    saved_state = checkpoint_state(run_dir) if cfg.resume else {}
    if saved_state:
        started_on = saved_state.get("tasks")
        if started_on is not None and started_on != task_ids:
            raise ConfigError(f"this run started on tasks {started_on} but now selects {task_ids}; "
                              "resume with the same `task` (and task definitions)")
    learner, episodes, backbone_params, base_fingerprint = build_learner(cfg, run_dir, ctx, tasks)
    backbone = learner.backbone

    dataset = ChunkDataset(episodes, task_ids, variants, backbone.tokenize, backbone.config.chunk,
                           cfg.data.augment_shift)
    use_cache = feature_cache_valid(cfg) if cfg.data.cache_features is None else cfg.data.cache_features
    if use_cache and not feature_cache_valid(cfg):
        raise ConfigError(f"data.cache_features=true is invalid for mode={cfg.mode} (the vision encoder trains, "
                          "images are augmented, or it takes encoder-site prompts); set data.cache_features=null")
    if use_cache:
        dataset.set_feature_cache(cache_visual_features(backbone, dataset, cfg.device))

    # ---- optimiser
    base_lr = cfg.optim.lr if cfg.optim.lr is not None else cfg.optim.lr_by_mode[cfg.mode]
    params = learner.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=base_lr, weight_decay=cfg.optim.weight_decay, betas=(0.9, 0.95))

    # ---- resume
    config = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # kept in each checkpoint (export)
    logger = RunLogger(cfg.logger, run_dir, config, cfg.wandb, resume=cfg.resume) if ctx.is_main else NullLogger()
    start = 0
    if cfg.resume and checkpoint_dir(run_dir).exists():
        start = load_checkpoint(run_dir, learner, optimizer, cfg.optim.steps)  # every rank loads rank 0's checkpoint
    ctx.broadcast_params(params)
    logger.metrics.truncate(start)
    logger.val.truncate(start + 1)

    sampler = StepBatchSampler(len(dataset), cfg.optim.batch_size, cfg.seed, cfg.optim.steps, start,
                               rank=ctx.rank, world_size=ctx.world_size)  # each rank: its rows of the global batch
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        persistent_workers=False, multiprocessing_context="fork" if cfg.data.num_workers else None)
    autocast = torch.autocast(device_type=cfg.device.split(":")[0], dtype=torch.bfloat16,
                              enabled=cfg.precision == "bf16")

    # ---- loop
    best = saved_state.get("best", {"score": None, "step": None}) if start > 0 else {"score": None, "step": None}
    # provenance across resumes: every command that trained this run, with the steps it ran (the process's own
    # command line: `python -m vla_prefix.train ...`, or the experiment or sweep that called train()), and the
    # seconds each spent up to its last checkpoint (steps run after it are run again by the next command)
    command = " ".join(["python", *sys.orig_argv[1:]])
    history = saved_state.get("history", []) if start > 0 else []
    earlier_wall_s = sum(part.get("wall_s", 0.0) for part in history)
    wall_s_partial = any("wall_s" not in part for part in history)  # a checkpoint written before parts were timed
    if start < cfg.optim.steps:
        history = [*history, {"command": command, "from_step": start, "steps": cfg.optim.steps}]
    learner.train()
    loss_value = float("nan")
    bar = progress_bar(cfg.optim.steps, f"train[{cfg.mode}]", unit="step", initial=start,
                       enabled=cfg.progress and ctx.is_main)
    tick = time.perf_counter()
    for step, batch in zip(range(start, cfg.optim.steps), loader):
        lr = lr_at(step, cfg, base_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = to_device(batch, cfg.device)
        with autocast:
            loss, _ = learner(batch)
        if cfg.debug_nan_at_step == step:
            loss = loss * float("nan")
        loss, global_loss = ctx.reduce_loss(loss, loss_terms(batch))  # single process: unchanged
        if not torch.isfinite(global_loss):  # the same verdict on every rank
            last = checkpoint_dir(run_dir)
            kept = f"the last good checkpoint is kept at {last}" if last.exists() else "no checkpoint was written yet"
            logger.finish()
            raise TrainingError(f"the loss became {global_loss.item()} at step {step}; stopped ({kept}). "
                                "Lower optim.lr or check the data for NaN/inf")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ctx.all_reduce_grads(params)
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        optimizer.step()
        loss_value = global_loss.item()
        now = time.perf_counter()
        logger.log({"loss": loss_value, "lr": lr, "samples_per_s": cfg.optim.batch_size / (now - tick)}, step)
        tick = now
        bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)  # drawn with the next update
        bar.update(1)
        if cfg.val.every and ((step + 1) % cfg.val.every == 0 or step + 1 == cfg.optim.steps):
            if ctx.is_main:
                best = select_by_validation(learner, task_ids, cfg, episodes_cameras(cfg), step + 1, best, run_dir,
                                            logger)
            best = ctx.broadcast_object(best)  # the other ranks wait here for rank 0's rollouts
        if ctx.is_main and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.optim.steps):
            history[-1]["wall_s"] = round(time.perf_counter() - t0, 2)
            save_checkpoint(run_dir, learner, optimizer, step + 1,
                            {"best": best, "tasks": task_ids, "history": history, "config": config})
    bar.close()
    if not ctx.is_main:  # rank 0 writes the outputs; the others return its summary
        return ctx.broadcast_object(None)
    if start >= cfg.optim.steps:  # resumed a finished run: report its last logged loss
        rows = logger.metrics.read()
        loss_value = rows[-1]["loss"] if rows else loss_value

    # ---- outputs
    if best["score"] is not None:  # the checkpoint chosen on the val seeds
        kept = load_file(str(run_dir / BEST_FILE))
        if missing_statistics(learner, kept):
            print(f"[train] {run_dir / BEST_FILE} lacks BatchNorm statistics (written before checkpoints kept them): "
                  "the outputs pair its parameters with the last step's statistics", flush=True)
        restore_state(learner, kept)
    learner.eval()
    counts = count_summary(cfg.mode, learner, backbone_params)
    provenance = {"command": command, "history": history, "seed": cfg.seed,
                  "mode": cfg.mode, "tasks": task_ids, "data": cfg.data.path, "n_demos": cfg.data.n_demos,
                  "steps": cfg.optim.steps, "final_loss": loss_value,
                  "config": config}
    outputs = save_outputs(cfg, learner, run_dir, tasks, provenance)
    summary = {
        "mode": cfg.mode,
        **counts,
        "total_params": backbone_params,
        "steps": cfg.optim.steps,
        "final_loss": loss_value,
        "wall_s": round(earlier_wall_s + time.perf_counter() - t0, 2),  # every command's part, resumes included
        "wall_s_partial": wall_s_partial,  # true: an earlier part's seconds are unknown, so wall_s is too low
        "tasks": task_ids,
        "lr": base_lr,
        "batch_size": cfg.optim.batch_size,
        "world_size": ctx.world_size,
        "feature_cache": bool(use_cache),
        "augment_shift": cfg.data.augment_shift,
        "base_fingerprint": base_fingerprint,
        "val_best": best,
        "history": history,
        "outputs": outputs,
    }
    atomic_write_json(run_dir / "train_summary.json", summary)
    logger.summary({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    logger.finish()
    return ctx.broadcast_object(summary)


BEST_FILE = "checkpoints/best.safetensors"


def episodes_cameras(cfg: TrainConfig):
    return DemoDataset(cfg.data.path).cameras


def select_by_validation(learner, task_ids, cfg, cameras, step, best, run_dir, logger) -> dict:
    """Validate now; if this is the best mean val success so far (on a tie: the first or the last such
    checkpoint, by `val.ties`), keep the trainable state on disk."""
    rates, videos = validate(learner, task_ids, cfg, cameras, video_dir=run_dir / "val_videos" / f"step{step}")
    score = sum(rates.values()) / len(rates)
    logger.log({"val/success": score, **{f"val/{t}": r for t, r in rates.items()}}, step, to_file=False)
    for i, video in enumerate(videos):
        logger.log_video(f"val/video{i}", str(video), step)
    logger.val.write({"step": step, "val_success": score, **rates})
    if best["score"] is None or score > best["score"] or (cfg.val.ties == "last" and score == best["score"]):
        path = run_dir / BEST_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, save(trainable_state(learner)))
        best = {"score": score, "step": step}
    return best


def save_outputs(cfg: TrainConfig, learner, run_dir: Path, tasks, provenance: dict) -> dict:
    """pretrain -> base/; prefix/prompt -> prefixes/<task>.safetensors; others -> model/ (+ lora_adapter/)."""
    backbone = learner.backbone
    if cfg.mode in PREFIX_MODES:
        paths = {}
        for t in tasks:
            path = run_dir / "prefixes" / f"{t.id}.safetensors"
            save_prefix(path, learner.prefixes[t.id], backbone, task=t.id, instruction=t.instruction,
                        steps=cfg.optim.steps, data={"path": str(cfg.data.path), "n_demos": cfg.data.n_demos,
                                                     "mode": cfg.mode, "seed": cfg.seed})
            paths[t.id] = str(path)
        return {"prefixes": paths}
    out = {}
    if cfg.mode == "lora":
        adapter = run_dir / "lora_adapter"
        backbone.trunk.model.save_pretrained(str(adapter))
        out["lora_adapter"] = str(adapter)
        merge_lora(backbone)
    for p in backbone.parameters():
        p.requires_grad_(False)
    name = "base" if cfg.mode == "pretrain" else "model"
    backbone.refresh_fingerprint()
    backbone.save_pretrained(run_dir / name, provenance)
    out[name] = str(run_dir / name)
    return out
