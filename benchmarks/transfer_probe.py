"""Does a base transfer to held-out tasks? Offline, without rollouts, side by side in one run.

    python benchmarks/transfer_probe.py --base checkpoints/metaworld_base --data data/metaworld_probe \
        [--suite metaworld] [--tasks heldout] [--n-demos 10] [--unseen 10] [--steps 500] \
        [--lr-full 1e-3] [--lr-scratch 3e-4] [--reinit vision] [--out benchmarks/results/transfer_probe.json]

For each held-out task, the one trainer fine-tunes the base (`full`) and trains its architecture from a
random init (`scratch`) on the task's first `--n-demos` demos (no checkpoint selection). Both models then
predict the action chunks of the task's next `--unseen` demos, which neither saw: `unseen_l1` is the L1 in
env units over the valid steps of each chunk (`train_l1` the same on the training demos).
`full_over_scratch` < 1 means the base's weights generalise to the task better than a random init.
`--reinit PART,...` asks which parts carry that: `full` then starts from the base with those top-level parts
(vision, projector, camera_embed, proprio_proj, readout_embed, trunk, head) drawn at random (seed `--seed`),
the rest and the base's normalisation kept; `scratch` is unchanged.

Rollout success is what the protocol reports; this asks the cheaper question first (minutes per task on
2 cores), e.g. of a base still pretraining (`python -m vla_prefix.export RUN_DIR OUT_DIR` writes
OUT_DIR/base from its last checkpoint). Missing demos are collected into `--data` first (the base's
image size and cameras). The default lrs are the ML45 second calibration's choices. The JSON is printed
as the last line. Run it from the repository root.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import vla_prefix  # noqa: E402,F401  (first: sets MUJOCO_GL before mujoco is imported)

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from vla_prefix.collect import collect  # noqa: E402
from vla_prefix.experiments.heldout import base_architecture, base_observation  # noqa: E402
from vla_prefix.models.vla import VLA  # noqa: E402
from vla_prefix.sim.registry import resolve_tasks  # noqa: E402
from vla_prefix.training import trainer  # noqa: E402
from vla_prefix.training.config import compose_train_config  # noqa: E402
from vla_prefix.training.data import ChunkDataset, load_training_data  # noqa: E402
from vla_prefix.utils.atomic import atomic_write_json  # noqa: E402


def action_l1(model: VLA, episodes: list[dict], task: str, instruction: str, batch: int = 256) -> float:
    """Mean |predicted - demo action| (env units) over the valid steps of every frame's action chunk."""
    data = ChunkDataset(episodes, [task], {task: [instruction]}, model.tokenize, model.config.chunk)
    total, count = 0.0, 0.0
    for start in range(0, len(data), batch):
        items = [data[(i, 0)] for i in range(start, min(start + batch, len(data)))]
        rows = {k: torch.stack([item[k] for item in items]) for k in items[0]}
        err = (model.predict_actions(rows) - rows["actions"]).abs().mean(-1)  # (B, chunk)
        valid = rows["action_valid"].float()
        total, count = total + float((err * valid).sum()), count + float(valid.sum())
    return total / count


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def reinit_base(base: str, parts: list[str], seed: int, work: str) -> str:
    """A copy of the base (saved under `work`) whose top-level `parts` are drawn at random; -> its directory."""
    model = VLA.from_pretrained(base)
    out = Path(work) / "bases" / f"{model.fingerprint()}_reinit_{'-'.join(sorted(parts))}_seed{seed}"
    kept = {"proprio_mean", "proprio_std", "action_mean", "action_std"}  # normalisation, not weights
    names = {key.split(".")[0] for key in model.state_dict()} - kept
    if not parts or set(parts) - names:
        raise SystemExit(f"--reinit takes a comma-separated list of {sorted(names)}; got {parts}")
    torch.manual_seed(seed)
    fresh = VLA.from_recipe(base).state_dict()
    model.load_state_dict({k: fresh[k] if k.split(".")[0] in parts else v for k, v in model.state_dict().items()})
    model.refresh_fingerprint()
    if not out.is_dir():
        model.save_pretrained(out, provenance=json.loads(Path(base, "training.json").read_text()))
    return str(out)


