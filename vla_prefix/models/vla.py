"""The VLA backbone: timm vision encoder + transformers LM trunk + action head.

One observation becomes the trunk sequence

    [ P_lang | instruction | P_vis | visual | proprio | readouts ]

(the default `config.stream_order="language_first"`; `"vision_first"` swaps the two streams)
under the block-causal mask of `attention.py`; the readout states feed the action head, which
predicts a chunk of H actions. Prefixes are not part of this module: they arrive per forward as
`PrefixTensors`, so the backbone stays frozen and one batch can mix tasks.

Normalisation statistics (proprio, actions) are buffers, saved with the weights and applied
identically wherever the backbone runs.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import hydra.utils
import torch
from safetensors import safe_open
from safetensors.torch import load, load_file, save_file
from torch import nn
from transformers import AutoTokenizer

from ..errors import ConfigError
from ..prefix.tensors import PrefixTensors
from ..utils.atomic import atomic_directory
from .attention import PROPRIO_BLOCK, READOUT_BLOCK, block_causal_mask, position_ids_from_valid, stream_blocks
from .head import ActionHead
from .trunk import LMTrunk
from .vision import VisionEncoder

CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_DIR = "config.json", "model.safetensors", "tokenizer"
COMPRESSED_WEIGHTS_NAME = WEIGHTS_NAME + ".gz"  # the same file, gzip-compressed (`gzip -9n model.safetensors`)


def weights_file(path: str | Path) -> Path | None:
    """The weights of the VLA saved in directory `path`: model.safetensors or model.safetensors.gz (how a
    committed base is kept under the repository's 20 MB limit); None if `path` is not a saved VLA."""
    path = Path(path)
    found = [path / name for name in (WEIGHTS_NAME, COMPRESSED_WEIGHTS_NAME) if (path / name).is_file()]
    if len(found) > 1:
        raise ConfigError(f"{path} holds both {WEIGHTS_NAME} and {COMPRESSED_WEIGHTS_NAME}; keep one")
    return found[0] if found and (path / CONFIG_NAME).is_file() else None


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, metadata) of the VLA saved in directory `path`, from either weights file."""
    file = weights_file(path)
    if file is None:
        raise ConfigError(f"{path} is not a saved VLA (needs {CONFIG_NAME} and {WEIGHTS_NAME}); "
                          "create one with `python -m vla_prefix.train mode=pretrain`")
    if file.name == COMPRESSED_WEIGHTS_NAME:
        data = gzip.decompress(file.read_bytes())  # safetensors: 8-byte header length, JSON header, tensors
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        return load(data), header.get("__metadata__", {})
    with safe_open(str(file), "pt") as f:
        metadata = f.metadata() or {}
    return load_file(str(file)), metadata


@dataclass
class VLAConfig:
    """Sizes that tie the parts together."""

    proprio_dim: int = 4
    action_dim: int = 4  # from the task's action space
    chunk: int = 4  # H, actions predicted per forward
    n_cameras: int = 1
    cameras: Optional[list] = None  # env camera names in image order (set from the training data); None = suite default
    n_readouts: int = 1
    max_instruction_tokens: int = 16
    # which stream comes first and is seen by the other: "language_first" (Octo's order: each visual token
    # attends to the instruction) or "vision_first" (the language tokens attend to the visual ones; bases saved
    # before this field existed). language_first grounds colour words far better (README, the quickstart).
    stream_order: str = "language_first"


class VLA(nn.Module):
    """The backbone. `forward(batch, prefix) -> (loss, info)`; `predict_actions(batch, prefix) -> (B, H, A)`.

    batch keys: `image` uint8 (B, n_cam, H, W, 3) or `visual_features` (B, n_vis, vision_width)
    from `encode_images`; `proprio` (B, proprio_dim); `instruction_ids`/`instruction_mask` (B, Ni)
    from `tokenize`; for the loss, `actions` (B, H, action_dim) and optional `action_valid` (B, H).
    """

    def __init__(self, vision: VisionEncoder, trunk: LMTrunk, head: ActionHead, tokenizer, config: VLAConfig, recipe: dict):
        super().__init__()
        stream_blocks(config.stream_order)  # a clear error for an unknown order
        self.vision, self.trunk, self.head, self.tokenizer, self.config = vision, trunk, head, tokenizer, config
        self.recipe = recipe  # the part configs this backbone was built from; `saved_recipe` adds the live config
        width = trunk.hidden_size
        self.projector = nn.Sequential(nn.Linear(vision.width, width), nn.GELU(), nn.Linear(width, width))
        self.camera_embed = nn.Parameter(torch.randn(config.n_cameras, width) * 0.02)
        self.proprio_proj = nn.Linear(config.proprio_dim, width)
        self.readout_embed = nn.Parameter(torch.randn(config.n_readouts, width) * 0.02)
        for name, dim in (("proprio", config.proprio_dim), ("action", config.action_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))
        self._fingerprint: tuple[str, str] | None = None  # (recipe json, hash)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, vision: dict, trunk: dict, head: dict, config: VLAConfig | dict, tokenizer=None) -> "VLA":
        """Build from Hydra part configs (each with `_target_`). The head gets its sizes from the rest."""
        config = config if isinstance(config, VLAConfig) else VLAConfig(**config)
        vision_module = hydra.utils.instantiate(vision)
        trunk_module = hydra.utils.instantiate(trunk)
        head_module = hydra.utils.instantiate(
            head, in_dim=trunk_module.hidden_size * config.n_readouts, chunk=config.chunk, action_dim=config.action_dim
        )
        if tokenizer is None:
            raise ConfigError("a VLA needs a tokenizer: train one with models.tokenizer.train_instruction_tokenizer "
                              "or load the trunk's own with AutoTokenizer.from_pretrained")
        recipe = {"vision": _plain(vision), "head": _plain(head), "config": asdict(config)}
        recipe["vision"]["pretrained"] = False  # weights come from model.safetensors on reload
        recipe["trunk"] = {"model_class": trunk_module.model_class, "hf_config": trunk_module.hf_config(),
                           "attn_implementation": trunk_module.attn_implementation}
        vocab = len(tokenizer)
        if trunk_module.model.get_input_embeddings().num_embeddings < vocab:
            raise ConfigError(f"the trunk's vocabulary ({trunk_module.model.get_input_embeddings().num_embeddings}) is "
                              f"smaller than the tokenizer's ({vocab}); set model.trunk.config.vocab_size >= {vocab}")
        return cls(vision_module, trunk_module, head_module, tokenizer, config, recipe)

    def save_pretrained(self, path: str | Path, provenance: dict | None = None) -> None:
        """Write config.json, model.safetensors and tokenizer/ atomically into directory `path`.

        `provenance` (how it was made: command, seed, data, steps) goes to training.json beside them.
        """
        with atomic_directory(path) as tmp:
            if provenance is not None:
                (tmp / "training.json").write_text(json.dumps(provenance, indent=2, default=str))
            (tmp / CONFIG_NAME).write_text(json.dumps(self.saved_recipe(), indent=2))
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"fingerprint": self.fingerprint()})
            self.tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))

    @classmethod
    def from_pretrained(cls, path: str | Path, attn_implementation: str | None = None) -> "VLA":
        """Load a directory written by `save_pretrained` (no network; its weights may be gzip-compressed), in
        eval mode."""
        state, _ = read_weights(path)
        model = cls.from_recipe(path, attn_implementation)
        model.load_state_dict(state, strict=True)
        return model.eval()  # like transformers' from_pretrained: ready for inference

    @classmethod
    def from_recipe(cls, path: str | Path, attn_implementation: str | None = None) -> "VLA":
        """A randomly initialised VLA (torch's RNG) with the architecture and tokenizer saved in `path`."""
        path = Path(path)
        recipe = json.loads((path / CONFIG_NAME).read_text())
        config = VLAConfig(**{"stream_order": "vision_first", **recipe["config"]})  # the order before it was set
        vision = hydra.utils.instantiate(recipe["vision"])
        t = recipe["trunk"]
        trunk = LMTrunk.from_config(t["hf_config"], t["model_class"], attn_implementation or t["attn_implementation"])
        head = hydra.utils.instantiate(recipe["head"], in_dim=trunk.hidden_size * config.n_readouts,
                                       chunk=config.chunk, action_dim=config.action_dim)
        tokenizer = AutoTokenizer.from_pretrained(str(path / TOKENIZER_DIR))
        return cls(vision, trunk, head, tokenizer, config, recipe)

    # ------------------------------------------------------------------ identity
    def saved_recipe(self) -> dict:
        """The recipe with `self.config` as it is now (a changed `stream_order` is saved, not dropped)."""
        return {**self.recipe, "config": asdict(self.config)}

    def fingerprint(self) -> str:
        """A stable hash of the config and weights (cached until the config changes; after changing weights,
        call `refresh_fingerprint`)."""
        recipe = json.dumps(self.saved_recipe(), sort_keys=True)
        if self._fingerprint is None or self._fingerprint[0] != recipe:
            h = hashlib.sha256(recipe.encode())
            for name, tensor in sorted(self.state_dict().items()):
                t = tensor.detach().cpu().contiguous()
                h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-d tensors too (BatchNorm counters)
            self._fingerprint = (recipe, h.hexdigest()[:16])
        return self._fingerprint[1]

    def refresh_fingerprint(self) -> str:
        """Recompute after the weights changed (pretraining, full fine-tuning)."""
        self._fingerprint = None
        return self.fingerprint()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def set_normalization(self, proprio_mean, proprio_std, action_mean, action_std, eps: float = 1e-3) -> None:
        """Store dataset statistics; std is floored at `eps` so constant dimensions stay finite."""
        for name, value in (("proprio_mean", proprio_mean), ("proprio_std", proprio_std),
                            ("action_mean", action_mean), ("action_std", action_std)):
            value = torch.as_tensor(value, dtype=torch.float32)
            if name.endswith("std"):
                value = value.clamp(min=eps)
            getattr(self, name).copy_(value)
        self._fingerprint = None

    # ------------------------------------------------------------------ inputs
    def tokenize(self, instructions: list[str]) -> dict[str, torch.Tensor]:
        """Instructions -> `instruction_ids`, `instruction_mask` (B, max_instruction_tokens), padded at the end."""
        enc = self.tokenizer(list(instructions), padding="max_length", truncation=True,
                             max_length=self.config.max_instruction_tokens, return_tensors="pt")
        return {"instruction_ids": enc["input_ids"], "instruction_mask": enc["attention_mask"].bool()}

    def encode_images(self, images: torch.Tensor, prompts=None) -> torch.Tensor:
        """uint8 (B, n_cam, H, W, 3) -> vision tokens (B, n_cam * n_patches, vision_width), before the projector.

        With the vision encoder frozen and no VPT prompts, this can be computed once and cached.
        """
        return self.vision(images, None if prompts is None else prompts.value,
                           None if prompts is None else prompts.valid)

    # ------------------------------------------------------------------ forward
    def _visual_tokens(self, batch, prefix: PrefixTensors) -> torch.Tensor:
        if "visual_features" in batch:
            if prefix.visual is not None and prefix.visual.kind == "prompts":
                raise ConfigError("cached visual features cannot take an encoder-site prefix; disable feature caching")
            feats = batch["visual_features"]
        else:
            prompts = prefix.visual if prefix.visual is not None and prefix.visual.kind == "prompts" else None
            feats = self.encode_images(batch["image"], prompts)
        tokens = self.projector(feats)
        n_cam = self.config.n_cameras
        per_cam = tokens.shape[1] // n_cam
        return tokens + self.camera_embed.repeat_interleave(per_cam, dim=0)[None]

    def sequence_states(self, batch: dict, prefix: PrefixTensors | None = None):
        """Run the trunk. -> hidden (B, T, hidden) for every token, and each token's block id (T,)."""
        b = batch["proprio"].shape[0]
        prefix = PrefixTensors() if prefix is None else prefix.expand(b)
        visual = self._visual_tokens(batch, prefix)
        device = visual.device
        proprio = (batch["proprio"].to(visual.dtype) - self.proprio_mean) / self.proprio_std
        ones = lambda n: torch.ones(b, n, dtype=torch.bool, device=device)  # noqa: E731
        # token segments: (embeddings (B, n, D), block id, valid (B, n))
        blocks = stream_blocks(self.config.stream_order)
        streams = sorted([  # (name, prefix stream, tokens, valid), first block first
            ("visual", prefix.visual, visual, ones(visual.shape[1])),
            ("language", prefix.language, self.trunk.embed_tokens(batch["instruction_ids"]),
             batch["instruction_mask"].bool()),
        ], key=lambda s: blocks[s[0]])
        segments = []
        for name, stream, tokens, valid in streams:
            if stream is not None and stream.kind == "tokens":
                segments.append((stream.value.to(visual.dtype), blocks[name], stream.valid_mask()))
            segments.append((tokens, blocks[name], valid))
        segments.append((self.proprio_proj(proprio)[:, None], PROPRIO_BLOCK, ones(1)))
        segments.append((self.readout_embed[None].expand(b, -1, -1).to(visual.dtype), READOUT_BLOCK,
                         ones(self.config.n_readouts)))
        embeds = torch.cat([s[0] for s in segments], dim=1)
        token_blocks = torch.cat([torch.full((s[0].shape[1],), s[1], device=device) for s in segments])
        token_valid = torch.cat([s[2] for s in segments], dim=1)
        # deep prefixes: K/V in the cache, keys only
        kv = [(s, blocks[name]) for name, s, _, _ in streams if s is not None and s.kind == "kv"]
        prefix_kv = torch.cat([s.value.to(visual.dtype) for s, _ in kv], dim=-2) if kv else None
        key_blocks = torch.cat([torch.full((s.length,), block, device=device) for s, block in kv] + [token_blocks])
        key_valid = torch.cat([s.valid_mask() for s, _ in kv] + [token_valid], dim=1)
        mask = block_causal_mask(token_blocks, key_blocks, key_valid, embeds.dtype)
        memory = None  # FFN memory (n_layers, 2, B, M, hidden); masked slots zeroed, so they add exactly 0
        if prefix.memory is not None:
            memory = prefix.memory.value.to(visual.dtype) * prefix.memory.valid_mask()[None, None, :, :, None]
        hidden = self.trunk(embeds, mask, position_ids_from_valid(token_valid), prefix_kv, memory)
        return hidden, token_blocks

    def readout_states(self, batch: dict, prefix: PrefixTensors | None = None) -> torch.Tensor:
        """The trunk's readout states (B, n_readouts, hidden)."""
        return self.sequence_states(batch, prefix)[0][:, -self.config.n_readouts :]

    def forward(self, batch: dict, prefix: PrefixTensors | None = None):
        """-> (loss, info). L1 on normalised actions, averaged over valid chunk steps."""
        pred = self.head(self.readout_states(batch, prefix))
        target = (batch["actions"].to(pred.dtype) - self.action_mean) / self.action_std
        err = (pred - target).abs().mean(dim=-1)  # (B, H)
        valid = batch.get("action_valid")
        loss = err.mean() if valid is None else (err * valid).sum() / valid.sum().clamp(min=1)
        return loss, {"l1": loss.detach()}

    @torch.no_grad()
    def predict_actions(self, batch: dict, prefix: PrefixTensors | None = None) -> torch.Tensor:
        """Action chunk (B, H, action_dim) in env units, clipped to the [-1, 1] action box."""
        pred = self.head(self.readout_states(batch, prefix)).float()
        return (pred * self.action_std + self.action_mean).clamp(-1.0, 1.0)


def _plain(cfg) -> dict:
    """A Hydra/OmegaConf node or dict -> a plain dict."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else json.loads(json.dumps(cfg))
