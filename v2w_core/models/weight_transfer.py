"""Weight transfer of temporal convolution kernels: bidirectional -> causal (Vid2World §1.1).

Pure functions on kernels, no layers and no model. The formulas are the paper's (Huang et al., 2025,
"Vid2World", arXiv:2505.14357, causalization of temporal convolutions), as restated in DESIGN §1.1:

A bidirectional temporal kernel of odd size k = 2m+1 has taps w_j, j = -m..m, multiplying x_{t+j}. The
causal kernel has L taps w'_j, j = -L+1..0, multiplying x_{t+j} (left padding only), with L = k, or
L = max(k, p) for the extrapolative rule. The three rules (:data:`~v2w_core.config.CausalMode`):

(T1) shift:          w'_{j-m} = w_j                   (the same taps on the window ending at t)
(T2) masked:         w'_j = w_j · 1[j <= 0]            (future taps dropped)
(T3) extrapolative:  w'_j = w_j · 1[j <= 0] + Σ_{i=1..m} γ_{i,j} w_i   for j in the past window,
                     γ_{i,j} = 1/p + (i - μ)(τ_j - μ) / S,
                     τ_j ∈ {-p+1, ..., 0}, μ = mean(τ), S = Σ_j (τ_j - μ)²

(T3) replaces each future input x_{t+i} by its least-squares linear extrapolation Σ_j γ_{i,j} x_{t+τ_j}
from the last p frames and folds it onto those taps. k = 3, p = 2 gives [0, w₋₁ - w₊₁, w₀ + 2w₊₁].
Bias is unchanged by all three. Exactness property (tests/models/test_causalize_weights.py): on an input
linear in time the extrapolative kernel reproduces the bidirectional one away from the left edge.
"""

from __future__ import annotations

import torch

from v2w_core.config import CAUSAL_MODES, CausalMode

__all__ = [
    "CAUSAL_MODES",
    "CausalMode",
    "causal_kernel_length",
    "check_causal_mode",
    "extrapolation_coefficients",
    "transfer_temporal_weight",
]


def check_causal_mode(causal_mode: str) -> None:
    """Raise ``ValueError`` unless ``causal_mode`` is one of :data:`CAUSAL_MODES`."""
    if causal_mode not in CAUSAL_MODES:
        raise ValueError(f"unknown causal mode {causal_mode!r}; expected one of {', '.join(CAUSAL_MODES)}")


def extrapolation_coefficients(num_future: int, window: int) -> torch.Tensor:
    """γ[i-1, j] = weight of past frame τ_j in the least-squares linear extrapolation of x_{t+i} (T3).

    Past offsets τ_j = -window+1, ..., 0 (column j in that order), future offsets i = 1..num_future:
    γ_{i,j} = 1/p + (i - μ)(τ_j - μ) / S with μ = mean(τ), S = Σ (τ_j - μ)². A window of 1 has no slope
    to fit, so it extrapolates by holding the last frame (γ = 1). Float64, shape (num_future, window).
    """
    if window < 1:
        raise ValueError(f"extrapolation_window must be >= 1, got {window}")
    tau = torch.arange(-window + 1, 1, dtype=torch.float64)
    future = torch.arange(1, num_future + 1, dtype=torch.float64)
    if window == 1:
        return torch.ones(num_future, 1, dtype=torch.float64)
    mu = tau.mean()
    s = ((tau - mu) ** 2).sum()
    return 1.0 / window + (future[:, None] - mu) * (tau[None, :] - mu) / s


def causal_kernel_length(kernel: int, causal_mode: CausalMode, window: int) -> int:
    """Length L of the causal kernel (taps t-L+1 .. t): k, or p when the extrapolation window is longer."""
    check_causal_mode(causal_mode)
    return max(kernel, window) if causal_mode == "extrapolative" else kernel


def transfer_temporal_weight(weight: torch.Tensor, causal_mode: CausalMode, window: int = 2) -> torch.Tensor:
    """Turn a centred temporal kernel (..., k, ...) on dim 2 into a causal one of length L.

    ``weight`` is a Conv3d weight (out, in, k, kh, kw) whose tap a multiplies x_{t+a-m}, m = (k-1)//2.
    The result's tap a multiplies x_{t+a-(L-1)}. ``causal_mode`` picks the rule:

    * shift (T1): the same taps on the window ending at t: [w₋ₘ..wₘ] on [t-2m..t];
    * masked (T2): future taps dropped: w'_j = w_j for j <= 0;
    * extrapolative (T3): each future x_{t+i} replaced by its linear extrapolation from the last
      ``window`` = p frames and folded onto those taps: w'_j = w_j·1[j <= 0] + Σ_i γ_{i,j} w_i.

    Computed in float64, returned in ``weight``'s dtype.
    """
    check_causal_mode(causal_mode)
    k = weight.shape[2]
    if k % 2 != 1:
        raise ValueError(f"temporal kernel size must be odd to have a centre tap, got {k}")
    m = (k - 1) // 2
    length = causal_kernel_length(k, causal_mode, window)
    w = weight.detach().to(torch.float64)
    out = torch.zeros((*w.shape[:2], length, *w.shape[3:]), dtype=torch.float64, device=w.device)

    def tap(offset: int) -> int:  # index in the causal kernel of input offset (<= 0) from t
        return offset + length - 1

    if causal_mode == "shift":
        out[:, :, length - k :] = w
    else:
        for j in range(-m, 1):
            out[:, :, tap(j)] += w[:, :, j + m]
        if causal_mode == "extrapolative" and m > 0:
            gamma = extrapolation_coefficients(m, window)
            for i in range(1, m + 1):
                for col, tau in enumerate(range(-window + 1, 1)):
                    out[:, :, tap(tau)] += gamma[i - 1, col] * w[:, :, i + m]
    return out.to(weight.dtype)
