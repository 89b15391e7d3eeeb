"""Periodic training checkpoints, written atomically: a killed run resumes from the last one.

<run>/checkpoints/last/
    trainable.safetensors   the trained state (`trainable_state`: the parameters that train and the BatchNorm
                            statistics of the modules that own them; names as in the Learner)
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


def trainable_names(learner) -> set[str]:
    """The learner's state that training changes: the parameters that train, plus the persistent buffers of the
    modules that own them (BatchNorm running statistics, updated in train mode). Frozen parts stay in eval
    mode, so their buffers never change."""
    names = {n for n, p in learner.named_parameters() if p.requires_grad}
    for prefix, module in learner.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            names.update(n for n, _ in module.named_buffers(prefix=prefix, recurse=False))
    return names & set(learner.state_dict(keep_vars=True))  # drops non-persistent buffers (rotary frequencies)


def trainable_state(learner) -> dict[str, torch.Tensor]:
    """A CPU copy of the `trainable_names` tensors."""
    state = learner.state_dict(keep_vars=True)
    return {n: state[n].detach().cpu().clone().contiguous() for n in sorted(trainable_names(learner))}


def restore_state(learner, state: dict[str, torch.Tensor]) -> None:
    """Copy a `trainable_state` back into the learner."""
    named = {**dict(learner.named_parameters()), **dict(learner.named_buffers())}
    with torch.no_grad():
        for name, value in state.items():
            named[name].copy_(value)


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last"


def checkpoint_state(run_dir: Path) -> dict:
    """The last checkpoint's state.json ({} when there is none)."""
    path = checkpoint_dir(run_dir) / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def save_checkpoint(run_dir: Path, learner, optimizer, step: int, extra: dict | None = None) -> Path:
    path = checkpoint_dir(run_dir)
    with atomic_directory(path) as tmp:
        save_file(trainable_state(learner), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, **(extra or {})}))
    return path


def load_checkpoint(run_dir: Path, learner, optimizer) -> int:
    """Restore the trained state, optimizer and RNG from the last checkpoint. Returns the step to run next."""
    path = checkpoint_dir(run_dir)
    state = json.loads((path / "state.json").read_text())
    saved = load_file(str(path / "trainable.safetensors"))
    trained, expected = {n for n, p in learner.named_parameters() if p.requires_grad}, trainable_names(learner)
    wrong = sorted(trained - set(saved)) or sorted(set(saved) - expected)
    if wrong:
        raise ConfigError(f"the checkpoint in {path} does not match this run's trainable parameters "
                          f"(e.g. {wrong[:3]}); resume with the same config")
    stale = sorted(expected - set(saved))  # a checkpoint written before the statistics were kept
    if stale:
        print(f"[resume] the checkpoint in {path} predates kept BatchNorm statistics ({len(stale)} buffers, e.g. "
              f"{stale[0]}): they keep their starting values and re-accumulate as training goes on",
              flush=True)
    restore_state(learner, saved)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch"])
    return int(state["step"])
