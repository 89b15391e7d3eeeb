"""The policy server: round trips, tokens, batching of concurrent clients, a seeded fuzz of malformed
requests, the serve CLI, and rollouts through the server equal to local rollouts bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import eval_tiny_task  # noqa: F401  (registers the evaltiny suite)
import numpy as np
import pytest
import torch

from backbones import backbone
from test_deploy import DEEP_TASKS, MIXED_ATOL, deep, make_bank, observations, row
from vla_prefix.deploy import BankPolicy, PolicyClient, PolicyServer, PolicyServerError, PrefixBank
from vla_prefix.deploy.fuzz import fuzz_server, send_raw
from vla_prefix.errors import ConfigError
from vla_prefix.evaluate import evaluate
from vla_prefix.prefix.io import save_prefix
from vla_prefix.prefix.prefix_set import PrefixSet
from vla_prefix.serve import build_server, watch_bank

TOKEN = "s3cret-token"
RIGHT, LEFT = "evaltiny-right-v0", "evaltiny-left-v0"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    vla = backbone("llama")
    return BankPolicy(vla, make_bank(tmp_path_factory.mktemp("bank"), vla))


@pytest.fixture(scope="module")
def server(policy):
    """Batching off: every request is its own forward, so replies equal `policy.act` bit for bit."""
    with PolicyServer(policy, port=0, token=TOKEN, batching=False, max_batch_rows=8) as s:
        yield s


def test_round_trip_task_list_health_and_token(policy, server):
    client = PolicyClient(server.url, TOKEN)
    assert server.url.startswith("http://127.0.0.1:")  # loopback by default
    assert client.health()["status"] == "ok"
    assert PolicyClient(server.url).health()["status"] == "ok"  # health needs no token
    spec = client.tasks()
    assert spec["backbone_fingerprint"] == policy.backbone.fingerprint()
    assert [t["task"] for t in spec["tasks"]] == sorted(DEEP_TASKS)
    assert spec["tasks"][0]["instruction"] == policy.bank.instruction(spec["tasks"][0]["task"])
    assert spec["observation"]["image"] == {"dtype": "uint8", "shape": [1, 32, 32, 3]}
    obs = observations(policy.backbone, 4, seed=5)
    for i, task in enumerate(sorted(DEEP_TASKS)):
        got = client.act(row(obs, i), task)
        assert got.dtype == np.float32 and np.array_equal(got, policy.act(row(obs, i), task))
    tasks = ["task-a", "task-c", "task-a", "task-d"]
    assert np.array_equal(client.act_batch(obs, tasks), policy.act_batch(obs, tasks))  # one request, mixed
    assert np.array_equal(client.act(row(obs, 0), "task-b", instruction="push the blue ball to the green zone"),
                          policy.act(row(obs, 0), "task-b", instruction="push the blue ball to the green zone"))
    for token in (None, "wrong"):
        with pytest.raises(PolicyServerError, match="401") as err:
            PolicyClient(server.url, token).act(row(obs, 0), "task-a")
        assert err.value.status == 401
    with pytest.raises(PolicyServerError, match="404.*did you mean task-a"):
        client.act(row(obs, 0), "task-aa")
    with pytest.raises(PolicyServerError, match="cannot reach"):
        PolicyClient("http://127.0.0.1:9", TOKEN).health()


def test_concurrent_clients_are_batched_into_mixed_forwards(policy):
    with PolicyServer(policy, port=0, batching=True, batch_window_ms=300, max_batch_rows=16) as s:
        client = PolicyClient(s.url)
        obs = observations(policy.backbone, 8, seed=6)
        tasks = [sorted(DEEP_TASKS)[i % 4] for i in range(8)]
        results: dict[int, np.ndarray] = {}
        barrier = threading.Barrier(8)

        def one(i):
            barrier.wait()
            results[i] = client.act(row(obs, i), tasks[i])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert s.stats["requests"] == 8 and s.stats["rows"] == 8
        assert s.stats["forwards"] < 8  # requests that arrived together shared a forward
        for i in range(8):
            np.testing.assert_allclose(results[i], policy.act(row(obs, i), tasks[i]), rtol=0, atol=MIXED_ATOL)


def test_fuzz_malformed_requests_get_4xx_and_the_server_keeps_serving(policy, server):
    """>= 200 seeded malformed requests of every kind, a valid request checked after each."""
    client = PolicyClient(server.url, TOKEN)
    rng = np.random.default_rng(1)
    names = sorted(DEEP_TASKS)
    size = policy.backbone.vision.img_size

    def check_valid() -> bool:
        obs = {"image": rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8),
               "proprio": rng.standard_normal(4).astype(np.float32)}
        task = names[int(rng.integers(len(names)))]
        return np.array_equal(client.act(obs, task), policy.act(obs, task))

    report = fuzz_server(server.url, n=260, seed=0, token=TOKEN, check_valid=check_valid)
    assert report["requests"] == 260 and report["valid_checked"] == 260
    assert report["crashes"] == 0 and report["valid_failed"] == 0
    assert report["bad_4xx"] == 260 and report["wrong_status"] == [], report["wrong_status"][:5]
    assert len(report["kinds"]) >= 25 and min(report["kinds"].values()) >= 8, report["kinds"]
    assert client.health()["status"] == "ok"


def test_http_details(server):
    host, port = "127.0.0.1", int(server.url.rsplit(":", 1)[1])
    status, body = send_raw(host, port, b"GET /health\r\n\r\n")  # an HTTP/0.9-style line still gets a status line
    assert status == 200 and json.loads(body)["status"] == "ok"
    req = urllib.request.Request(f"{server.url}/act", data=b"\x93\x01", method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/msgpack"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400 and "not valid msgpack" in json.loads(err.value.read())["error"]


def test_bank_changes_are_served_live(tmp_path):
    vla = backbone("llama")
    bank = make_bank(tmp_path, vla)
    policy = BankPolicy(vla, bank)
    obs = observations(vla, 1, seed=7)
    with PolicyServer(policy, port=0, batching=False) as s:
        client = PolicyClient(s.url)
        before = client.act(row(obs, 0), "task-a")
        bank.add(PrefixSet(deep(3, 2), vla, seed=30), task="task-new")
        assert "task-new" in [t["task"] for t in client.tasks()["tasks"]]
        assert np.array_equal(client.act(row(obs, 0), "task-new"), policy.act(row(obs, 0), "task-new"))
        bank.remove("task-new")
        with pytest.raises(PolicyServerError) as err:
            client.act(row(obs, 0), "task-new")
        assert err.value.status == 404
        assert np.array_equal(client.act(row(obs, 0), "task-a"), before)
        # a prefix file dropped into the bank directory is picked up by the serve app's watcher
        stop = threading.Event()
        watch_bank(bank, 0.05, stop)
        try:
            save_prefix(tmp_path / "dropped.safetensors", PrefixSet(deep(1, 2), vla, seed=31), vla, task="task-dropped")
            deadline = time.monotonic() + 10
            while "task-dropped" not in bank and time.monotonic() < deadline:
                time.sleep(0.05)
            assert np.array_equal(client.act(row(obs, 0), "task-dropped"), policy.act(row(obs, 0), "task-dropped"))
        finally:
            stop.set()
    with pytest.raises(ConfigError, match="cannot listen"):
        with PolicyServer(policy, port=0) as s:
            PolicyServer(policy, port=int(s.url.rsplit(":", 1)[1]))


# ---------------------------------------------------------------------------- the serve app


def test_build_server_refuses_bad_settings(tmp_path):
    vla = backbone("llama")
    vla.save_pretrained(tmp_path / "base")
    with pytest.raises(ConfigError, match="bank=.* is not a directory"):
        build_server({"backbone": str(tmp_path / "base"), "bank": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="did you mean batch_window_ms"):
        build_server({"backbone": str(tmp_path / "base"), "bank": str(tmp_path), "batch_windw_ms": 3})
    with pytest.raises(ConfigError, match="backbone=.* is not a directory"):
        build_server({"backbone": str(tmp_path / "missing"), "bank": str(tmp_path)})


def test_serve_cli_starts_answers_and_stops(tmp_path):
    vla = backbone("llama")
    vla.save_pretrained(tmp_path / "base")
    make_bank(tmp_path / "bank", vla)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vla_prefix.serve", f"backbone={tmp_path / 'base'}", f"bank={tmp_path / 'bank'}",
         "port=0", "torch_threads=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "VLA_PREFIX_TOKEN": TOKEN})
    try:
        line = proc.stdout.readline()
        while line and not line.startswith("serving"):  # log lines (INFO, to stdout) come first
            line = proc.stdout.readline()
        assert line.startswith("serving 4 task(s) on http://127.0.0.1:") and "token required" in line, line
        url = line.split(" on ")[1].split(" ")[0]
        client = PolicyClient(url, TOKEN)
        assert client.tasks()["backbone_fingerprint"] == vla.fingerprint()
        obs = observations(vla, 1, seed=8)
        policy = BankPolicy(vla, PrefixBank(tmp_path / "bank", vla))
        assert np.array_equal(client.act(row(obs, 0), "task-c"), policy.act(row(obs, 0), "task-c"))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopped" in out, err


# ---------------------------------------------------------------------------- remote evaluation


@pytest.fixture(scope="module")
def eval_models(tmp_path_factory):
    """A tiny backbone whose actions lean to +x (most `right` episodes succeed, not all), a prefix per evaltiny task."""
    root = tmp_path_factory.mktemp("remote_eval")
    vla = backbone("llama")
    vla.set_normalization(torch.zeros(4), torch.ones(4), torch.tensor([0.4, 0.0, 0.0, 0.0]), torch.ones(4))
    vla.save_pretrained(root / "base")
    bank = PrefixBank(root / "bank", vla)
    for seed, (task, text) in enumerate([(RIGHT, "move right"), (LEFT, "move left")]):
        bank.add(PrefixSet(deep(2, 2), vla, seed=seed), task=task, instruction=text)
    return root


def test_remote_evaluation_equals_local_bit_for_bit(eval_models, tmp_path):
    common = {"suite": "evaltiny", "task_modules": ["eval_tiny_task"], "n_episodes": 10, "num_envs": 1,
              "vector": "sync", "video_episodes": 0, "progress": False, "torch_threads": 1}
    local = {}
    for task in (RIGHT, LEFT):
        info = evaluate({**common, "backbone": str(eval_models / "base"), "task": task, "out": str(tmp_path / task),
                         "prefix": str(eval_models / "bank" / f"{task}.safetensors")})
        local[task] = info["tasks"][task]
    server = build_server({"backbone": str(eval_models / "base"), "bank": str(eval_models / "bank"), "port": 0,
                           "batching": False})
    with server:
        remote = evaluate({**common, "policy": "remote", "server_url": server.url, "task": [RIGHT, LEFT],
                           "out": str(tmp_path / "remote")})
        with pytest.raises(ConfigError, match="has no prefix for"):
            evaluate({**common, "policy": "remote", "server_url": server.url, "suite": "tiny", "task": "tiny-reach-red-v0",
                      "task_modules": ["tiny_task"], "out": str(tmp_path / "x")})
    for task in (RIGHT, LEFT):
        assert remote["tasks"][task]["episodes"] == local[task]["episodes"]  # seeds, success, steps, return
        assert remote["tasks"][task]["success_rate"] == local[task]["success_rate"]
    rates = [local[t]["success_rate"] for t in (RIGHT, LEFT)]
    assert 0 < sum(rates) and sum(len(local[t]["episodes"]) for t in local) == 20, rates
    s = remote["settings"]["policy"]
    assert s["kind"] == "remote" and s["server_url"] == server.url and set(s["prefix_sha256"]) == {RIGHT, LEFT}
    with pytest.raises(ConfigError, match="drop backbone="):
        evaluate({**common, "policy": "remote", "server_url": "http://127.0.0.1:9", "backbone": "x", "task": RIGHT,
                  "out": str(tmp_path / "y")})
    with pytest.raises(ConfigError, match="`server_url` is required"):
        evaluate({**common, "policy": "remote", "task": RIGHT, "out": str(tmp_path / "y")})
