r"""Evaluate a policy by rollouts: success rate with Wilson 95% CIs, per-episode records, videos.

    python -m vla_prefix.evaluate backbone=runs/base prefix=prefixes/reach-red.safetensors \
        suite=tabletop task=tabletop-reach-red-cube-v0 n_episodes=50 out=eval/reach-red
    python -m vla_prefix.evaluate backbone=runs/base prefix=null suite=tabletop task=heldout \
        n_episodes=20 num_envs=4 n_action_steps=2 out=eval/zero-shot          # the zero-shot base
    python -m vla_prefix.evaluate backbone=runs/lora-reach-red suite=tabletop task=[a-v0,b-v0] out=eval/lora
    python -m vla_prefix.evaluate ... seed_range=val     # choose checkpoints/hparams on val seeds, report on eval
    python -m vla_prefix.evaluate policy=remote server_url=http://127.0.0.1:8000 suite=tabletop task=heldout \
        out=eval/served       # through a policy server (`python -m vla_prefix.serve`): each task's bank prefix

Writes `<out>/eval_info.json` (per task: success_rate, ci95, n_episodes, episodes [{seed, success,
steps, return}], instruction; `overall`; `settings`, including every setting that changes results,
such as n_action_steps; `wall_s`) and `<out>/videos/<task>/episode<k>_seed<seed>.mp4` for the first
`video_episodes` episodes of each task. Seeds come from the `eval` range (`vla_prefix.seeds`) unless
`seed_range=val`. The same backbone, prefix and settings give the same eval_info.json (but wall_s).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from .utils.hydra_app import check_overrides, quiet_defaults, quiet_hydra, to_dataclass
from .errors import ConfigError, cli_errors

# Heavy imports (torch, the model) happen inside functions: async env workers are spawned processes
# that re-import this module as their __main__, and they need none of it.

log = logging.getLogger(__name__)

USAGE = ("python -m vla_prefix.evaluate backbone=<dir> [prefix=<file>] suite=<suite> task=<id|split> out=<dir>  "
         "(or policy=remote server_url=<url> instead of backbone/prefix)")
POLICIES = ("local", "remote")


@dataclass
class EvalConfig:
    """Settings of `python -m vla_prefix.evaluate` (every field is a command-line override)."""

    # Hydra: write nothing, keep the working directory, log to stdout.
    defaults: list[Any] = quiet_defaults()
    hydra: Any = quiet_hydra("vla_prefix.evaluate", __doc__)

    # ---- the policy
    policy: str = "local"  # local: backbone (+ prefix) in this process | remote: a policy server, per task
    backbone: Optional[str] = None  # policy=local: a directory written by VLA.save_pretrained (base or baseline)
    prefix: Optional[str] = None  # a prefix file; null = the backbone alone (zero-shot base, or a baseline)
    server_url: Optional[str] = None  # policy=remote: `python -m vla_prefix.serve`'s URL; it serves each task's prefix
    server_token: Optional[str] = None  # policy=remote: bearer token; null = $VLA_PREFIX_TOKEN if set
    device: str = "cpu"  # cpu | cuda | cuda:<i>
    # ---- the tasks
    suite: str = "tabletop"  # tabletop | metaworld | a suite registered by `task_modules`
    task: Any = MISSING  # a task id, a split name, or a list of them: task=[a,b] (or task="'a,b'")
    task_modules: list[str] = field(default_factory=list)  # user modules that call register_task
    n_episodes: int = 50  # per task
    seed_range: str = "eval"  # eval (report) | val (choose checkpoints and hyperparameters)
    seed_offset: int = 0  # the first seed is SEED_RANGES[seed_range][seed_offset]
    # ---- rollout settings that change results (all copied into eval_info.json)
    n_action_steps: Optional[int] = None  # actions executed per predicted chunk; null = the whole chunk (H)
    image_size: Optional[int] = None  # null = the backbone's vision img_size
    cameras: Optional[list[str]] = None  # env camera names; null = the backbone's (else the suite's default)
    max_steps: Optional[int] = None  # episode step limit; null = each task's own time limit
    # ---- execution
    num_envs: int = 2  # vector-env slots (batched inference over them)
    vector: str = "async"  # async: one spawned process per slot | sync: all in this process
    # policy threads; null: the cores the async env workers leave free (at least 1). Measured on 2 cores with
    # 2 workers: torch's default (2 threads) made the same evaluation 4.6x slower than 1 thread
    torch_threads: Optional[int] = None
    # ---- outputs
    out: str = MISSING  # folder for eval_info.json and videos/
    video_episodes: int = 2  # the first K episodes of each task are saved as mp4
    video_size: int = 128  # minimum video height, pixels
    bootstrap_resamples: int = 2000  # for the overall CI
    bootstrap_seed: int = 0
    progress: bool = True  # a tqdm progress bar on stderr


ConfigStore.instance().store(name="evaluate", node=EvalConfig)


def _as_config(cfg: EvalConfig | DictConfig | dict) -> EvalConfig:
    """A validated EvalConfig from a dataclass, a Hydra DictConfig or a plain dict."""
    cfg = to_dataclass(cfg, EvalConfig, "evaluate", ("task", "out"), USAGE)
    if cfg.policy not in POLICIES:
        raise ConfigError(f"policy={cfg.policy!r} is not available; use one of {POLICIES}")
    for key in ("backbone", "task", "out") if cfg.policy == "local" else ("server_url", "task", "out"):
        if getattr(cfg, key) in (MISSING, None, ""):
            raise ConfigError(f"`{key}` is required: {USAGE}")
    if cfg.policy == "remote" and (cfg.backbone is not None or cfg.prefix is not None):
        raise ConfigError("policy=remote: the server holds the backbone and every task's prefix; drop "
                          "backbone=/prefix= (or evaluate with policy=local)")
    if cfg.n_episodes < 1:
        raise ConfigError(f"n_episodes={cfg.n_episodes}: evaluate at least 1 episode per task")
    if cfg.n_action_steps is not None and cfg.n_action_steps < 1:
        raise ConfigError(f"n_action_steps={cfg.n_action_steps}: use at least 1, or null for the whole chunk")
    if cfg.torch_threads is not None and cfg.torch_threads < 1:
        raise ConfigError(f"torch_threads={cfg.torch_threads}: use at least 1, or null for automatic")
    if cfg.num_envs < 1:
        raise ConfigError(f"num_envs={cfg.num_envs}: use at least 1")
    if cfg.video_episodes < 0:
        raise ConfigError(f"video_episodes={cfg.video_episodes}: use 0 (no videos) or more")
    if cfg.cameras is not None and (isinstance(cfg.cameras, str) or not cfg.cameras):
        raise ConfigError(f"cameras={cfg.cameras!r}: give a list of camera names, e.g. cameras=[scene,wrist]")
    return cfg


def _task_names(task: Any) -> str:
    return ",".join(str(t) for t in task) if isinstance(task, (list, tuple)) else str(task)


# ---------------------------------------------------------------------------- the policy


def load_local_policy(backbone: str, prefix: str | None, device: str = "cpu"):
    """-> (VLAPolicy, description). The backbone dir comes from `VLA.save_pretrained`; `prefix` is a prefix file."""
    path = Path(backbone)
    if not path.is_dir():  # checked before importing torch (seconds): a typo should fail at once
        raise ConfigError(f"backbone={backbone!r} is not a directory; give a folder written by VLA.save_pretrained "
                          "(e.g. the output of `python -m vla_prefix.train mode=pretrain`)")
    if prefix is not None and not Path(prefix).is_file():
        raise ConfigError(f"prefix={prefix!r} is not a file; give a prefix file (.safetensors), or prefix=null "
                          "for the backbone alone")
    import torch

    from .models.vla import VLA
    from .policy import VLAPolicy
    from .prefix.io import load_prefix

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but torch sees no CUDA device; use device=cpu")
    vla = VLA.from_pretrained(path)
    prefix_set, meta = (None, None) if prefix is None else load_prefix(prefix, vla)  # checks the fingerprint
    description = {
        "kind": "local",
        "class": "VLAPolicy",
        "backbone": str(backbone),
        "backbone_fingerprint": vla.fingerprint(),
        "chunk": vla.config.chunk,
        "n_cameras": vla.config.n_cameras,
        "cameras": vla.config.cameras,
        "vision_img_size": vla.vision.img_size,
        "prefix": None if prefix is None else str(prefix),
        "prefix_task": None if meta is None else meta["task"],
        "prefix_sha256": None if meta is None else meta["sha256"],
        "prefix_config": None if meta is None else meta["prefix_config"],
        "device": device,
    }
    return VLAPolicy(vla, prefix_set, device=device), description


def load_remote_policy(server_url: str, token: str | None, tasks: list):
    """-> (PolicyClient, description) for a running policy server that serves every one of `tasks`."""
    from .deploy.client import PolicyClient

    client = PolicyClient(server_url, token)
    spec = client.tasks()  # unreachable server or wrong token -> a clear error, before any env starts
    served = {t["task"]: t for t in spec["tasks"]}
    missing = [t.id for t in tasks if t.id not in served]
    if missing:
        raise ConfigError(f"the policy server at {server_url} has no prefix for {missing} "
                          f"(it serves {sorted(served) or 'no tasks'}); add their prefix files to its bank")
    for t in tasks:
        if served[t.id]["instruction"] not in ("", t.instruction):
            log.warning("task %s: the prefix file's instruction %r differs from the task's %r; the rollout sends "
                        "the task's", t.id, served[t.id]["instruction"], t.instruction)
    image = spec["observation"]["image"]["shape"]  # (n_cam, S, S, 3)
    description = {
        "kind": "remote",
        "class": "PolicyClient",
        "server_url": server_url,
        "backbone_fingerprint": spec["backbone_fingerprint"],
        "chunk": spec["actions"]["chunk"],
        "max_batch_rows": spec["max_batch_rows"],
        "n_cameras": image[0],
        "vision_img_size": image[1],
        "prefix": None,
        "prefix_task": None,
        "prefix_sha256": {t.id: served[t.id]["sha256"] for t in tasks},
        "prefix_config": {t.id: served[t.id]["prefix_config"] for t in tasks},
    }
    return client, description


# ---------------------------------------------------------------------------- evaluation


def evaluate(cfg: EvalConfig | DictConfig | dict) -> dict:
    """Run the evaluation described by `cfg`, write `<out>/eval_info.json`, and return its dict."""
    from .evaluation import eval_info, probe_env, rollout
    from .seeds import seeds
    from .sim import registry
    from .utils.atomic import atomic_write_json

    cfg = _as_config(cfg)
    registry.load_task_modules(list(cfg.task_modules))
    tasks = registry.resolve_tasks(cfg.suite, _task_names(cfg.task))  # unknown task -> a clear error, early
    if cfg.seed_range not in ("eval", "val"):
        raise ConfigError(f"seed_range={cfg.seed_range!r}: use eval (reported results) or val (choosing checkpoints)")
    if cfg.policy == "remote":
        policy, description = load_remote_policy(cfg.server_url, cfg.server_token, tasks)
        if cfg.num_envs > description["max_batch_rows"]:
            raise ConfigError(f"num_envs={cfg.num_envs} exceeds the server's max_batch_rows="
                              f"{description['max_batch_rows']}; lower num_envs or raise the server's max_batch_rows")
    else:
        policy, description = load_local_policy(cfg.backbone, cfg.prefix, cfg.device)
    image_size = cfg.image_size if cfg.image_size is not None else description["vision_img_size"]
    if image_size != description["vision_img_size"]:
        raise ConfigError(f"image_size={image_size} but the backbone's vision encoder takes "
                          f"{description['vision_img_size']}px images; leave image_size unset")
    n_action_steps = cfg.n_action_steps if cfg.n_action_steps is not None else description["chunk"]
    if n_action_steps > description["chunk"]:
        raise ConfigError(f"n_action_steps={n_action_steps} exceeds the backbone's chunk length "
                          f"H={description['chunk']}")
    cameras = cfg.cameras or description.get("cameras")  # default: the cameras the backbone was trained on
    env_kwargs = {"image_size": image_size, **({"cameras": tuple(cameras)} if cameras else {})}
    spec = probe_env(tasks[0].id, env_kwargs, seeds(cfg.seed_range, 1, cfg.seed_offset)[0])
    if spec["image_shape"][0] != description["n_cameras"]:
        raise ConfigError(f"the env gives {spec['image_shape'][0]} camera image(s) ({spec['cameras']}) but the "
                          f"backbone takes {description['n_cameras']}; set cameras=[...] to the ones it was trained on")
    if description["prefix_task"] is not None and any(t.id != description["prefix_task"] for t in tasks):
        log.warning("the prefix was trained for %s; evaluating it on %s", description["prefix_task"],
                    ", ".join(t.id for t in tasks))

    out = Path(cfg.out)
    video_dir = out / "videos"
    for stale in video_dir.glob("*/*.mp4"):  # videos of an earlier run in this folder
        stale.unlink()
    import torch

    threads = cfg.torch_threads or _auto_threads(cfg)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = rollout(
            policy, [t.id for t in tasks], cfg.n_episodes,
            n_action_steps=n_action_steps, num_envs=cfg.num_envs, image_size=image_size, cameras=cameras,
            max_steps=cfg.max_steps, seed_range=cfg.seed_range, seed_offset=cfg.seed_offset,
            video_episodes=cfg.video_episodes, video_dir=video_dir, video_size=cfg.video_size, vector=cfg.vector,
            task_modules=list(cfg.task_modules), progress=cfg.progress,
        )  # fmt: skip
    finally:
        torch.set_num_threads(previous)  # evaluate() may run inside a training process
    settings = {
        "suite": cfg.suite,
        "task": _task_names(cfg.task),
        "n_episodes": cfg.n_episodes,
        "policy": description,
        "backbone_fingerprint": description["backbone_fingerprint"],
        "prefix": description["prefix"],
        "torch_threads": threads,
        "versions": _versions(),
    }
    info = eval_info(result, settings, bootstrap_resamples=cfg.bootstrap_resamples,
                     bootstrap_seed=cfg.bootstrap_seed, relative_to=out)
    atomic_write_json(out / "eval_info.json", info)
    return info


def _auto_threads(cfg: EvalConfig) -> int:
    """Policy threads: the cores left after one per async env worker (at least 1)."""
    import torch

    workers = cfg.num_envs if cfg.vector == "async" and cfg.num_envs > 1 else 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(torch.get_num_threads(), cores - workers))


def _versions() -> dict:
    """The packages whose numerics decide the rollouts (a one-ulp change can flip a marginal episode)."""
    import gymnasium
    import mujoco
    import timm
    import torch
    import transformers

    from . import __version__

    return {"vla_prefix": __version__, "mujoco": mujoco.__version__, "gymnasium": gymnasium.__version__,
            "torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "transformers": transformers.__version__, "timm": timm.__version__}


# ---------------------------------------------------------------------------- command line


@hydra.main(version_base=None, config_name="evaluate")
@cli_errors
def _hydra_main(cfg: DictConfig) -> None:
    from .evaluation import format_table

    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # PyOpenGL logs an INFO line about its accelerator
    info = evaluate(cfg)
    print(format_table(info))
    print(f"eval_info: {Path(cfg.out) / 'eval_info.json'} ({info['wall_s']:.1f} s)")


@cli_errors
def main() -> None:
    check_overrides(sys.argv[1:], EvalConfig)
    _hydra_main()


if __name__ == "__main__":
    main()
