"""Metric correctness on known inputs: PSNR, SSIM, Fréchet distance, metric-network plumbing, controllability."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from eval_helpers import save_conv_net, save_lpips_net
from scipy.ndimage import correlate1d

from v2w_core.eval import features as fe
from v2w_core.eval.config import EvalConfig
from v2w_core.eval.controllability import controllability
from v2w_core.eval.evaluate import compute_metrics
from v2w_core.eval.metrics import (
    PSNR_CAP_DB,
    feature_stats,
    frechet_distance,
    frechet_distance_from_features,
    gaussian_window,
    psnr,
    ssim,
    to_unit,
)
from v2w_core.eval.rollouts import EvalChunk, RolloutResult
from v2w_core.output_health import degenerate_reason, output_health


def _images(n: int = 2, size: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    base = torch.stack([torch.sin(0.2 * xx + 0.1 * c * yy) for c in range(3)]) * 0.35 + 0.5
    return (base[None] + 0.05 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)


# ------------------------------------------------------------------------------------------------ PSNR
def test_psnr_of_known_mse() -> None:
    target = torch.zeros(2, 3, 3, 8, 8)
    pred = torch.full_like(target, 0.1)  # MSE 0.01 → 20 dB
    out = psnr(pred, target)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, torch.full((2, 3), 20.0))
    pred[1, 2] = 0.01  # MSE 1e-4 → 40 dB
    assert float(psnr(pred, target)[1, 2]) == pytest.approx(40.0, abs=1e-4)


def test_psnr_identical_is_capped_at_one_8bit_level() -> None:
    x = _images()
    assert torch.allclose(psnr(x, x), torch.tensor(PSNR_CAP_DB))
    one_level = (x + 1 / 255).clamp(max=1.0)  # off by one level (almost) everywhere: at the cap
    assert abs(PSNR_CAP_DB - 48.1308) < 1e-3
    assert float(psnr(one_level, x).min()) >= PSNR_CAP_DB - 0.5


def test_to_unit_conventions() -> None:
    u8 = torch.tensor([0, 255], dtype=torch.uint8)
    torch.testing.assert_close(to_unit(u8), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(to_unit(torch.tensor([-1.0, 1.0, 3.0])), torch.tensor([0.0, 1.0, 1.0]))


# ------------------------------------------------------------------------------------------------ SSIM
def _ssim_scipy(x: np.ndarray, y: np.ndarray) -> float:
    """Independent SSIM (Wang et al.): separable Gaussian via scipy, valid region, mean over channels."""
    g = gaussian_window().numpy()
    r = len(g) // 2

    def blur(z: np.ndarray) -> np.ndarray:
        return correlate1d(correlate1d(z, g, axis=0, mode="constant"), g, axis=1, mode="constant")[r:-r, r:-r]

    vals = []
    for c in range(x.shape[0]):
        a, b = x[c].astype(np.float64), y[c].astype(np.float64)
        mu_a, mu_b = blur(a), blur(b)
        saa, sbb, sab = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
        c1, c2 = 0.01**2, 0.03**2
        m = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
        vals.append(m.mean())
    return float(np.mean(vals))


def test_ssim_identical_is_one() -> None:
    x = _images()
    torch.testing.assert_close(ssim(x, x), torch.ones(2))


def test_ssim_matches_independent_implementations() -> None:
    x = _images(seed=1)
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    ours = ssim(x, y)
    for i in range(2):
        assert float(ours[i]) == pytest.approx(_ssim_scipy(x[i].numpy(), y[i].numpy()), abs=1e-6)
    tm = pytest.importorskip("torchmetrics.functional.image")
    # torchmetrics averages a reflect-padded "same" map; the valid region (our and skimage's convention)
    # is its full map without the 5-pixel border.
    _, full = tm.structural_similarity_index_measure(
        y.double(), x.double(), data_range=1.0, reduction="none", return_full_image=True
    )
    ref = full[..., 5:-5, 5:-5].mean(dim=(1, 2, 3))
    torch.testing.assert_close(ours, ref.float(), atol=1e-5, rtol=0)


def test_noise_scores_monotonically_worse() -> None:
    x = _images(n=1)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(x.shape, generator=g)
    ps, ss = [], []
    for sigma in (0.01, 0.05, 0.1, 0.3):
        y = (x + sigma * noise).clamp(0, 1)
        ps.append(float(psnr(y, x)[0]))
        ss.append(float(ssim(y, x)[0]))
    assert ps == sorted(ps, reverse=True) and len(set(ps)) == 4
    assert ss == sorted(ss, reverse=True) and len(set(ss)) == 4


# ---------------------------------------------------------------------------------- Fréchet distance
def test_frechet_identical_sets_is_zero() -> None:
    f = np.random.default_rng(0).normal(size=(64, 5))
    assert frechet_distance_from_features(f, f) == pytest.approx(0.0, abs=1e-9)


def test_frechet_isotropic_closed_form() -> None:
    d = 6
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    a, b = 1.0, 2.0
    expected = float(np.sum((mu1 - mu2) ** 2) + d * (a - b) ** 2)  # ‖Δμ‖² + d(σ₁−σ₂)²
    got = frechet_distance(mu1, a**2 * np.eye(d), mu2, b**2 * np.eye(d))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_general_covariances_match_scipy_sqrtm() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    s1, s2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)  # non-commuting SPD matrices
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real  # the pytorch-fid formula
    expected = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_of_samples_approaches_closed_form() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 1.0, size=(20000, 3))
    y = rng.normal(1.0, 1.5, size=(20000, 3))
    assert frechet_distance_from_features(x, y) == pytest.approx(3 * 1.0 + 3 * 0.5**2, rel=0.05)


@pytest.mark.parametrize("na,nb,d", [(32, 32, 2048), (14, 9, 400), (5, 40, 64), (80, 80, 16)])
def test_frechet_from_features_in_sample_space_equals_the_covariance_form(na, nb, d) -> None:
    """Fewer samples than features: the sample-space trace (an SVD of A₂A₁ᵀ) gives the D×D form's value;
    (80, 80, 16) is the covariance form itself."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(na, d))
    b = rng.normal(0.3, 1.2, size=(nb, d)) @ rng.normal(size=(d, d)) / np.sqrt(d)  # correlated features
    expected = frechet_distance(*feature_stats(a), *feature_stats(b))
    assert frechet_distance_from_features(a, b) == pytest.approx(expected, rel=1e-6)


