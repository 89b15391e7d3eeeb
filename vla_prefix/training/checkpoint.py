"""Periodic training checkpoints, written atomically: a killed run resumes from the last one.

<run>/checkpoints/last/
    trainable.safetensors   the trained state (`trainable_state`: the parameters that train and the running
                            statistics of the BatchNorm layers that train; names as in the Learner)
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
    """The learner's state that training changes: the parameters that train, plus the running statistics of the
    BatchNorm layers in the backbone parts that train (`Learner.train` keeps the other parts in eval mode, where
    those statistics never move)."""
    names = {n for n, p in learner.named_parameters() if p.requires_grad}
    for part_name, part in learner.backbone.named_children():
        if any(p.requires_grad for p in part.parameters()):
            for prefix, module in part.named_modules(prefix=f"backbone.{part_name}"):
                if getattr(module, "track_running_stats", False):  # BatchNorm (and InstanceNorm that tracks)
                    names.update(n for n, _ in module.named_buffers(prefix=prefix, recurse=False))
    return names


def trainable_state(learner) -> dict[str, torch.Tensor]:
    """A CPU copy of the `trainable_names` tensors."""
    state = learner.state_dict(keep_vars=True)
    return {n: state[n].detach().cpu().clone().contiguous() for n in sorted(trainable_names(learner))}


def missing_statistics(learner, saved: dict[str, torch.Tensor]) -> list[str]:
    """The `trainable_names` buffers that `saved` lacks: it was written before checkpoints kept BatchNorm
    statistics (12-08), so restoring it leaves them at their values before the run."""
    return sorted(trainable_names(learner) - set(saved))


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


def load_checkpoint(run_dir: Path, learner, optimizer, steps: int) -> int:
    """Restore the trained state, optimizer and RNG from the last checkpoint of a run of `steps` steps.
    Returns the step to run next."""
    path = checkpoint_dir(run_dir)
    state = json.loads((path / "state.json").read_text())
    saved = load_file(str(path / "trainable.safetensors"))
    trained = {n for n, p in learner.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in learner.named_buffers()}
    wrong = sorted(trained - set(saved)) or sorted(set(saved) - trained - buffers)  # buffers restore as saved
    if wrong:
        raise ConfigError(f"the checkpoint in {path} does not match this run's trainable parameters "
                          f"(e.g. {wrong[:3]}); resume with the same config")
    missing = missing_statistics(learner, saved)
    if missing and int(state["step"]) >= steps:
        raise ConfigError(f"the checkpoint in {path} lacks BatchNorm statistics (e.g. {missing[0]}; written before "
                          f"checkpoints kept them) and the run has no steps left to re-accumulate them; its own "
                          f"outputs hold the trained ones: use them as they are (resuming would rewrite them)")
    if missing:
        print(f"[resume] the checkpoint in {path} lacks BatchNorm statistics (e.g. {missing[0]}; written before "
              "checkpoints kept them): they restart from the values before the run and re-accumulate", flush=True)
    restore_state(learner, saved)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch"])
    return int(state["step"])