def train_one(args, task: str, method: str, base_fingerprint: str) -> tuple[Path, dict]:
    """(model dir, train summary) of one method on the task's first n demos; reused when already trained
    (`full` per base; `scratch` per architecture, since it never loads the base's weights)."""
    architecture = digest(base_architecture(args.base))
    settings = f"data{digest(str(Path(args.data).resolve()))}_demos{args.n_demos}_steps{args.steps}" \
               f"_batch{args.batch_size}_seed{args.seed}"
    run_dir = Path(args.work) / task / settings / (f"full_{base_fingerprint}_lr{args.lr_full:g}" if method == "full"
                                                   else f"scratch_{architecture}_lr{args.lr_scratch:g}")
    if (run_dir / "train_summary.json").exists():
        return run_dir / "model", json.loads((run_dir / "train_summary.json").read_text())
    cfg = compose_train_config({
        "mode": method, "suite": args.suite, "task": task, "base": args.base, "data.path": args.data,
        "data.n_demos": args.n_demos, "optim.steps": args.steps, "optim.batch_size": args.batch_size,
        "optim.lr": args.lr_full if method == "full" else args.lr_scratch, "seed": args.seed, "threads": 2,
        "data.num_workers": 0, "logger": "none", "progress": False, "resume": True})
    if method == "scratch":
        cfg.model = base_architecture(args.base)
    return run_dir / "model", trainer.train(cfg, run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="checkpoints/metaworld_base")
    parser.add_argument("--data", default="data/metaworld_probe")
    parser.add_argument("--suite", default="metaworld")
    parser.add_argument("--tasks", default="heldout")
    parser.add_argument("--n-demos", type=int, default=10)
    parser.add_argument("--unseen", type=int, default=10)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr-full", type=float, default=1e-3)
    parser.add_argument("--lr-scratch", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reinit", default="", help="comma-separated base parts `full` starts from at random")
    parser.add_argument("--work", default="outputs/transfer_probe")  # trained models (reused by a rerun)
    parser.add_argument("--out", default="benchmarks/results/transfer_probe.json")
    args = parser.parse_args()
    tasks = resolve_tasks(args.suite, args.tasks)
    base, base_fingerprint = args.base, VLA.from_pretrained(args.base).fingerprint()
    if args.reinit:  # before collecting: a wrong part name fails at once
        args.base = reinit_base(base, args.reinit.split(","), args.seed, args.work)
    need = args.n_demos + args.unseen
    collect({"suite": args.suite, "task": [t.id for t in tasks], "n_demos": need, "out": args.data,
             "action_noise": 0.3, **base_observation(args.base), "workers": 2, "progress": False})
    fingerprint = VLA.from_pretrained(args.base).fingerprint()
    per_task = {}
    for task in tasks:
        row = {}
        for method in ("full", "scratch"):
            model_dir, summary = train_one(args, task.id, method, fingerprint)
            model = VLA.from_pretrained(model_dir).eval()
            episodes = load_training_data(args.data, [task.id], need, model.vision.img_size, model.config.n_cameras)
            with torch.no_grad():
                row[method] = {"unseen_l1": round(action_l1(model, episodes[args.n_demos:], task.id, task.instruction), 4),
                               "train_l1": round(action_l1(model, episodes[:args.n_demos], task.id, task.instruction), 4),
                               "final_loss": round(summary["final_loss"], 4), "train_wall_s": summary["wall_s"]}
        row["full_over_scratch"] = round(row["full"]["unseen_l1"] / row["scratch"]["unseen_l1"], 4)
        per_task[task.id] = row
        print(task.id, row, flush=True)
    ratios = [r["full_over_scratch"] for r in per_task.values()]
    result = {"base": base, "base_fingerprint": base_fingerprint, "full_init": args.base,
              "full_init_fingerprint": fingerprint,
              "settings": {k: v for k, v in vars(args).items() if k not in ("base", "work", "out")},
              "tasks": per_task, "mean_full_over_scratch": round(sum(ratios) / len(ratios), 4)}
    atomic_write_json(args.out, result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
