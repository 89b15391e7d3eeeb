"""Shared fixtures: a small real demo dataset (tabletop, 32 px) and a tiny pretrained base."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

@pytest.fixture
def one_torch_thread():
    """Env workers and the policy share 2 cores: 2 torch threads made tiny forwards 4-40x slower here."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


PRETRAIN_TASKS = ["tabletop-reach-red-cube-v0", "tabletop-push-red-cube-v0"]
HELDOUT_TASK = "tabletop-push-blue-cube-v0"


@pytest.fixture(scope="session")
def tabletop_demos(tmp_path_factory):
    """3 expert demos each of two pretrain tasks and one held-out task, 32x32 images."""
    from vla_prefix.collect import collect

    out = tmp_path_factory.mktemp("demos") / "tabletop32"
    collect({"suite": "tabletop", "task": PRETRAIN_TASKS + [HELDOUT_TASK], "n_demos": 3, "out": str(out),
             "image_size": 32, "workers": 1, "progress": False})
    return out


def train_config(**overrides):
    """A TrainConfig for the tiny model, composed with real Hydra from conf/."""
    from vla_prefix.training.config import compose_train_config

    return compose_train_config({"model": "tiny", "progress": "false", "threads": 1, "data.num_workers": 0,
                                 **overrides})


@pytest.fixture(scope="session")
def tiny_base(tabletop_demos, tmp_path_factory):
    """A tiny base VLA pretrained briefly on the two pretrain tasks (a real `mode=pretrain` run)."""
    from vla_prefix.training.trainer import train

    run = tmp_path_factory.mktemp("pretrain")
    cfg = train_config(mode="pretrain", task="[" + ",".join(PRETRAIN_TASKS) + "]", **{
        "data.path": str(tabletop_demos), "optim.steps": 40, "optim.batch_size": 16, "checkpoint_every": 40})
    train(cfg, run)
    return run / "base"
