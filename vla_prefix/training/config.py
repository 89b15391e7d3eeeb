"""Structured configs for `python -m vla_prefix.train`, registered in Hydra's ConfigStore.

A typo in an override (`optim.lrr=1`) fails with Hydra's "Key 'lrr' is not in struct" message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from ..prefix.config import PrefixConfig

MODES = ("pretrain", "prefix", "prompt", "lora", "full", "head", "scratch")


@dataclass
class OptimConfig:
    lr: Optional[float] = None  # null = this mode's entry in lr_by_mode
    lr_by_mode: Dict[str, float] = field(default_factory=lambda: {
        "pretrain": 3e-4, "scratch": 3e-4, "full": 1e-4, "lora": 1e-3, "head": 1e-3, "prefix": 3e-3, "prompt": 3e-3,
    })
    weight_decay: float = 0.0
    warmup_steps: int = 20
    grad_clip: float = 1.0
    batch_size: int = 64
    steps: int = 500


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: Optional[List[str]] = None  # null = PEFT's default for the trunk's model type


@dataclass
class DataConfig:
    path: str = MISSING  # a demo dataset written by `python -m vla_prefix.collect`
    n_demos: Optional[int] = None  # per task; null = all episodes in the dataset
    paraphrases: bool = True  # sample the instruction among the task's paraphrases
    # random-shift augmentation, pixels (0 = off). Off by default: with the absolute end-effector position
    # in proprio, +-4 px shifts made single-task reach BC fit 1.8x worse after 100 steps (0.45 vs 0.25 L1)
    augment_shift: int = 0
    cache_features: Optional[bool] = None  # null = on wherever valid (frozen encoder, visual prefix at the trunk)
    num_workers: int = 2


@dataclass
class ValConfig:
    """Checkpoint selection by rollouts on the `val` seed range (0 = off: keep the last step)."""

    every: int = 0
    n_episodes: int = 10
    n_action_steps: int = 2
    num_envs: int = 2
    video_episodes: int = 1  # rollout videos kept (and logged to W&B) per task and validation
    ties: str = "first"  # first | last: which of equally scored checkpoints to keep (last = the most trained)


@dataclass
class WandbSettings:
    project: str = "vla-prefix"
    entity: Optional[str] = None
    group: Optional[str] = None
    name: Optional[str] = None


@dataclass
class TrainConfig:
    mode: str = "prefix"  # one of MODES
    suite: str = "tabletop"
    task: Any = None  # id, split name, or a list of them; null = pretrain split (mode=pretrain), else heldout
    base: Optional[str] = None  # the frozen base VLA directory (every mode but pretrain/scratch)
    model: Any = MISSING  # conf/model/*.yaml: used to build pretrain/scratch backbones
    prefix: PrefixConfig = field(default_factory=PrefixConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    freeze: List[str] = field(default_factory=list)  # backbone parts kept frozen in full/scratch/pretrain, e.g. [vision]
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    val: ValConfig = field(default_factory=ValConfig)
    logger: str = "none"  # none | wandb (offline when no API key is set)
    wandb: WandbSettings = field(default_factory=WandbSettings)
    device: str = "cpu"  # cpu | cuda
    precision: str = "fp32"  # fp32 | bf16
    seed: int = 0
    threads: Optional[int] = None  # torch intra-op threads (fix it for bit-exact reruns); null = torch default
    checkpoint_every: int = 100
    resume: bool = False
    out_dir: Optional[str] = None  # null = the Hydra run directory
    task_modules: List[str] = field(default_factory=list)  # user modules that register extra tasks
    progress: bool = True
    debug_nan_at_step: Optional[int] = None  # fault injection for tests: make the loss NaN at this step


CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_train_config(overrides: list[str] | dict) -> TrainConfig:
    """The TrainConfig that `python -m vla_prefix.train <overrides>` would run (real Hydra composition)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    register_configs()
    if isinstance(overrides, dict):
        overrides = [f"{k}={v}" for k, v in overrides.items()]
    outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()  # callable from inside another Hydra app (e.g. the quickstart)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return OmegaConf.to_object(compose(config_name="train", overrides=list(overrides)))
    finally:
        if outer is not None:
            GlobalHydra.instance().initialize(outer)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="prefix", name="prefix_schema", node=PrefixConfig)
