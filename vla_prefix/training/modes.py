"""Which parameters train, per mode. Every mode shares the data, loss, loop and evaluation.

    pretrain  everything, multi-task, fresh backbone
    scratch   everything, fresh backbone, on the target task(s)
    full      everything, starting from the base
    (`freeze` keeps named backbone parts frozen in the modes that train everything, e.g. [vision])
    head      the action head only
    lora      PEFT LoRA adapters on the LM trunk
    prefix    one PrefixSet per task (deep and/or shallow, per the prefix config)
    prompt    one PrefixSet per task, shallow only (prompt tuning)
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..errors import ConfigError
from ..models.vla import VLA
from ..prefix.config import PrefixConfig
from ..prefix.prefix_set import PrefixSet
from ..prefix.tensors import gather_rows

PREFIX_MODES = ("prefix", "prompt")
FRESH_MODES = ("pretrain", "scratch")
BACKBONE_MODES = FRESH_MODES + ("full",)  # the modes that train the whole backbone


class Learner(nn.Module):
    """The backbone plus whatever the mode trains. `forward(batch) -> (loss, info)`."""

    def __init__(self, mode: str, backbone: VLA, prefixes: dict[str, PrefixSet] | None = None):
        super().__init__()
        self.mode, self.backbone = mode, backbone
        self.prefixes = nn.ModuleDict(prefixes or {})
        self.task_ids = list(self.prefixes)

    def prefix_tensors(self, task_index: torch.Tensor):
        if not self.task_ids:
            return None
        per_task = [self.prefixes[t]() for t in self.task_ids]
        if len(per_task) == 1:
            return per_task[0]
        return gather_rows(per_task, task_index)

    def forward(self, batch: dict):
        return self.backbone(batch, self.prefix_tensors(batch["task_index"]))

    def train(self, mode: bool = True):
        """Frozen parts stay in eval mode: no dropout noise, and no BatchNorm statistics drift."""
        super().train(mode)
        for part in self.backbone.children():
            if not any(p.requires_grad for p in part.parameters()):
                part.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def prompt_config(prefix: PrefixConfig) -> PrefixConfig:
    """Prompt tuning: both streams shallow, at the trunk."""
    return replace(prefix, visual=replace(prefix.visual, depth="shallow", site="trunk"),
                   language=replace(prefix.language, depth="shallow"))


def make_learner(mode: str, backbone: VLA, task_ids: list[str], instructions: dict[str, str],
                 prefix_cfg: PrefixConfig, lora_cfg, seed: int, freeze: list[str] = ()) -> Learner:
    """Freeze what the mode does not train (and the `freeze` parts), add what it does.
    Fails loudly if nothing would train."""
    for p in backbone.parameters():
        p.requires_grad_(mode in BACKBONE_MODES)
    for part in backbone_parts(backbone, freeze, mode):
        part.requires_grad_(False)
    prefixes = None
    if mode == "head":
        for p in backbone.head.parameters():
            p.requires_grad_(True)
    elif mode == "lora":
        attach_lora(backbone, lora_cfg)
    elif mode in PREFIX_MODES:
        cfg = prompt_config(prefix_cfg) if mode == "prompt" else prefix_cfg
        prefixes = {t: PrefixSet(cfg, backbone, init_text=instructions[t], seed=seed + i) for i, t in enumerate(task_ids)}
    learner = Learner(mode, backbone, prefixes)
    if not learner.trainable_parameters():
        raise ConfigError(f"mode={mode} leaves nothing to train (prefix lengths all 0?); "
                          "set prefix.visual.length, prefix.language.length or prefix.memory.length > 0")
    return learner


def backbone_parts(backbone: VLA, names, mode: str) -> list[nn.Module | nn.Parameter]:
    """The backbone's top-level parts named in `names` (vision, trunk, projector, head, ...)."""
    if not names:
        return []
    if mode not in BACKBONE_MODES:
        raise ConfigError(f"freeze={list(names)} applies to the modes that train the backbone {BACKBONE_MODES}; "
                          f"mode={mode} already keeps it frozen: remove freeze")
    parts = {name.split(".")[0] for name, _ in backbone.named_parameters()}
    unknown = sorted(set(names) - parts)
    if unknown:
        raise ConfigError(f"freeze names unknown backbone parts {unknown}; choose among {sorted(parts)}")
    return [getattr(backbone, name) for name in names]


def attach_lora(backbone: VLA, lora_cfg) -> None:
    """Wrap the trunk's transformers model with PEFT LoRA; only the adapters train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules=list(lora_cfg.target_modules) if lora_cfg.target_modules else None)
    try:
        backbone.trunk.model = get_peft_model(backbone.trunk.model, config)
    except ValueError as err:
        raise ConfigError(f"PEFT could not place LoRA on the trunk ({err}); set lora.target_modules, "
                          "e.g. [q_proj,v_proj] for Llama or [query,value] for BERT") from None


def merge_lora(backbone: VLA) -> None:
    """Fold LoRA adapters into the trunk weights (for saving a plain VLA directory)."""
    backbone.trunk.model = backbone.trunk.model.merge_and_unload()
