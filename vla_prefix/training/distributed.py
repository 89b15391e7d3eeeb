"""Data-parallel training over processes started by `torchrun` (gloo on CPU, nccl on CUDA).

    torchrun --nproc_per_node=2 -m vla_prefix.train ...            # CPU, gloo
    torchrun --nproc_per_node=8 -m vla_prefix.train ... device=cuda  # nccl, rank r uses cuda:LOCAL_RANK

Without torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), or with
WORLD_SIZE=1, every helper here is a no-op and training is the plain single-process loop.

How a step stays equal to the single-process step with the same global batch:
- every rank holds the whole model and takes rows rank::world_size of the same seeded global batch
  (`StepBatchSampler`);
- the loss is a masked mean (over valid chunk steps), so `reduce_loss` weights each rank's mean by its
  share of the global count of valid terms, and `all_reduce_grads` sums the trainable gradients: the sum
  is the gradient of the global masked mean, whatever the per-rank counts;
- every rank then applies the same clipped update, so parameters stay identical without re-broadcasts.
Rank 0 alone logs, validates and writes files; the other ranks meet it at `broadcast_object`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import ConfigError

# Ranks > 0 wait at a broadcast while rank 0 validates (rollouts): allow that much time.
TIMEOUT = timedelta(minutes=60)


@dataclass
class DistContext:
    """Where this process stands: `rank` of `world_size`, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_object(self, obj):
        """Rank 0's `obj` (any picklable value), on every rank."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @torch.no_grad()
    def broadcast_params(self, params: list[torch.Tensor]) -> None:
        """Overwrite `params` with rank 0's values (a guard against any difference in initialisation)."""
        if self.enabled:
            for p in params:
                dist.broadcast(p.data, src=0)

    def reduce_loss(self, loss: torch.Tensor, n_terms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (objective to backpropagate, global loss as a detached scalar).

        `loss` is this rank's mean over its `n_terms` valid terms (0 terms -> loss 0, as `VLA.forward`
        computes it). The objective is loss * n_terms / N (N = valid terms over all ranks), so the
        rank-summed gradient is the gradient of the global mean; the global loss is what one process
        with the whole batch would report. Single process: (loss, loss.detach()), untouched.
        """
        if not self.enabled:
            return loss, loss.detach()
        weight = n_terms.float().clamp(min=1)  # 0 terms: loss is 0, and so is its share
        totals = torch.stack([loss.detach().float() * weight, n_terms.float()])
        dist.all_reduce(totals)
        total_terms = totals[1].clamp(min=1)
        return loss.float() * weight / total_terms, totals[0] / total_terms

    @torch.no_grad()
    def all_reduce_grads(self, params: list[torch.Tensor]) -> None:
        """Sum the gradients of `params` over ranks (one all-reduce per dtype).

        A parameter without a gradient on a rank counts as zeros there; one without a gradient on
        every rank keeps `grad=None`, so the optimizer skips it exactly as a single process would.
        """
        if not self.enabled:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in params:
            by_dtype.setdefault(p.dtype, []).append(p)
        for dtype, group in by_dtype.items():
            grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=dtype, device=p.device)
                     for p in group]
            has_grad = torch.tensor([p.grad is not None for p in group], dtype=dtype, device=group[0].device)
            flat = torch.cat(grads + [has_grad])
            dist.all_reduce(flat)
            sizes = [p.numel() for p in group]
            chunks = flat[: sum(sizes)].split(sizes)
            for p, chunk, seen in zip(group, chunks, flat[sum(sizes):].tolist()):
                p.grad = chunk.view_as(p) if seen > 0 else None


def loss_terms(batch: dict) -> torch.Tensor:
    """How many (row, chunk step) terms the model's masked-mean loss averages over in `batch`."""
    valid = batch.get("action_valid")
    if valid is not None:
        return valid.sum()
    actions = batch["actions"]
    return torch.tensor(actions.shape[0] * actions.shape[1], device=actions.device)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


@contextlib.contextmanager
def session(device: str):
    """Join the process group that torchrun's env vars describe (if WORLD_SIZE > 1); yield a `DistContext`.

    device=cpu -> gloo; device=cuda -> nccl on cuda:LOCAL_RANK. The group is destroyed on exit (only if
    this call created it: a caller that initialised its own group keeps it).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        yield DistContext(device=device)
        return
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    cuda = device.startswith("cuda")
    if cuda:
        if device != "cuda":
            raise ConfigError(f"under torchrun set device=cuda (each rank takes cuda:LOCAL_RANK), not {device!r}")
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but no CUDA device is visible; use device=cpu")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are "
                              "visible; lower --nproc_per_node")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world_size, timeout=TIMEOUT)
    try:
        yield DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device)
    finally:
        if created:
            dist.destroy_process_group()
