"""Deploy: the prefix bank (indexing, fingerprints, hot add/remove), per-task swaps, mixed-task batches,
and zero forgetting (other tasks' actions stay bit-identical when a task is added, retrained or removed)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from backbones import CORPUS, backbone
from vla_prefix.deploy import BankPolicy, PrefixBank
from vla_prefix.errors import ConfigError, FingerprintMismatchError, PrefixFileError, UnknownTaskError
from vla_prefix.policy import VLAPolicy
from vla_prefix.prefix.config import PrefixConfig, StreamConfig
from vla_prefix.prefix.io import load_prefix, save_prefix
from vla_prefix.prefix.prefix_set import PrefixSet

# A mixed batch is not bit-identical to single-task calls: another batch size changes the GEMM shapes
# (and so the blocking and summation order), and padding a shorter prefix adds masked key slots to the
# online softmax. Measured here: <= 2e-7 on actions in [-1, 1]; a wrong prefix row moves them by ~1e-2.
MIXED_ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vla():
    return backbone("llama")


def deep(visual: int, language: int) -> PrefixConfig:
    return PrefixConfig(visual=StreamConfig(length=visual, depth="deep", init="random"),
                        language=StreamConfig(length=language, depth="deep", init="random"))


def shallow(length: int) -> PrefixConfig:
    return PrefixConfig(visual=StreamConfig(length=0), language=StreamConfig(length=length, depth="shallow"))


# task -> (config, seed): deep prefixes of different lengths, one without a visual stream
DEEP_TASKS = {"task-a": (deep(2, 3), 1), "task-b": (deep(5, 1), 2), "task-c": (deep(0, 4), 3), "task-d": (deep(3, 3), 4)}


def make_bank(directory, vla, tasks=DEEP_TASKS) -> PrefixBank:
    bank = PrefixBank(directory, vla)
    for i, (task, (config, seed)) in enumerate(tasks.items()):
        bank.add(PrefixSet(config, vla, seed=seed), task=task, instruction=CORPUS[i % len(CORPUS)])
    return bank


def observations(vla, n: int, seed: int = 0) -> dict:
    g = np.random.default_rng(seed)
    size = vla.vision.img_size
    return {"image": g.integers(0, 256, (n, vla.config.n_cameras, size, size, 3), dtype=np.uint8),
            "proprio": g.standard_normal((n, vla.config.proprio_dim)).astype(np.float32)}


def row(obs: dict, i: int) -> dict:
    return {k: v[i] for k, v in obs.items()}


def tensor_digest(bank: PrefixBank) -> dict[str, tuple[str, int]]:
    """sha256 of every cached tensor's bytes, and its in-place version counter."""
    out = {}
    for task in bank.tasks():
        for name, stream in bank.get(task).streams().items():
            t = stream.value.detach().contiguous()
            out[f"{task}/{name}"] = (hashlib.sha256(t.numpy().tobytes()).hexdigest(), stream.value._version)
    return out


# ---------------------------------------------------------------------------- the bank


def test_bank_indexes_a_directory_by_metadata_and_loads_lazily_once(vla, tmp_path):
    for i, (task, (config, seed)) in enumerate(DEEP_TASKS.items()):  # any file names: the task is in the metadata
        save_prefix(tmp_path / f"run{i}-final.safetensors", PrefixSet(config, vla, seed=seed), vla, task=task,
                    instruction=CORPUS[i], steps=100 + i)
    (tmp_path / "notes.txt").write_text("not a prefix")
    bank = PrefixBank(tmp_path, vla)
    assert bank.tasks() == sorted(DEEP_TASKS) and len(bank) == 4 and "task-a" in bank
    assert bank.instruction("task-b") == CORPUS[1] and bank.entry("task-b").describe()["steps"] == 101
    assert not any(bank.is_loaded(t) for t in bank.tasks())  # nothing read but metadata
    first = bank.get("task-a")
    assert bank.is_loaded("task-a") and not bank.is_loaded("task-b")
    assert bank.get("task-a") is first  # computed once, then the same tensors
    assert first.visual.kind == "kv" and first.visual.value.shape[2] == 1  # batch-1 K/V
    prefix, _ = load_prefix(tmp_path / "run0-final.safetensors", vla)
    assert torch.equal(first.visual.value, prefix.cached().visual.value)
    with pytest.raises(UnknownTaskError, match="did you mean task-a"):
        bank.get("task-aa")


