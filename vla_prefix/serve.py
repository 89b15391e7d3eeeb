r"""Serve a frozen backbone and a bank of per-task prefixes over HTTP (a policy server).

    python -m vla_prefix.serve backbone=runs/base bank=prefixes/            # http://127.0.0.1:8000
    python -m vla_prefix.serve backbone=runs/base bank=prefixes/ port=9000 batch_window_ms=5 max_batch_rows=64
    VLA_PREFIX_TOKEN=s3cret python -m vla_prefix.serve backbone=runs/base bank=prefixes/ host=0.0.0.0
    python -m vla_prefix.serve ... batching=false      # every request alone, in arrival order
    python -m vla_prefix.serve ... watch_s=2           # pick up prefix files added/removed/replaced in bank/

Clients: `vla_prefix.deploy.PolicyClient(url, token).act(obs, task)`, or rollouts through the server with
`python -m vla_prefix.evaluate policy=remote server_url=http://127.0.0.1:8000 suite=... task=... out=...`.
Endpoints: POST /act (msgpack), GET /tasks, GET /health; wire format in vla_prefix/deploy/protocol.py.
Binds 127.0.0.1 unless `host` says otherwise; with a token, every request but /health needs
`Authorization: Bearer <token>`. Every prefix file in the bank must come from this backbone
(checked by fingerprint at start).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from .utils.hydra_app import check_overrides, quiet_defaults, quiet_hydra, to_dataclass
from .errors import ConfigError, cli_errors

log = logging.getLogger(__name__)
USAGE = "python -m vla_prefix.serve backbone=<dir> bank=<dir> [host=127.0.0.1] [port=8000]"
TOKEN_ENV = "VLA_PREFIX_TOKEN"


@dataclass
class ServeConfig:
    """Settings of `python -m vla_prefix.serve` (every field is a command-line override)."""

    defaults: list[Any] = quiet_defaults()
    hydra: Any = quiet_hydra("vla_prefix.serve", __doc__)

    backbone: str = MISSING  # a directory written by VLA.save_pretrained
    bank: str = MISSING  # a directory of prefix files (.safetensors), all trained on that backbone
    host: str = "127.0.0.1"  # another address (e.g. 0.0.0.0) only when you mean to be reachable
    port: int = 8000  # 0 = any free port (printed at start)
    token: Optional[str] = None  # bearer token; null = $VLA_PREFIX_TOKEN if set, else none
    device: str = "cpu"  # cpu | cuda | cuda:<i>
    batching: bool = True  # merge requests that arrive together into one mixed-task forward
    batch_window_ms: float = 2.0  # how long the first queued request waits for others
    max_batch_rows: int = 32  # rows per forward (and per request)
    max_body_bytes: Optional[int] = None  # null = max_batch_rows observations + 64 KiB
    request_timeout_s: float = 60.0  # a request waiting longer for its forward gets 503
    preload: bool = True  # read every prefix at start (bad files fail now, first requests are fast)
    watch_s: float = 0.0  # rescan the bank directory every watch_s seconds; 0 = never
    torch_threads: Optional[int] = None  # null = torch's default


ConfigStore.instance().store(name="serve", node=ServeConfig)


def _as_config(cfg: ServeConfig | DictConfig | dict) -> ServeConfig:
    cfg = to_dataclass(cfg, ServeConfig, "serve", ("backbone", "bank"), USAGE)
    if not Path(cfg.backbone).is_dir():
        raise ConfigError(f"backbone={cfg.backbone!r} is not a directory; give a folder written by "
                          "VLA.save_pretrained (e.g. the output of `python -m vla_prefix.train mode=pretrain`)")
    if not Path(cfg.bank).is_dir():
        raise ConfigError(f"bank={cfg.bank!r} is not a directory; give a folder of prefix files (.safetensors)")
    if not 0 <= cfg.port <= 65535:
        raise ConfigError(f"port={cfg.port}: use 0 (any free port) to 65535")
    if cfg.torch_threads is not None and cfg.torch_threads < 1:
        raise ConfigError(f"torch_threads={cfg.torch_threads}: use at least 1, or null for torch's default")
    if cfg.watch_s < 0:
        raise ConfigError(f"watch_s={cfg.watch_s}: use 0 (never) or a number of seconds")
    return cfg


def build_server(cfg: ServeConfig | DictConfig | dict):
    """Load the backbone and the bank and build (not start) the `PolicyServer` that `cfg` describes."""
    cfg = _as_config(cfg)
    import torch

    from .deploy import BankPolicy, PolicyServer, PrefixBank
    from .models.vla import VLA

    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device!r} but torch sees no CUDA device; use device=cpu")
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    vla = VLA.from_pretrained(cfg.backbone)
    bank = PrefixBank(cfg.bank, vla, device=cfg.device, create=False)  # refuses files of another backbone
    if len(bank) == 0:
        log.warning("the bank %s holds no prefix files yet; /act answers 404 until some are added", cfg.bank)
    if cfg.preload:
        bank.load_all()
    token = cfg.token if cfg.token is not None else os.environ.get(TOKEN_ENV) or None
    return PolicyServer(BankPolicy(vla, bank), host=cfg.host, port=cfg.port, token=token, batching=cfg.batching,
                        batch_window_ms=cfg.batch_window_ms, max_batch_rows=cfg.max_batch_rows,
                        max_body_bytes=cfg.max_body_bytes, request_timeout_s=cfg.request_timeout_s)


def watch_bank(bank, every_s: float, stop: threading.Event) -> threading.Thread:
    """A thread that rescans `bank`'s directory every `every_s` seconds until `stop` is set."""

    def loop():
        while not stop.wait(every_s):
            changes = bank.refresh(strict=False)
            if any(changes[k] for k in ("added", "updated", "removed")):
                log.info("bank: added %s, updated %s, removed %s", changes["added"], changes["updated"],
                         changes["removed"])

    thread = threading.Thread(target=loop, name="vla-prefix-bank-watch", daemon=True)
    thread.start()
    return thread


@hydra.main(version_base=None, config_name="serve")
@cli_errors
def _hydra_main(cfg: DictConfig) -> None:
    server = build_server(cfg)
    stop = threading.Event()
    if cfg.watch_s > 0:
        watch_bank(server.bank, cfg.watch_s, stop)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.httpd.shutdown, daemon=True).start())
    print(f"serving {len(server.bank)} task(s) on {server.url} (backbone {server.bank.fingerprint}, batching "
          f"{'on, ' + str(cfg.batch_window_ms) + ' ms window' if cfg.batching else 'off'}"
          f"{', token required' if server.token else ''}); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
    print("stopped", flush=True)


@cli_errors
def main() -> None:
    check_overrides(sys.argv[1:], ServeConfig)
    _hydra_main()


if __name__ == "__main__":
    main()
