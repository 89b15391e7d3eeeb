"""Prefix files: safetensors holding the folded tensors, with JSON metadata.

Metadata (all strings, as safetensors requires):
    format                "vla-prefix/1"
    task, instruction     what the prefix is for
    prefix_config         JSON of the resolved `PrefixConfig`
    backbone_fingerprint  `VLA.fingerprint()` of the backbone it was trained on
    steps                 training steps
    data, eval            JSON (training data description; eval result, if known)
    sha256                hash of the tensor bytes, to catch corruption safetensors would not notice
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from ..errors import FingerprintMismatchError, PrefixFileError
from ..utils.atomic import atomic_write_bytes
from .config import PrefixConfig
from .prefix_set import PrefixSet, stream_shape
from .tensors import STREAMS

FORMAT = "vla-prefix/1"


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_prefix(path, prefix: PrefixSet, backbone, task: str, instruction: str = "", steps: int = 0,
                data: dict | None = None, eval_result: dict | None = None) -> Path:
    """Export `prefix` (folded) to `path`, atomically. Returns the path."""
    tensors = {name: v.detach().float().contiguous().cpu() for name, v in prefix.fold().values().items()}
    metadata = {
        "format": FORMAT,
        "task": task,
        "instruction": instruction,
        "prefix_config": json.dumps(prefix.config.as_dict()),
        "backbone_fingerprint": backbone.fingerprint(),
        "steps": str(int(steps)),
        "data": json.dumps(data or {}),
        "eval": json.dumps(eval_result or {}),
        "sha256": _digest(tensors),
    }
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return path


def read_prefix_metadata(path) -> dict:
    """The metadata of a prefix file, decoded (no tensors are read)."""
    path = Path(path)
    if not path.is_file():
        raise PrefixFileError(f"prefix file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as err:
        raise PrefixFileError(f"{path} is not a readable prefix file (corrupt or truncated: {err}); "
                              "re-export it with `save_prefix` or retrain the task") from None
    if raw.get("format") != FORMAT:
        raise PrefixFileError(f"{path} is not a vla-prefix file (format {raw.get('format')!r}, expected {FORMAT!r})")
    meta = dict(raw)
    for key in ("prefix_config", "data", "eval"):
        meta[key] = json.loads(raw[key])
    meta["steps"] = int(raw["steps"])
    return meta


def load_prefix(path, backbone) -> tuple[PrefixSet, dict]:
    """Load a prefix file onto `backbone`. Fails clearly on corruption, another backbone, or wrong shapes."""
    path = Path(path)
    meta = read_prefix_metadata(path)
    if meta["backbone_fingerprint"] != backbone.fingerprint():
        raise FingerprintMismatchError(
            f"prefix {path.name} (task {meta['task']!r}) was trained on backbone {meta['backbone_fingerprint']}, "
            f"but this backbone is {backbone.fingerprint()}; load the backbone it was trained on, or retrain the prefix"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as err:
        raise PrefixFileError(f"{path} is corrupt or truncated ({err}); re-export or retrain it") from None
    if _digest(tensors) != meta["sha256"]:
        raise PrefixFileError(f"{path} is corrupt: its tensor bytes do not match the stored checksum; re-export it")
    config = PrefixConfig.from_dict(meta["prefix_config"]).resolved()
    expected = {name: stream_shape(getattr(config, name), backbone)
                for name in STREAMS if getattr(config, name).length > 0}
    if set(expected) != set(tensors):
        raise PrefixFileError(f"{path} holds streams {sorted(tensors)} but its config needs {sorted(expected)}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise PrefixFileError(f"{path}: stream {name!r} has shape {tuple(tensors[name].shape)}, "
                                  f"but this backbone needs {shape}")
    return PrefixSet.from_tensors(config, tensors), meta
