"""Periodic training checkpoints, written atomically: a killed run resumes from the last one.

<run>/checkpoints/last/
    trainable.safetensors   the parameters that train (names as in the Learner)
    optimizer.pt            optimizer state (loaded with weights_only=True)
    rng.safetensors         torch's RNG state
    state.json              {"step": next step to run, "history": the commands that ran so far,
                             "config": the resolved TrainConfig (for `python -m vla_prefix.export`), ...}
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import ConfigError
from ..utils.atomic import atomic_directory


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last"


def checkpoint_state(run_dir: Path) -> dict:
    """The last checkpoint's state.json ({} when there is none)."""
    path = checkpoint_dir(run_dir) / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def save_checkpoint(run_dir: Path, learner, optimizer, step: int, extra: dict | None = None) -> Path:
    path = checkpoint_dir(run_dir)
    with atomic_directory(path) as tmp:
        params = {n: p.detach().cpu().contiguous() for n, p in learner.named_parameters() if p.requires_grad}
        save_file(params, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, **(extra or {})}))
    return path


def load_checkpoint(run_dir: Path, learner, optimizer) -> int:
    """Restore parameters, optimizer and RNG from the last checkpoint. Returns the step to run next."""
    path = checkpoint_dir(run_dir)
    state = json.loads((path / "state.json").read_text())
    params = load_file(str(path / "trainable.safetensors"))
    named = dict(learner.named_parameters())
    missing = [n for n, p in named.items() if p.requires_grad and n not in params]
    if missing or set(params) - set(named):
        raise ConfigError(f"the checkpoint in {path} does not match this run's trainable parameters "
                          f"(e.g. {(missing or sorted(set(params) - set(named)))[:3]}); resume with the same config")
    with torch.no_grad():
        for name, value in params.items():
            named[name].copy_(value)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch"])
    return int(state["step"])
