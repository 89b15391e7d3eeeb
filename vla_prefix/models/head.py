"""The action head: readout tokens -> a chunk of H continuous actions (L1 regression)."""

from __future__ import annotations

import torch
from torch import nn


class ActionHead(nn.Module):
    """MLP over the concatenated readout states: (B, n_readouts, width) -> (B, chunk, action_dim)."""

    def __init__(self, in_dim: int, chunk: int, action_dim: int, hidden: int = 256, n_layers: int = 2):
        super().__init__()
        self.chunk, self.action_dim = chunk, action_dim
        layers, width = [], in_dim
        for _ in range(n_layers - 1):
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        layers.append(nn.Linear(width, chunk * action_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, readouts: torch.Tensor) -> torch.Tensor:
        return self.mlp(readouts.flatten(1)).view(-1, self.chunk, self.action_dim)
