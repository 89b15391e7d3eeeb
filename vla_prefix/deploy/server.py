"""`PolicyServer`: a `BankPolicy` behind HTTP (stdlib `ThreadingHTTPServer`; wire format in `protocol.py`).

    server = PolicyServer(policy, port=0).start()      # background threads; port 0 = any free port
    PolicyClient(server.url).act(obs, "tabletop-reach-red-cube-v0")
    server.stop()

Endpoints:
    POST /act     msgpack request -> msgpack {"actions": ...}         (bearer token, if one is set)
    GET  /tasks   JSON: backbone fingerprint, observation/action spec, the tasks with instructions
    GET  /health  JSON {"status": "ok", ...}                           (never needs the token)

Requests are parsed and checked in the connection's thread; valid ones go to ONE inference thread.
With `batching`, that thread waits up to `batch_window_ms` after the first queued request for more
(up to `max_batch_rows` rows) and runs them as one mixed-task forward; without it, every request runs
alone, in arrival order. A bad request gets a 4xx JSON error and the server keeps serving: unknown
task 404, bad fields/shapes/dtypes/msgpack 400, missing token 401, wrong method 405, no length 411,
too large 413, wrong content type 415. Binds 127.0.0.1 unless another host is asked for.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import numpy as np

from ..errors import ConfigError, UnknownTaskError, VLAPrefixError
from . import protocol
from .protocol import RequestError

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class _Job:
    """One request's rows, waiting for the inference thread."""

    image: np.ndarray  # (n, n_cam, S, S, 3) uint8
    proprio: np.ndarray  # (n, proprio_dim) float32
    tasks: list[str]
    instructions: list[str]
    done: threading.Event = field(default_factory=threading.Event)
    actions: np.ndarray | None = None
    error: RequestError | None = None


