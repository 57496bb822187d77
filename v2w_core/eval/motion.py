"""Ego-motion agreement: does the generated view move the way the recorded one did?

PSNR-based controllability (:mod:`v2w_core.eval.controllability`) is blind to steering when a model blurs:
a blurred frame scores about the same under any action. In first-person and side-scrolling games the
commonest effect of an action is a translation of the view (a ViZDoom turn moves a 64×64 frame by ≈ 7 px,
``bench/action_signal.py``), so we measure it directly: for every step of a rollout, the horizontal shift
between consecutive frames (the last context frame → the first generated one, then generated → generated)
by phase correlation, for the truth and for the model. Keys:

  * ``motion_dx_truth_abs`` — mean |dx| of the recorded future (pixels): how much the view moves at all;
  * ``motion_dx_abs`` — mean |dx| of the generated future: a frozen or blurred view gives ≈ 0;
  * ``motion_dx_corr`` — Pearson correlation of generated and recorded dx over every step of every chunk:
    ≈ 1 when the model turns when and where the recorded actions turned, ≈ 0 when it ignores them.
    Absent (with a reason) when the recorded view never moves.

Phase correlation is hand-written on numpy's FFT (ten lines): no image-registration library is a
dependency, and an integer-pixel peak is all a turn needs.
"""

from __future__ import annotations

import numpy as np
import torch


def translation(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(dx, dy) in whole pixels with ``b ≈ a`` moved right by dx and down by dy (phase correlation of two
    (H, W) grey frames; the peak of the normalised cross-power spectrum)."""
    fa, fb = np.fft.fft2(a - a.mean()), np.fft.fft2(b - b.mean())
    cross = fb * np.conj(fa)
    corr = np.fft.ifft2(cross / (np.abs(cross) + 1e-6)).real
    dy, dx = np.unravel_index(int(corr.argmax()), corr.shape)
    h, w = corr.shape
    return int(dx - w if dx > w // 2 else dx), int(dy - h if dy > h // 2 else dy)


def frame_shifts(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """(dx, dy) between consecutive frames of (..., T, C, H, W) (any value range): shape (..., T - 1, 2)."""
    grey = np.asarray(frames, dtype=np.float64).mean(axis=-3)  # (..., T, H, W)
    grey = np.nan_to_num(grey, nan=0.0, posinf=0.0, neginf=0.0)  # degenerate outputs are output_health's
    flat = grey.reshape(-1, *grey.shape[-3:])
    out = np.array([[translation(clip[t], clip[t + 1]) for t in range(len(clip) - 1)] for clip in flat])
    return out.reshape(*grey.shape[:-3], grey.shape[-3] - 1, 2)


def horizontal_shifts(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """dx between consecutive frames of (..., T, C, H, W): shape (..., T - 1)."""
    return frame_shifts(frames)[..., 0]


def motion_agreement(
    last_context: torch.Tensor, truth: torch.Tensor, generated: torch.Tensor
) -> tuple[dict[str, float], str | None]:
    """Motion keys (module docstring) of (B, N, C, H, W) futures that follow (B, C, H, W) context frames;
    returns (metrics, reason ``motion_dx_corr`` is missing or None)."""
    if not (truth.shape == generated.shape and last_context.shape == truth[:, 0].shape):
        raise ValueError(
            f"motion: shapes differ: context {tuple(last_context.shape)}, truth {tuple(truth.shape)}, "
            f"generated {tuple(generated.shape)}"
        )
    start = last_context[:, None]
    dx_truth = horizontal_shifts(torch.cat([start, truth], dim=1)).ravel().astype(np.float64)
    dx_gen = horizontal_shifts(torch.cat([start, generated], dim=1)).ravel().astype(np.float64)
    out = {
        "motion_dx_truth_abs": float(np.abs(dx_truth).mean()),
        "motion_dx_abs": float(np.abs(dx_gen).mean()),
    }
    if dx_truth.std() == 0:
        return out, "the recorded view never moves horizontally: nothing to agree with"
    # a view that never moves agrees with nothing: correlation 0 rather than undefined
    out["motion_dx_corr"] = 0.0 if dx_gen.std() == 0 else float(np.corrcoef(dx_gen, dx_truth)[0, 1])
    return out, None


__all__ = ["frame_shifts", "horizontal_shifts", "motion_agreement", "translation"]
