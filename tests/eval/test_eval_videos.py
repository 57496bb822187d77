"""Side-by-side videos (GIF and MP4) and the drift-curve PNG."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

from v2w_core.eval.videos import (
    LABEL_HEIGHT,
    drift_panels,
    plot_drift,
    rollout_strip,
    side_by_side,
    write_video,
)


def _pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 255, size=(5, 16, 16, 3), dtype=np.uint8)
    generated = rng.uniform(-1, 1, size=(3, 3, 16, 16)).astype(np.float32)  # model space (N, C, H, W)
    return truth, generated


def test_side_by_side_layout() -> None:
    truth, generated = _pair()
    out = side_by_side(truth, generated, context_frames=2, scale=2, gap=2)
    assert out.shape == (5, 32, 2 * (2 * 16 + 2), 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, ::2, ::2][:, :, :16], truth)  # ground truth on the left
    np.testing.assert_array_equal(out[:2, ::2, ::2][:, :, 18:], truth[:2])  # context repeated on the right


def test_side_by_side_labels_caption_each_column() -> None:
    truth, generated = _pair()
    plain = side_by_side(truth, generated, context_frames=2, scale=4)
    out = side_by_side(truth, generated, context_frames=2, scale=4, labels=("truth", "model"))
    assert out.shape == (5, LABEL_HEIGHT + 64, plain.shape[2], 3)
    np.testing.assert_array_equal(out[:, LABEL_HEIGHT:], plain)  # frames unchanged below the captions
    strip = out[0, :LABEL_HEIGHT]
    left, right = strip[:, : 16 * 4], strip[:, (16 + 2) * 4 :]
    assert (left < 128).any() and (right < 128).any()  # dark text over each column
    # each frame's caption says where it is: t=<i>, "ctx k/K" for context, "gen +n/N" (red) for generated
    strips = out[:, :LABEL_HEIGHT]
    assert not (strips[0] == strips[1]).all() and not (strips[1] == strips[2]).all()
    red = (strips[..., 0].astype(int) - strips[..., 2].astype(int)) > 100
    assert not red[:2].any() and red[2:].any(axis=(1, 2)).all()  # red captions on generated frames only


def test_gif_and_mp4_round_trip(tmp_path: Path) -> None:
    frames = side_by_side(*_pair(), context_frames=2, scale=2)
    gif = write_video(frames, tmp_path / "a.gif")
    assert Image.open(gif).n_frames == 5
    mp4 = write_video(frames, tmp_path / "a.mp4")
    with av.open(str(mp4)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 5 and decoded[0].shape[:2] == frames.shape[1:3]


def test_drift_plot_is_png(tmp_path: Path) -> None:
    path = plot_drift({"psnr": [30.0, 25.0, 20.0], "ssim": [0.9, 0.8, 0.7]}, tmp_path / "d.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(path).size[0] > Image.open(path).size[1]  # two panels side by side


def test_drift_panels_group_model_and_baselines() -> None:
    curves = {
        "psnr": [20.0, 18.0],
        "ssim": [0.5, 0.4],
        "untrained_psnr": [10.0, 10.0],
        "copy_last_psnr": [25.0, 22.0],
        "copy_last_ssim": [0.6, 0.5],
        "untrained_ssim": [0.01, 0.01],
        "lpips": [],  # unavailable: no panel
    }
    panels = drift_panels(curves)
    assert list(panels) == ["psnr", "ssim"]
    assert panels["psnr"] == [
        ("model", [20.0, 18.0]),
        ("copy last context frame", [25.0, 22.0]),
        ("untrained causal base", [10.0, 10.0]),
    ]
    assert [label for label, _ in panels["ssim"]] == [
        "model",
        "copy last context frame",
        "untrained causal base",
    ]


def test_drift_plot_with_baselines_has_one_panel_per_metric(tmp_path: Path) -> None:
    three = {"psnr": [20.0, 18.0], "copy_last_psnr": [25.0, 22.0], "untrained_psnr": [10.0, 10.0]}
    one = plot_drift({"psnr": [20.0, 18.0]}, tmp_path / "one.png")
    path = plot_drift(three, tmp_path / "three.png")
    assert Image.open(path).size == Image.open(one).size  # three curves share the psnr panel
    assert path.read_bytes() != one.read_bytes()  # ... and are drawn (with a legend)


def test_rollout_strip_rows_show_truth_model_and_shuffled_frames() -> None:
    """Row order and placement: the truth row holds the true frames, the model rows context + generated."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    gen = np.full((3, 3, 8, 8), 1.0, np.float32)  # white
    alt = np.full((3, 3, 8, 8), -1.0, np.float32)  # black
    strip = rollout_strip([("c0", truth, gen, alt)], context_frames=2, scale=1, gap=0)
    row_h = 8 + LABEL_HEIGHT
    assert strip.shape[0] == 3 * row_h
    split = 0  # gap=0: no extra space between context and future
    truth_row = strip[LABEL_HEIGHT:row_h]
    model_row = strip[row_h + LABEL_HEIGHT : 2 * row_h]
    alt_row = strip[2 * row_h + LABEL_HEIGHT : 3 * row_h]
    np.testing.assert_array_equal(truth_row[:, 8 * 4 + split : 8 * 5 + split], truth[4])
    np.testing.assert_array_equal(model_row[:, :8], truth[0])  # context is the true frames
    assert (model_row[:, 8 * 2 :] == 255).all() and (alt_row[:, 8 * 2 :] == 0).all()
    no_alt = rollout_strip([("c0", truth, gen, None)], context_frames=2, scale=1, gap=0)
    assert no_alt.shape[0] == 2 * row_h