class PolicyServer:
    """Serves `policy` (a `BankPolicy`) over HTTP. See the module docstring for the endpoints.

    token: required as `Authorization: Bearer <token>` on /act and /tasks (None: no token).
    max_body_bytes: None = enough for `max_batch_rows` observations plus 64 KiB.
    """

    def __init__(self, policy, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                 batching: bool = True, batch_window_ms: float = 2.0, max_batch_rows: int = 32,
                 max_body_bytes: int | None = None, request_timeout_s: float = 60.0):
        if max_batch_rows < 1:
            raise ConfigError(f"max_batch_rows={max_batch_rows}: use at least 1")
        if batch_window_ms < 0:
            raise ConfigError(f"batch_window_ms={batch_window_ms}: use 0 or more")
        if token is not None and not token:
            raise ConfigError("token is empty; give a secret string, or no token")
        self.policy, self.bank = policy, policy.bank
        cfg = policy.backbone.config
        size = policy.backbone.vision.img_size
        self.image_shape = (cfg.n_cameras, size, size, 3)
        self.proprio_dim, self.action_dim, self.chunk = cfg.proprio_dim, cfg.action_dim, cfg.chunk
        self.token = token
        self.batching, self.batch_window_s, self.max_batch_rows = batching, batch_window_ms / 1e3, max_batch_rows
        row_bytes = math.prod(self.image_shape) + 4 * self.proprio_dim + protocol.MAX_INSTRUCTION_CHARS * 4
        self.max_body_bytes = max_body_bytes or max_batch_rows * row_bytes + 65536
        self.request_timeout_s = request_timeout_s
        self.stats = {"requests": 0, "rows": 0, "forwards": 0, "errors": 0}
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._started = time.monotonic()
        if host not in LOOPBACK and token is None:
            log.warning("serving on %s without a token: anyone who can reach this host can use the policy", host)
        server_class = _ThreadingHTTPServer6 if ":" in host else ThreadingHTTPServer
        try:
            self.httpd = server_class((host, port), _Handler)
        except OSError as err:
            raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror or err}); choose another port "
                              "(port=0: any free one) or host") from None
        self.httpd.daemon_threads = True
        self.httpd.request_queue_size = 64
        self.httpd.app = self
        self._threads: list[threading.Thread] = []
        self._carry: _Job | None = None
        self._stats_lock = threading.Lock()

    def count(self, **increments: int) -> None:
        with self._stats_lock:
            for key, n in increments.items():
                self.stats[key] += n

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    def _start_worker(self) -> None:
        worker = threading.Thread(target=self._inference_loop, name="vla-prefix-inference", daemon=True)
        worker.start()
        self._threads.append(worker)

    def start(self) -> "PolicyServer":
        """Serve from background threads; returns at once."""
        self._start_worker()
        http = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                name="vla-prefix-http", daemon=True)
        http.start()
        self._threads.append(http)
        return self

    def serve_forever(self) -> None:
        """Serve from this thread until `stop()` (or KeyboardInterrupt)."""
        self._start_worker()
        try:
            self.httpd.serve_forever(poll_interval=0.1)
        finally:
            self._queue.put(None)
            self.httpd.server_close()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._queue.put(None)
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []

    def __enter__(self) -> "PolicyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ requests
    def task_list(self) -> dict:
        return {
            "backbone_fingerprint": self.bank.fingerprint,
            "observation": {"image": {"dtype": "uint8", "shape": list(self.image_shape)},
                            "proprio": {"dtype": "float32", "shape": [self.proprio_dim]}},
            "actions": {"dtype": "float32", "chunk": self.chunk, "action_dim": self.action_dim},
            "max_batch_rows": self.max_batch_rows,
            "max_body_bytes": self.max_body_bytes,
            "tasks": [self.bank.entry(t).describe() for t in self.bank.tasks()],
        }

    def health(self) -> dict:
        with self._stats_lock:
            stats = dict(self.stats)
        return {"status": "ok", "n_tasks": len(self.bank), "uptime_s": round(time.monotonic() - self._started, 1),
                **stats}

    def act(self, body: bytes) -> np.ndarray:
        """Decode, check and run one /act request (blocks until its forward is done)."""
        image, proprio, tasks, instructions, batched = protocol.decode_request(
            body, self.image_shape, self.proprio_dim, self.max_batch_rows)
        for t in dict.fromkeys(tasks):
            try:
                self.bank.entry(t)
            except UnknownTaskError as err:
                raise RequestError(404, str(err)) from None
        if instructions is None:
            instructions = [self.bank.instruction(t) for t in tasks]
        job = _Job(np.array(image), np.array(proprio), tasks, instructions)  # writable copies for torch
        self._queue.put(job)
        if not job.done.wait(self.request_timeout_s):
            raise RequestError(503, f"no result within {self.request_timeout_s:.0f} s; the server is overloaded")
        if job.error is not None:
            raise job.error
        return job.actions if batched else job.actions[0]

    # ------------------------------------------------------------------ inference thread
    def _next_jobs(self) -> list[_Job] | None:
        """The next forward's jobs: one, or (batching) all that arrive within the window, up to max rows."""
        first, self._carry = (self._carry, None) if self._carry is not None else (self._queue.get(), None)
        if first is None:
            return None
        jobs, rows = [first], len(first.tasks)
        if not self.batching:
            return jobs
        deadline = time.monotonic() + self.batch_window_s
        while rows < self.max_batch_rows:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # stop after this forward
                break
            if rows + len(job.tasks) > self.max_batch_rows:
                self._carry = job  # too big to join: it starts the next forward
                break
            jobs.append(job)
            rows += len(job.tasks)
        return jobs

    def _inference_loop(self) -> None:
        while True:
            jobs = self._next_jobs()
            if jobs is None:
                return
            self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        try:
            actions = self._forward(jobs)
        except Exception as err:
            if len(jobs) == 1:
                jobs[0].error = _as_request_error(err, jobs[0])
                jobs[0].done.set()
                return
            for job in jobs:  # one job's failure (a task removed meanwhile) must not fail the others
                self._run([job])
            return
        start = 0
        for job in jobs:
            job.actions = actions[start : start + len(job.tasks)]
            start += len(job.tasks)
            job.done.set()

    def _forward(self, jobs: list[_Job]) -> np.ndarray:
        if len(jobs) == 1:
            j = jobs[0]
            obs, tasks, instructions = {"image": j.image, "proprio": j.proprio}, j.tasks, j.instructions
        else:
            obs = {"image": np.concatenate([j.image for j in jobs]), "proprio": np.concatenate([j.proprio for j in jobs])}
            tasks = [t for j in jobs for t in j.tasks]
            instructions = [s for j in jobs for s in j.instructions]
        actions = self.policy.act_batch(obs, tasks, instructions)
        self.count(forwards=1, rows=len(tasks))
        return np.asarray(actions, dtype=np.float32)


