"""`VLAPolicy`: a frozen backbone plus a prefix, acting on batched env observations.

Observations are the env's own arrays, batched: `image` uint8 (N, n_cam, H, W, 3), `proprio`
float32 (N, proprio_dim). `act_batch` returns action chunks (N, H, action_dim) as numpy, in
env units. Deep-prefix K/V are computed once (`PrefixSet.cached`), not per call.
"""

from __future__ import annotations

import numpy as np
import torch

from .models.vla import VLA
from .prefix.prefix_set import PrefixSet
from .prefix.tensors import PrefixTensors


class VLAPolicy:
    """Acts with `backbone` and one prefix (or none: the zero-shot base)."""

    def __init__(self, backbone: VLA, prefix: PrefixSet | PrefixTensors | None = None, device: str = "cpu"):
        self.backbone = backbone.to(device).eval()
        self.device = device
        if isinstance(prefix, PrefixSet):
            prefix = prefix.to(device).cached()
        self.prefix = prefix
        self.chunk = backbone.config.chunk
        self._tokens: dict[tuple[str, ...], dict] = {}

    def _instruction_tokens(self, instructions: list[str]) -> dict:
        key = tuple(instructions)
        if key not in self._tokens:  # instructions repeat every step: tokenize once
            self._tokens = {key: {k: v.to(self.device) for k, v in self.backbone.tokenize(list(instructions)).items()}}
        return self._tokens[key]

    @torch.no_grad()
    def act_batch(self, obs: dict, instructions: list[str]) -> np.ndarray:
        """obs: batched env observations (N rows); instructions: N strings -> actions (N, H, action_dim)."""
        batch = {
            "image": torch.as_tensor(np.asarray(obs["image"]), device=self.device),
            "proprio": torch.as_tensor(np.asarray(obs["proprio"]), dtype=torch.float32, device=self.device),
            **self._instruction_tokens(instructions),
        }
        return self.backbone.predict_actions(batch, self.prefix).cpu().numpy()
