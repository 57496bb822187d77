"""Degenerate generated frames: :func:`output_health` measures them (the evaluation's ``gen_*`` metrics),
:func:`degenerate_reason` judges them (the evaluation's ``v2w.degenerate`` tag and the registry's gate).

Rollouts reach the metrics already clamped to [-1, 1], so a value exactly at ±1 is one the clamp cut (or
uint8 0/255); outputs with any non-finite value or more than :data:`DEGENERATE_SATURATED_FRAC` saturated
are degenerate. Here, below both :mod:`v2w_core.eval` and :mod:`v2w_core.tracking`, because both use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

#: Outputs with more than this fraction of values at the range limits are degenerate (saturated noise).
DEGENERATE_SATURATED_FRAC = 0.5


def output_health(frames: np.ndarray | torch.Tensor) -> dict[str, float]:
    """``gen_nonfinite_frac`` and ``gen_saturated_frac`` of generated frames, over every value.

    Float frames are in model space ([-1, 1]): a value is saturated when ``|x| >= 1`` (at the limit, where
    the rollout's clamp puts everything it cut, or beyond it for unclamped outputs); uint8 frames: 0 or
    255. Non-finite values count as non-finite only (±inf is not also counted as saturated).
    """
    t = torch.as_tensor(frames)
    n = max(1, t.numel())
    if t.dtype == torch.uint8:
        return {"gen_nonfinite_frac": 0.0, "gen_saturated_frac": float(((t == 0) | (t == 255)).sum()) / n}
    t = t.double()
    finite = torch.isfinite(t)
    saturated = finite & (t.abs() >= 1.0)
    return {
        "gen_nonfinite_frac": float((~finite).sum()) / n,
        "gen_saturated_frac": float(saturated.sum()) / n,
    }


def degenerate_reason(metrics: Mapping[str, float]) -> str | None:
    """Why the outputs whose :func:`output_health` is in ``metrics`` are degenerate, or None if they are not
    (or were not measured)."""
    nonfinite = metrics.get("gen_nonfinite_frac")
    saturated = metrics.get("gen_saturated_frac")
    reasons = []
    if nonfinite is not None and (not math.isfinite(nonfinite) or nonfinite > 0):
        reasons.append(f"{nonfinite:.2%} of generated values are non-finite")
    if saturated is not None and (not math.isfinite(saturated) or saturated > DEGENERATE_SATURATED_FRAC):
        reasons.append(
            f"{saturated:.2%} of generated values sit at the range limits (> {DEGENERATE_SATURATED_FRAC:.0%})"
        )
    return "; ".join(reasons) or None


__all__ = ["DEGENERATE_SATURATED_FRAC", "degenerate_reason", "output_health"]
