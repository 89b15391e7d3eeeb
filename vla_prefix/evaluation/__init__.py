"""Evaluation: batched vector-env rollouts, success statistics, videos and eval_info.json."""

from .info import FORMAT, describe_failures, eval_info, format_table
from .rollout import Episode, Policy, RolloutResult, probe_env, rollout
from .stats import Z95, stratified_bootstrap, wilson_interval
from .video import tile_cameras, video_frame, write_mp4

__all__ = [
    "FORMAT", "describe_failures", "eval_info", "format_table", "Episode", "Policy", "RolloutResult", "probe_env",
    "rollout", "Z95", "stratified_bootstrap", "wilson_interval", "tile_cameras", "video_frame", "write_mp4",
]
