"""Where metrics go: always `metrics.jsonl` (and `val.jsonl`) in the run directory, optionally W&B as well.

W&B runs offline (files under <run>/wandb) when no API key is configured, so it works with no network.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from ..errors import ConfigError

LOGGERS = ("none", "wandb")


class MetricsFile:
    """Append-only JSON lines, one per step. `truncate(step)` drops entries at or after `step` (on resume)."""

    def __init__(self, path: Path):
        self.path = path

    def truncate(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line torn by a crash
                continue
            if row.get("step", -1) < step:
                keep.append(line)
        from ..utils.atomic import atomic_write_bytes

        atomic_write_bytes(self.path, ("\n".join(keep) + "\n").encode() if keep else b"")

    def write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


class RunLogger:
    """metrics.jsonl always; W&B when `kind == "wandb"`."""

    def __init__(self, kind: str, run_dir: Path, config: dict, wandb_settings=None, resume: bool = False):
        if kind not in LOGGERS:
            raise ConfigError(f"logger must be one of {LOGGERS}, got {kind!r}")
        self.metrics = MetricsFile(run_dir / "metrics.jsonl")  # loss curve, one row per step
        self.val = MetricsFile(run_dir / "val.jsonl")  # validation rollouts, one row per validation
        self.wandb = None
        if kind == "wandb":
            import wandb

            if not os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE") is None:
                os.environ["WANDB_MODE"] = "offline"
            ws = wandb_settings
            run_id_file = run_dir / "wandb_run_id"
            run_id = run_id_file.read_text().strip() if resume and run_id_file.exists() else uuid.uuid4().hex[:8]
            run_id_file.write_text(run_id)
            self.wandb = wandb.init(project=ws.project, entity=ws.entity, group=ws.group, name=ws.name, id=run_id,
                                    resume="allow", dir=str(run_dir), config=config, reinit="finish_previous")

    def log(self, row: dict, step: int, to_file: bool = True) -> None:
        if to_file:
            self.metrics.write({"step": step, **row})
        if self.wandb is not None:
            self.wandb.log(row, step=step)

    def log_video(self, key: str, path: str, step: int) -> None:
        if self.wandb is not None:
            import wandb

            self.wandb.log({key: wandb.Video(path, format="mp4")}, step=step)

    def summary(self, values: dict) -> None:
        if self.wandb is not None:
            self.wandb.summary.update(values)

    def finish(self) -> None:
        if self.wandb is not None:
            import wandb

            self.wandb.finish()
            wandb.teardown()  # the service writes offline records asynchronously: flush them before returning
            self.wandb = None


class NullMetricsFile(MetricsFile):
    """A MetricsFile that holds nothing and writes nothing."""

    def __init__(self):
        super().__init__(None)

    def truncate(self, step: int) -> None:
        pass

    def write(self, row: dict) -> None:
        pass

    def read(self) -> list[dict]:
        return []


class NullLogger(RunLogger):
    """The logger of DDP ranks other than 0: the RunLogger interface, doing nothing (rank 0 logs)."""

    def __init__(self):
        self.metrics, self.val, self.wandb = NullMetricsFile(), NullMetricsFile(), None
