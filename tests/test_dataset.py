"""The demo dataset format: round trip, crash leftovers, incompatible folders, corrupt data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from vla_prefix.data import DatasetError, DatasetWriter, DemoDataset, iter_episodes, write_episode
from vla_prefix.data.dataset import EPISODES, INDEX, TMP, episode_relpath
from vla_prefix.errors import ConfigError

SPEC = {"suite": "tiny", "image_size": 16, "cameras": ["top", "front"], "n_cameras": 2}


def fake_episode(seed: int, length: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "images": rng.integers(0, 256, (length, 2, 16, 16, 3), dtype=np.uint8),
        "proprio": rng.normal(size=(length, 4)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (length, 4)).astype(np.float32),
    }


def add(writer: DatasetWriter, task: str, seed: int, length: int) -> dict:
    ep = fake_episode(seed, length)
    tmp = writer.new_tmp_path(task, seed)
    write_episode(tmp, ep, {"task": task, "seed": seed})
    writer.commit_episode(task, seed, tmp, length)
    return ep


def make_dataset(root: Path) -> dict:
    """Two tasks; episodes added out of seed order, one failure recorded."""
    eps = {}
    with DatasetWriter(root, SPEC) as w:
        w.add_task("task-b-v0", {"instruction": "do b", "seed_offset": 0})
        w.add_task("task-a-v0", {"instruction": "do a", "seed_offset": 0})
        eps["task-b-v0", 3] = add(w, "task-b-v0", 3, 5)
        eps["task-a-v0", 0] = add(w, "task-a-v0", 0, 7)
        eps["task-b-v0", 1] = add(w, "task-b-v0", 1, 40)
        w.record_failure("task-b-v0", 2)
    return eps


def test_round_trip(tmp_path):
    eps = make_dataset(tmp_path / "ds")
    ds = DemoDataset(tmp_path / "ds")
    # index order: tasks in the order they were added, then seed
    want = [("task-b-v0", 1, 40), ("task-b-v0", 3, 5), ("task-a-v0", 0, 7)]
    assert [(e.task, e.seed, e.length) for e in ds.episodes] == want
    assert ds.tasks() == ["task-b-v0", "task-a-v0"]
    assert ds.image_size == 16 and ds.cameras == ["top", "front"] and ds.suite == "tiny"
    assert len(ds) == 3 and ds.n_frames == 52
    for info in ds.episodes:
        got = ds.load_episode(info.index)
        want = eps[info.task, info.seed]
        for key in ("images", "proprio", "actions"):
            assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key])
        assert got["instruction"] == {"task-a-v0": "do a", "task-b-v0": "do b"}[info.task] and got["seed"] == info.seed
    meta = ds.task_meta("task-b-v0")
    assert meta["successful_seeds"] == [1, 3] and meta["failed_seeds"] == [2]
    assert meta["expert_success_rate"] == pytest.approx(2 / 3) and meta["n_episodes"] == 2
    assert [e["seed"] for e in ds.iter_episodes(["task-b-v0"])] == [1, 3]
    assert [e["seed"] for e in iter_episodes(tmp_path / "ds", "task-a-v0")] == [0]
    everything = ds.load_all()
    assert [e["task"] for e in everything] == ["task-b-v0", "task-b-v0", "task-a-v0"]
    ds.verify()
    assert "episodes=3" in repr(ds)


def test_leftovers_of_a_killed_writer_are_ignored_then_removed(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root)
    index_before = (root / INDEX).read_bytes()
    # What a kill -9 can leave: a half-written episode in .tmp, an episode renamed into place but not
    # yet listed, and a temporary index file.
    partial = root / TMP / "task-a-v0--5--deadbeef"
    write_episode(partial, fake_episode(5, 3), {})
    (partial / "images" / "zarr.json").write_text("{ trunc")
    unlisted = root / episode_relpath("task-a-v0", 1)
    write_episode(unlisted, fake_episode(1, 4), {})
    (root / ".dataset.json.abc123.tmp").write_text('{"format": "vla-prefix-de')

    ds = DemoDataset(root)  # the reader sees the index only
    assert [(e.task, e.seed) for e in ds.episodes] == [("task-b-v0", 1), ("task-b-v0", 3), ("task-a-v0", 0)]
    ds.verify()

    with DatasetWriter(root, SPEC) as w:  # the next writer cleans up
        assert w.removed_orphans == 1
        assert not unlisted.exists() and not partial.exists() and not (root / ".dataset.json.abc123.tmp").exists()
        # the unlisted seed can now be committed for real
        add(w, "task-a-v0", 1, 4)
    assert (root / INDEX).read_bytes() != index_before
    ds = DemoDataset(root)
    assert ds.task_meta("task-a-v0")["successful_seeds"] == [0, 1]
    ds.verify()
    assert not (root / TMP).exists()


def test_incompatible_or_foreign_folders_are_refused_untouched(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root)
    before = (root / INDEX).read_bytes()
    with pytest.raises(ConfigError, match=r"image_size=16 \(asked: 32\)"):
        DatasetWriter(root, {**SPEC, "image_size": 32})
    with pytest.raises(ConfigError, match="suite='tiny'"):
        DatasetWriter(root, {**SPEC, "suite": "metaworld"})
    with pytest.raises(ConfigError, match="cameras"):
        DatasetWriter(root, {**SPEC, "cameras": ["top"], "n_cameras": 1})
    with DatasetWriter(root, SPEC) as w:  # demos from another expert version or seed offset are not mixed in
        with pytest.raises(ConfigError, match="expert_version=None, not 2; the expert.s actions have changed"):
            w.add_task("task-a-v0", {"instruction": "do a", "seed_offset": 0, "expert_version": 2})
        with pytest.raises(ConfigError, match="seed_offset=0, not 5; use the same seed_offset"):
            w.add_task("task-a-v0", {"instruction": "do a", "seed_offset": 5})
    assert (root / INDEX).read_bytes() == before

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty and is not a vla-prefix dataset"):
        DatasetWriter(foreign, SPEC)
    assert sorted(os.listdir(foreign)) == ["notes.txt"]  # not even a lock file

    with DatasetWriter(root, SPEC):
        with pytest.raises(ConfigError, match="another collector is writing"):
            DatasetWriter(root, SPEC)


def test_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="not a vla-prefix demo dataset"):
        DemoDataset(tmp_path / "nothing")
    root = tmp_path / "ds"
    make_dataset(root)
    ds = DemoDataset(root)
    with pytest.raises(DatasetError, match="did you mean task-a-v0"):
        ds.select(["task-a"])
    # a damaged chunk is reported with the episode it belongs to
    chunk = next((root / episode_relpath("task-a-v0", 0) / "images").glob("c.*"))
    chunk.write_bytes(chunk.read_bytes()[:10])
    with pytest.raises(DatasetError, match="task-a-v0 seed 0"):
        ds.verify()
    index = json.loads((root / INDEX).read_text())
    index["format_version"] = 99
    (root / INDEX).write_text(json.dumps(index))
    with pytest.raises(DatasetError, match="version 99"):
        DemoDataset(root)


def test_layout_is_a_zarr_hierarchy(tmp_path):
    import zarr

    make_dataset(tmp_path / "ds")
    group = zarr.open_group(str(tmp_path / "ds" / EPISODES), mode="r")
    episode = group["task-b-v0"]["0000001"]
    assert episode["images"].shape == (40, 2, 16, 16, 3) and episode.attrs["length"] == 40
    assert episode["actions"].dtype == np.float32
