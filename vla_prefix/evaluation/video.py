"""Episode videos: uint8 RGB frames -> a small H.264 mp4, written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def tile_cameras(image: np.ndarray) -> np.ndarray:
    """An observation image uint8 (n_cam, H, W, 3) -> one frame (H, n_cam * W, 3), cameras side by side."""
    image = np.asarray(image)
    if image.ndim == 3:
        return image
    return np.concatenate(list(image), axis=1)


def video_frame(frame: np.ndarray, min_height: int = 128) -> np.ndarray:
    """Upscale a small frame (nearest neighbour, integer factor) to at least `min_height` rows, even sizes.

    H.264 in yuv420p needs even width and height; odd sizes are padded by one black row/column.
    """
    frame = np.asarray(frame, dtype=np.uint8)
    factor = max(1, -(-int(min_height) // frame.shape[0]))
    if factor > 1:
        frame = frame.repeat(factor, axis=0).repeat(factor, axis=1)
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)))
    return np.ascontiguousarray(frame)


def write_mp4(path: str | os.PathLike, frames: list[np.ndarray], fps: float = 20.0) -> Path:
    """Write frames (each uint8 (H, W, 3), same size) to `path` as H.264 mp4; atomic (temp file + rename)."""
    import imageio.v2 as imageio  # imported here: rollout workers that record nothing never load ffmpeg

    path = Path(path)
    if not frames:
        raise ValueError(f"no frames to write to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")  # the suffix tells ffmpeg the container
    try:
        writer = imageio.get_writer(str(tmp), fps=float(fps), codec="libx264", quality=5, macro_block_size=1,
                                    ffmpeg_log_level="error", pixelformat="yuv420p")
        try:
            for frame in frames:
                writer.append_data(np.asarray(frame, dtype=np.uint8))
        finally:
            writer.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
