"""Frame and distribution metrics for world-model rollouts (no network weights needed here).

Conventions (those of the video-prediction literature the paper follows, DESIGN §1.5):
  * frames are compared as float RGB in [0, 1] (model outputs clamped from [-1, 1]);
  * PSNR and SSIM are computed **per frame** and then averaged over frames and episodes (not over one
    pooled MSE), so the per-step values are exactly the drift curve's points;
  * PSNR: ``10·log10(1 / MSE)`` with data range 1; a frame identical to its target (MSE = 0) is capped at
    :data:`PSNR_CAP_DB` = 20·log10(255) ≈ 48.13 dB, the PSNR of an error of one 8-bit level everywhere:
    closer than that is indistinguishable in the stored frames. (The first cap, 100 dB, let static chunks
    — a game paused on the same frame — dominate every mean: copy-last-frame scored 40.6 dB on the demo's
    eval split where its moving chunks score ≈ 25 dB.)
  * SSIM: Wang et al. 2004 with an 11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, "valid"
    filtering (no padding), mean over pixels and channels — the same definition as torchmetrics'
    ``structural_similarity_index_measure`` and scikit-image's ``gaussian_weights=True``;
  * Fréchet distance between Gaussians fitted to feature sets (FID on frame features, FVD on clip
    features): ``‖μ₁−μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2})`` in float64. The trace term
    uses the symmetric form, whose square root exists for any PSD pair, so no complex residue appears
    (scipy's ``sqrtm(Σ₁Σ₂)`` of the non-symmetric product needs an ε-ridge when Σ is singular). From
    feature sets with fewer samples than dimensions (every evaluation here: tens to hundreds of frames or
    clips against FID's 2048 and FVD's 400 features) the same value is computed in sample space, exactly
    (:func:`frechet_distance_from_features`);
  * degenerate outputs are measured by :mod:`v2w_core.output_health` (:func:`~v2w_core.output_health.
    output_health`, :func:`~v2w_core.output_health.degenerate_reason`): the fraction of non-finite
    generated values and of values at (or beyond) the range limits.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

PSNR_CAP_DB = 20.0 * math.log10(255.0)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def to_unit(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 [0, 255] or model-space float [-1, 1] frames → float32 in [0, 1] (same shape).

    uint8 is recognised by dtype; any float input is taken to be in [-1, 1] (the model's space).
    """
    t = torch.as_tensor(frames)
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    return ((t.float().clamp(-1.0, 1.0) + 1.0) / 2.0).clamp(0.0, 1.0)


def _as_nchw(x: torch.Tensor) -> torch.Tensor:
    """(..., C, H, W) → (N, C, H, W) with all leading dims flattened."""
    return x.reshape(-1, *x.shape[-3:])


def psnr(pred: torch.Tensor, target: torch.Tensor, *, cap_db: float = PSNR_CAP_DB) -> torch.Tensor:
    """Per-frame PSNR (dB) of (..., C, H, W) frames in [0, 1]; returns the leading shape (...)."""
    if pred.shape != target.shape:
        raise ValueError(f"psnr: shapes differ {tuple(pred.shape)} vs {tuple(target.shape)}")
    mse = (pred.double() - target.double()).pow(2).mean(dim=(-3, -2, -1))
    out = 10.0 * torch.log10(1.0 / mse.clamp_min(10.0 ** (-cap_db / 10.0)))
    return out.float()


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian taps (the separable SSIM window)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    window: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
    data_range: float = 1.0,
) -> torch.Tensor:
    """Per-frame SSIM of (..., C, H, W) frames; returns the leading shape (...).

    Frames smaller than the window are compared with a window shrunk to the frame (odd size) so tiny
    test resolutions still get a value; this is stated rather than silently padded.
    """
    if pred.shape != target.shape:
        raise ValueError(f"ssim: shapes differ {tuple(pred.shape)} vs {tuple(target.shape)}")
    lead = pred.shape[:-3]
    x, y = _as_nchw(pred).double(), _as_nchw(target).double()
    c = x.shape[1]
    size = min(window, x.shape[-2], x.shape[-1])
    if size % 2 == 0:
        size -= 1
    if size < window:
        logger.debug(
            "ssim: frames %s smaller than the %d window; using %d", tuple(x.shape[-2:]), window, size
        )
    g = gaussian_window(size, sigma).to(x.device)
    kh = g.view(1, 1, size, 1).repeat(c, 1, 1, 1)
    kw = g.view(1, 1, 1, size).repeat(c, 1, 1, 1)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(z, kh, groups=c), kw, groups=c)

    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).mean(dim=(-3, -2, -1)).float().reshape(lead)


