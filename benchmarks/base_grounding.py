"""Does a tabletop base VLA ground colour words? Two measurements in one run, on `val` seeds.

    python benchmarks/base_grounding.py [--base checkpoints/tabletop_base] [--scenes 10]
                                        [--out benchmarks/results/base_grounding.json]

1. instruction_swap: for each pretraining reach task, the expert's first steps (the frames where the
   policy picks an object) are scored (the training L1 loss) under every reach task's instruction.
   A base that reads the instruction scores its own instruction far below the others; equal
   scores for two colours mean it cannot tell them apart. `other_over_own[c1][c2]`: the loss under
   the c2 instruction over the loss under the right one, for cube demos (1 = not told apart).
2. vision_separation: the same scene rendered with the target cube in each colour. Per colour pair:
   the largest change of any visual token (after the projector) and the pixel change (L1 / 255).
   `token_change_per_pixel_change` compares how strongly the encoder separates each pair.
The JSON is printed as the last line.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import vla_prefix  # noqa: E402,F401  (first: sets MUJOCO_GL before mujoco is imported)

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vla_prefix.models.vla import VLA  # noqa: E402
from vla_prefix.seeds import seeds  # noqa: E402
from vla_prefix.sim.registry import get_task, make_env, make_expert  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLOURS = ("red", "green", "yellow", "blue")
FIRST_STEPS = 8  # frames per episode scored: the approach, where the object is chosen


def expert_frames(task: str, vla: VLA, n_scenes: int) -> dict[str, torch.Tensor]:
    """The expert's first FIRST_STEPS frames of `n_scenes` val episodes, with action-chunk labels."""
    env = make_env(task, image_size=vla.vision.img_size, cameras=tuple(vla.config.cameras))
    expert, chunk = make_expert(task), vla.config.chunk
    images, proprio, actions = [], [], []
    for seed in seeds("val", n_scenes):
        obs, _ = env.reset(seed=seed)
        expert.reset()
        frames, acts = [], []
        for _ in range(FIRST_STEPS + chunk - 1):
            frames.append(obs)
            acts.append(expert.act(env.unwrapped, obs))
            obs, _, terminated, truncated, _ = env.step(acts[-1])
            if terminated or truncated:
                break
        for t in range(len(acts) - chunk + 1):
            images.append(frames[t]["image"]), proprio.append(frames[t]["proprio"]), actions.append(acts[t:t + chunk])
    env.close()
    return {"image": torch.from_numpy(np.stack(images)), "proprio": torch.from_numpy(np.stack(proprio)),
            "actions": torch.from_numpy(np.stack(actions)).float()}


@torch.no_grad()
def instruction_swap(vla: VLA, n_scenes: int) -> dict:
    tasks = [f"tabletop-reach-{c}-cube-v0" for c in COLOURS]
    loss = {}
    for demos_of in tasks:
        batch = expert_frames(demos_of, vla, n_scenes)
        n = len(batch["proprio"])
        loss[demos_of] = {told: vla({**batch, **vla.tokenize([get_task(told).instruction] * n)})[0].item()
                          for told in tasks}
    colour = dict(zip(tasks, COLOURS))
    ratio = {colour[d]: {colour[t]: round(loss[d][t] / loss[d][d], 3) for t in tasks if t != d} for d in tasks}
    return {"loss": {colour[d]: {colour[t]: round(v, 4) for t, v in row.items()} for d, row in loss.items()},
            "other_over_own": ratio}


@torch.no_grad()
def vision_separation(vla: VLA, n_scenes: int) -> dict:
    from vla_prefix_envs.spec import COLORS

    env = make_env("tabletop-reach-red-cube-v0", image_size=vla.vision.img_size, cameras=tuple(vla.config.cameras))
    scene = env.unwrapped
    pairs = list(itertools.combinations(COLOURS, 2))
    token, pixel = {p: [] for p in pairs}, {p: [] for p in pairs}
    for seed in seeds("val", n_scenes):
        scene.reset(seed=seed)
        geoms = [g for g in range(scene.model.ngeom) if scene.model.body(scene.model.geom_bodyid[g]).name == "target"]
        feats, imgs = {}, {}
        for c in COLOURS:
            scene.model.geom_rgba[geoms] = COLORS[c]
            imgs[c] = scene._obs()["image"]
            feats[c] = vla.projector(vla.encode_images(torch.from_numpy(imgs[c][None])))[0]
        for a, b in token:
            token[(a, b)].append((feats[a] - feats[b]).norm(dim=-1).max().item())
            pixel[(a, b)].append(float(np.abs(imgs[a].astype(float) - imgs[b]).sum() / 255))
    env.close()
    return {f"{a}-{b}": {"token_change": round(float(np.mean(token[(a, b)])), 3),
                         "pixel_change": round(float(np.mean(pixel[(a, b)])), 1),
                         "token_change_per_pixel_change": round(float(np.mean(token[(a, b)]) / np.mean(pixel[(a, b)])), 4)}
            for a, b in token}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=str(ROOT / "checkpoints" / "tabletop_base"))
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "base_grounding.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    vla = VLA.from_pretrained(args.base).eval()
    result = {"base": os.path.relpath(args.base, ROOT), "base_fingerprint": vla.fingerprint(), "scenes": args.scenes,
              "instruction_swap": instruction_swap(vla, args.scenes),
              "vision_separation": vision_separation(vla, args.scenes)}
    result["wall_s"] = round(time.perf_counter() - start, 1)
    for demos_of, row in result["instruction_swap"]["other_over_own"].items():
        print(f"{demos_of:>7} cube demos, loss under another colour's instruction / under their own: "
              + ", ".join(f"{c} {r:.2f}" for c, r in row.items()))
    for pair, v in result["vision_separation"].items():
        print(f"{pair:>13}: largest visual-token change {v['token_change']:.2f} for a pixel change of {v['pixel_change']:.0f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
