"""The VLA backbone and its parts."""

from __future__ import annotations

from omegaconf import OmegaConf
from transformers import AutoTokenizer

from .tokenizer import train_instruction_tokenizer
from .trunk import resolve_model_path
from .vla import VLA, VLAConfig, read_weights, weights_file


def build_backbone(model_cfg, corpus: list[str] | None = None, tokenizer=None) -> VLA:
    """A fresh VLA from a `conf/model/*.yaml` node: parts via `_target_`, plus its tokenizer.

    `tokenizer` (an instance) is used as given; else `tokenizer.pretrained` (a local path) loads the
    trunk's own; otherwise one is trained on `corpus` (the instruction corpus) with `tokenizers`.
    """
    cfg = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(model_cfg), resolve=True))
    tok_cfg = cfg.get("tokenizer") or {}
    if tokenizer is not None:
        pass
    elif tok_cfg.get("pretrained"):
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(tok_cfg["pretrained"]))
    else:
        if not corpus:
            from ..errors import ConfigError

            raise ConfigError("training a tokenizer needs an instruction corpus (the tasks' instructions)")
        tokenizer = train_instruction_tokenizer(corpus, vocab_size=int(tok_cfg.get("vocab_size", 512)))
    return VLA.build(cfg.vision, cfg.trunk, cfg.head, OmegaConf.to_container(cfg.config), tokenizer=tokenizer)


__all__ = ["VLA", "VLAConfig", "build_backbone", "read_weights", "weights_file"]
