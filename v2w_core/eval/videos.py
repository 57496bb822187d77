"""Artifacts people look at: side-by-side ground truth | generated videos and the drift-curve plot.

Videos are GIF (Pillow; the MLflow UI previews them inline) or MP4 (PyAV, H.264 yuv420p). Frames are
upscaled by an integer factor with nearest-neighbour so 32–64 px rollouts are viewable; a red border
marks generated frames so the context is recognisable.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """(T, C, H, W) float in [-1, 1] or (T, H, W, 3) uint8 → (T, H, W, 3) uint8."""
    if frames.dtype == np.uint8:
        return frames
    x = np.clip((np.asarray(frames, np.float32) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def side_by_side(
    truth: np.ndarray, generated: np.ndarray, context_frames: int, *, scale: int = 4, gap: int = 2
) -> np.ndarray:
    """(T, H, W, 3) uint8 pairs → (T, s·H, 2·s·W + gap, 3): ground truth left, context + generated right."""
    gt, gen = to_uint8(truth), to_uint8(generated)
    right = np.concatenate([gt[:context_frames], gen], axis=0)
    if right.shape != gt.shape:
        raise ValueError(f"side_by_side: truth {gt.shape} vs context+generated {right.shape}")
    right = right.copy()
    right[context_frames:, [0, -1], :] = (230, 40, 40)  # mark generated frames
    right[context_frames:, :, [0, -1]] = (230, 40, 40)
    t, h, w, _ = gt.shape
    out = np.full((t, h, 2 * w + gap, 3), 255, dtype=np.uint8)
    out[:, :, :w] = gt
    out[:, :, w + gap :] = right
    return out.repeat(scale, axis=1).repeat(scale, axis=2)


def write_video(frames: np.ndarray, path: str | Path, *, fps: float = 4.0) -> Path:
    """Write (T, H, W, 3) uint8 as .gif or .mp4 (chosen by the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    elif path.suffix == ".mp4":
        import av

        h, w = frames.shape[1:3]
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))  # yuv420p needs even sizes
        with av.open(str(path), "w") as container:
            stream = container.add_stream("h264", rate=max(1, round(fps)))
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    else:
        raise ValueError(f"unsupported video suffix {path.suffix!r} (use .gif or .mp4)")
    return path


def plot_drift(curves: Mapping[str, Sequence[float]], path: str | Path, *, title: str = "") -> Path:
    """One panel per metric: value vs horizon step (1-based), written as PNG with matplotlib (Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = [n for n, v in curves.items() if len(v)]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4 * max(1, len(names)), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        ys = list(curves[name])
        ax.plot(range(1, len(ys) + 1), ys, marker="o")
        ax.set_xlabel("horizon step (generated frame)")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["plot_drift", "side_by_side", "to_uint8", "write_video"]
