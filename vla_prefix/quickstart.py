"""The quickstart (`make demo`): adapt the frozen base VLA to one held-out task and measure it.

    python -m vla_prefix.quickstart                      # the defaults below
    python -m vla_prefix.quickstart n_episodes=100 steps=600

1. collect expert demos of the held-out task (cached in `data/quickstart`),
2. load the committed base VLA (`checkpoints/tabletop_base`, made by this repo's `pretrain` command),
3. train a deep prefix pair for the task (the backbone stays frozen),
4. evaluate the base zero-shot and with the prefix on the same `eval` seeds,
5. print the comparison, with Wilson 95% CIs, trainable %, prefix size and where the files are.

The held-out task is fixed here, before any measurement, and is never a pretraining task.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError, cli_errors
from .utils.hydra_app import check_overrides, quiet_defaults, quiet_hydra

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class QuickstartConfig:
    defaults: list[Any] = quiet_defaults()
    hydra: Any = quiet_hydra("vla_prefix.quickstart", __doc__)

    task: str = "tabletop-pick-place-yellow-ball-v0"  # held out: a new object/colour pairing for pick-place
    base: str = str(ROOT / "checkpoints" / "tabletop_base")
    data: str = str(ROOT / "data" / "quickstart")
    out: str = str(ROOT / "outputs" / "quickstart")
    n_demos: int = 50
    action_noise: float = 0.3  # DART noise while collecting, as for the base's pretraining demos
    steps: int = 500
    batch_size: int = 64
    prefix: str = "deep"  # conf/prefix/<name>.yaml
    n_episodes: int = 50
    n_action_steps: int = 2
    num_envs: int = 2
    video_episodes: int = 2
    seed: int = 0


ConfigStore.instance().store(name="quickstart", node=QuickstartConfig)


def run(cfg: QuickstartConfig) -> dict:
    from .collect import collect
    from .evaluate import evaluate
    from .models.vla import weights_file
    from .sim.registry import get_task
    from .sim.render import check_gl
    from .training.config import compose_train_config
    from .training.trainer import train

    t0 = time.perf_counter()
    check_gl()
    task = get_task(cfg.task)
    if task.split != "heldout":
        raise ConfigError(f"the quickstart adapts to a held-out task; {cfg.task} is a {task.split} task")
    if not weights_file(cfg.base):
        raise ConfigError(f"no base VLA at {cfg.base}; make one with `python -m vla_prefix.train mode=pretrain "
                          "data.path=<pretrain demos> out_dir=<dir>` (see README) and pass base=<dir>/base")
    run_dir = Path(cfg.out) / time.strftime("%Y%m%d-%H%M%S")

    print(f"[1/4] demos: {cfg.n_demos} expert episodes of {task.id} -> {_shown(cfg.data)}", flush=True)
    collect({"suite": task.suite, "task": task.id, "n_demos": cfg.n_demos, "out": cfg.data,
             "action_noise": cfg.action_noise,
             **_base_observation(cfg.base), "workers": 2, "progress": False})

    print(f"[2/4] prefix-tuning the frozen base on {task.id} ({cfg.steps} steps)", flush=True)
    train_cfg = compose_train_config({
        "mode": "prefix", "prefix": cfg.prefix, "base": cfg.base, "task": task.id, "data.path": cfg.data,
        "optim.steps": cfg.steps, "optim.batch_size": cfg.batch_size, "checkpoint_every": cfg.steps,
        "seed": cfg.seed, "progress": "true"})
    summary = train(train_cfg, run_dir / "train")
    prefix_file = summary["outputs"]["prefixes"][task.id]

    results = {}
    for i, (name, prefix) in enumerate((("zero-shot base", None), ("prefix-tuned", prefix_file)), start=3):
        print(f"[{i}/4] evaluating the {name} on {cfg.n_episodes} eval episodes", flush=True)
        results[name] = evaluate({
            "backbone": cfg.base, "prefix": prefix, "suite": task.suite, "task": task.id,
            "n_episodes": cfg.n_episodes, "n_action_steps": cfg.n_action_steps, "num_envs": cfg.num_envs,
            "video_episodes": cfg.video_episodes, "out": str(run_dir / ("eval_prefix" if prefix else "eval_base")),
            "progress": False})
    report = {
        "task": task.id, "instruction": task.instruction, "n_demos": cfg.n_demos, "steps": cfg.steps,
        "trainable_params": summary["trainable_params"], "trainable_pct": summary["trainable_pct"],
        "prefix_bytes": summary["prefix_bytes"], "prefix_file": prefix_file, "train_wall_s": summary["wall_s"],
        "results": {name: {"success_rate": r["overall"]["success_rate"],
                           "ci95": r["tasks"][task.id]["ci95"], "n_episodes": r["overall"]["n_episodes"],
                           "eval_info": str(run_dir / ("eval_prefix" if name == "prefix-tuned" else "eval_base")
                                            / "eval_info.json"),
                           "videos": r["tasks"][task.id].get("videos", []),
                           "failures_by_engaged_object": r["tasks"][task.id].get("failures_by_engaged_object", {})}
                    for name, r in results.items()},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    (run_dir / "quickstart.json").write_text(json.dumps(report, indent=2))
    print(format_report(report, run_dir))
    return report


def _base_observation(base: str) -> dict:
    """The image size and cameras the base was trained on (collect settings)."""
    recipe = json.loads(Path(base, "config.json").read_text())
    return {"image_size": int(recipe["vision"]["img_size"]), "cameras": recipe["config"].get("cameras")}


def _shown(path) -> str:
    """`path` relative to the working directory when it lies under it (shorter lines), else as given."""
    path = Path(path)
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def format_report(r: dict, run_dir: Path) -> str:
    from .evaluation import describe_failures

    lines = [
        "",
        f"held-out task: {r['task']}  (\"{r['instruction']}\"), {r['n_demos']} demos, {r['steps']} prefix steps",
        "",
        f"{'policy':<16} {'success':>8}  {'95% CI (Wilson)':<17} {'episodes':>8}",
    ]
    for name, res in r["results"].items():
        lo, hi = res["ci95"]
        lines.append(f"{name:<16} {res['success_rate']:>8.2f}  [{lo:.2f}, {hi:.2f}]      {res['n_episodes']:>8}")
    eval_info = Path(r["results"]["prefix-tuned"]["eval_info"])
    failures = {name: res["failures_by_engaged_object"] for name, res in r["results"].items()
                if res.get("failures_by_engaged_object")}
    if failures:
        lines += ["", "failed episodes, by what the gripper went for:"]
        lines += [f"{name:<16} {describe_failures(counts)}" for name, counts in failures.items()]
    lines += [
        "",
        f"trainable: {r['trainable_params']:,} params = {r['trainable_pct']:.3f}% of the frozen backbone; "
        f"prefix file {r['prefix_bytes'] / 1024:.0f} KB",
        f"prefix:  {_shown(r['prefix_file'])}",
        f"json:    {_shown(eval_info)}",
        f"videos:  {', '.join(_shown(eval_info.parent / v) for v in r['results']['prefix-tuned']['videos'][:2])}",
        f"summary: {_shown(run_dir / 'quickstart.json')}   ({r['wall_s']} s)",
    ]
    return "\n".join(lines)


@hydra.main(config_path=None, config_name="quickstart", version_base=None)
@cli_errors
def _hydra_main(cfg: DictConfig) -> None:
    run(OmegaConf.to_object(cfg))


@cli_errors
def main() -> None:
    check_overrides(sys.argv[1:], QuickstartConfig)
    _hydra_main()


if __name__ == "__main__":
    main()
