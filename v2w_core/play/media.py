"""Frames for the browser: one PNG per step (lossless and small at world-model sizes: a 64×64 frame is
≈ 6 KB as a data URL) and the session's recording as an MP4 (H.264 through PyAV, like the eval videos),
upscaled with nearest-neighbour so a 64-px world is watchable."""

from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path

import numpy as np


def png_data_url(frame: np.ndarray) -> str:
    """uint8 (H, W, 3) → ``data:image/png;base64,…``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """(T, H, W, 3) → (T, H·scale, W·scale, 3), nearest-neighbour."""
    if scale <= 1:
        return frames
    return frames.repeat(scale, axis=1).repeat(scale, axis=2)


def mp4_bytes(frames: np.ndarray, *, fps: float = 8.0, scale: int = 4) -> bytes:
    """uint8 (T, H, W, 3) → the bytes of an H.264 MP4 (yuv420p, so every browser plays it)."""
    from v2w_core.eval.videos import write_video

    with tempfile.TemporaryDirectory(prefix="v2w-play-") as tmp:
        path = write_video(upscale(np.asarray(frames), scale), Path(tmp) / "session.mp4", fps=fps)
        return path.read_bytes()
