"""Prefix configuration: two independent streams, `visual` and `language`, and optional FFN `memory`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ..errors import ConfigError

DEPTHS = ("shallow", "deep")
INITS = ("random", "vocab", "text")
SITES = ("trunk", "encoder")


@dataclass
class StreamConfig:
    """One stream's prefix.

    length: number of prefix positions (0 disables the stream).
    depth:  `shallow` = input-level embeddings (prompt tuning); `deep` = per-layer K/V (prefix tuning).
    init:   `random`; `vocab` = sampled token embeddings; `text` = activations of a phrase
            (`init_text`, by default the task instruction).
    reparam: train through a residual MLP (Li & Liang); folded away at export.
    site:   visual stream only: `trunk` (before the visual tokens in the LM) or `encoder` (VPT prompts in the ViT).
    """

    length: int = 10
    depth: str = "deep"
    init: str = "vocab"
    init_text: str | None = None
    reparam: bool = False
    reparam_hidden: int = 256
    site: str = "trunk"


@dataclass
class MemoryConfig:
    """Per-layer FFN memory slots: `length` extra key/value pairs added to every trunk layer's MLP,
    out += act(x K^T) V, where x is the MLP's input (Geva et al.: an FFN is a key-value memory).
    Attention prefixes can only add attention outputs; these let a task change what the FFNs write.
    Keys start random, values at zero, so an untrained memory leaves the backbone's output unchanged.
    length 0 (the default) disables it.
    """

    length: int = 0


@dataclass
class PrefixConfig:
    """`shared=True` is the ablation: one prefix of length visual+language, before the visual stream only."""

    visual: StreamConfig = field(default_factory=StreamConfig)
    language: StreamConfig = field(default_factory=StreamConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    shared: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "PrefixConfig":
        d = dict(d)
        unknown = set(d) - {"visual", "language", "memory", "shared"}
        if unknown:
            raise ConfigError(f"unknown prefix config keys {sorted(unknown)}; expected visual, language, memory, shared")
        streams = {}
        for name in ("visual", "language"):
            s = dict(d.get(name) or {})
            bad = set(s) - set(StreamConfig.__dataclass_fields__)
            if bad:
                raise ConfigError(f"unknown keys {sorted(bad)} in prefix.{name}; "
                                  f"valid keys: {sorted(StreamConfig.__dataclass_fields__)}")
            streams[name] = StreamConfig(**s)
        memory = dict(d.get("memory") or {})
        if set(memory) - {"length"}:
            raise ConfigError(f"unknown keys {sorted(set(memory) - {'length'})} in prefix.memory; valid keys: ['length']")
        return cls(**streams, memory=MemoryConfig(**memory), shared=bool(d.get("shared", False)))

    def as_dict(self) -> dict:
        """Plain dict; `memory` only when it is on, so configs and files from before it existed stay equal."""
        d = asdict(self)
        if self.memory.length == 0:
            del d["memory"]
        return d

    def resolved(self) -> "PrefixConfig":
        """Validated, with `shared` turned into its plain form (language length 0)."""
        for name, s in (("visual", self.visual), ("language", self.language)):
            where = f"prefix.{name}"
            if not isinstance(s.length, int) or s.length < 0:
                raise ConfigError(f"{where}.length must be an integer >= 0, got {s.length!r}")
            if s.depth not in DEPTHS:
                raise ConfigError(f"{where}.depth must be one of {DEPTHS}, got {s.depth!r}")
            if s.init not in INITS:
                raise ConfigError(f"{where}.init must be one of {INITS}, got {s.init!r}")
            if s.site not in SITES:
                raise ConfigError(f"{where}.site must be one of {SITES}, got {s.site!r}")
            if name == "language" and s.site != "trunk":
                raise ConfigError("prefix.language.site must be `trunk`: only the visual prefix can sit in the encoder")
            if s.site == "encoder" and s.init != "random" and s.length > 0:
                raise ConfigError(f"{where}.init={s.init!r} needs token embeddings, which the ViT does not have; "
                                  "use init=random with site=encoder")
        if not isinstance(self.memory.length, int) or self.memory.length < 0:
            raise ConfigError(f"prefix.memory.length must be an integer >= 0, got {self.memory.length!r}")
        if not self.shared:
            return self
        total = self.visual.length + self.language.length
        return replace(self, visual=replace(self.visual, length=total), language=replace(self.language, length=0))
