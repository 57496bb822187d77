"""Action controllability: do the recorded actions explain the future better than other actions do?

From the same context and the same noise (same seed), a world model is rolled out under the recorded
actions and under a permutation of them (:func:`v2w_core.eval.rollouts.shuffled_actions`). Reported:

  * ``ctrl_mse_recorded`` / ``ctrl_mse_shuffled`` — error of each rollout against the ground truth;
  * ``ctrl_psnr_gain_db`` — PSNR(recorded) − PSNR(shuffled): > 0 when the recorded actions explain the
    future better than other actions; ≈ 0 for a model that ignores its actions;
  * ``ctrl_rollout_diff`` — mean absolute pixel difference between the two rollouts ([0, 1] units): how
    much the actions steer the future at all, whatever the ground truth. Exactly 0 means the actions had
    no effect (same seed ⇒ same noise).
"""

from __future__ import annotations

import numpy as np
import torch

from v2w_core.eval.metrics import psnr, to_unit


def controllability(
    truth: torch.Tensor | np.ndarray,
    recorded: torch.Tensor | np.ndarray,
    shuffled: torch.Tensor | np.ndarray,
) -> dict[str, float]:
    """Controllability measures of (..., C, H, W) futures (uint8, or float in [-1, 1])."""
    gt, a, b = to_unit(truth), to_unit(recorded), to_unit(shuffled)
    if not (gt.shape == a.shape == b.shape):
        raise ValueError(
            f"controllability: shapes differ {tuple(gt.shape)}, {tuple(a.shape)}, {tuple(b.shape)}"
        )
    mse_a = float((a - gt).double().pow(2).mean())
    mse_b = float((b - gt).double().pow(2).mean())
    psnr_a = float(psnr(a, gt).mean())
    psnr_b = float(psnr(b, gt).mean())
    return {
        "ctrl_mse_recorded": mse_a,
        "ctrl_mse_shuffled": mse_b,
        "ctrl_psnr_recorded": psnr_a,
        "ctrl_psnr_shuffled": psnr_b,
        "ctrl_psnr_gain_db": psnr_a - psnr_b,
        "ctrl_rollout_diff": float((a - b).abs().double().mean()),
    }


__all__ = ["controllability"]
