"""`PrefixSet`: the trainable per-task prefixes. The backbone is never touched.

Each stream stores one tensor, position-first (canonical layout, also the file layout):

    trunk, shallow:    (L, hidden)
    trunk, deep:       (L, n_layers, 2, n_kv_heads, head_dim)     K and V for every trunk layer
    encoder, shallow:  (L, vit_width)
    encoder, deep:     (L, vit_depth, vit_width)                  VPT-deep: new prompts per ViT block
    memory:            (L, n_layers, 2, hidden)                   FFN keys and values for every trunk layer

With `reparam`, training goes through a residual MLP, value = P + MLP(P) per position, whose last
layer starts at zero (so the initialisation is kept exactly). `fold()` computes the value once and
drops the MLP: a deployed prefix is just tensors.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from .config import MemoryConfig, PrefixConfig, StreamConfig
from .tensors import STREAMS, PrefixTensors, StreamPrefix


def stream_kind(stream: StreamConfig | MemoryConfig) -> str:
    if isinstance(stream, MemoryConfig):
        return "memory"
    if stream.site == "encoder":
        return "prompts"
    return "kv" if stream.depth == "deep" else "tokens"


def stream_shape(stream: StreamConfig | MemoryConfig, backbone) -> tuple[int, ...]:
    """Canonical (position-first) shape of a stream's tensor on `backbone`."""
    t, v = backbone.trunk, backbone.vision
    kind = stream_kind(stream)
    if kind == "memory":
        return (stream.length, t.n_layers, 2, t.hidden_size)
    depth = stream.depth
    if kind == "kv":
        return (stream.length, t.n_layers, 2, t.n_kv_heads, t.head_dim)
    if kind == "tokens":
        return (stream.length, t.hidden_size)
    if not v.is_vit:
        raise ConfigError(f"prefix.visual.site=encoder needs a ViT vision encoder, not {v.name!r}; use site=trunk")
    return (stream.length, v.depth, v.width) if depth == "deep" else (stream.length, v.width)


class StreamParameters(nn.Module):
    """One stream: a raw tensor, optionally reparameterised through a residual MLP."""

    def __init__(self, init: torch.Tensor, reparam: bool, reparam_hidden: int):
        super().__init__()
        self.shape = tuple(init.shape)
        self.raw = nn.Parameter(init.clone())
        self.mlp = None
        if reparam:
            width = math.prod(self.shape[1:])
            self.mlp = nn.Sequential(nn.Linear(width, reparam_hidden), nn.Tanh(), nn.Linear(reparam_hidden, width))
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)

    def value(self) -> torch.Tensor:
        if self.mlp is None:
            return self.raw
        flat = self.raw.flatten(1)
        return (flat + self.mlp(flat)).view(self.shape)


def to_stream_prefix(kind: str, value: torch.Tensor) -> StreamPrefix:
    """Canonical tensor (L, ...) -> a batch-1 `StreamPrefix` in the layout the backbone reads."""
    if kind == "kv":  # (L, n_layers, 2, h, d) -> (n_layers, 2, 1, h, L, d)
        return StreamPrefix(kind, value.permute(1, 2, 3, 0, 4).unsqueeze(2))
    if kind == "memory":  # (L, n_layers, 2, hidden) -> (n_layers, 2, 1, L, hidden)
        return StreamPrefix(kind, value.permute(1, 2, 0, 3).unsqueeze(2))
    return StreamPrefix(kind, value.unsqueeze(0))


