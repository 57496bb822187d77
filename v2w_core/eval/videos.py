"""Artifacts people look at: side-by-side ground truth | generated videos and the drift-curve plot (the
model's per-step metrics beside the copy-last-frame and untrained-base baselines).

Videos are GIF (Pillow; the MLflow UI previews them inline) or MP4 (PyAV, H.264 yuv420p). Frames are
upscaled by an integer factor with nearest-neighbour so 32–64 px rollouts are viewable; a red border
marks generated frames so the context is recognisable.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from v2w_core.data.clips import to_uint8

logger = logging.getLogger(__name__)


def side_by_side(
    truth: np.ndarray,
    generated: np.ndarray,
    context_frames: int,
    *,
    scale: int = 4,
    gap: int = 2,
    labels: Sequence[str] | None = None,
) -> np.ndarray:
    """(T, H, W, 3) uint8 pairs → (T, s·H, 2·s·W + s·gap, 3): ground truth left, context + generated right.

    ``labels`` (one per column, e.g. ``("truth", "model")``) adds a white strip with the captions
    above the frames (:data:`LABEL_HEIGHT` pixels), so a viewer of the GIF knows which side is which, with
    the frame's place in the clip: ``t=<i>`` on the truth side, ``ctx k/K`` or ``gen +n/N`` (red, the
    generated frames also carry a red border) on the model's.
    """
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
    out = out.repeat(scale, axis=1).repeat(scale, axis=2)
    if labels is None:
        return out
    if len(labels) != 2:
        raise ValueError(f"side_by_side: one label per column (2), got {len(labels)}")
    n = t - context_frames
    strips = []
    for i in range(t):
        where = f"ctx {i + 1}/{context_frames}" if i < context_frames else f"gen +{i - context_frames + 1}/{n}"
        strips.append(
            _label_strip(
                out.shape[2],
                [(0, f"{labels[0]}  t={i}"), ((w + gap) * scale, f"{labels[1]}  {where}")],
                red=i >= context_frames,
            )
        )
    return np.concatenate([np.stack(strips), out], axis=1)


#: Height in pixels of the caption strip :func:`side_by_side` adds with ``labels``.
LABEL_HEIGHT = 14


def _label_strip(width: int, captions: Sequence[tuple[int, str]], *, red: bool = False) -> np.ndarray:
    """A white (LABEL_HEIGHT, width, 3) uint8 strip with each caption drawn at its x offset (the last one
    in red when ``red``: the generated frames' caption)."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (width, LABEL_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for j, (x, text) in enumerate(captions):
        colour = (200, 30, 30) if red and j == len(captions) - 1 else (0, 0, 0)
        draw.text((x + 2, 1), text, fill=colour, font=font)
    return np.asarray(image)


def rollout_strip(
    rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]],
    context_frames: int,
    *,
    scale: int = 2,
    gap: int = 2,
) -> np.ndarray:
    """One still image to judge a world model at a glance: per chunk, a row of truth (context | true
    future), a row of the model (context | generated) and, when given, a row generated from the same
    noise under shuffled actions (what the actions change). ``rows``: (name, truth (T, H, W, 3) uint8,
    generated (N, C, H, W) in [-1, 1], shuffled or None). Returns (H', W', 3) uint8, captioned."""
    from PIL import Image, ImageDraw, ImageFont

    lines: list[tuple[str, np.ndarray]] = []
    for name, truth, generated, shuffled in rows:
        gt = to_uint8(truth)
        lines.append((f"{name}: truth", gt))
        lines.append(("model, recorded actions", np.concatenate([gt[:context_frames], to_uint8(generated)])))
        if shuffled is not None:
            lines.append(("model, shuffled actions", np.concatenate([gt[:context_frames], to_uint8(shuffled)])))
    t, h, w, _ = lines[0][1].shape
    cell_w, row_h = (w + gap) * scale, (h + gap) * scale + LABEL_HEIGHT
    split = gap * scale * 3  # a wider gap between context and the frames after it
    canvas = Image.new("RGB", (t * cell_w + split, len(lines) * row_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for r, (caption, frames) in enumerate(lines):
        y = r * row_h
        draw.text((2, y + 1), caption, fill=(0, 0, 0), font=font)
        for i, frame in enumerate(frames):
            x = i * cell_w + (split if i >= context_frames else 0)
            tile = Image.fromarray(frame).resize((w * scale, h * scale), Image.NEAREST)
            canvas.paste(tile, (x, y + LABEL_HEIGHT))
    return np.asarray(canvas)


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


#: Drift-curve key prefixes of the baselines (see :mod:`v2w_core.eval.evaluate`) and their legend labels;
#: a key without one of these prefixes is the evaluated model's.
BASELINE_CURVES = {"copy_last_": "copy last context frame", "untrained_": "untrained causal base"}
MODEL_LABEL = "model"


def drift_panels(curves: Mapping[str, Sequence[float]]) -> dict[str, list[tuple[str, list[float]]]]:
    """Group drift curves by metric: ``{"psnr": [("model", …), ("copy last context frame", …), …]}``.

    ``psnr``, ``copy_last_psnr`` and ``untrained_psnr`` share the ``psnr`` panel; the model's curve comes
    first, then the baselines in :data:`BASELINE_CURVES` order. Empty curves are left out.
    """
    panels: dict[str, list[tuple[str, list[float]]]] = {}
    order = {MODEL_LABEL: 0, **{label: i + 1 for i, label in enumerate(BASELINE_CURVES.values())}}
    for key, ys in curves.items():
        if not len(ys):
            continue
        metric, label = key, MODEL_LABEL
        for prefix, name in BASELINE_CURVES.items():
            if key.startswith(prefix):
                metric, label = key[len(prefix) :], name
                break
        panels.setdefault(metric, []).append((label, [float(y) for y in ys]))
    for lines in panels.values():
        lines.sort(key=lambda line: order[line[0]])
    return panels


def plot_drift(curves: Mapping[str, Sequence[float]], path: str | Path, *, title: str = "") -> Path:
    """One panel per metric: value vs horizon step (1-based), the model's curve and its baselines'
    (:func:`drift_panels`) with a legend, written as PNG with matplotlib (Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    panels = drift_panels(curves)
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False)
    styles = {MODEL_LABEL: ("o", "-")} | {label: ("s", "--") for label in BASELINE_CURVES.values()}
    for ax, (name, lines) in zip(axes[0], panels.items(), strict=False):
        for label, ys in lines:
            marker, ls = styles.get(label, ("o", "-"))
            ax.plot(range(1, len(ys) + 1), ys, marker=marker, linestyle=ls, label=label)
        ax.set_xlabel("horizon step (generated frame)")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = [
    "BASELINE_CURVES",
    "LABEL_HEIGHT",
    "drift_panels",
    "plot_drift",
    "side_by_side",
    "write_video",
]
