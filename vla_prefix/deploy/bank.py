"""`PrefixBank`: a directory of prefix files, indexed by task, loaded lazily onto one frozen backbone.

The directory is the bank: every `*.safetensors` file in it is one task's prefix (the task id and
instruction come from the file's metadata). `add` writes a file into the directory and `remove`
deletes it, so a bank reopened later serves the same tasks. Each file's backbone fingerprint is
checked against the backbone before anything is served. A task's prefix is read from disk on first
use and kept as detached, batch-1 `PrefixTensors` (deep-prefix K/V computed once). These cached
tensors are never modified: a retrained prefix replaces the entry with new tensors, so a forward
that already holds the old ones is unaffected.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import FingerprintMismatchError, PrefixFileError, UnknownTaskError, VLAPrefixError, closest
from ..prefix.io import load_prefix, read_prefix_metadata, save_prefix
from ..prefix.prefix_set import PrefixSet
from ..prefix.tensors import PrefixTensors
from ..utils.atomic import atomic_write_bytes

log = logging.getLogger(__name__)
SUFFIX = ".safetensors"


@dataclass(frozen=True)
class BankEntry:
    """One indexed prefix file. `stamp` (mtime_ns, size) tells a changed file on `refresh`."""

    task: str
    path: Path
    metadata: dict
    stamp: tuple[int, int]

    @property
    def instruction(self) -> str:
        return self.metadata.get("instruction", "")

    def describe(self) -> dict:
        """JSON-safe summary (the server's task list)."""
        m = self.metadata
        return {"task": self.task, "instruction": self.instruction, "file": self.path.name, "sha256": m["sha256"],
                "steps": m["steps"], "prefix_config": m["prefix_config"], "eval": m["eval"]}


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def task_filename(task: str) -> str:
    """The file name `add` gives a task's prefix: the task id with unsafe characters replaced."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", task).lstrip(".") + SUFFIX


class PrefixBank:
    """Task -> prefix, for one backbone. Thread-safe.

    `get(task)` returns the task's batch-1 `PrefixTensors` on `device` (read from disk once).
    Files trained on another backbone are refused with `FingerprintMismatchError` naming both
    fingerprints. Unknown tasks raise `UnknownTaskError` with the closest names.
    """

    def __init__(self, directory: str | os.PathLike, backbone, device: str = "cpu", create: bool = True):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            if not create:
                raise PrefixFileError(f"prefix bank {self.directory} is not a directory; give a folder of prefix "
                                      "files (.safetensors written by save_prefix or training)")
            self.directory.mkdir(parents=True)
        self.backbone, self.device = backbone, device
        self.fingerprint = backbone.fingerprint()  # computed once (VLA caches it too)
        self._entries: dict[str, BankEntry] = {}
        self._cache: dict[str, PrefixTensors] = {}
        self._lock = threading.RLock()
        changes = self.refresh(strict=True)
        log.info("prefix bank %s: %d task(s)", self.directory, len(changes["added"]))

    # ------------------------------------------------------------------ index
    def tasks(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, task: str) -> bool:
        return task in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, task: str) -> BankEntry:
        entry = self._entries.get(task)
        if entry is None:
            raise self._unknown(task)
        return entry

    def instruction(self, task: str) -> str:
        return self.entry(task).instruction

    def is_loaded(self, task: str) -> bool:
        return task in self._cache

    def _unknown(self, task: str) -> UnknownTaskError:
        hints = closest(str(task), self._entries)
        return UnknownTaskError(f"task {task!r} has no prefix in the bank {self.directory}"
                                + (f"; did you mean {', '.join(hints)}?" if hints else "")
                                + f" ({len(self._entries)} task(s) served)")

    def _read_entry(self, path: Path) -> BankEntry:
        """Index one file: metadata only (no tensors); the fingerprint is checked here."""
        stamp = _stamp(path)
        meta = read_prefix_metadata(path)
        if meta["backbone_fingerprint"] != self.fingerprint:
            raise FingerprintMismatchError(
                f"prefix file {path} (task {meta['task']!r}) was trained on backbone {meta['backbone_fingerprint']}, "
                f"but this backbone is {self.fingerprint}; serve it with the backbone it was trained on, "
                "or retrain the prefix on this one")
        if not meta.get("task"):
            raise PrefixFileError(f"prefix file {path} names no task in its metadata; re-export it with save_prefix")
        return BankEntry(meta["task"], path, meta, stamp)

    def refresh(self, strict: bool = False) -> dict:
        """Rescan the directory: index new files, drop deleted ones, reload changed ones (lazily).

        -> {"added", "updated", "removed": [task], "rejected": {file: reason}}. A bad file (corrupt, another
        backbone, a second file for the same task) is rejected: raised when `strict`, else logged and skipped
        (an already-indexed version of that task keeps being served).
        """
        with self._lock:
            seen: dict[str, BankEntry] = {}
            rejected: dict[str, str] = {}
            by_path = {e.path: e for e in self._entries.values()}
            for path in sorted(self.directory.glob("*" + SUFFIX)):
                if path.name.startswith("."):  # temporary files of atomic writes
                    continue
                try:
                    old = by_path.get(path)
                    entry = old if old is not None and old.stamp == _stamp(path) else self._read_entry(path)
                    if entry.task in seen:
                        raise PrefixFileError(f"task {entry.task!r} has two prefix files in the bank: "
                                              f"{seen[entry.task].path.name} and {path.name}; remove one")
                    seen[entry.task] = entry
                except (VLAPrefixError, OSError) as err:
                    if strict:
                        raise
                    rejected[path.name] = str(err)
                    log.warning("prefix bank: skipping %s: %s", path.name, err)
            for task, old in self._entries.items():  # keep serving a task whose new file was rejected
                if task not in seen and old.path.name in rejected:
                    seen[task] = old
            added = sorted(set(seen) - set(self._entries))
            removed = sorted(set(self._entries) - set(seen))
            updated = sorted(t for t in set(seen) & set(self._entries) if seen[t] is not self._entries[t])
            for task in removed + updated:
                self._cache.pop(task, None)
            self._entries = seen
            return {"added": added, "updated": updated, "removed": removed, "rejected": rejected}

    # ------------------------------------------------------------------ serving
    def get(self, task: str) -> PrefixTensors:
        """The task's batch-1 prefix tensors (loaded from disk on first use, then cached)."""
        cached = self._cache.get(task)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._cache.get(task)
            if cached is None:
                entry = self.entry(task)
                prefix, _ = load_prefix(entry.path, self.backbone)  # checksum, shapes, fingerprint
                cached = prefix.to(self.device).cached()
                self._cache[task] = cached
            return cached

    def load_all(self) -> None:
        """Read every indexed prefix now (a server does this at start, so bad files fail early)."""
        for task in self.tasks():
            self.get(task)

    # ------------------------------------------------------------------ changes at run time
    def add(self, source, task: str | None = None, instruction: str = "", **metadata) -> str:
        """Add or replace a task's prefix. -> the task id.

        source: a prefix file (its task comes from the metadata; `task` may not contradict it; it is
        copied into the bank directory unless it already lives there), or a `PrefixSet` with `task`
        (written as `<task>.safetensors` with `instruction` and `metadata` such as steps, data, eval_result).
        The file is fully checked (fingerprint, checksum, shapes) before the bank changes.
        """
        with self._lock:
            if isinstance(source, PrefixSet):
                if not task:
                    raise VLAPrefixError("add(PrefixSet) needs the task id: bank.add(prefix, task='...')")
                dest = self._destination(task)
                save_prefix(dest, source, self.backbone, task=task, instruction=instruction, **metadata)
            else:
                path = Path(source)
                meta = read_prefix_metadata(path)
                if task is not None and task != meta["task"]:
                    raise VLAPrefixError(f"{path} holds a prefix for task {meta['task']!r}, not {task!r}")
                task = meta["task"]
                load_prefix(path, self.backbone)  # refuse a bad file before it enters the directory
                dest = path
                if path.resolve().parent != self.directory.resolve():
                    dest = self._destination(task)
                    atomic_write_bytes(dest, path.read_bytes())
            entry = self._read_entry(dest)
            old = self._entries.get(task)
            if old is not None and old.path != dest and old.path.parent.resolve() == self.directory.resolve():
                old.path.unlink(missing_ok=True)  # the replaced version
            prefix, _ = load_prefix(dest, self.backbone)  # serve exactly what is on disk
            cached = prefix.to(self.device).cached()
            self._entries = {**self._entries, task: entry}
            self._cache[task] = cached
            return task

    def _destination(self, task: str) -> Path:
        dest = self.directory / task_filename(task)
        owner = next((e.task for e in self._entries.values() if e.path == dest and e.task != task), None)
        if owner is not None:
            raise PrefixFileError(f"cannot write task {task!r} to {dest}: that file holds task {owner!r}")
        return dest

    def remove(self, task: str, delete_file: bool = True) -> None:
        """Stop serving `task`; by default also delete its file, so a reopened bank agrees."""
        with self._lock:
            entry = self.entry(task)
            self._entries = {t: e for t, e in self._entries.items() if t != task}
            self._cache.pop(task, None)
            if delete_file:
                entry.path.unlink(missing_ok=True)
