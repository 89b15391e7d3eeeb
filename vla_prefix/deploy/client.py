"""`PolicyClient`: talk to a `python -m vla_prefix.serve` policy server (numpy + msgpack; no torch).

    client = PolicyClient("http://127.0.0.1:8000", token=None)   # token: else $VLA_PREFIX_TOKEN
    client.health()                    # {"status": "ok", ...}
    client.tasks()                     # {"backbone_fingerprint", "observation", "actions", "tasks": [...]}
    client.act(obs, "tabletop-reach-red-cube-v0")               # (H, action_dim) float32
    client.act_batch(obs_batch, ["task-a", "task-b"])            # (N, H, action_dim): one request

It also works as the policy of `vla_prefix.evaluation.rollout` (`policy=remote` in evaluate): the
rollout passes task ids and the registry's instructions. Each thread keeps its own keep-alive
connection. A 4xx/5xx reply raises `PolicyServerError` with the server's message and status.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
from urllib.parse import urlsplit

import numpy as np

from ..errors import ConfigError, VLAPrefixError
from . import protocol

TOKEN_ENV = "VLA_PREFIX_TOKEN"


class PolicyServerError(VLAPrefixError):
    """The policy server refused a request (`status` 4xx) or failed (5xx), or could not be reached (0)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class PolicyClient:
    """A client for one policy server. Thread-safe (one connection per thread)."""

    task_conditioned = True  # the rollout passes task ids (and instructions)

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, timeout: float = 60.0):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigError(f"server_url={url!r}: give http://<host>:<port> (e.g. http://127.0.0.1:8000)")
        self.url, self.host, self.port = url.rstrip("/"), parts.hostname, parts.port or 80
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.timeout = timeout
        self._local = threading.local()

    # ------------------------------------------------------------------ transport
    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = protocol.CONTENT_TYPE) -> tuple[int, str, bytes]:
        """-> (status, content type, body). Retries once on a dropped keep-alive connection (requests are pure)."""
        headers = {"Content-Type": content_type} if body is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                return resp.status, resp.getheader("Content-Type", ""), data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as err:
                self.close()
                if attempt:
                    raise PolicyServerError(0, f"the policy server at {self.url} dropped the connection ({err})") from None
            except OSError as err:
                self.close()
                raise PolicyServerError(0, f"cannot reach the policy server at {self.url} ({err}); start one with "
                                           "`python -m vla_prefix.serve backbone=<dir> bank=<dir>`") from None
        raise AssertionError("unreachable")

    def _checked(self, method: str, path: str, body: bytes | None = None) -> tuple[str, bytes]:
        status, ctype, data = self.request(method, path, body)
        if status != 200:
            try:
                message = json.loads(data)["error"]
            except Exception:
                message = data[:200].decode(errors="replace")
            raise PolicyServerError(status, f"policy server {self.url}: {status} {message}")
        return ctype, data

    # ------------------------------------------------------------------ API
    def health(self) -> dict:
        return json.loads(self._checked("GET", "/health")[1])

    def tasks(self) -> dict:
        """The server's spec and task list (see `PolicyServer.task_list`)."""
        return json.loads(self._checked("GET", "/tasks")[1])

    def act(self, obs: dict, task: str, instruction: str | None = None) -> np.ndarray:
        """One observation {image uint8 (n_cam, S, S, 3), proprio float32 (P,)} -> actions (H, action_dim)."""
        return self._actions(self._checked("POST", "/act", protocol.encode_request(obs, task, instruction))[1])

    def act_batch(self, obs: dict, tasks: list[str], instructions: list[str] | None = None) -> np.ndarray:
        """N observations (leading N), N task ids -> actions (N, H, action_dim), in one request."""
        body = protocol.encode_request(obs, list(tasks), None if instructions is None else list(instructions))
        return self._actions(self._checked("POST", "/act", body)[1])

    def _actions(self, data: bytes) -> np.ndarray:
        try:
            return protocol.decode_actions(data)
        except protocol.RequestError as err:
            raise PolicyServerError(502, f"policy server {self.url} sent an unreadable reply: {err}") from None
