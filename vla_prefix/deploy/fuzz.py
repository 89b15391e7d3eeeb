"""A seeded fuzzer for the policy server: malformed requests of every kind, over raw sockets.

    report = fuzz_server(url, n=1000, seed=0, token=None, check_valid=lambda: ...)

Each malformed request must get a 4xx JSON error (the exact status where one is defined) and the
server must keep serving: after every bad request, `check_valid()` (the caller's valid request,
checked against known actions) must return True. Used by tests/test_server.py and
benchmarks/deploy.py; also a quick self-check for a deployed server.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

import numpy as np

from . import protocol
from .protocol import encode_array, pack


@dataclass
class Case:
    """One malformed request: raw HTTP bytes and the status it must get (None: any 4xx)."""

    kind: str
    data: bytes
    expect: int | None
    half_close: bool = False  # close our sending side after the data (a body shorter than announced)


def http_request(method: str, path: str, body: bytes = b"", headers: dict | None = None, length: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: fuzz", "Connection: close"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def send_raw(host: str, port: int, data: bytes, half_close: bool = False, timeout: float = 30.0):
    """Send raw bytes, read the reply until the server closes. -> (status or None, body bytes)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:  # closed with our unread bytes in its buffer: the reply came first
                if not chunks:
                    raise
                break
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    try:
        return int(parts[1]), body
    except (IndexError, ValueError):
        return None, raw


