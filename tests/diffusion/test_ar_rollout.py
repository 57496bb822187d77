"""Autoregressive rollout: streaming == full, guidance, alignment, determinism, input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusion_tiny import ACTION_DIM, SIZE, make_causal_model

from v2w_core.config import ConfigError
from v2w_core.diffusion.rollout import RolloutConfig, rollout
from v2w_core.models.causal_layers import CausalTemporalConv
from v2w_core.models.testing import tiny_world_model
from v2w_core.models.world_model import WorldModel

# Streaming and full differ only by float reassociation (attention over cached K/V vs. the whole
# sequence, a batch of one frame vs. the window); measured ~5e-6 abs on values of magnitude ~4.
TOL = {"rtol": 1e-4, "atol": 1e-4}
B, K, N = 2, 3, 3


def _inputs(seed: int = 0, b: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(b, K, 3, SIZE, SIZE, generator=g)
    actions = torch.randn(b, K + N - 1, ACTION_DIM, generator=g)
    return context, actions


def _run(model: WorldModel, context, actions, *, seed: int = 0, n: int = N, **cfg) -> torch.Tensor:
    cfg.setdefault("num_inference_steps", 3)
    return rollout(
        model, context, actions, n, RolloutConfig(**cfg), generator=torch.Generator().manual_seed(seed)
    )


def test_streaming_equals_full_with_sliding_window(causal_model: WorldModel) -> None:
    """window 4 with K = 3: the window is full from the first frame on and slides twice."""
    context, actions = _inputs()
    full = _run(causal_model, context, actions, mode="full", window=4)
    stream = _run(causal_model, context, actions, mode="streaming", window=4)
    assert full.shape == (B, N, 3, SIZE, SIZE)
    assert torch.isfinite(full).all()
    torch.testing.assert_close(stream, full, **TOL)


def test_streaming_equals_full_at_window_16(causal_model: WorldModel) -> None:
    """The paper's window: 15 context frames + the new one; the second frame slides the window."""
    g = torch.Generator().manual_seed(5)
    context = torch.randn(1, 15, 3, SIZE, SIZE, generator=g)
    actions = torch.randn(1, 16, ACTION_DIM, generator=g)
    full = _run(causal_model, context, actions, n=2, mode="full", num_inference_steps=2)
    stream = _run(causal_model, context, actions, n=2, mode="streaming", num_inference_steps=2)
    torch.testing.assert_close(stream, full, **TOL)


def test_streaming_equals_full_svd_family_discrete_actions() -> None:
    """The other diffusers family (frame-position embeddings, spatio-temporal blocks) and id actions."""
    model = tiny_world_model(
        "svd",
        action_space={"type": "discrete", "dim": 5},
        causal_mode="extrapolative",
        action_head_std=0.5,
        sample_size=(SIZE, SIZE),
    )
    g = torch.Generator().manual_seed(0)
    context = torch.randn(1, K, 3, SIZE, SIZE, generator=g)
    actions = torch.randint(0, 5, (1, K + 1), generator=g)
    full = _run(model, context, actions, n=2, mode="full", window=4, num_inference_steps=2)
    stream = _run(model, context, actions, n=2, mode="streaming", window=4, num_inference_steps=2)
    assert torch.isfinite(full).all()
    torch.testing.assert_close(stream, full, **TOL)


def _replay_without_history(self: CausalTemporalConv, x: torch.Tensor) -> torch.Tensor:
    """A broken streaming conv: the newest frame sees no past frames (the cache lost its history)."""
    return F.conv3d(x, self.weight[:, :, -1:], self.bias)


