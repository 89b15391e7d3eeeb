"""`BankPolicy`: one frozen backbone serving every task of a `PrefixBank`, per row.

    policy = BankPolicy(VLA.from_pretrained("runs/base"), PrefixBank("prefixes/", vla))
    policy.act(obs, "tabletop-reach-red-cube-v0")          # (H, action_dim)
    policy.set_task("tabletop-push-red-cube-v0"); policy.act(obs)
    policy.act_batch(obs_batch, ["task-a", "task-b", ...])  # (N, H, action_dim): ONE forward, any mix of tasks

A swap changes only which cached tensors the next forward reads (no weights are copied). In a
mixed batch each row gets its own task's prefix (`gather_rows`: shorter prefixes zero-padded and
masked out). Rows whose tasks have prefixes of different kinds (a shallow and a deep language prefix,
say) cannot share one forward; they run as one forward per compatible group.

Observations are the env's arrays: `image` uint8 (n_cam, S, S, 3) and `proprio` float32 (proprio_dim,)
for `act`, with a leading N for `act_batch`. Actions come back as numpy float32 in env units.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from ..prefix.tensors import PrefixTensors, gather_rows
from .bank import PrefixBank

MAX_CACHED_INSTRUCTIONS = 4096


class BankPolicy:
    """Acts with `backbone` and, per row, the bank's prefix for that row's task."""

    # the rollout passes task ids (`act_batch(obs, tasks, instructions=...)`), not instructions alone
    task_conditioned = True

    def __init__(self, backbone, bank: PrefixBank):
        if bank.fingerprint != backbone.fingerprint():
            raise ConfigError(f"the bank was opened for backbone {bank.fingerprint}, not {backbone.fingerprint()}")
        self.backbone = backbone.to(bank.device).eval()
        self.bank, self.device = bank, bank.device
        self.chunk = backbone.config.chunk
        self._task: str | None = None
        self._tokens: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ one task at a time
    @property
    def task(self) -> str | None:
        return self._task

    def set_task(self, task: str) -> None:
        """Make `task` the default of `act` (its prefix is loaded now if it was not yet)."""
        self.bank.get(task)
        self._task = task

    def act(self, obs: dict, task: str | None = None, instruction: str | None = None) -> np.ndarray:
        """One observation -> one action chunk (H, action_dim), with `task`'s prefix (default: `set_task`'s)."""
        task = task if task is not None else self._task
        if task is None:
            raise ConfigError("no task: call set_task(task) first, or pass act(obs, task)")
        batch = {"image": np.asarray(obs["image"])[None], "proprio": np.asarray(obs["proprio"])[None]}
        return self.act_batch(batch, [task], None if instruction is None else [instruction])[0]

    # ------------------------------------------------------------------ mixed batches
    def _instruction_tokens(self, instructions: list[str]) -> dict[str, torch.Tensor]:
        rows = []
        for text in instructions:
            tokens = self._tokens.get(text)
            if tokens is None:
                if len(self._tokens) >= MAX_CACHED_INSTRUCTIONS:  # clients may send any text: stay bounded
                    self._tokens = {}
                enc = self.backbone.tokenize([text])
                tokens = (enc["instruction_ids"].to(self.device), enc["instruction_mask"].to(self.device))
                self._tokens[text] = tokens
            rows.append(tokens)
        ids, mask = (torch.cat([r[i] for r in rows]) for i in (0, 1))
        return {"instruction_ids": ids, "instruction_mask": mask}

    @torch.no_grad()
    def act_batch(self, obs: dict, tasks: list[str], instructions: list[str] | None = None) -> np.ndarray:
        """N observations, N task ids (any mix) -> action chunks (N, H, action_dim).

        `instructions` default to each task's own (from its prefix file); the rollout passes the
        registry's. All rows run in one forward when their prefixes are of the same kinds.
        """
        tasks = list(tasks)
        image = torch.as_tensor(np.asarray(obs["image"]), device=self.device)
        proprio = torch.as_tensor(np.asarray(obs["proprio"]), dtype=torch.float32, device=self.device)
        if not (image.shape[0] == proprio.shape[0] == len(tasks)):
            raise ConfigError(f"act_batch got {image.shape[0]} images, {proprio.shape[0]} proprio rows and "
                              f"{len(tasks)} tasks; give one task per row")
        if instructions is None:
            instructions = [self.bank.instruction(t) for t in tasks]
        elif len(instructions) != len(tasks):
            raise ConfigError(f"act_batch got {len(instructions)} instructions for {len(tasks)} rows")
        prefixes = {t: self.bank.get(t) for t in dict.fromkeys(tasks)}  # unknown task -> UnknownTaskError
        batch = {"image": image, "proprio": proprio, **self._instruction_tokens(list(instructions))}
        groups = _compatible_groups(prefixes)
        if len(groups) == 1:
            return self._forward(batch, tasks, groups[0], prefixes).cpu().numpy()
        out = None
        for group in groups:  # rare: prefixes of different kinds cannot share one forward
            rows = [i for i, t in enumerate(tasks) if t in group]
            index = torch.tensor(rows, device=self.device)
            part = self._forward({k: v.index_select(0, index) for k, v in batch.items()},
                                 [tasks[i] for i in rows], group, prefixes)
            out = part.new_empty((len(tasks), *part.shape[1:])) if out is None else out
            out[index] = part
        return out.cpu().numpy()

    def _forward(self, batch: dict, tasks: list[str], group: list[str], prefixes: dict) -> torch.Tensor:
        if len(group) == 1:
            prefix = prefixes[group[0]]  # one task: broadcast (a view), exactly as a single-task policy does
        else:
            rows = torch.tensor([group.index(t) for t in tasks], device=self.device)
            prefix = gather_rows([prefixes[t] for t in group], rows)
        return self.backbone.predict_actions(batch, prefix)


def _compatible_groups(prefixes: dict[str, PrefixTensors]) -> list[list[str]]:
    """Tasks grouped so that, per stream, all present prefixes in a group have the same kind."""
    groups: list[tuple[dict[str, str], list[str]]] = []
    for task, prefix in prefixes.items():
        kinds = {name: s.kind for name, s in prefix.streams().items()}
        for seen, members in groups:
            if all(seen.get(name, kind) == kind for name, kind in kinds.items()):
                seen.update(kinds)
                members.append(task)
                break
        else:
            groups.append((kinds, [task]))
    return [members for _, members in groups]