class MalformedRequests:
    """Builds malformed requests for a server described by its /tasks `spec`, round-robin over kinds."""

    def __init__(self, spec: dict, seed: int = 0, token: str | None = None):
        self.rng = np.random.default_rng(seed)
        self.image_shape = tuple(spec["observation"]["image"]["shape"])
        self.proprio_dim = spec["observation"]["proprio"]["shape"][0]
        self.tasks = [t["task"] for t in spec["tasks"]]
        self.max_rows, self.max_body = spec["max_batch_rows"], spec["max_body_bytes"]
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.kinds = [name[5:] for name in dir(self) if name.startswith("case_")]
        if not token:  # without a token every request is authorized
            self.kinds.remove("bad_token")

    # ------------------------------------------------------------------ helpers
    def fields(self, n: int | None = None) -> dict:
        """A valid request's fields (one observation, or a batch of n)."""
        r = self.rng
        lead = () if n is None else (n,)
        return {"task": str(r.choice(self.tasks)) if n is None else [str(r.choice(self.tasks)) for _ in range(n)],
                "image": encode_array(r.integers(0, 256, lead + self.image_shape, dtype=np.uint8)),
                "proprio": encode_array(r.standard_normal(lead + (self.proprio_dim,)).astype(np.float32))}

    def post(self, body: bytes, ctype: str = protocol.CONTENT_TYPE, **kw) -> bytes:
        return http_request("POST", "/act", body, {"Content-Type": ctype, **self.auth}, **kw)

    def junk(self, n_max: int = 2000) -> bytes:
        return self.rng.integers(0, 256, int(self.rng.integers(1, n_max)), dtype=np.uint8).tobytes()

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    # ------------------------------------------------------------------ the kinds of bad request
    def case_garbage_body(self) -> Case:
        return Case("garbage_body", self.post(self.junk()), 400)

    def case_truncated_msgpack(self) -> Case:
        body = pack(self.fields())
        return Case("truncated_msgpack", self.post(body[: int(self.rng.integers(1, len(body)))]), 400)

    def case_trailing_bytes(self) -> Case:
        return Case("trailing_bytes", self.post(pack(self.fields()) + self.junk(50)), 400)

    def case_not_a_map(self) -> Case:
        return Case("not_a_map", self.post(pack(self.pick([[1, 2, 3], 7, "task", None, b"\x00", 1.5, True]))), 400)

    def case_missing_field(self) -> Case:
        f = self.fields()
        del f[self.pick(["task", "image", "proprio"])]
        return Case("missing_field", self.post(pack(f)), 400)

    def case_unknown_field(self) -> Case:
        return Case("unknown_field", self.post(pack({**self.fields(), self.pick(["images", "obs", "x"]): 1})), 400)

    def case_unknown_task(self) -> Case:
        f = self.fields()
        f["task"] = self.pick(["", "x" * 300]) if self.rng.random() < 0.2 else f"no-such-task-{self.rng.integers(1e9)}"
        return Case("unknown_task", self.post(pack(f)), 404 if f["task"] and len(f["task"]) <= 200 else 400)

    def case_wrong_task_type(self) -> Case:
        f = self.fields()
        f["task"] = self.pick([3, None, 1.5, {"a": 1}, [1, 2], [], [["x"]], b"bytes"])
        return Case("wrong_task_type", self.post(pack(f)), 400)

    def case_wrong_image_dtype(self) -> Case:
        f = self.fields()
        if self.rng.random() < 0.5:
            f["image"] = encode_array(self.rng.random(self.image_shape).astype(np.float32))
        else:
            f["image"] = {**f["image"], "dtype": self.pick(["int64", "float16", "object", "<u1", "", "O"])}
        return Case("wrong_image_dtype", self.post(pack(f)), 400)

    def case_wrong_image_shape(self) -> Case:
        f = self.fields()
        shape = list(self.image_shape)
        shape[int(self.rng.integers(len(shape)))] += int(self.rng.integers(1, 3))
        shape = self.pick([shape, shape[1:], [1, *shape], [int(np.prod(self.image_shape))]])
        f["image"] = encode_array(self.rng.integers(0, 256, shape, dtype=np.uint8))
        return Case("wrong_image_shape", self.post(pack(f)), 400)

    def case_bad_array_map(self) -> Case:
        f = self.fields()
        key = self.pick(["image", "proprio"])
        arr = dict(f[key])
        choice = int(self.rng.integers(7))
        if choice == 0:
            del arr[self.pick(["dtype", "shape", "data"])]
        elif choice == 1:
            arr["data"] = arr["data"][:-1]
        elif choice == 2:
            arr["shape"] = self.pick(["4", None, [1.5], [-1], [True], [2**40, 2**40], list(range(20))])
        elif choice == 3:
            arr["data"] = self.pick(["text", 5, None, [1, 2]])
        elif choice == 4:
            arr = self.pick([[1, 2, 3], "array", 5, None])
        elif choice == 5:
            arr["extra"] = 1
        else:
            arr["data"] = arr["data"] + b"\x00" * 4
        f[key] = arr
        return Case("bad_array_map", self.post(pack(f)), 400)

    def case_wrong_proprio(self) -> Case:
        f = self.fields()
        choice = int(self.rng.integers(4))
        if choice == 0:
            f["proprio"] = encode_array(np.zeros(self.proprio_dim + 1, np.float32))
        elif choice == 1:
            f["proprio"] = encode_array(np.zeros(self.proprio_dim, np.uint8))
        elif choice == 2:
            bad = np.zeros(self.proprio_dim, np.float32)
            bad[int(self.rng.integers(self.proprio_dim))] = self.pick([np.nan, np.inf, -np.inf])
            f["proprio"] = encode_array(bad)
        else:
            f["proprio"] = encode_array(np.zeros((1, self.proprio_dim), np.float32))
        return Case("wrong_proprio", self.post(pack(f)), 400)

    def case_batch_mismatch(self) -> Case:
        f = self.fields(3)
        f["task"] = [self.tasks[0]] * self.pick([1, 2, 4])  # 3 observations
        return Case("batch_mismatch", self.post(pack(f)), 400)

    def case_too_many_rows(self) -> Case:
        f = self.fields(1)
        f["task"] = f["task"] * (self.max_rows + 1)
        return Case("too_many_rows", self.post(pack(f)), 413)

    def case_bad_instruction(self) -> Case:
        f = self.fields()
        f["instruction"] = self.pick([5, ["a", "b"], "x" * 5000, b"bytes", {"a": 1}, 1.5])
        return Case("bad_instruction", self.post(pack(f)), 400)

    def case_wrong_content_type(self) -> Case:
        ctype = self.pick(["text/plain", "application/json", "application/octet-stream", "", "multipart/form-data"])
        return Case("wrong_content_type", self.post(pack(self.fields()), ctype=ctype), 415)

    def case_no_content_length(self) -> Case:
        return Case("no_content_length", self.post(b"", length=False), 411)

    def case_bad_content_length(self) -> Case:
        value = self.pick(["abc", "-5", "1e3", "0x10", ""])
        data = http_request("POST", "/act", b"", {"Content-Type": protocol.CONTENT_TYPE, "Content-Length": value,
                                                  **self.auth}, length=False)
        return Case("bad_content_length", data, 400)

    def case_oversized_body(self) -> Case:  # announced only: the server must refuse before reading it
        data = http_request("POST", "/act", b"", {"Content-Type": protocol.CONTENT_TYPE, **self.auth,
                                                  "Content-Length": str(self.max_body + 1 + int(self.rng.integers(1e9)))},
                            length=False)
        return Case("oversized_body", data, 413)

    def case_truncated_body(self) -> Case:
        body = pack(self.fields())
        data = http_request("POST", "/act", b"", {"Content-Type": protocol.CONTENT_TYPE, **self.auth,
                                                  "Content-Length": str(len(body) + 100)}, length=False)
        return Case("truncated_body", data + body, 400, half_close=True)

    def case_bad_token(self) -> Case:
        headers = {"Content-Type": protocol.CONTENT_TYPE,
                   **self.pick([{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}])}
        data = http_request("POST", "/act", pack(self.fields()), headers)
        return Case("bad_token", data, 401)

    def case_wrong_method(self) -> Case:
        method, path = self.pick([("GET", "/act"), ("PUT", "/act"), ("DELETE", "/act"), ("PATCH", "/tasks"),
                                  ("POST", "/tasks"), ("POST", "/health"), ("OPTIONS", "/act")])
        return Case("wrong_method", http_request(method, path, b"", self.auth), 405)

    def case_unknown_path(self) -> Case:
        path = self.pick(["/", "/acts", "/v1/act", "/act/x", "/../etc/passwd", "/%00", "/tasks/x"])
        return Case("unknown_path", http_request(self.pick(["GET", "POST"]), path, b"", self.auth), 404)

    def case_garbage_request_line(self) -> Case:
        line = self.rng.integers(33, 127, int(self.rng.integers(1, 80)), dtype=np.uint8).tobytes()
        extra = self.pick([b"", b" / HTTP/1.1", b" /act HTTP/9.9", b" /act HTTP/1.1 x"])
        return Case("garbage_request_line", line + extra + b"\r\n\r\n", None)

    def case_bad_http_version(self) -> Case:
        version = self.pick(["HTTP/2.0", "HTTP/1.x", "HTTP/", "HTTPS/1.1", "HTTP/1.1.1"])
        return Case("bad_http_version", f"GET /health {version}\r\n\r\n".encode(), 400)

    def case_too_many_headers(self) -> Case:
        headers = {f"X-Fuzz-{i}": "1" for i in range(120)}
        return Case("too_many_headers", http_request("GET", "/tasks", b"", headers), 431)

    def case_binary_headers(self) -> Case:
        data = b"POST /act HTTP/1.1\r\n" + self.junk(200).replace(b"\n", b" ") + b"\r\n\r\n"
        return Case("binary_headers", data, None)

    # ------------------------------------------------------------------ iteration
    def __call__(self, i: int) -> Case:
        return getattr(self, "case_" + self.kinds[i % len(self.kinds)])()