def test_frechet_from_features_of_a_scaled_copy_is_exact() -> None:
    """b = 2a (32 samples of 2048 features, FID's size): Σ_b = 4Σ_a, so the distance is exactly
    ‖μ‖² + tr Σ_a. The D×D eigendecompositions of a rank-31 covariance miss it by ≈ 1e-3 (6e-7 relative);
    the sample-space form does not."""
    a = np.random.default_rng(4).normal(size=(32, 2048))
    mu, sigma = feature_stats(a)
    expected = float(mu @ mu + np.trace(sigma))
    assert frechet_distance_from_features(a, 2.0 * a) == pytest.approx(expected, rel=1e-12)


def test_frechet_from_features_decomposes_no_feature_sized_matrix_when_samples_are_fewer(monkeypatch) -> None:
    import v2w_core.eval.metrics as metrics_mod

    calls: list[tuple[int, ...]] = []
    real = metrics_mod._sqrt_psd
    monkeypatch.setattr(metrics_mod, "_sqrt_psd", lambda m: calls.append(m.shape) or real(m))
    rng = np.random.default_rng(5)
    frechet_distance_from_features(rng.normal(size=(16, 400)), rng.normal(size=(300, 400)))
    assert calls == []  # 16 < 400: sample space
    frechet_distance_from_features(rng.normal(size=(40, 8)), rng.normal(size=(30, 8)))
    assert calls == [(8, 8), (8, 8)]  # enough samples on both sides: the covariance form
    nan = rng.normal(size=(16, 400))
    nan[3, 7] = np.nan  # a degenerate model's frames: no distance, as the covariance form gave
    assert math.isnan(frechet_distance_from_features(nan, rng.normal(size=(16, 400))))
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance_from_features(rng.normal(size=(4, 8)), rng.normal(size=(4, 9)))


