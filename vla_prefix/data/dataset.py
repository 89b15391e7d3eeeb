"""The demonstration dataset on disk: chunked, compressed (zarr v3), appendable and crash safe.

Layout of a dataset directory::

    <root>/
      dataset.json          the index: spec, per-task metadata, episode list (the only source of truth)
      episodes.zarr/        a zarr v3 group
        <task id>/          one group per task
          <seed:07d>/       one group per episode, attrs {task, seed, instruction, length, cameras}
            images          uint8   (T, n_cam, H, W, 3)
            proprio         float32 (T, 4)    end-effector xyz + gripper opening, at each observation
            actions         float32 (T, 4)    the expert action taken after that observation
      collect_summary.json  written by the collector at the end of a run
      .tmp/                 episodes being written (ignored by readers, removed by the next writer)
      .lock                 held (flock) by the one writer

Crash safety: an episode is written in full under `.tmp/`, then renamed into `episodes.zarr/`,
and only then listed in `dataset.json`, which is replaced atomically. A reader trusts the index
only, so a killed writer leaves at worst unlisted files, which the next writer removes.

`DemoDataset` is the torch-free reader; `DatasetWriter` is used by `vla_prefix.collect`.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from ..errors import ConfigError, VLAPrefixError, closest
from ..utils.atomic import atomic_write_json

FORMAT = "vla-prefix-demos"
FORMAT_VERSION = 1
INDEX = "dataset.json"
EPISODES = "episodes.zarr"
TMP = ".tmp"
LOCK = ".lock"
SUMMARY = "collect_summary.json"
# Entries a writer may leave behind in a dataset directory besides the dataset itself.
_LEFTOVERS = re.compile(r"^(\.tmp|\.lock|\.dataset\.json\..*\.tmp)$")
_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# The settings that two collection runs into one directory must share.
SPEC_KEYS = ("suite", "image_size", "cameras", "n_cameras")
CHUNK_BYTES = 1 << 20  # image chunks of about 1 MB along time


class DatasetError(VLAPrefixError):
    """A dataset directory is missing, corrupt, or does not match what was asked."""


def _compressor() -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")


def _fsync_tree(path: Path) -> None:
    """fsync every file and folder under `path` (so a power cut cannot tear a renamed episode)."""
    for root, _, files in os.walk(path):
        for name in [*files, "."]:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def episode_relpath(task: str, seed: int) -> str:
    return f"{EPISODES}/{task}/{seed:07d}"


def write_episode(path: str | os.PathLike, episode: dict, attrs: dict) -> None:
    """Write one episode as a zarr group at `path` (a fresh folder) and fsync it.

    episode: {"images": uint8 (T, n_cam, H, W, 3), "proprio": float32 (T, 4), "actions": float32 (T, 4)}.
    """
    images = np.asarray(episode["images"])
    proprio = np.asarray(episode["proprio"], np.float32)
    actions = np.asarray(episode["actions"], np.float32)
    t = len(images)
    if images.dtype != np.uint8 or images.ndim != 5 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (T, n_cam, H, W, 3), got {images.dtype} {images.shape}")
    if proprio.shape != (t, 4) or actions.shape != (t, 4) or t == 0:
        raise ValueError(f"proprio/actions must be (T={t}, 4), got {proprio.shape} and {actions.shape}")
    frame_bytes = images[0].nbytes
    chunk_t = int(min(t, max(1, CHUNK_BYTES // frame_bytes)))
    keys = {"name": "default", "separator": "."}  # flat chunk files: c.0.0.0.0.0
    group = zarr.create_group(store=str(path), attributes={**attrs, "length": t})
    group.create_array(
        "images", data=images, chunks=(chunk_t, *images.shape[1:]), compressors=_compressor(), chunk_key_encoding=keys
    )
    for name, arr in (("proprio", proprio), ("actions", actions)):
        group.create_array(name, data=arr, chunks=arr.shape, compressors=_compressor(), chunk_key_encoding=keys)
    _fsync_tree(Path(path))


@dataclass(frozen=True)
class EpisodeInfo:
    """One episode in the index. `path` is relative to the dataset root."""

    index: int
    task: str
    seed: int
    length: int
    instruction: str
    path: str


def _read_index(root: Path) -> dict:
    index_path = root / INDEX
    if not index_path.is_file():
        hint = " (the folder holds no dataset.json)" if root.is_dir() else " (no such folder)"
        raise DatasetError(
            f"{root} is not a vla-prefix demo dataset{hint}; create one with "
            f"`python -m vla_prefix.collect suite=... task=... n_demos=... out={root}`"
        )
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(f"{index_path} is unreadable ({err}); the dataset index is corrupt") from None
    if index.get("format") != FORMAT or index.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{index_path} has format {index.get('format')!r} version {index.get('format_version')!r}; "
            f"this vla-prefix reads {FORMAT!r} version {FORMAT_VERSION}"
        )
    return index


class DemoDataset:
    """Read-only view of a demo dataset (torch-free).

    `episodes` lists every episode, ordered by task (in the order tasks were added) then seed.
    `load_episode(i)` returns {"images": uint8 (T, n_cam, H, W, 3), "proprio": float32 (T, 4),
    "actions": float32 (T, 4), "instruction": str, "task": str, "seed": int}.
    """

    def __init__(self, path: str | os.PathLike):
        self.root = Path(path)
        self.index = _read_index(self.root)
        self.spec: dict = self.index["spec"]
        self._tasks: dict[str, dict] = self.index["tasks"]
        self.episodes: list[EpisodeInfo] = [
            EpisodeInfo(i, e["task"], e["seed"], e["length"], self._tasks[e["task"]]["instruction"], e["path"])
            for i, e in enumerate(self.index["episodes"])
        ]

    # ---- metadata
    @property
    def suite(self) -> str:
        return self.spec["suite"]

    @property
    def image_size(self) -> int:
        return self.spec["image_size"]

    @property
    def cameras(self) -> list[str] | None:
        return self.spec["cameras"]

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def n_frames(self) -> int:
        return sum(e.length for e in self.episodes)

    def tasks(self) -> list[str]:
        """Task ids with at least one episode, in the order they were added."""
        have = {e.task for e in self.episodes}
        return [t for t in self._tasks if t in have]

    def task_meta(self, task: str) -> dict:
        """Per-task metadata: instruction, family, split, env versions, seeds, expert success rate."""
        self._check_tasks([task])
        return dict(self._tasks[task])

    def _check_tasks(self, tasks: Iterable[str]) -> None:
        for task in tasks:
            if task not in self._tasks:
                hint = closest(task, self._tasks)
                raise DatasetError(
                    f"task {task!r} is not in the dataset {self.root}"
                    + (f"; did you mean {', '.join(hint)}?" if hint else "")
                    + f" (it holds {', '.join(self._tasks) or 'no task'})"
                )

    def select(self, tasks: Iterable[str] | None = None) -> list[EpisodeInfo]:
        """The episodes of `tasks` (all when None)."""
        if tasks is None:
            return list(self.episodes)
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        self._check_tasks(tasks)
        wanted = set(tasks)
        return [e for e in self.episodes if e.task in wanted]

    # ---- data
    def load_episode(self, episode: int | EpisodeInfo) -> dict:
        """One episode as numpy arrays (see the class docstring)."""
        info = self.episodes[episode] if isinstance(episode, (int, np.integer)) else episode
        path = self.root / info.path
        try:
            group = zarr.open_group(str(path), mode="r")
            out = {name: group[name][...] for name in ("images", "proprio", "actions")}
        except Exception as err:  # missing folder, truncated chunk, bad metadata
            raise DatasetError(f"episode {info.task} seed {info.seed} at {path} is unreadable: {err}") from None
        frame = (self.image_size, self.image_size, 3)
        if any(len(v) != info.length for v in out.values()) or out["images"].shape[2:] != frame:
            shapes = {k: v.shape for k, v in out.items()}
            raise DatasetError(
                f"episode {info.task} seed {info.seed} at {path} has shapes {shapes}; the index says "
                f"T={info.length} and frames of {frame}"
            )
        out.update(instruction=info.instruction, task=info.task, seed=info.seed)
        return out

    def iter_episodes(self, tasks: Iterable[str] | None = None) -> Iterator[dict]:
        """Load the episodes of `tasks` one at a time, in index order."""
        for info in self.select(tasks):
            yield self.load_episode(info)

    def load_all(self, tasks: Iterable[str] | None = None, threads: int = 4) -> list[dict]:
        """Every episode of `tasks` in memory, in index order (read with a few threads)."""
        infos = self.select(tasks)
        with ThreadPoolExecutor(max(1, threads)) as pool:
            return list(pool.map(self.load_episode, infos))

    def verify(self) -> None:
        """Read every episode and check it against the index; raise DatasetError on the first problem."""
        seen = set()
        for info in self.episodes:
            if (info.task, info.seed) in seen:
                raise DatasetError(f"episode {info.task} seed {info.seed} is listed twice in {self.root / INDEX}")
            seen.add((info.task, info.seed))
            self.load_episode(info)

    def __repr__(self) -> str:
        return (
            f"DemoDataset({str(self.root)!r}, suite={self.suite!r}, tasks={len(self.tasks())}, "
            f"episodes={len(self)}, frames={self.n_frames}, image_size={self.image_size}, cameras={self.cameras})"
        )


def iter_episodes(path: str | os.PathLike, tasks: Iterable[str] | None = None) -> Iterator[dict]:
    """Shorthand for `DemoDataset(path).iter_episodes(tasks)`."""
    return DemoDataset(path).iter_episodes(tasks)


class DatasetWriter:
    """Appends episodes to a dataset directory, one process at a time (an flock on `.lock`).

    Opening checks `spec` against an existing dataset (ConfigError if they differ), then removes what
    an interrupted writer left: `.tmp/` and any episode folder that the index does not list.
    """

    def __init__(self, path: str | os.PathLike, spec: dict):
        self.root = Path(path)
        self.spec = {k: spec[k] for k in SPEC_KEYS}
        self._check()  # before creating anything, so a wrong `out` is left untouched
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.root / LOCK, "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise ConfigError(f"another collector is writing to {self.root}; wait, or use another `out`") from None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _check(self) -> dict | None:
        """The existing index (None for a new or empty folder); ConfigError if `out` does not fit `spec`."""
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"out={self.root} is a file; give a folder for the dataset")
        if (self.root / INDEX).exists():
            index = _read_index(self.root)
            old = index["spec"]
            diff = [f"{k}={old.get(k)!r} (asked: {self.spec[k]!r})" for k in SPEC_KEYS if old.get(k) != self.spec[k]]
            if diff:
                raise ConfigError(
                    f"out={self.root} already holds a dataset with other settings: {'; '.join(diff)}. "
                    "Use the same settings to add to it, or choose another `out`"
                )
            return index
        if self.root.is_dir():
            others = sorted(p.name for p in self.root.iterdir() if not _LEFTOVERS.match(p.name))
            if others:
                raise ConfigError(
                    f"out={self.root} is not empty and is not a vla-prefix dataset (it holds {', '.join(others[:5])}); "
                    "choose a new or empty folder"
                )
        return None

    def _open(self) -> None:
        index = self._check()  # again, now that we hold the lock
        if index is not None:
            self.index = index
        else:
            self.index = {"format": FORMAT, "format_version": FORMAT_VERSION, "spec": self.spec}
            self.index.update(tasks={}, episodes=[])
            self.flush()
        self.tmp_dir = self.root / TMP
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir()
        for stale in self.root.glob(".dataset.json.*.tmp"):
            stale.unlink(missing_ok=True)
        self.removed_orphans = self._remove_orphans()

    def _remove_orphans(self) -> int:
        listed = {e["path"] for e in self.index["episodes"]}
        removed = 0
        episodes_dir = self.root / EPISODES
        if not episodes_dir.is_dir():
            return 0
        for task_dir in episodes_dir.iterdir():
            if not task_dir.is_dir():
                continue
            for ep in task_dir.iterdir():
                if ep.is_dir() and f"{EPISODES}/{task_dir.name}/{ep.name}" not in listed:
                    shutil.rmtree(ep)
                    removed += 1
        return removed

    def _ensure_group(self, rel: str) -> Path:
        """Create the zarr group folder `rel` (atomically: written in .tmp/ then renamed)."""
        path = self.root / rel
        if not (path / "zarr.json").is_file():
            tmp = self.tmp_dir / f"group-{uuid.uuid4().hex}"
            zarr.create_group(store=str(tmp))
            _fsync_tree(tmp)
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():  # a folder without zarr.json: only episodes may live in it, keep them
                os.replace(tmp / "zarr.json", path / "zarr.json")
                shutil.rmtree(tmp)
            else:
                os.rename(tmp, path)
        return path

    # ---- tasks
    def task_record(self, task: str) -> dict | None:
        return self.index["tasks"].get(task)

    def add_task(self, task: str, meta: dict) -> dict:
        """Start (or continue) a task. `meta` must hold `instruction` and `seed_offset`."""
        if not _TASK_ID.match(task):
            raise ConfigError(f"task id {task!r} cannot name a folder; use letters, digits, '.', '_' and '-'")
        self._ensure_group(EPISODES)
        self._ensure_group(f"{EPISODES}/{task}")
        rec = self.index["tasks"].get(task)
        if rec is None:
            rec = {**meta, "successful_seeds": [], "failed_seeds": [], "n_attempts": 0, "n_episodes": 0,
                   "expert_success_rate": None}  # fmt: skip
            self.index["tasks"][task] = rec
            self.flush()
        else:
            fixes = {"seed_offset": "use the same seed_offset or another `out`",
                     "expert_version": "the expert's actions have changed since: delete those demos or use another `out`"}
            for key, fix in fixes.items():  # a task's demos must all come from one setting
                if rec.get(key) != meta.get(key):
                    raise ConfigError(f"task {task!r} in out={self.root} was collected with {key}="
                                      f"{rec.get(key)}, not {meta.get(key)}; {fix}")
        return rec

    def resolved_seeds(self, task: str) -> set[int]:
        rec = self.index["tasks"][task]
        return set(rec["successful_seeds"]) | set(rec["failed_seeds"])

    # ---- episodes
    def new_tmp_path(self, task: str, seed: int) -> Path:
        return self.tmp_dir / f"{task}--{seed}--{uuid.uuid4().hex[:8]}"

    def commit_episode(self, task: str, seed: int, tmp_path: str | os.PathLike, length: int) -> None:
        """Move a fully written episode into place, then list it in the index."""
        rec = self.index["tasks"][task]
        if seed in self.resolved_seeds(task):
            raise RuntimeError(f"seed {seed} of {task} is already in the dataset")
        rel = episode_relpath(task, seed)
        os.rename(tmp_path, self.root / rel)
        rec["successful_seeds"] = sorted([*rec["successful_seeds"], seed])
        self._update_rates(rec)
        episodes = self.index["episodes"] + [{"task": task, "seed": seed, "length": int(length), "path": rel}]
        order = {t: i for i, t in enumerate(self.index["tasks"])}
        self.index["episodes"] = sorted(episodes, key=lambda e: (order[e["task"]], e["seed"]))
        self.flush()

    def record_failure(self, task: str, seed: int) -> None:
        rec = self.index["tasks"][task]
        if seed in self.resolved_seeds(task):
            raise RuntimeError(f"seed {seed} of {task} is already resolved")
        rec["failed_seeds"] = sorted([*rec["failed_seeds"], seed])
        self._update_rates(rec)
        self.flush()

    @staticmethod
    def _update_rates(rec: dict) -> None:
        rec["n_episodes"] = len(rec["successful_seeds"])
        rec["n_attempts"] = rec["n_episodes"] + len(rec["failed_seeds"])
        rec["expert_success_rate"] = rec["n_episodes"] / rec["n_attempts"]

    def flush(self) -> None:
        """Rewrite the index atomically."""
        atomic_write_json(self.root / INDEX, self.index, indent=1)

    def close(self) -> None:
        if getattr(self, "tmp_dir", None) is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