def fuzz_server(url: str, n: int, seed: int = 0, token: str | None = None,
                check_valid: Callable[[], bool] | None = None, spec: dict | None = None) -> dict:
    """Send `n` malformed requests (kinds round-robin), each followed by `check_valid()`.

    -> {"requests", "kinds": {kind: count}, "bad_4xx", "wrong_status": [(kind, got, expected)],
        "crashes", "valid_checked", "valid_failed"}. A crash is a malformed request that got no reply or a
    non-4xx reply, or a valid request after it that failed.
    """
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    if spec is None:
        from .client import PolicyClient

        spec = PolicyClient(url, token).tasks()
    cases = MalformedRequests(spec, seed, token)
    report = {"requests": 0, "kinds": {}, "bad_4xx": 0, "wrong_status": [], "crashes": 0,
              "valid_checked": 0, "valid_failed": 0}
    for i in range(n):
        case = cases(i)
        report["requests"] += 1
        report["kinds"][case.kind] = report["kinds"].get(case.kind, 0) + 1
        try:
            status, body = send_raw(host, port, case.data, case.half_close)
        except OSError:
            status, body = None, b""
        is_4xx = status is not None and 400 <= status < 500
        if is_4xx:
            report["bad_4xx"] += 1
            try:
                json.loads(body)["error"]
            except Exception:
                report["wrong_status"].append((case.kind, status, "a JSON error body"))
        else:
            report["crashes"] += 1
        if case.expect is not None and status != case.expect:
            report["wrong_status"].append((case.kind, status, case.expect))
        if check_valid is not None:
            report["valid_checked"] += 1
            try:
                good = bool(check_valid())
            except Exception:
                good = False
            if not good:
                report["valid_failed"] += 1
                report["crashes"] += 1
    return report
