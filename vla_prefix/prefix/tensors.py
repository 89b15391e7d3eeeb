"""What a prefix hands the backbone for one forward: plain tensors with a batch dimension.

Because every prefix tensor carries a batch dimension, one forward can give each row its own
task's prefix (mixed-task batches); rows with shorter prefixes are padded and masked (`valid`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("tokens", "kv", "prompts", "memory")
PER_LAYER_KINDS = ("kv", "memory")  # layer-first layout: batch at dim 2, positions at dim -2
STREAMS = ("visual", "language", "memory")


@dataclass
class StreamPrefix:
    """One stream's prefix for a batch.

    kind = "tokens":  value (B, L, hidden)                      shallow, before the stream in the trunk
    kind = "kv":      value (n_layers, 2, B, n_kv_heads, L, head_dim)   deep, per-layer K/V in the trunk
    kind = "prompts": value (B, L, width) or (B, L, depth, width)  inside the ViT (VPT shallow / deep)
    kind = "memory":  value (n_layers, 2, B, L, hidden)           FFN memory: per-layer keys and values
    valid: (B, L) bool, False for padding; None means every slot is valid.
    """

    kind: str
    value: torch.Tensor
    valid: torch.Tensor | None = None

    @property
    def batch_dim(self) -> int:
        return 2 if self.kind in PER_LAYER_KINDS else 0

    @property
    def position_dim(self) -> int:
        return self.value.ndim - 2 if self.kind in PER_LAYER_KINDS else 1

    @property
    def length(self) -> int:
        return self.value.shape[self.position_dim]

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
    """The visual and language prefixes and the FFN memory for one forward (any may be None)."""

    visual: StreamPrefix | None = None
    language: StreamPrefix | None = None
    memory: StreamPrefix | None = None

    def expand(self, batch_size: int) -> "PrefixTensors":
        return PrefixTensors(**{name: s.expand(batch_size) for name, s in self.streams().items()})

    def streams(self) -> dict[str, StreamPrefix]:
        return {name: getattr(self, name) for name in STREAMS if getattr(self, name) is not None}


def _pad_stream(s: StreamPrefix, length: int) -> StreamPrefix:
    """Zero-pad a batch-1 stream to `length` positions; padding is marked invalid."""
    valid = s.valid_mask()
    extra = length - s.length
    if extra == 0:
        return StreamPrefix(s.kind, s.value, valid)
    pad_shape = list(s.value.shape)
    pad_shape[s.position_dim] = extra
    value = torch.cat([s.value, s.value.new_zeros(pad_shape)], dim=s.position_dim)
    return StreamPrefix(s.kind, value, torch.cat([valid, valid.new_zeros(valid.shape[0], extra)], dim=1))


def gather_rows(prefixes: list[PrefixTensors], rows: torch.Tensor) -> PrefixTensors:
    """One batch in which row i uses `prefixes[rows[i]]` (each a batch-1 PrefixTensors).

    Streams of different lengths are zero-padded and masked, so any mix of tasks fits one forward.
    """
    out = {}
    for name in STREAMS:
        streams = [getattr(p, name) for p in prefixes]
        present = [s for s in streams if s is not None]
        if not present:
            continue
        kinds = {s.kind for s in present}
        if len(kinds) > 1:
            raise ValueError(f"cannot batch {name} prefixes of different kinds {sorted(kinds)}")
        kind, like = kinds.pop(), present[0]
        length = max(s.length for s in present)
        if any(s is None for s in streams):  # a task without this stream: a fully masked stand-in
            shape = list(like.value.shape)
            shape[like.position_dim] = 0
            empty = StreamPrefix(kind, like.value.new_zeros(shape), torch.zeros(1, 0, dtype=torch.bool))
            streams = [empty if s is None else s for s in streams]
        padded = [_pad_stream(s, length) for s in streams]
        batch_dim = padded[0].batch_dim
        value = torch.cat([p.value for p in padded], dim=batch_dim).index_select(batch_dim, rows)
        valid = torch.cat([p.valid for p in padded], dim=0).index_select(0, rows)
        out[name] = StreamPrefix(kind, value, None if bool(valid.all()) else valid)
    return PrefixTensors(**out)
