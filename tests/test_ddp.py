"""DDP: 2 processes (gloo, CPU, torchrun's env vars) train the same prefixes as 1 process with the same global batch.

Two processes started with torch.multiprocessing (spawn; ~5 s of imports each), with torchrun's env vars
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT on a free port): every rank calls `train()` three
times (a multi-task prefix run; the same run stopped by an injected NaN; its resume).

Tolerance, atol 1e-5 on the trained prefix tensors and on the logged losses: the 2-process step differs
from the 1-process step only in float rounding (each rank sums over its 4 rows of the 8-row global batch,
the two partial gradients are then added, and each rank's masked mean is rescaled by its share of the
valid terms), i.e. relative differences of order fp32 eps (1e-7) per gradient, which 24 AdamW steps at
lr 3e-3 keep tiny. Measured: max |prefix diff| 6e-8 (the prefixes moved 0.04 from their init).
A plain average of per-rank masked means (the naive DDP loss) gave 7.8e-3 on this run (measured once by
patching `reduce_loss`): the run has steps where the ranks hold different numbers of valid action
terms (asserted below), so the tolerance separates the exact weighting from the naive one.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import torch

from conftest import HELDOUT_TASK, train_config

TASKS = [HELDOUT_TASK, "tabletop-reach-red-cube-v0"]  # multi-task prefix mode: one prefix per task
STEPS, BATCH, NAN_AT, ATOL = 24, 8, 18, 1e-5


def config(base, demos, **kw):
    args = {"mode": "prefix", "base": str(base), "task": "[" + ",".join(TASKS) + "]", "data.path": str(demos),
            "optim.steps": STEPS, "optim.batch_size": BATCH, "checkpoint_every": 12, "optim.warmup_steps": 4}
    args.update(kw)
    return train_config(**args)


def prefixes(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for task in TASKS:
        for name, value in load_file(str(run / "prefixes" / f"{task}.safetensors")).items():
            out[f"{task}/{name}"] = value
    return out


def losses(run: Path) -> list[tuple[int, float]]:
    from vla_prefix.training.loggers import MetricsFile

    return [(r["step"], r["loss"]) for r in MetricsFile(run / "metrics.jsonl").read()]


def worker(rank: int, base: str, demos: str, out: Path, ports: list[int]) -> None:
    """One rank: the plain run, then a run stopped by NaN at step NAN_AT, then its resume.

    The env vars are the ones torchrun sets; each `train()` call makes and destroys its own process
    group, on its own port (a store that held an earlier group must not be reused).
    """
    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"})
    from vla_prefix.training.trainer import TrainingError, train

    def run(port, **kw):
        os.environ["MASTER_PORT"] = str(port)
        return train(config(base, demos, **{k: v for k, v in kw.items() if k != "run"}), out / kw["run"])

    result = {"summary": run(ports[0], run="ddp")}
    try:
        run(ports[1], run="ddp_resumed", debug_nan_at_step=NAN_AT)
        result["nan_error"] = None
    except TrainingError as err:  # every rank must stop here, none may hang
        result["nan_error"] = str(err)
    result["resumed_summary"] = run(ports[2], run="ddp_resumed", resume="true")
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_process_ddp_matches_one_process(tiny_base, tabletop_demos, tmp_path):
    import torch.multiprocessing as mp

    from vla_prefix.training.trainer import train

    t0 = time.perf_counter()
    ranks = mp.start_processes(worker, args=(str(tiny_base), str(tabletop_demos), tmp_path, free_ports(3)),
                               nprocs=2, join=False, start_method="spawn")
    train(config(tiny_base, tabletop_demos), tmp_path / "single")  # the 1-process reference, meanwhile
    deadline = time.time() + 300
    try:
        while not ranks.join(timeout=1):
            assert time.time() < deadline, "the 2 ranks did not finish in 300 s (a hang?)"
    finally:
        for proc in ranks.processes:
            if proc.is_alive():
                proc.kill()
    print(f"2 ranks done {time.perf_counter() - t0:.1f} s after launch")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    # every rank ran as 1 of 2, stopped at the same NaN, and returns rank 0's summary
    assert all(r["nan_error"] and f"at step {NAN_AT}" in r["nan_error"] for r in ranks)
    assert ranks[0]["summary"] == ranks[1]["summary"] and ranks[0]["summary"]["world_size"] == 2

    # the same loss curve, logged once (rank 0 only)
    single, ddp = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert [s for s, _ in ddp] == [s for s, _ in single] == list(range(STEPS))
    loss_diff = max(abs(a - b) for (_, a), (_, b) in zip(single, ddp))
    assert loss_diff < ATOL

    # the same trained prefixes, one per task
    ref, got = prefixes(tmp_path / "single"), prefixes(tmp_path / "ddp")
    assert sorted(ref) == sorted(got) and len({k.split("/")[0] for k in ref}) == 2
    diff = max((ref[k] - got[k]).abs().max().item() for k in ref)
    init = prefixes_at_init(tiny_base)
    moved = min((ref[k] - init[k]).abs().max().item() for k in ref)
    print(f"max |prefix(1 process) - prefix(2 processes)| = {diff:.3g}, max |loss diff| = {loss_diff:.3g}; "
          f"smallest max move from init = {moved:.3g}")
    assert diff < ATOL and moved > 100 * ATOL  # equal, and not because nothing trained

    # the run holds steps where the ranks see different numbers of valid (unpadded) action terms: there a
    # plain average of per-rank masked means would differ from the global masked mean
    counts = valid_counts(tiny_base, tabletop_demos)
    uneven = [s for s, (a, b) in enumerate(counts) if a != b]
    print(f"steps with uneven valid counts per rank: {len(uneven)} of {STEPS}, e.g. {counts[uneven[0]]}")
    assert uneven

    # a DDP run killed by NaN at step 18 resumes from rank 0's step-12 checkpoint on both ranks, bit-exactly
    resumed = prefixes(tmp_path / "ddp_resumed")
    assert all(torch.equal(resumed[k], got[k]) for k in got)
    assert losses(tmp_path / "ddp_resumed") == ddp
    assert ranks[0]["resumed_summary"]["final_loss"] == ranks[1]["resumed_summary"]["final_loss"] == ddp[-1][1]


def prefixes_at_init(base) -> dict[str, torch.Tensor]:
    """The folded prefix tensors before training (the trainer's seeds: seed + task position)."""
    from vla_prefix.models import VLA
    from vla_prefix.prefix.prefix_set import PrefixSet
    from vla_prefix.sim.registry import get_task

    cfg, backbone = config(base, "unused"), VLA.from_pretrained(base)
    out = {}
    for i, task in enumerate(TASKS):
        prefix = PrefixSet(cfg.prefix, backbone, init_text=get_task(task).instruction, seed=cfg.seed + i)
        out.update({f"{task}/{name}": value for name, value in prefix.fold().values().items()})
    return out


def valid_counts(base, demos) -> list[tuple[int, int]]:
    """Per step, the valid action terms in rank 0's and rank 1's rows of the global batch."""
    from vla_prefix.models import VLA
    from vla_prefix.training.data import ChunkDataset, StepBatchSampler, load_training_data

    backbone = VLA.from_pretrained(base)
    episodes = load_training_data(str(demos), TASKS, None, backbone.vision.img_size, backbone.config.n_cameras)
    dataset = ChunkDataset(episodes, TASKS, {t: ["x"] for t in TASKS}, backbone.tokenize, backbone.config.chunk)
    ranks = [StepBatchSampler(len(dataset), BATCH, 0, STEPS, rank=r, world_size=2) for r in (0, 1)]
    return [tuple(int(sum(dataset[item]["action_valid"].sum() for item in sampler.batch(step))) for sampler in ranks)
            for step in range(STEPS)]


