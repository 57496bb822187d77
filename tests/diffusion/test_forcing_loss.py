"""Diffusion-forcing and bidirectional pretraining losses on a real tiny world model."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from diffusion_tiny import ACTION_DIM, SIZE, make_causal_model, make_model

from v2w_core.diffusion.losses import bidirectional_pretrain_loss, diffusion_forcing_loss, forcing_timesteps
from v2w_core.diffusion.schedule import NoiseSchedule
from v2w_core.models.actions import align_actions, sample_action_keep_mask
from v2w_core.models.world_model import WorldModel


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule()


class Recorder:
    """Captures the inputs of the real model's forward (a hook, not a mock: the model still runs)."""

    def __init__(self, model: WorldModel) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls.append((args, kwargs))

    def inputs(self) -> list[Any]:
        args, kwargs = self.calls[-1]
        names = ["x", "timesteps", "actions", "action_mask"]
        values = list(args) + [None] * (4 - len(args))
        for i, name in enumerate(names):
            if name in kwargs:
                values[i] = kwargs[name]
        return values


def _clip(b: int = 2, f: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, f, 3, SIZE, SIZE, generator=g), torch.randn(b, f, ACTION_DIM, generator=g)


def test_forcing_loss_per_frame_timesteps_and_aligned_dropped_actions(
    causal_model: WorldModel, schedule: NoiseSchedule
) -> None:
    x0, actions = _clip()
    rec = Recorder(causal_model)
    try:
        with torch.no_grad():
            loss, stats = diffusion_forcing_loss(
                causal_model, x0, actions, schedule, generator=torch.Generator().manual_seed(3)
            )
        x_t, t, a, mask = rec.inputs()
    finally:
        rec.handle.remove()

    # replay the documented draw order: timesteps, noise, keep-mask
    g = torch.Generator().manual_seed(3)
    t_ref = torch.randint(0, 1000, (2, 6), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    keep = sample_action_keep_mask((2, 6), 0.2, generator=g)
    assert torch.equal(t, t_ref)
    assert len(set(t.flatten().tolist())) > 6  # independent per frame, not per clip
    aligned, align_mask = align_actions(actions)
    assert torch.equal(a, aligned) and torch.equal(a[:, 1:], actions[:, :-1])
    assert torch.equal(mask, align_mask & keep) and not mask[:, 0].any()
    torch.testing.assert_close(x_t, schedule.add_noise(x0, noise, t_ref))
    with torch.no_grad():
        pred = causal_model(x_t, t, a, mask)
    torch.testing.assert_close(loss, F.mse_loss(pred, schedule.get_velocity(x0, noise, t_ref)))
    assert set(stats) == {"loss", "t_mean", "action_keep_frac"}
    assert math.isclose(stats["action_keep_frac"], mask.float().mean().item())


def test_forcing_drop_rate_is_about_point_two() -> None:
    keep = sample_action_keep_mask((64, 16), 0.2, generator=torch.Generator().manual_seed(0))
    assert abs((~keep).float().mean().item() - 0.2) < 0.03


def test_forcing_loss_is_seeded(causal_model: WorldModel, schedule: NoiseSchedule) -> None:
    x0, actions = _clip(b=1, f=4)
    with torch.no_grad():
        runs = [
            diffusion_forcing_loss(
                causal_model, x0, actions, schedule, generator=torch.Generator().manual_seed(s)
            )[0]
            for s in (7, 7, 8)
        ]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_pretrain_loss_one_timestep_per_clip_no_actions(schedule: NoiseSchedule) -> None:
    base = make_model(action_dim=None)  # the bidirectional base has no actions
    x0, _ = _clip(b=3, f=5)
    rec = Recorder(base)
    try:
        with torch.no_grad():
            loss, stats = bidirectional_pretrain_loss(
                base, x0, schedule, generator=torch.Generator().manual_seed(1)
            )
        x_t, t, a, mask = rec.inputs()
    finally:
        rec.handle.remove()
    assert a is None and mask is None
    assert t.shape == (3, 5)
    assert (t == t[:, :1]).all()  # one t per clip, broadcast to every frame
    assert len(set(t[:, 0].tolist())) == 3  # but independent across clips
    g = torch.Generator().manual_seed(1)
    t_ref = torch.randint(0, 1000, (3,), generator=g)
    assert torch.equal(t[:, 0], t_ref)
    noise = torch.randn(x0.shape, generator=g)
    torch.testing.assert_close(x_t, schedule.add_noise(x0, noise, t))
    assert loss.item() == pytest.approx(stats["loss"])


def test_loss_input_errors(causal_model: WorldModel, schedule: NoiseSchedule) -> None:
    x0, actions = _clip(b=1, f=4)
    with pytest.raises(ValueError, match=r"\(B, F, C, H, W\)"):
        diffusion_forcing_loss(causal_model, x0[0], actions, schedule)
    with pytest.raises(ValueError, match="recorded actions"):
        diffusion_forcing_loss(causal_model, x0, actions[:, :3], schedule)
    with pytest.raises(ValueError, match="one timestep per clip"):
        bidirectional_pretrain_loss(causal_model, x0, schedule, timesteps=torch.zeros(1, 4, dtype=torch.long))


def test_overfit_one_clip_with_diffusion_forcing(schedule: NoiseSchedule) -> None:
    """A causal tiny model memorises one 8-frame clip: loss falls ≥ 10× within 100 Adam steps.

    Noise, per-frame timesteps (spread over 0..999) and the action keep-mask are fixed, so the target
    is fixed and the test measures optimisation through the whole causal model, not sampling variance.
    Measured: ~45 steps at lr 3e-3 (about 1 s/step on 2 busy shared cores).
    """
    model = make_causal_model().train()
    frames = 8
    xs = torch.linspace(-1, 1, SIZE)
    x0 = torch.stack(
        [
            torch.stack(
                [torch.sin(3 * xs[None, :] + 0.4 * f + c) * torch.cos(2 * xs[:, None]) for c in range(3)]
            )
            for f in range(frames)
        ]
    )[None]
    g = torch.Generator().manual_seed(0)
    actions = torch.randn(1, frames, ACTION_DIM, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.linspace(0, 999, frames).long()[None]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = time.perf_counter()
    first = last = None
    for _ in range(100):
        loss, stats = diffusion_forcing_loss(
            model, x0, actions, schedule, generator=torch.Generator().manual_seed(0), timesteps=t, noise=noise
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else stats["loss"]
        last = stats["loss"]
        if first / last >= 10:
            break
    assert first / last >= 10, f"loss fell only {first / last:.1f}x ({first:.3f} -> {last:.3f})"
    assert time.perf_counter() - start < 180


def test_history_prefix_gives_chosen_clips_a_low_noise_past(schedule):
    """prob 1: every clip has a prefix 0..k-1 (k >= 1) at levels <= max_t, then independent levels; the
    prefix length varies across clips; frame 0 is always in it."""
    g = torch.Generator().manual_seed(3)
    t = forcing_timesteps(schedule, 512, 8, history_prefix_prob=1.0, history_prefix_max_t=20, generator=g)
    assert t.shape == (512, 8)
    assert (t[:, 0] <= 20).all()
    low = t <= 20
    prefix_len = low.int().cumprod(dim=1).sum(dim=1)  # leading low frames (>= k: a later frame may be low)
    assert prefix_len.min() >= 1 and len(set(prefix_len.tolist())) >= 6
    # beyond the prefix the levels are the independent ones: most of them far above max_t
    assert (t[:, -1] > 20).float().mean() > 0.5


def test_history_prefix_prob_mixes_and_zero_is_plain_forcing(schedule):
    plain = schedule.sample_timesteps((256, 8), generator=torch.Generator().manual_seed(5))
    off = forcing_timesteps(schedule, 256, 8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(off, plain)  # the default draws nothing extra: runs without the option are unchanged
    half = forcing_timesteps(schedule, 4096, 8, history_prefix_prob=0.5, history_prefix_max_t=50,
                             generator=torch.Generator().manual_seed(5))
    frac = (half[:, 0] <= 50).float().mean().item()  # chosen clips + ~5 % of the rest by chance
    assert 0.45 < frac < 0.6
    with pytest.raises(ValueError, match="history_prefix_max_t"):
        forcing_timesteps(schedule, 2, 8, history_prefix_prob=0.5, history_prefix_max_t=1000)


def test_forcing_loss_passes_the_prefix_levels_to_the_model(schedule):
    model = make_causal_model()
    x0, actions = _clip(b=3, f=6)
    rec = Recorder(model)
    diffusion_forcing_loss(model, x0, actions, schedule, history_prefix_prob=1.0, history_prefix_max_t=10,
                           generator=torch.Generator().manual_seed(0))
    rec.handle.remove()
    timesteps = rec.inputs()[1]
    assert (timesteps[:, 0] <= 10).all()