class PrefixSet(nn.Module):
    """A task's visual and language prefixes and FFN memory. Only these train; the backbone stays frozen.

    `forward()` returns `PrefixTensors` for batch 1 (they broadcast to any batch).
    """

    def __init__(self, config: PrefixConfig, backbone, init_text: str | None = None, seed: int = 0):
        super().__init__()
        self.config = config.resolved()
        self.streams = nn.ModuleDict()
        self.kinds: dict[str, str] = {}
        generator = torch.Generator().manual_seed(seed)
        for name in STREAMS:
            stream = getattr(self.config, name)
            if stream.length == 0:
                continue
            if name == "memory":
                self.streams[name] = StreamParameters(initial_memory(stream, backbone, generator), False, 0)
            else:
                init = initial_value(stream, backbone, stream.init_text or init_text, generator)
                self.streams[name] = StreamParameters(init, stream.reparam, stream.reparam_hidden)
            self.kinds[name] = stream_kind(stream)

    @classmethod
    def from_tensors(cls, config: PrefixConfig, tensors: dict[str, torch.Tensor]) -> "PrefixSet":
        """A folded prefix from canonical tensors (as stored in a prefix file)."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.config = config.resolved()
        self.streams, self.kinds = nn.ModuleDict(), {}
        for name, value in tensors.items():
            self.streams[name] = StreamParameters(value, reparam=False, reparam_hidden=0)
            self.kinds[name] = stream_kind(getattr(self.config, name))
        return self

    def values(self) -> dict[str, torch.Tensor]:
        """Canonical tensors per stream (the MLP applied when present)."""
        return {name: s.value() for name, s in self.streams.items()}

    def forward(self) -> PrefixTensors:
        return PrefixTensors(**{n: to_stream_prefix(self.kinds[n], v) for n, v in self.values().items()})

    @torch.no_grad()
    def cached(self) -> PrefixTensors:
        """Detached tensors computed once: inference pays no reparameterisation cost."""
        return PrefixTensors(**{n: to_stream_prefix(self.kinds[n], v.detach().clone())
                                for n, v in self.values().items()})

    @torch.no_grad()
    def fold(self) -> "PrefixSet":
        """A copy with the reparameterisation MLP folded into raw tensors."""
        return PrefixSet.from_tensors(self.config, {n: v.detach().clone() for n, v in self.values().items()})

    # -------------------------------------------------------------- accounting
    def deployed_params(self) -> int:
        """Parameters of the folded, deployed prefix."""
        return sum(math.prod(s.shape) for s in self.streams.values())

    def training_params(self) -> int:
        """Parameters trained, reparameterisation MLP included."""
        return sum(p.numel() for p in self.parameters())

    def deployed_bytes(self, bytes_per_value: int = 4) -> int:
        return self.deployed_params() * bytes_per_value


# ---------------------------------------------------------------------- initialisation
def initial_value(stream: StreamConfig, backbone, text: str | None, generator: torch.Generator) -> torch.Tensor:
    """The starting tensor (canonical shape) for a stream, per `stream.init`."""
    shape = stream_shape(stream, backbone)
    kind = stream_kind(stream)
    if stream.init == "random":
        if kind == "prompts":
            return torch.randn(shape, generator=generator) * 0.02
        reference = _token_values(kind, backbone, _vocab_ids(backbone, 16, generator))
        return torch.randn(shape, generator=generator) * reference.std()  # the scale of real activations
    if stream.init == "vocab":
        ids = _vocab_ids(backbone, stream.length, generator)
    else:
        if not text:
            raise ConfigError("init=text needs a phrase: set prefix.<stream>.init_text or give the task instruction")
        ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"init_text {text!r} has no tokens")
        ids = torch.tensor((ids * math.ceil(stream.length / len(ids)))[: stream.length])
    return _token_values(kind, backbone, ids)


def initial_memory(memory: MemoryConfig, backbone, generator: torch.Generator) -> torch.Tensor:
    """(L, n_layers, 2, hidden): keys ~ N(0, 1/hidden), so x.k is O(1) on RMS-normalised inputs; values 0."""
    shape = stream_shape(memory, backbone)
    value = torch.zeros(shape)
    value[:, :, 0] = torch.randn(shape[0], shape[1], shape[3], generator=generator) / math.sqrt(shape[3])
    return value


def _vocab_ids(backbone, n: int, generator: torch.Generator) -> torch.Tensor:
    special = set(backbone.tokenizer.all_special_ids)
    vocab = [i for i in range(len(backbone.tokenizer)) if i not in special]
    pick = torch.randint(len(vocab), (n,), generator=generator)
    return torch.tensor(vocab)[pick]


@torch.no_grad()
def _token_values(kind: str, backbone, ids: torch.Tensor) -> torch.Tensor:
    """Token embeddings (L, hidden), or the trunk's per-layer K/V for those tokens (L, n_layers, 2, h, d)."""
    from transformers import DynamicCache

    embeds = backbone.trunk.embed_tokens(ids[None])
    if kind == "tokens":
        return embeds[0].detach().clone()
    cache = DynamicCache(config=backbone.trunk.model.config)
    backbone.trunk.model(inputs_embeds=embeds, cache=cache, use_cache=True)
    layers = [torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers]  # (2, h, L, d) each
    return torch.stack(layers).permute(3, 0, 1, 2, 4).contiguous()  # (L, n_layers, 2, h, d)
