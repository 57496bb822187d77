"""Crop/resize helper shared by sources and converters."""

from __future__ import annotations

import numpy as np
import pytest

from v2w_core.data.sources._frames import crop_box, resize_frame, resize_frames


def test_crop_box() -> None:
    assert crop_box(120, 160, 64, 64, "center") == (0, 20, 120, 140)  # wide -> trim sides
    assert crop_box(210, 160, 64, 64, "center") == (25, 0, 185, 160)  # tall -> trim top/bottom
    assert crop_box(210, 160, 64, 64, "none") == (0, 0, 210, 160)
    with pytest.raises(ValueError, match="crop"):
        crop_box(10, 10, 5, 5, "left")  # type: ignore[arg-type]


def test_resize_shapes_and_identity() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 120, 160, 3), dtype=np.uint8)
    out = resize_frames(frames, 64, 64, crop="center")
    assert out.shape == (3, 64, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(resize_frame(frames[0], 120, 160), frames[0])  # same size: untouched
    flat = np.full((50, 70, 3), 77, dtype=np.uint8)
    np.testing.assert_array_equal(resize_frame(flat, 20, 20), np.full((20, 20, 3), 77, np.uint8))
    with pytest.raises(ValueError, match="T, H, W, 3"):
        resize_frames(frames[0], 8, 8)