# ---------------------------------------------------------------------------- unavailable metric nets
def test_metric_nets_unavailable_say_why(tmp_path: Path) -> None:
    none = fe.load_metric_net(None, "frame")
    assert isinstance(none, fe.Unavailable) and "no frame network weights configured" in none.reason
    assert str(none).startswith("unavailable: ")
    missing = fe.load_metric_net(str(tmp_path / "nope.safetensors"), "video")
    assert isinstance(missing, fe.Unavailable) and "cannot read weights" in missing.reason
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    assert "not a readable safetensors" in fe.load_metric_net(str(junk), "frame").reason
    inception = save_conv_net(tmp_path / "inc.safetensors", 2, arch="inception_v3_fid")
    assert "do not fit architecture inception_v3_fid" in fe.load_metric_net(inception, "frame").reason
    video = save_conv_net(tmp_path / "v.safetensors", 3)
    assert "computes video features, not frame" in fe.load_metric_net(video, "frame").reason


def _chunks_and_results(noise: float, n: int = 3, horizon: int = 3) -> tuple[list, list]:
    """Constructed chunks and 'rollouts' = ground truth + noise (model space)."""
    g = torch.Generator().manual_seed(7)
    chunks, results = [], []
    for i in range(n):
        frames = (torch.rand(2 + horizon, 32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
        truth = torch.from_numpy(frames[2:]).permute(0, 3, 1, 2).float() / 127.5 - 1
        gen = (truth + noise * torch.randn(truth.shape, generator=g)).clamp(-1, 1).numpy()
        chunks.append(EvalChunk(f"e{i}@0", f"e{i}", 0, frames, np.zeros((4, 2), np.float32)))
        results.append(RolloutResult(f"e{i}@0", f"e{i}", gen, shuffled=None))
    return chunks, results


def test_compute_metrics_reports_unavailable_without_weights() -> None:
    chunks, results = _chunks_and_results(0.1)
    off = {"lpips": None, "fid": None, "fvd": None}
    cfg = EvalConfig.from_dict(
        {"context_frames": 2, "horizon": 3, "controllability": False, "metric_weights": off}
    )
    report = compute_metrics(chunks, results, cfg)
    assert set(report.unavailable) == {"lpips_mean", "fid", "fvd"}
    assert not {"lpips_mean", "fid", "fvd"} & set(report.metrics)  # no made-up numbers
    assert len(report.drift["psnr"]) == 3 and len(report.drift["ssim"]) == 3


def test_default_weights_give_published_metrics_and_fvd_says_when_clips_are_short() -> None:
    """The default ("auto") networks are the published ones; FVD's convention needs 16-frame clips."""
    chunks, results = _chunks_and_results(0.1)
    cfg = EvalConfig.from_dict({"context_frames": 2, "horizon": 3, "controllability": False})
    report = compute_metrics(chunks, results, cfg)
    assert {"lpips_mean", "fid", "copy_last_lpips_mean", "copy_last_fid"} <= set(report.metrics)
    assert "lpips_alexnet" in report.weights["lpips"] and "inception_v3_fid" in report.weights["fid"]
    assert set(report.unavailable) == {"fvd"}
    assert "FVD needs clips of 16 frames" in report.unavailable["fvd"] and "2 + 3 = 5" in report.unavailable["fvd"]


def test_fid_fvd_lpips_plumbing_with_random_weight_networks(tmp_path: Path) -> None:
    """PLUMBING test with random-weight networks: identical → 0 and more noise → larger distances.
    These numbers are not the published FID/FVD/LPIPS."""
    weights = {
        "fid": save_conv_net(tmp_path / "fid.safetensors", 2),
        "fvd": save_conv_net(tmp_path / "fvd.safetensors", 3),
        "lpips": save_lpips_net(tmp_path / "lpips.safetensors"),
    }
    cfg = EvalConfig.from_dict(
        {"context_frames": 2, "horizon": 3, "controllability": False, "metric_weights": weights}
    )
    values = {}
    for noise in (0.0, 0.2, 0.6):
        report = compute_metrics(*_chunks_and_results(noise), cfg)
        assert not report.unavailable, report.unavailable
        values[noise] = report.metrics
        assert len(report.drift["lpips"]) == 3
        assert "sha256" in report.weights["fid"]
    assert values[0.0]["fid"] == pytest.approx(0.0, abs=1e-6)
    assert values[0.0]["fvd"] == pytest.approx(0.0, abs=1e-6)
    assert values[0.0]["lpips_mean"] == pytest.approx(0.0, abs=1e-6)
    for key in ("fid", "fvd", "lpips_mean"):
        assert values[0.0][key] < values[0.2][key] < values[0.6][key], key
    assert values[0.2]["psnr_mean"] > values[0.6]["psnr_mean"]


# ------------------------------------------------------------------------------------ controllability
def test_controllability_measure_on_constructed_rollouts() -> None:
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    recorded = (truth + 0.05 * torch.randn(truth.shape, generator=g)).clamp(-1, 1)
    shuffled = (truth + 0.5 * torch.randn(truth.shape, generator=g)).clamp(-1, 1)
    out = controllability(truth, recorded, shuffled)
    assert out["ctrl_mse_recorded"] < out["ctrl_mse_shuffled"]
    assert out["ctrl_psnr_gain_db"] > 5
    assert out["ctrl_rollout_diff"] > 0
    same = controllability(truth, recorded, recorded)
    assert same["ctrl_rollout_diff"] == 0.0 and same["ctrl_psnr_gain_db"] == 0.0
    assert math.isfinite(same["ctrl_psnr_recorded"])


# ------------------------------------------------------------------------------ copy-last-frame baseline
def test_copy_last_baseline_per_horizon_step() -> None:
    """copy_last_* = frame K−1 repeated over the horizon, scored like the model, per step and mean."""
    chunks, results = _chunks_and_results(0.1)
    cfg = EvalConfig.from_dict({"context_frames": 2, "horizon": 3, "controllability": False})
    report = compute_metrics(chunks, results, cfg)
    truth = torch.stack([to_unit(torch.from_numpy(c.frames[2:]).permute(0, 3, 1, 2)) for c in chunks])
    last = torch.stack([to_unit(torch.from_numpy(c.frames[1]).permute(2, 0, 1)) for c in chunks])
    copy = last[:, None].repeat(1, 3, 1, 1, 1)  # (B, N, C, H, W), built independently of the code
    p, s = psnr(copy, truth), ssim(copy, truth)
    assert report.drift["copy_last_psnr"] == pytest.approx(p.mean(0).tolist(), abs=1e-5)
    assert report.drift["copy_last_ssim"] == pytest.approx(s.mean(0).tolist(), abs=1e-6)
    assert report.metrics["copy_last_psnr_mean"] == pytest.approx(float(p.mean()), abs=1e-5)
    assert report.metrics["copy_last_ssim_mean"] == pytest.approx(float(s.mean()), abs=1e-6)
    # random frames: the model (truth + small noise) beats copying the last frame by far
    assert report.metrics["psnr_mean"] > report.metrics["copy_last_psnr_mean"] + 5
    assert report.per_chunk[0]["copy_last_psnr"] == pytest.approx(float(p[0].mean()), abs=1e-5)


def test_copy_last_baseline_is_perfect_on_a_static_scene() -> None:
    frames = np.full((5, 32, 32, 3), 90, np.uint8)
    frames[1] = 120  # the last context frame; the future repeats it
    frames[2:] = 120
    chunks = [EvalChunk("s@0", "s", 0, frames, np.zeros((4, 2), np.float32))]
    gen = np.zeros((3, 3, 32, 32), np.float32)  # a model that predicts mid-grey
    results = [RolloutResult("s@0", "s", gen)]
    cfg = EvalConfig.from_dict({"context_frames": 2, "horizon": 3, "controllability": False})
    report = compute_metrics(chunks, results, cfg)
    assert report.drift["copy_last_psnr"] == pytest.approx([PSNR_CAP_DB] * 3)
    assert report.metrics["copy_last_ssim_mean"] == pytest.approx(1.0)
    assert report.metrics["psnr_mean"] < 40


def test_copy_last_baseline_with_metric_networks(tmp_path: Path) -> None:
    """PLUMBING (random-weight networks): LPIPS/FID/FVD of the copy-last predictor are computed too."""
    weights = {
        "fid": save_conv_net(tmp_path / "fid.safetensors", 2),
        "fvd": save_conv_net(tmp_path / "fvd.safetensors", 3),
        "lpips": save_lpips_net(tmp_path / "lpips.safetensors"),
    }
    cfg = EvalConfig.from_dict(
        {"context_frames": 2, "horizon": 3, "controllability": False, "metric_weights": weights}
    )
    report = compute_metrics(*_chunks_and_results(0.0), cfg)
    for key in ("copy_last_lpips_mean", "copy_last_fid", "copy_last_fvd"):
        assert report.metrics[key] > 0, key  # random frames: copying is not the truth
    assert report.metrics["lpips_mean"] == pytest.approx(0.0, abs=1e-6)  # the "model" is the truth
    assert len(report.drift["copy_last_lpips"]) == 3


# ------------------------------------------------------------------------------------ degenerate outputs
def test_output_health_fractions() -> None:
    x = np.array([0.0, 1.0, -1.0, 0.5, np.nan, np.inf, 1.2, -0.99], np.float32)
    h = output_health(x)
    assert h["gen_nonfinite_frac"] == pytest.approx(2 / 8)
    assert h["gen_saturated_frac"] == pytest.approx(3 / 8)  # 1.0, -1.0 and 1.2 (unclamped, beyond)
    u8 = np.array([0, 255, 3, 128], np.uint8)
    assert output_health(u8) == {"gen_nonfinite_frac": 0.0, "gen_saturated_frac": 0.5}
    assert degenerate_reason({"gen_nonfinite_frac": 0.0, "gen_saturated_frac": 0.5}) is None  # not > 50 %
    assert "range limits" in degenerate_reason({"gen_nonfinite_frac": 0.0, "gen_saturated_frac": 0.51})
    assert "non-finite" in degenerate_reason({"gen_nonfinite_frac": 1e-6, "gen_saturated_frac": 0.0})
    assert degenerate_reason({"psnr_mean": 20.0}) is None  # not measured: not flagged here


def test_compute_metrics_flags_saturated_and_nonfinite_outputs() -> None:
    chunks, results = _chunks_and_results(0.1)
    cfg = EvalConfig.from_dict({"context_frames": 2, "horizon": 3, "controllability": False})
    healthy = compute_metrics(chunks, results, cfg)
    assert healthy.degenerate is None
    assert healthy.metrics["gen_nonfinite_frac"] == 0.0
    assert 0.0 < healthy.metrics["gen_saturated_frac"] < 0.1  # clamped noise at 0/255 pixels only

    g = torch.Generator().manual_seed(0)
    noise = [  # saturated RGB noise, as the model produced: every value at ±1
        RolloutResult(
            r.chunk_id,
            r.episode_id,
            torch.randint(0, 2, r.generated.shape, generator=g).float().numpy() * 2 - 1,
        )
        for r in results
    ]
    sat = compute_metrics(chunks, noise, cfg)
    assert sat.metrics["gen_saturated_frac"] == 1.0 and "range limits" in sat.degenerate

    nan = [RolloutResult(r.chunk_id, r.episode_id, r.generated.copy()) for r in results]
    nan[1].generated[0, 0, 0, 0] = np.nan
    bad = compute_metrics(chunks, nan, cfg)
    assert bad.metrics["gen_nonfinite_frac"] == pytest.approx(1 / sum(r.generated.size for r in nan))
    assert "non-finite" in bad.degenerate