def test_streaming_equals_full_sees_the_temporal_conv_cache(
    causal_model: WorldModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The streaming == full tests catch a conv cache that drops its history, on this (perturbed) model.

    On the diffusers initialisation the same bug is invisible: the last conv of every UNet3D
    ``TemporalConvLayer`` starts at zero, so the layer is the identity whatever its causal convs and
    their cache do. Rollout tests on such a model (this file's, before v2w_core.models.testing) pass
    with the bug."""
    context, actions = _inputs(b=1)
    zero_init = tiny_world_model(
        action_space={"type": "continuous", "dim": ACTION_DIM},
        causal_mode="extrapolative",
        weight_std=0.0,  # diffusers' own initialisation: zero conv4
        action_head_std=0.5,
        sample_size=(SIZE, SIZE),
    )
    full = _run(causal_model, context, actions, n=2, mode="full", window=4)
    full_zero_init = _run(zero_init, context, actions, n=2, mode="full", window=4)
    torch.testing.assert_close(
        _run(causal_model, context, actions, n=2, mode="streaming", window=4), full, **TOL
    )

    monkeypatch.setattr(CausalTemporalConv, "_replay", _replay_without_history)
    broken = _run(causal_model, context, actions, n=2, mode="streaming", window=4)
    assert (broken - full).abs().max() > 100 * TOL["atol"], "a conv cache without history went unnoticed"
    broken_zero_init = _run(zero_init, context, actions, n=2, mode="streaming", window=4)
    torch.testing.assert_close(broken_zero_init, full_zero_init, **TOL)  # the zero-conv4 model cannot tell


def test_deterministic_under_seed_and_seed_matters(causal_model: WorldModel) -> None:
    context, actions = _inputs(b=1)
    a = _run(causal_model, context, actions, n=2)
    b = _run(causal_model, context, actions, n=2)
    c = _run(causal_model, context, actions, n=2, seed=1)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2


def test_guidance_scale_one_equals_no_guidance(causal_model: WorldModel) -> None:
    context, actions = _inputs(b=1)
    none = _run(causal_model, context, actions, n=2, guidance_scale=None)
    one = _run(causal_model, context, actions, n=2, guidance_scale=1.0)
    guided = _run(causal_model, context, actions, n=2, guidance_scale=2.5)
    torch.testing.assert_close(one, none, **TOL)
    assert (guided - none).abs().max() > 1e-2  # the newest action does matter to this model


def test_action_alignment(causal_model: WorldModel) -> None:
    """Generated frame K+j depends on a_{K+j-1}, not on later actions; entries past K+N-2 are ignored."""
    context, actions = _inputs(b=1)
    base = _run(causal_model, context, actions, n=2, guidance_scale=None)

    longer = torch.cat([actions, torch.randn(1, 4, ACTION_DIM)], dim=1)
    torch.testing.assert_close(_run(causal_model, context, longer, n=2, guidance_scale=None), base, **TOL)

    later = actions.clone()
    later[:, K] += 3.0  # a_K leads to frame K+1 only
    out = _run(causal_model, context, later, n=2, guidance_scale=None)
    torch.testing.assert_close(out[:, 0], base[:, 0], **TOL)
    assert (out[:, 1] - base[:, 1]).abs().max() > 1e-2

    newest = actions.clone()
    newest[:, K - 1] += 3.0  # a_{K-1} leads to frame K, the first generated one
    out = _run(causal_model, context, newest, n=2, guidance_scale=None)
    assert (out[:, 0] - base[:, 0]).abs().max() > 1e-2


def test_action_free_rollout(causal_model: WorldModel) -> None:
    context, _ = _inputs(b=1)
    out = _run(causal_model, context, None, n=1, num_inference_steps=2)
    assert out.shape == (1, 1, 3, SIZE, SIZE) and torch.isfinite(out).all()


def test_paper_history_noise_per_step(causal_model: WorldModel) -> None:
    """The paper's sampler (fresh history noise every DDIM step) runs on the full path and differs."""
    context, actions = _inputs(b=1)
    per_frame = _run(causal_model, context, actions, n=1, mode="full")
    per_step = _run(causal_model, context, actions, n=1, mode="full", history_noise="per_step")
    assert torch.isfinite(per_step).all()
    assert not torch.equal(per_frame, per_step)


def test_history_noise_level_zero_and_eta_zero(causal_model: WorldModel) -> None:
    context, actions = _inputs(b=1)
    full = _run(causal_model, context, actions, n=1, mode="full", history_noise_level=0, eta=0.0)
    stream = _run(causal_model, context, actions, n=1, history_noise_level=0, eta=0.0)
    torch.testing.assert_close(stream, full, **TOL)


def test_bad_inputs(causal_model: WorldModel) -> None:
    context, actions = _inputs()
    with pytest.raises(ValueError, match=r"actions too short.*a_0 … a_4"):
        _run(causal_model, context, actions[:, :-1])
    with pytest.raises(ValueError, match=r"\(B, K, C, H, W\)"):
        _run(causal_model, context[0], actions)
    with pytest.raises(ValueError, match="B = 2"):
        _run(causal_model, context, actions[:1])
    with pytest.raises(ValueError, match="num_frames"):
        _run(causal_model, context, actions, n=0)
    with pytest.raises(ValueError, match="continuous actions must have shape"):
        _run(causal_model, context, actions[..., :2])


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="mode='full'"):
        RolloutConfig(history_noise="per_step")
    with pytest.raises(ConfigError, match="num_inference_step"):
        RolloutConfig.from_dict({"num_inference_step": 10})
    with pytest.raises(ConfigError, match="window"):
        RolloutConfig.from_dict({"window": 1})
    assert RolloutConfig().num_inference_steps == 50 and RolloutConfig().history_noise_level == 20


def test_bidirectional_model_is_rejected() -> None:
    model = make_causal_model()
    model.config = model.config.model_copy(update={"causal_mode": "none"})
    context, actions = _inputs()
    with pytest.raises(ValueError, match="causalize"):
        _run(model, context, actions)
