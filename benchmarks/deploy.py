"""Deploy costs, side by side in one run: task swaps, first loads, mixed-task batches, the policy server.

On the default backbone (conf/model/default.yaml, random weights) with a bank of 16 random-initialised
deep prefixes (visual 10 + language 10, saved to a temporary directory):
  - swap_median_us            `BankPolicy.set_task` between loaded tasks (goal <= 50)
  - first_load_ms             one prefix from disk into a ready cache: `PrefixBank.get` on a task not yet
                              loaded (metadata, fingerprint, checksum, shapes, K/V layout; goal <= 5)
  - mixed_batch_speedup       16 observations of 16 different tasks: 16 sequential `act` calls over ONE
                              `act_batch` (goal >= 2 on CPU)
  - server_roundtrip_ms_*     B=1 `PolicyClient.act` through a localhost server (batching off, and on with
                              its default 2 ms window), beside the same `act` in-process
  - fuzz_requests/crashes     1000 malformed requests, a valid request checked after each (goal 0 crashes)
Writes benchmarks/results/deploy.json and prints it as the last line.

    python benchmarks/deploy.py [--threads 1] [--fuzz 1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import default_backbone, interleaved_medians, write_result  # noqa: E402

from vla_prefix.deploy import BankPolicy, PolicyClient, PolicyServer, PrefixBank  # noqa: E402
from vla_prefix.deploy.fuzz import fuzz_server  # noqa: E402
from vla_prefix.prefix.config import PrefixConfig, StreamConfig  # noqa: E402
from vla_prefix.prefix.prefix_set import PrefixSet  # noqa: E402
from vla_prefix.sim.registry import list_tasks  # noqa: E402

N_TASKS = 16
GOALS = {"swap_median_us": ("<=", 50), "first_load_ms": ("<=", 5), "mixed_batch_speedup": (">=", 2),
         "fuzz_crashes": ("<=", 0)}


def observations(vla, n: int, seed: int) -> dict:
    g = np.random.default_rng(seed)
    size = vla.vision.img_size
    return {"image": g.integers(0, 256, (n, vla.config.n_cameras, size, size, 3), dtype=np.uint8),
            "proprio": g.standard_normal((n, vla.config.proprio_dim)).astype(np.float32)}


def percentile_ms(samples: list[float], q: float) -> float:
    return round(float(np.percentile(samples, q)) * 1e3, 3)


def roundtrips(client: PolicyClient, obs: dict, tasks: list[str], n: int) -> list[float]:
    out = []
    for i in range(n):
        one = {k: v[i % len(tasks)] for k, v in obs.items()}
        t = time.perf_counter()
        client.act(one, tasks[i % len(tasks)])
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fuzz", type=int, default=1000)
    parser.add_argument("--roundtrips", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()[0]
    start = time.perf_counter()

    vla = default_backbone()
    config = PrefixConfig(StreamConfig(length=10, depth="deep", init="random"),
                          StreamConfig(length=10, depth="deep", init="random"))
    instructions = [t.instruction for t in list_tasks("tabletop")]
    directory = Path(tempfile.mkdtemp(prefix="deploy-bench-"))
    writer = PrefixBank(directory, vla)
    tasks = [f"bench-task-{i:02d}" for i in range(N_TASKS)]
    for i, task in enumerate(tasks):
        writer.add(PrefixSet(config, vla, seed=i), task=task, instruction=instructions[i % len(instructions)])
    prefix_bytes = (directory / f"{tasks[0]}.safetensors").stat().st_size

    # ---- first load: a fresh bank (metadata indexed), then each task read from disk once
    loads = []
    for _ in range(5):
        bank = PrefixBank(directory, vla)
        for task in tasks:
            t = time.perf_counter()
            bank.get(task)
            loads.append(time.perf_counter() - t)

    # ---- swaps between loaded tasks
    bank = PrefixBank(directory, vla)
    bank.load_all()
    policy = BankPolicy(vla, bank)
    order = [tasks[(7 * i) % N_TASKS] for i in range(4000)]
    swaps = []
    for task in order:
        t = time.perf_counter_ns()
        policy.set_task(task)
        swaps.append(time.perf_counter_ns() - t)

    # ---- one mixed act_batch vs 16 sequential act calls
    obs = observations(vla, N_TASKS, seed=0)
    rows = [{k: v[i] for k, v in obs.items()} for i in range(N_TASKS)]
    mixed = policy.act_batch(obs, tasks)
    sequential = np.stack([policy.act(rows[i], tasks[i]) for i in range(N_TASKS)])
    t = interleaved_medians({
        "mixed": lambda: policy.act_batch(obs, tasks),
        "sequential": lambda: [policy.act(rows[i], tasks[i]) for i in range(N_TASKS)],
    }, rounds=7, reps=2, warmup=1)

    # ---- the server: B=1 round trips (batching off, then on), local act for reference, then the fuzz
    local = []
    for i in range(args.roundtrips):
        s = time.perf_counter()
        policy.act(rows[i % N_TASKS], tasks[i % N_TASKS])
        local.append(time.perf_counter() - s)
    with PolicyServer(policy, port=0, batching=False) as server:
        client = PolicyClient(server.url)
        roundtrips(client, obs, tasks, 5)
        plain = roundtrips(client, obs, tasks, args.roundtrips)
        expected = {(i, tasks[i]): policy.act(rows[i], tasks[i]) for i in range(N_TASKS)}
        counter = iter(range(10**9))

        def check_valid() -> bool:
            i = next(counter) % N_TASKS
            return np.array_equal(client.act(rows[i], tasks[i]), expected[(i, tasks[i])])

        fuzz_start = time.perf_counter()
        report = fuzz_server(server.url, n=args.fuzz, seed=0, check_valid=check_valid)
        fuzz_s = time.perf_counter() - fuzz_start
    with PolicyServer(policy, port=0, batching=True) as server:
        client = PolicyClient(server.url)
        roundtrips(client, obs, tasks, 5)
        batched = roundtrips(client, obs, tasks, args.roundtrips)

    result = {
        "backbone": "conf/model/default.yaml (random weights)",
        "backbone_params": vla.num_parameters(),
        "threads": args.threads,
        "load_average_at_start": round(load_at_start, 2),
        "n_tasks": N_TASKS,
        "prefix": "deep, visual 10 + language 10, trunk, init random",
        "prefix_file_bytes": prefix_bytes,
        "swap_median_us": round(statistics.median(swaps) / 1e3, 3),
        "swap_p99_us": round(float(np.percentile(swaps, 99)) / 1e3, 3),
        "first_load_ms": round(statistics.median(loads) * 1e3, 3),
        "first_load_p90_ms": percentile_ms(loads, 90),
        "mixed_batch_ms": round(t["mixed"] * 1e3, 2),
        "sequential_16_act_ms": round(t["sequential"] * 1e3, 2),
        "mixed_batch_speedup": round(t["sequential"] / t["mixed"], 3),
        "mixed_vs_single_max_abs_diff": float(np.abs(mixed - sequential).max()),
        "local_act_ms_p50": percentile_ms(local, 50),
        "server_roundtrip_ms_p50": percentile_ms(plain, 50),
        "server_roundtrip_ms_p99": percentile_ms(plain, 99),
        "server_roundtrip_batching_ms_p50": percentile_ms(batched, 50),
        "server_roundtrip_batching_ms_p99": percentile_ms(batched, 99),
        "roundtrip_requests": args.roundtrips,
        "fuzz_requests": report["requests"],
        "fuzz_kinds": len(report["kinds"]),
        "fuzz_bad_replies_4xx": report["bad_4xx"],
        "fuzz_wrong_status": len(report["wrong_status"]),
        "fuzz_valid_checked": report["valid_checked"],
        "fuzz_crashes": report["crashes"],
        "fuzz_s": round(fuzz_s, 1),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    shutil.rmtree(directory, ignore_errors=True)
    result["goals"] = {k: f"{op} {v}" for k, (op, v) in GOALS.items()}
    result["meets_goals"] = {k: (result[k] <= v if op == "<=" else result[k] >= v) for k, (op, v) in GOALS.items()}
    write_result("deploy", result)


if __name__ == "__main__":
    main()
