"""`eval_info.json`: per-task success with Wilson 95% CIs, an overall bootstrap CI, settings, episodes.

Layout (format "vla-prefix-eval/1"):

    tasks:    {task_id: {instruction, success_rate, ci95: [lo, hi], n_episodes, n_successes,
                         mean_steps, mean_return, max_episode_steps, videos: [path, ...],
                         episodes: [{seed, success, steps, return[, engaged_object]}, ...],
                         failures_by_engaged_object: {label: count}  (where the env reports it)}}
    overall:  {success_rate, ci95: [lo, hi], n_tasks, n_episodes, ci95_wilson_pooled: [lo, hi], ci_method}
    settings: {n_action_steps, image_size, cameras, max_steps, seed_range, seed_offset, first_seed,
               num_envs, vector, video_episodes, ... whatever the caller adds (policy, backbone, prefix)}
    wall_s, policy_calls, env_steps

`overall.success_rate` is the mean of the per-task success rates; its CI comes from a stratified
bootstrap over episodes (episodes resampled within each task). Everything but `wall_s` is a function
of the policy and the settings.
"""

from __future__ import annotations

import os
from collections import Counter

from .rollout import RolloutResult
from .stats import stratified_bootstrap, wilson_interval

FORMAT = "vla-prefix-eval/1"


def _video_path(path: str, relative_to: str | os.PathLike | None) -> str:
    if relative_to is None:
        return path
    return os.path.relpath(path, relative_to)


def eval_info(result: RolloutResult, settings: dict | None = None, *, bootstrap_resamples: int = 2000,
              bootstrap_seed: int = 0, relative_to: str | os.PathLike | None = None) -> dict:
    """The eval_info dict for `result`; `settings` are added to the rollout's own (policy, backbone, ...).

    Video paths are written relative to `relative_to` (the folder holding eval_info.json), if given.
    """
    tasks = {}
    for task, eps in result.episodes.items():
        n, k = len(eps), sum(e.success for e in eps)
        lo, hi = wilson_interval(k, n)
        tasks[task] = {
            "instruction": result.instructions[task],
            "success_rate": k / n,
            "ci95": [lo, hi],
            "n_episodes": n,
            "n_successes": k,
            "mean_steps": sum(e.steps for e in eps) / n,
            "mean_return": sum(e.reward_sum for e in eps) / n,
            "max_episode_steps": result.max_episode_steps.get(task),
            "videos": [_video_path(e.video, relative_to) for e in eps if e.video is not None],
            "episodes": [e.record() for e in eps],
        }
        engaged = [e.engaged_object for e in eps if not e.success and e.engaged_object is not None]
        if engaged:  # failure analysis: what the policy went for when it failed
            tasks[task]["failures_by_engaged_object"] = dict(Counter(engaged).most_common())
    rate, lo, hi = stratified_bootstrap([[float(e.success) for e in eps] for eps in result.episodes.values()],
                                        n_resamples=bootstrap_resamples, seed=bootstrap_seed)
    n_all = sum(t["n_episodes"] for t in tasks.values())
    overall = {
        "success_rate": rate,
        "ci95": [lo, hi],
        "n_tasks": len(tasks),
        "n_episodes": n_all,
        # every task runs the same number of episodes, so the pooled rate equals the mean of task rates;
        # unlike the bootstrap, Wilson's interval does not collapse to a point at 0% or 100%
        "ci95_wilson_pooled": list(wilson_interval(sum(t["n_successes"] for t in tasks.values()), n_all)),
        "ci_method": f"percentile bootstrap over episodes, stratified by task ({bootstrap_resamples} resamples, "
                     f"seed {bootstrap_seed}); per task: Wilson score",
    }
    return {
        "format": FORMAT,
        "tasks": tasks,
        "overall": overall,
        "settings": {**result.settings, **(settings or {})},
        "policy_calls": result.policy_calls,
        "env_steps": result.env_steps,
        "wall_s": round(result.wall_s, 3),
    }


def format_table(info: dict) -> str:
    """A short text table: one row per task and the overall row."""
    rows = [(task, t["success_rate"], t["ci95"], f"{t['n_successes']}/{t['n_episodes']}")
            for task, t in info["tasks"].items()]
    o = info["overall"]
    rows.append(("overall (mean of tasks)", o["success_rate"], o["ci95"], f"{o['n_episodes']} episodes"))
    width = max(len("task"), *(len(r[0]) for r in rows))
    lines = [f"{'task':<{width}}  success  95% CI          episodes", "-" * (width + 42)]
    for name, rate, (lo, hi), count in rows:
        lines.append(f"{name:<{width}}  {rate:7.3f}  [{lo:.3f}, {hi:.3f}]  {count}")
    failures = {task: t["failures_by_engaged_object"] for task, t in info["tasks"].items()
                if t.get("failures_by_engaged_object")}
    if failures:
        lines.append("\nfailed episodes, by what the gripper went for:")
        lines += [f"  {task}: " + ", ".join(f"{label} {n}" for label, n in counts.items())
                  for task, counts in failures.items()]
    return "\n".join(lines)


def describe_failures(counts: dict[str, int]) -> str:
    """{"distractor yellow cube": 6, "distractor red ball": 2, "none": 1} ->
    "a distractor 8 (most often the yellow cube: 6), nothing 1"."""
    distractors = {k.removeprefix("distractor "): n for k, n in counts.items() if k.startswith("distractor ")}
    parts = []
    if distractors:
        top = max(distractors, key=distractors.get)
        parts.append(f"a distractor {sum(distractors.values())} (most often the {top}: {distractors[top]})")
    parts += [f"the {k} {n}" for k, n in counts.items() if k != "none" and not k.startswith("distractor ")]
    if "none" in counts:
        parts.append(f"nothing {counts['none']}")
    return ", ".join(parts)
