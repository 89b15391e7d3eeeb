"""Which image size and cameras does a Meta-World vision policy need? A small, fixed-budget BC probe.

For each task: collect `--demos` successful scripted-expert demos (train seeds) plus `--heldout`
demos on unseen seeds (val seeds), rendering `corner4` and `gripperPOV` at 64 and 84 px from the
same trajectories. Then train one tiny conv BC policy per setting (image size x {corner4,
corner4+gripperPOV}) for the same number of gradient steps, and report the held-out L1 action error.
The setting with the lowest error per pixel wins; ties (within `--tie`) go to the cheaper one.

    nice -n 10 python benchmarks/metaworld_camera_choice.py        # ~8 CPU-minutes

Writes results/metaworld/camera_choice.json (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

SIZES = (64, 84)
CAMERA_SETS = (("corner4",), ("corner4", "gripperPOV"))
ALL_CAMERAS = ("corner4", "gripperPOV")


def collect(task: str, seed_list: list[int], cap: int) -> dict:
    """Expert rollouts rendered at every size in SIZES; only successful episodes are kept."""
    from vla_prefix.sim.metaworld_suite import MetaWorldEnv, MetaWorldExpert

    envs = {s: MetaWorldEnv(task.removeprefix("metaworld-"), image_size=s, cameras=ALL_CAMERAS) for s in SIZES}
    expert = MetaWorldExpert(task.removeprefix("metaworld-"))
    images = {s: [] for s in SIZES}
    proprio, actions, episode = [], [], []
    kept = 0
    for seed in seed_list:
        obs = {s: e.reset(seed=seed)[0] for s, e in envs.items()}
        expert.reset()
        ep_img = {s: [] for s in SIZES}
        ep_pro, ep_act = [], []
        success = False
        for _ in range(cap):
            act = expert.act(envs[SIZES[0]], obs[SIZES[0]])
            for s in SIZES:
                ep_img[s].append(obs[s]["image"])
            ep_pro.append(obs[SIZES[0]]["proprio"])
            ep_act.append(act)
            for s, e in envs.items():
                obs[s], _, term, trunc, info = e.step(act)
            assert np.array_equal(obs[SIZES[0]]["proprio"], obs[SIZES[-1]]["proprio"])  # same physics
            if info["is_success"]:
                success = True
                break
        if success:
            for s in SIZES:
                images[s].extend(ep_img[s])
            proprio.extend(ep_pro)
            actions.extend(ep_act)
            episode.extend([kept] * len(ep_act))
            kept += 1
    for e in envs.values():
        e.close()
    return {
        "images": {s: np.stack(v) for s, v in images.items()},  # (N, n_cam, S, S, 3)
        "proprio": np.stack(proprio).astype(np.float32),
        "actions": np.stack(actions).astype(np.float32),
        "episodes": kept,
    }


class ConvBC(nn.Module):
    """Per-camera 4-layer conv encoder + proprio -> MLP -> action (4,)."""

    def __init__(self, n_cam: int, size: int):
        super().__init__()

        def encoder():
            return nn.Sequential(
                nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(),
                nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU(),
                nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            )

        self.encoders = nn.ModuleList(encoder() for _ in range(n_cam))
        self.head = nn.Sequential(nn.Linear(n_cam * 64 * 16 + 4, 256), nn.ReLU(), nn.Linear(256, 4))

    def forward(self, images: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        # images: uint8 (B, n_cam, S, S, 3); proprio: (B, 4)
        x = images.permute(0, 1, 4, 2, 3).float() / 255.0
        feats = [enc(x[:, i]) for i, enc in enumerate(self.encoders)]
        return self.head(torch.cat(feats + [proprio], dim=1))


def train_eval(train: dict, test: dict, size: int, cams: tuple[str, ...], steps: int, batch: int, seed: int) -> dict:
    idx = [ALL_CAMERAS.index(c) for c in cams]
    xtr = torch.from_numpy(np.ascontiguousarray(train["images"][size][:, idx]))
    xte = torch.from_numpy(np.ascontiguousarray(test["images"][size][:, idx]))
    ptr, pte = torch.from_numpy(train["proprio"]), torch.from_numpy(test["proprio"])
    ytr, yte = torch.from_numpy(train["actions"]), torch.from_numpy(test["actions"])
    torch.manual_seed(seed)
    model = ConvBC(len(cams), size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)

    def heldout() -> dict:
        model.eval()
        with torch.no_grad():
            err = torch.cat([(model(xte[i : i + 256], pte[i : i + 256]) - yte[i : i + 256]).abs() for i in range(0, len(yte), 256)])
        model.train()
        return {"l1": float(err.mean()), "l1_xyz": float(err[:, :3].mean()), "l1_gripper": float(err[:, 3].mean())}

    curve = []
    t0 = time.time()
    for step in range(1, steps + 1):
        b = torch.randint(0, len(ytr), (batch,), generator=gen)
        loss = (model(xtr[b], ptr[b]) - ytr[b]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % (steps // 4) == 0:
            curve.append({"step": step, "train_l1": float(loss.detach()), **heldout()})
    return {"size": size, "cameras": list(cams), "final": curve[-1], "best_heldout_l1": min(c["l1"] for c in curve), "curve": curve, "train_s": time.time() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="pick-place-v3,door-lock-v3")
    parser.add_argument("--demos", type=int, default=20)
    parser.add_argument("--heldout", type=int, default=5)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--cap", type=int, default=200)
    parser.add_argument("--tie", type=float, default=0.05, help="relative held-out error difference treated as a tie")
    parser.add_argument("--out", default="results/metaworld/camera_choice.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from vla_prefix.seeds import seeds

    t_start = time.time()
    results = {}
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        t0 = time.time()
        train = collect(task, seeds("train", args.demos), args.cap)
        test = collect(task, seeds("val", args.heldout), args.cap)
        collect_s = time.time() - t0
        print(f"{task}: {train['episodes']} train / {test['episodes']} held-out demos, "
              f"{len(train['actions'])}/{len(test['actions'])} frames in {collect_s:.0f}s", flush=True)
        runs = []
        for size in SIZES:
            for cams in CAMERA_SETS:
                r = train_eval(train, test, size, cams, args.steps, args.batch, seed=0)
                runs.append(r)
                print(f"  {size}px {'+'.join(cams):20s} held-out L1 {r['final']['l1']:.4f} "
                      f"(xyz {r['final']['l1_xyz']:.4f}, gripper {r['final']['l1_gripper']:.4f}) in {r['train_s']:.0f}s", flush=True)
        results[task] = {
            "train_demos": train["episodes"], "heldout_demos": test["episodes"],
            "train_frames": len(train["actions"]), "heldout_frames": len(test["actions"]),
            "collect_s": collect_s, "runs": runs,
        }

    # mean held-out L1 over tasks per setting; cheapest setting within `tie` of the best wins
    settings = [(s, c) for s in SIZES for c in CAMERA_SETS]
    mean_l1 = {
        f"{s}px/{'+'.join(c)}": float(np.mean([next(r["final"]["l1"] for r in t["runs"] if r["size"] == s and tuple(r["cameras"]) == c) for t in results.values()]))
        for s, c in settings
    }
    best = min(mean_l1.values())
    cost = lambda key: int(key.split("px")[0]) ** 2 * (key.count("+") + 1)  # pixels rendered per step
    choice = min((k for k, v in mean_l1.items() if v <= best * (1 + args.tie)), key=cost)
    out = {
        "what": "held-out L1 action error of a tiny conv BC policy, fixed number of gradient steps, per image size and camera set",
        "settings": vars(args),
        "mean_heldout_l1": mean_l1,
        "choice": {"setting": choice, "image_size": int(choice.split("px")[0]), "cameras": choice.split("/")[1].split("+")},
        "rule": f"cheapest setting within {args.tie:.0%} of the lowest mean held-out L1",
        "tasks": results,
        "total_s": time.time() - t_start,
        "torch_threads": 1,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, path)
    print(json.dumps({"mean_heldout_l1": mean_l1, "choice": out["choice"]}, indent=1))


if __name__ == "__main__":
    main()
