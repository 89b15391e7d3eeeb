"""What a prefix hands the backbone for one forward: plain tensors with a batch dimension.

Because every prefix tensor carries a batch dimension, one forward can give each row its own
task's prefix (mixed-task batches); rows with shorter prefixes are padded and masked (`valid`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("tokens", "kv", "prompts")


@dataclass
class StreamPrefix:
    """One stream's prefix for a batch.

    kind = "tokens":  value (B, L, hidden)                      shallow, before the stream in the trunk
    kind = "kv":      value (n_layers, 2, B, n_kv_heads, L, head_dim)   deep, per-layer K/V in the trunk
    kind = "prompts": value (B, L, width) or (B, L, depth, width)  inside the ViT (VPT shallow / deep)
    valid: (B, L) bool, False for padding; None means every slot is valid.
    """

    kind: str
    value: torch.Tensor
    valid: torch.Tensor | None = None

    @property
    def batch_dim(self) -> int:
        return 2 if self.kind == "kv" else 0

    @property
    def length(self) -> int:
        return self.value.shape[-2] if self.kind == "kv" else self.value.shape[1]

    @property
    def batch_size(self) -> int:
        return self.value.shape[self.batch_dim]

    def valid_mask(self) -> torch.Tensor:
        if self.valid is not None:
            return self.valid
        return torch.ones(self.batch_size, self.length, dtype=torch.bool, device=self.value.device)

    def expand(self, batch_size: int) -> "StreamPrefix":
        """Broadcast a batch-1 prefix to `batch_size` rows (a view: no copy)."""
        if self.batch_size == batch_size:
            return self
        if self.batch_size != 1:
            raise ValueError(f"a prefix for {self.batch_size} rows cannot serve a batch of {batch_size}")
        shape = list(self.value.shape)
        shape[self.batch_dim] = batch_size
        valid = None if self.valid is None else self.valid.expand(batch_size, -1)
        return StreamPrefix(self.kind, self.value.expand(*shape), valid)


@dataclass
class PrefixTensors:
    """The visual and language prefixes for one forward (either may be None)."""

    visual: StreamPrefix | None = None
    language: StreamPrefix | None = None

    def expand(self, batch_size: int) -> "PrefixTensors":
        return PrefixTensors(*(None if s is None else s.expand(batch_size) for s in (self.visual, self.language)))

    def streams(self):
        return {name: s for name, s in (("visual", self.visual), ("language", self.language)) if s is not None}