def test_bank_refuses_a_prefix_from_another_backbone_naming_both_fingerprints(vla, tmp_path):
    other = backbone("llama")
    with torch.no_grad():
        next(other.head.parameters()).add_(1.0)
    other.refresh_fingerprint()
    foreign = tmp_path / "elsewhere" / "foreign.safetensors"
    save_prefix(foreign, PrefixSet(deep(2, 2), other), other, task="task-x")
    bank = make_bank(tmp_path / "bank", vla)
    both = f"{other.fingerprint()}.*{vla.fingerprint()}"
    with pytest.raises(FingerprintMismatchError, match=both):
        bank.add(foreign)
    assert "task-x" not in bank and not (tmp_path / "bank" / "task-x.safetensors").exists()  # nothing entered
    (tmp_path / "bank" / "foreign.safetensors").write_bytes(foreign.read_bytes())
    changes = bank.refresh()  # a running server skips it, and keeps serving the rest
    assert "foreign.safetensors" in changes["rejected"] and bank.tasks() == sorted(DEEP_TASKS)
    with pytest.raises(FingerprintMismatchError, match=both):
        PrefixBank(tmp_path / "bank", vla)  # opening the bank refuses it outright


def test_bank_refuses_corrupt_and_duplicate_files(vla, tmp_path):
    bank = make_bank(tmp_path, vla)
    (tmp_path / "copy.safetensors").write_bytes((tmp_path / "task-a.safetensors").read_bytes())
    with pytest.raises(PrefixFileError, match="two prefix files"):
        PrefixBank(tmp_path, vla)
    (tmp_path / "copy.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(PrefixFileError, match="corrupt or truncated"):
        PrefixBank(tmp_path, vla)
    (tmp_path / "copy.safetensors").unlink()
    with pytest.raises(PrefixFileError, match="not a directory"):
        PrefixBank(tmp_path / "missing", vla, create=False)
    with pytest.raises(Exception, match="needs the task id"):
        bank.add(PrefixSet(deep(1, 1), vla))


def test_hot_add_replace_remove_and_reopen(vla, tmp_path):
    bank = make_bank(tmp_path / "bank", vla)
    outside = save_prefix(tmp_path / "new.safetensors", PrefixSet(deep(2, 2), vla, seed=9), vla, task="task-e",
                          instruction="reach the yellow cube")
    assert bank.add(outside) == "task-e" and bank.is_loaded("task-e")
    assert (tmp_path / "bank" / "task-e.safetensors").is_file()  # copied in: the directory is the bank
    bank.add(PrefixSet(deep(4, 1), vla, seed=10), task="task-e")  # retrained: replaced in place
    assert bank.get("task-e").visual.length == 4
    bank.remove("task-a")
    assert "task-a" not in bank and not (tmp_path / "bank" / "task-a.safetensors").exists()
    with pytest.raises(UnknownTaskError):
        bank.get("task-a")
    reopened = PrefixBank(tmp_path / "bank", vla)
    assert reopened.tasks() == bank.tasks() == ["task-b", "task-c", "task-d", "task-e"]
    assert torch.equal(reopened.get("task-e").visual.value, bank.get("task-e").visual.value)
    # files dropped into or taken out of the directory by someone else: refresh
    save_prefix(tmp_path / "bank" / "dropped.safetensors", PrefixSet(deep(1, 1), vla), vla, task="task-f")
    (tmp_path / "bank" / "task-b.safetensors").unlink()
    assert bank.refresh() == {"added": ["task-f"], "updated": [], "removed": ["task-b"], "rejected": {}}
    bank.remove("task-f", delete_file=False)
    assert "task-f" not in bank and bank.refresh()["added"] == ["task-f"]  # the file is still there


# ---------------------------------------------------------------------------- the policy


def test_set_task_is_a_pointer_swap_and_act_follows_it(vla, tmp_path):
    bank = make_bank(tmp_path, vla)
    policy = BankPolicy(vla, bank)
    obs = observations(vla, 1)
    with pytest.raises(ConfigError, match="set_task"):
        policy.act(row(obs, 0))
    weights = {k: v.data_ptr() for k, v in vla.state_dict().items()}
    policy.set_task("task-a")
    a = policy.act(row(obs, 0))
    cached = bank.get("task-a")
    policy.set_task("task-b")
    b = policy.act(row(obs, 0))
    policy.set_task("task-a")
    assert np.array_equal(policy.act(row(obs, 0)), a) and not np.allclose(a, b, atol=1e-4)
    assert a.shape == (vla.config.chunk, vla.config.action_dim) and a.dtype == np.float32
    assert bank.get("task-a") is cached  # the same tensors, not a copy
    assert {k: v.data_ptr() for k, v in vla.state_dict().items()} == weights  # no weight was touched
    assert np.array_equal(policy.act(row(obs, 0), "task-b"), b)  # an explicit task wins over set_task
    with pytest.raises(UnknownTaskError):
        policy.set_task("nope")
    with pytest.raises(ConfigError, match="one task per row"):
        policy.act_batch(observations(vla, 3), ["task-a", "task-b"])


def test_single_task_batch_is_bit_identical_to_vla_policy(vla, tmp_path):
    bank = make_bank(tmp_path, vla)
    obs = observations(vla, 5, seed=1)
    for i, task in enumerate(bank.tasks()):
        prefix, _ = load_prefix(bank.entry(task).path, vla)
        local = VLAPolicy(vla, prefix).act_batch(obs, [CORPUS[i]] * 5)
        assert np.array_equal(BankPolicy(vla, bank).act_batch(obs, [task] * 5), local)


def test_mixed_batch_matches_single_task_calls_row_for_row(vla, tmp_path):
    tasks = {**DEEP_TASKS, "shallow-a": (shallow(2), 5), "shallow-b": (shallow(5), 6)}
    bank = make_bank(tmp_path, vla, tasks)
    policy = BankPolicy(vla, bank)
    names = list(tasks)
    rng = np.random.default_rng(0)
    rows = [names[i] for i in rng.integers(len(names), size=14)] + names  # every task, lengths differ, repeats
    obs = observations(vla, len(rows), seed=2)
    mixed = policy.act_batch(obs, rows)
    single = np.stack([policy.act(row(obs, i), t) for i, t in enumerate(rows)])
    assert mixed.shape == (len(rows), vla.config.chunk, vla.config.action_dim)
    np.testing.assert_allclose(mixed, single, rtol=0, atol=MIXED_ATOL)
    # each row really used its own task: another task's prefix on the same observation moves the actions
    other = np.stack([policy.act(row(obs, i), names[(names.index(t) + 1) % len(names)]) for i, t in enumerate(rows)])
    assert np.abs(other - single).max(axis=(1, 2)).min() > 100 * MIXED_ATOL
    # deep-only rows share ONE forward (gather_rows pads and masks the shorter prefixes)
    calls = []
    original = vla.predict_actions
    vla.predict_actions = lambda batch, prefix=None: calls.append(batch["proprio"].shape[0]) or original(batch, prefix)
    try:
        deep_rows = [t for t in rows if t in DEEP_TASKS]
        policy.act_batch(observations(vla, len(deep_rows)), deep_rows)
        assert calls == [len(deep_rows)]
        calls.clear()
        policy.act_batch(obs, rows)  # deep and shallow language prefixes cannot share a forward: two groups
        assert sorted(calls) == sorted([len(deep_rows), len(rows) - len(deep_rows)])
    finally:
        del vla.predict_actions


def test_zero_forgetting_through_the_bank_cache_with_live_adds_and_removes(vla, tmp_path):
    """Adding, retraining or removing task X leaves every other task's actions BIT-IDENTICAL, single-task
    and in mixed batches of the same tasks, and no forward ever modifies a cached tensor."""
    bank = make_bank(tmp_path, vla)
    policy = BankPolicy(vla, bank)
    others = bank.tasks()
    obs = observations(vla, 8, seed=3)
    mixed_rows = [others[i % len(others)] for i in range(8)]

    def snapshot() -> dict:
        return {"single": {t: policy.act_batch(obs, [t] * 8) for t in others},
                "one_row": {t: policy.act(row(obs, 0), t) for t in others},
                "mixed": policy.act_batch(obs, mixed_rows),
                "mixed_reversed": policy.act_batch(obs, mixed_rows[::-1])}

    def assert_identical(a: dict, b: dict) -> None:
        for key in ("single", "one_row"):
            for t in others:
                assert np.array_equal(a[key][t], b[key][t]), (key, t)
        assert np.array_equal(a["mixed"], b["mixed"]) and np.array_equal(a["mixed_reversed"], b["mixed_reversed"])

    before = snapshot()
    digest = tensor_digest(bank)
    # add X (longer than every other prefix), and run mixed batches with X in them
    bank.add(PrefixSet(deep(7, 6), vla, seed=20), task="task-x", instruction="stack the red cube on the blue cube")
    with_x = mixed_rows[:4] + ["task-x"] * 2 + mixed_rows[4:6]
    x_before = policy.act_batch(obs, with_x)
    assert_identical(before, snapshot())
    # retrain X: its own actions change, nobody else's
    bank.add(PrefixSet(deep(7, 6), vla, seed=21), task="task-x")
    x_after = policy.act_batch(obs, with_x)
    x_rows = [i for i, t in enumerate(with_x) if t == "task-x"]
    assert not np.allclose(x_before[x_rows], x_after[x_rows], atol=1e-4)
    np.testing.assert_allclose(x_before[[i for i in range(8) if i not in x_rows]],
                               x_after[[i for i in range(8) if i not in x_rows]], rtol=0, atol=0)
    assert_identical(before, snapshot())
    # remove X
    bank.remove("task-x")
    with pytest.raises(UnknownTaskError):
        policy.act_batch(obs, with_x)
    assert_identical(before, snapshot())
    # the cached tensors of every other task are unchanged, byte for byte, never written in place
    assert tensor_digest(bank) == digest


def test_forward_never_mutates_cached_kv(vla, tmp_path):
    """transformers' DynamicCache grows during forward: the trunk must build a fresh one from the cached tensors."""
    bank = make_bank(tmp_path, vla)
    policy = BankPolicy(vla, bank)
    digest = tensor_digest(bank)
    shapes = {t: {n: tuple(s.value.shape) for n, s in bank.get(t).streams().items()} for t in bank.tasks()}
    obs = observations(vla, 6, seed=4)
    first = policy.act_batch(obs, ["task-a", "task-b", "task-c", "task-d", "task-a", "task-b"])
    for _ in range(3):
        again = policy.act_batch(obs, ["task-a", "task-b", "task-c", "task-d", "task-a", "task-b"])
        policy.act(row(obs, 0), "task-d")
    assert np.array_equal(first, again)
    assert tensor_digest(bank) == digest
    assert {t: {n: tuple(s.value.shape) for n, s in bank.get(t).streams().items()} for t in bank.tasks()} == shapes
