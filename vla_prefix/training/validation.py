"""Choosing by validation: rollouts on the `val` seed range, never on `eval`.

`validate(learner, tasks, cfg)` returns the mean success over the trained tasks; the trainer keeps
the trainable state of the best validation score and restores it before writing its outputs.
"""

from __future__ import annotations

import torch

from ..evaluation.rollout import rollout
from ..policy import VLAPolicy


@torch.no_grad()
def validate(learner, task_ids: list[str], cfg, cameras, video_dir=None) -> tuple[dict[str, float], list[str]]:
    """Success rate per task on `cfg.val.n_episodes` val-range episodes (each task with its own prefix),
    and the paths of the videos recorded (the first `cfg.val.video_episodes` episodes per task)."""
    backbone = learner.backbone
    was_training = learner.training
    learner.eval()
    rates, videos = {}, []
    for task in task_ids:
        prefix = learner.prefixes[task].cached() if task in learner.prefixes else None
        policy = VLAPolicy(backbone, prefix, device=cfg.device)
        result = rollout(policy, [task], cfg.val.n_episodes, n_action_steps=cfg.val.n_action_steps,
                         num_envs=cfg.val.num_envs, image_size=backbone.vision.img_size, cameras=cameras,
                         # sync: starting a process per slot costs more than it saves, even on Meta-World
                         # (benchmarks/val_rollouts.py)
                         seed_range="val", vector="sync", task_modules=cfg.task_modules,
                         video_episodes=cfg.val.video_episodes if video_dir else 0, video_dir=video_dir)
        episodes = result.episodes[task]
        rates[task] = sum(e.success for e in episodes) / len(episodes)
        videos += [e.video for e in episodes if e.video]
    learner.train(was_training)
    return rates, videos