# ----------------------------------------------------------------------------------- Fréchet distance
def _features64(features: np.ndarray | torch.Tensor) -> np.ndarray:
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feature_stats needs (N >= 2, D) features, got shape {f.shape}")
    return f


def feature_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of an (N, D) feature set, float64."""
    f = _features64(features)
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    """Symmetric square root of a (numerically) PSD matrix; tiny negative eigenvalues are clipped to 0."""
    sym = (m + m.T) / 2.0
    w, v = np.linalg.eigh(sym)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein²) distance between N(mu1, sigma1) and N(mu2, sigma2); see module docstring."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"frechet_distance: shape mismatch mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}"
        )
    r1 = _sqrt_psd(s1)
    inner = _sqrt_psd(r1 @ s2 @ r1)
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(inner))
    return max(value, 0.0)  # round-off can make identical sets give -1e-12


def frechet_distance_from_features(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets.

    With fewer samples than features (N₁ or N₂ < D) the trace term is computed in sample space, exactly:
    for the centred features A₁ (N₁×D) and A₂ (N₂×D), Σᵢ = AᵢᵀAᵢ/(Nᵢ−1), the nonzero eigenvalues of Σ₁Σ₂
    are those of BᵀB/((N₁−1)(N₂−1)) with B = A₂A₁ᵀ (XY and YX share them), so
    ``tr((Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}) = ‖A₂A₁ᵀ‖_* / √((N₁−1)(N₂−1))`` — one SVD of an N₂×N₁ matrix
    instead of two eigendecompositions of D×D ones (FID's D = 2048: ≈ 5 s each in float64 on two cores,
    most of an evaluation's metric time; ``bench/frechet.py``). With at least D samples on both sides the
    covariance form (:func:`frechet_distance`) is the cheaper one and is used.
    """
    fa, fb = _features64(a), _features64(b)
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"frechet_distance: feature sizes differ, {fa.shape[1]} vs {fb.shape[1]}")
    (na, d), nb = fa.shape, fb.shape[0]
    if not (np.isfinite(fa).all() and np.isfinite(fb).all()):
        return math.nan  # a degenerate model's NaN frames: no distance (output_health names the cause)
    if min(na, nb) >= d:
        return frechet_distance(*feature_stats(fa), *feature_stats(fb))
    mu_a, mu_b = fa.mean(axis=0), fb.mean(axis=0)
    ca, cb = fa - mu_a, fb - mu_b
    nuclear = float(np.linalg.svd(cb @ ca.T, compute_uv=False).sum())
    diff = mu_a - mu_b
    trace_a, trace_b = float(np.sum(ca * ca)) / (na - 1), float(np.sum(cb * cb)) / (nb - 1)
    value = float(diff @ diff) + trace_a + trace_b - 2.0 * nuclear / math.sqrt((na - 1) * (nb - 1))
    return max(value, 0.0)  # round-off can make identical sets give -1e-12


__all__ = [
    "PSNR_CAP_DB",
    "feature_stats",
    "frechet_distance",
    "frechet_distance_from_features",
    "gaussian_window",
    "psnr",
    "ssim",
    "to_unit",
]
