"""Export a training run's checkpoint (the last, or the best on the val seeds) as the outputs the run
writes when it finishes.

    python -m vla_prefix.export runs/pretrain_metaworld exports/step40000
    python -m vla_prefix.export runs/yellow-ball exports/yellow-ball-best --checkpoint best

Evaluate or adapt from a base that is still pretraining, or from a run that was stopped: pretrain ->
<out>/base, prefix/prompt -> <out>/prefixes/<task>.safetensors, others -> <out>/model (+ lora_adapter).
The run's config comes from the checkpoint (state.json), its training data from that config's data.path
(fresh backbones take their normalisation statistics from it). `--checkpoint best` takes the checkpoint
chosen on the val seeds so far (`val.every` > 0). On a finished run, the export of the checkpoint it chose
(`best` with validation, else `last`) equals the run's own outputs.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from .errors import ConfigError, cli_errors
from .sim.registry import load_task_modules
from .training.checkpoint import checkpoint_dir, checkpoint_state, missing_statistics, restore_state
from .training.config import TrainConfig
from .training.distributed import DistContext
from .training.trainer import BEST_FILE, build_learner, save_outputs, select_tasks


def export_checkpoint(run_dir: str | Path, out_dir: str | Path, checkpoint: str = "last") -> dict:
    """Write <run_dir>'s `last` checkpoint, or its `best` on the val seeds so far (val.every > 0), on CPU, as
    the run's outputs under `out_dir` -> the paths written."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if checkpoint not in ("last", "best"):
        raise ConfigError(f"checkpoint must be last or best, got {checkpoint!r}")
    state = checkpoint_state(run_dir)
    if not state:
        raise ConfigError(f"{run_dir} holds no checkpoint ({checkpoint_dir(run_dir)}/state.json); "
                          "name the out_dir of a `python -m vla_prefix.train` run")
    if "config" not in state:
        raise ConfigError(f"the checkpoint in {run_dir} predates stored configs; resume the run once with "
                          "resume=true (its next checkpoint stores the config), then export")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} is not empty; export into a new directory (nothing is overwritten)")
    cfg: TrainConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), state["config"]))
    if checkpoint == "best" and state.get("best", {}).get("step") is None:
        raise ConfigError(f"{run_dir} has no val-selected checkpoint yet (it trains with val.every="
                          f"{state['config']['val']['every']}); export checkpoint=last")
    step = state["step"] if checkpoint == "last" else state["best"]["step"]
    cfg = replace(cfg, device="cpu", resume=True, optim=replace(cfg.optim, steps=step))  # the steps it ran
    torch.manual_seed(cfg.seed)
    load_task_modules(cfg.task_modules)
    tasks = select_tasks(cfg)
    learner, _, _, _ = build_learner(cfg, run_dir, DistContext(device="cpu"), tasks)
    params = checkpoint_dir(run_dir) / "trainable.safetensors" if checkpoint == "last" else run_dir / BEST_FILE
    saved = load_file(str(params))
    missing = missing_statistics(learner, saved)
    if missing:
        raise ConfigError(f"{params} lacks BatchNorm statistics (e.g. {missing[0]}; written before checkpoints kept "
                          "them), so an export would carry untrained ones; use the finished run's own outputs, or "
                          "resume it (resume=true, more optim.steps) until it writes a new checkpoint")
    restore_state(learner, saved)
    learner.eval()
    provenance = {"exported_from": str(run_dir), "checkpoint": checkpoint, "checkpoint_step": step,
                  "history": state["history"], "seed": cfg.seed, "mode": cfg.mode, "tasks": [t.id for t in tasks],
                  "data": cfg.data.path, "n_demos": cfg.data.n_demos, "steps": step, "config": state["config"]}
    return save_outputs(cfg, learner, out_dir, tasks, provenance)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vla_prefix.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a training run's out_dir (it holds checkpoints/last)")
    parser.add_argument("out_dir", help="where to write the outputs")
    parser.add_argument("--checkpoint", choices=("last", "best"), default="last",
                        help="last (default) or best: the best on the val seeds so far (runs with val.every > 0)")
    args = parser.parse_args(argv)
    for name, path in export_checkpoint(args.run_dir, args.out_dir, args.checkpoint).items():
        print(f"[export] {args.checkpoint} checkpoint: {name} -> {path}")


if __name__ == "__main__":
    main()
