"""The schedule is diffusers' (DESIGN §1.2), applied with a timestep per frame."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from v2w_core.config import ConfigError
from v2w_core.diffusion.schedule import NoiseSchedule, NoiseScheduleConfig, ddim_step


@pytest.fixture(scope="module")
def sched() -> NoiseSchedule:
    return NoiseSchedule()


def test_config_matches_design(sched: NoiseSchedule) -> None:
    cfg = sched.scheduler.config
    assert cfg.num_train_timesteps == 1000
    assert cfg.beta_schedule == "scaled_linear"
    assert math.isclose(cfg.beta_start, 0.00085) and math.isclose(cfg.beta_end, 0.012)
    assert cfg.rescale_betas_zero_snr is True
    assert cfg.prediction_type == "v_prediction"
    assert cfg.timestep_spacing == "trailing"
    # zero terminal SNR: the last step is pure noise
    assert sched.alphas_cumprod[-1].item() == 0.0
    assert sched.alphas_cumprod[0].item() > 0.999


def test_unknown_config_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match="beta_stat"):
        NoiseScheduleConfig.from_dict({"beta_stat": 0.1})


def test_ddim_shares_betas_and_uses_trailing_spacing(sched: NoiseSchedule) -> None:
    ddim = sched.ddim(50)
    assert torch.equal(ddim.alphas_cumprod, sched.alphas_cumprod)
    assert ddim.timesteps[0].item() == 999 and ddim.timesteps[-1].item() == 19
    assert len(ddim.timesteps) == 50
    with pytest.raises(ValueError, match="num_inference_steps"):
        sched.ddim(0)


def _per_frame_loop(fn, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x0)
    for b in range(x0.shape[0]):
        for f in range(x0.shape[1]):
            out[b, f] = fn(x0[b, f : f + 1], noise[b, f : f + 1], t[b, f : f + 1])[0]
    return out


def test_add_noise_and_velocity_per_frame_match_loop(sched: NoiseSchedule) -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 5, 2, 4, 4, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, 1000, (3, 5), generator=g)
    t[0, 0], t[1, 2] = 0, 999
    xt = sched.add_noise(x0, noise, t)
    v = sched.get_velocity(x0, noise, t)
    torch.testing.assert_close(xt, _per_frame_loop(sched.scheduler.add_noise, x0, noise, t), rtol=0, atol=0)
    torch.testing.assert_close(v, _per_frame_loop(sched.scheduler.get_velocity, x0, noise, t), rtol=0, atol=0)
    # closed form, to make sure the flattening did not mix frames and timesteps
    a = sched.alphas_cumprod[t].view(3, 5, 1, 1, 1)
    torch.testing.assert_close(xt, a.sqrt() * x0 + (1 - a).sqrt() * noise)
    torch.testing.assert_close(v, a.sqrt() * noise - (1 - a).sqrt() * x0)
    assert torch.equal(xt[1, 2], noise[1, 2])  # t = 999 is pure noise at zero terminal SNR


def test_per_frame_shape_errors(sched: NoiseSchedule) -> None:
    x0 = torch.zeros(2, 3, 1, 2, 2)
    with pytest.raises(ValueError, match=r"\(B, F\)"):
        sched.add_noise(x0, x0, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        sched.add_noise(x0, x0, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="B, F, C, H, W"):
        sched.get_velocity(x0[0], x0[0], torch.zeros(3, 1, dtype=torch.long))


def test_diffusers_ddim_step_nans_at_zero_snr_with_eta_one(sched: NoiseSchedule) -> None:
    """The reason :func:`ddim_step` exists; if diffusers fixes this, ddim_step can go."""
    ddim = sched.ddim(50)
    x = torch.randn(2, 3)
    out = ddim.step(torch.randn(2, 3), 999, x, eta=1.0, variance_noise=torch.randn(2, 3)).prev_sample
    ours = ddim_step(ddim, torch.randn(2, 3), 999, x, eta=1.0, variance_noise=torch.randn(2, 3))
    assert torch.isnan(out).any()
    assert torch.isfinite(ours).all()


@pytest.mark.parametrize("steps", [1, 4, 50])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_step_matches_diffusers(sched: NoiseSchedule, steps: int, eta: float, clip: bool) -> None:
    cfg = NoiseScheduleConfig(clip_sample=clip)
    ddim = NoiseSchedule(cfg).ddim(steps)
    ref = DDIMScheduler(**cfg.diffusers_kwargs(), set_alpha_to_one=True)
    ref.set_timesteps(steps)
    g = torch.Generator().manual_seed(1)
    compared = 0
    for t in ddim.timesteps.tolist():
        x = torch.randn(2, 3, 4, 4, generator=g)
        v = torch.randn(x.shape, generator=g)
        z = torch.randn(x.shape, generator=g)
        ours = ddim_step(ddim, v, t, x, eta=eta, variance_noise=z if eta > 0 else None)
        theirs = ref.step(v, t, x, eta=eta, variance_noise=z if eta > 0 else None).prev_sample
        assert torch.isfinite(ours).all()
        if torch.isfinite(theirs).all():
            torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
            compared += 1
    assert compared >= max(1, steps - 1)


def test_ddim_chain_recovers_x0_with_oracle_velocity(sched: NoiseSchedule) -> None:
    """A model that predicts the true v for a fixed x0 must land exactly on x0 (η = 0 and η = 1)."""
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(1, 1, 3, 4, 4, generator=g)
    for eta in (0.0, 1.0):
        ddim = sched.ddim(10)
        x = torch.randn(x0.shape, generator=g)
        for t in ddim.timesteps.tolist():
            tt = torch.full((1, 1), t, dtype=torch.long)
            a = sched.alphas_cumprod[t]
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            v = sched.get_velocity(x0, eps, tt)
            x = ddim_step(ddim, v, t, x, eta=eta, variance_noise=torch.randn(x.shape, generator=g))
        torch.testing.assert_close(x, x0, rtol=1e-4, atol=1e-4)
