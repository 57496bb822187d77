"""Frame geometry shared by every source and converter: crop to an aspect ratio, then resize.

Why one helper: simulators render at their native size (ViZDoom 160x120, Atari 210x160, MuJoCo any) and
data sets come at whatever the camera recorded; the model trains on one fixed size (64x64 by default).
Doing the crop/resize in one place keeps every episode's pixels comparable across sources.

Resizing goes through Pillow because it is already a dependency of the stack, needs no OpenCV, and its
``resize`` low-pass filters when it downsamples (no aliasing on 210x160 -> 64x64), unlike naive striding.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image

CropMode = Literal["none", "center"]

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
ResampleName = Literal["bilinear", "box", "bicubic", "lanczos"]


def crop_box(
    height: int, width: int, target_h: int, target_w: int, crop: CropMode
) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the largest centred window with the target's aspect ratio.

    ``crop="none"`` keeps the whole frame (the resize then squashes it to the target aspect).
    """
    if crop == "none":
        return 0, 0, height, width
    if crop != "center":
        raise ValueError(f"crop must be 'none' or 'center', got {crop!r}")
    target_aspect = target_w / target_h
    if width / height > target_aspect:  # too wide: trim the sides
        new_w = max(1, round(height * target_aspect))
        left = (width - new_w) // 2
        return 0, left, height, left + new_w
    new_h = max(1, round(width / target_aspect))
    top = (height - new_h) // 2
    return top, 0, top + new_h, width


def resize_frame(
    frame: np.ndarray,
    height: int,
    width: int,
    *,
    crop: CropMode = "none",
    resample: ResampleName = "bilinear",
) -> np.ndarray:
    """One (H, W, 3) uint8 RGB frame to (height, width, 3) uint8; a no-op copy-free path at the same size."""
    top, left, bottom, right = crop_box(frame.shape[0], frame.shape[1], height, width, crop)
    frame = frame[top:bottom, left:right]
    if frame.shape[0] == height and frame.shape[1] == width:
        return np.ascontiguousarray(frame, dtype=np.uint8)
    image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8), mode="RGB")
    return np.asarray(image.resize((width, height), _RESAMPLE[resample]), dtype=np.uint8)


def resize_frames(
    frames: np.ndarray,
    height: int,
    width: int,
    *,
    crop: CropMode = "none",
    resample: ResampleName = "bilinear",
) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, height, width, 3) uint8, frame by frame into one preallocated array."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    out = np.empty((frames.shape[0], height, width, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = resize_frame(frame, height, width, crop=crop, resample=resample)
    return out


__all__ = ["CropMode", "ResampleName", "crop_box", "resize_frame", "resize_frames"]