def _as_request_error(err: Exception, job: _Job) -> RequestError:
    """A forward's exception -> the reply: 404 for a task removed meanwhile, 400 for a user error, else 500."""
    if isinstance(err, UnknownTaskError):
        return RequestError(404, str(err))
    if isinstance(err, VLAPrefixError):
        return RequestError(400, str(err))
    log.error("inference failed for tasks %s", job.tasks, exc_info=err)
    return RequestError(500, f"inference failed ({type(err).__name__}); see the server log")


class _ThreadingHTTPServer6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive for clients that reuse a connection
    default_request_version = "HTTP/1.0"  # never answer in HTTP/0.9 (no status line)
    server_version = "vla-prefix"
    timeout = 30  # seconds a connection may idle or dribble before it is closed
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms wait for a delayed ACK

    @property
    def app(self) -> PolicyServer:
        return self.server.app

    def log_message(self, fmt, *args) -> None:
        log.debug("%s %s", self.address_string(), fmt % args)

    # ------------------------------------------------------------------ replies
    def _send(self, status: int, body: bytes, content_type: str, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="vla-prefix"')
        if status == 405:
            self.send_header("Allow", "GET" if urlsplit(self.path or "/").path in ("/tasks", "/health") else "POST")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: dict, close: bool = False) -> None:
        self._send(status, json.dumps(obj).encode(), protocol.JSON_TYPE, close)

    def send_error(self, code, message=None, explain=None) -> None:
        """Every error, the stdlib's parse errors included, as a JSON 4xx (unknown method: 405, not 501)."""
        code = {501: 405, 505: 400}.get(int(code), int(code))
        if message is None:
            try:
                message = HTTPStatus(code).phrase
            except ValueError:
                message = "error"
        self.app.count(errors=1)
        try:
            self._json(code, {"error": message, "status": code}, close=True)
        except OSError:  # the client is gone
            self.close_connection = True

    def _authorized(self) -> bool:
        token = self.app.token
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        return given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode(), token.encode())

    # ------------------------------------------------------------------ routes
    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/health":
            return self._json(200, self.app.health())
        if path == "/tasks":
            if not self._authorized():
                return self.send_error(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
            return self._json(200, self.app.task_list())
        if path == "/act":
            return self.send_error(405, "POST a msgpack observation to /act")
        return self.send_error(404, f"no endpoint {path!r}; use POST /act, GET /tasks, GET /health")

    def do_POST(self) -> None:
        # the length first, and the body read before any other refusal: a reply sent while the client is
        # still sending would reset the connection and lose the reply
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower() or self.headers.get("Content-Length") is None:
            return self.send_error(411, "send the body with a Content-Length (no chunked encoding)")
        try:
            length = int(self.headers["Content-Length"])
        except ValueError:
            return self.send_error(400, f"Content-Length {self.headers['Content-Length']!r} is not an integer")
        if length < 0:
            return self.send_error(400, f"Content-Length {length} is negative")
        if length > self.app.max_body_bytes:
            return self.send_error(413, f"the body has {length} bytes; this server takes at most "
                                        f"{self.app.max_body_bytes} (max_body_bytes)")
        body = self.rfile.read(length)
        if len(body) < length:
            return self.send_error(400, f"the body ended after {len(body)} of {length} bytes")
        path = urlsplit(self.path).path
        if path in ("/tasks", "/health"):
            return self.send_error(405, f"GET {path}")
        if path != "/act":
            return self.send_error(404, f"no endpoint {path!r}; use POST /act, GET /tasks, GET /health")
        if not self._authorized():
            return self.send_error(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype not in protocol.ACCEPTED_TYPES:
            return self.send_error(415, f"Content-Type must be {protocol.CONTENT_TYPE}, got {ctype or 'none'!r}")
        self.app.count(requests=1)
        try:
            actions = self.app.act(body)
        except RequestError as err:
            return self.send_error(err.status, str(err))
        self._send(200, protocol.encode_actions(actions), protocol.CONTENT_TYPE)
