"""Ego-motion agreement (v2w_core.eval.motion): the shift read off two frames is the one applied, and the
agreement score tells a model that turns with the recorded view from one that stays put or turns wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from v2w_core.eval.motion import motion_agreement, translation


def _scene(size: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth random scene (more like a rendered view than white noise is)."""
    rng = np.random.default_rng(seed)
    scene = np.cumsum(np.cumsum(rng.normal(size=(size, size)), 0), 1)
    return (scene - scene.min()) / (scene.max() - scene.min())


@pytest.mark.parametrize(("dx", "dy"), [(7, 0), (-6, 0), (3, -2), (0, 0)])
def test_phase_correlation_finds_the_shift(dx: int, dy: int) -> None:
    scene = _scene()
    moved = np.roll(scene, (dy, dx), axis=(0, 1))  # content moves right by dx, down by dy
    assert translation(scene, moved) == (dx, dy)


def _turning(steps: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(last context frame (C, H, W), future (N, C, H, W)): the view panned by ``steps`` px per frame."""
    scene, frames, x = _scene(seed=seed), [], 0
    for s in steps:
        x += s
        frames.append(np.roll(scene, x, axis=1))
    rgb = lambda f: torch.from_numpy(np.repeat(f[None], 3, 0)).float()
    return rgb(scene), torch.stack([rgb(f) for f in frames])


def test_motion_agreement_scores_turning_with_the_truth() -> None:
    plans = [[7, 7, -7, 0, 7, -7], [-7, 0, 0, 7, 7, -7]]
    pairs = [_turning(p, seed=i) for i, p in enumerate(plans)]
    context = torch.stack([c for c, _ in pairs])
    truth = torch.stack([f for _, f in pairs])
    same, why = motion_agreement(context, truth, truth)
    assert why is None and same["motion_dx_corr"] == pytest.approx(1.0)
    assert same["motion_dx_abs"] == same["motion_dx_truth_abs"] == pytest.approx(np.abs(plans).mean())

    frozen = context[:, None].expand_as(truth)  # copying the last frame: the view never turns
    still, _ = motion_agreement(context, truth, frozen)
    assert still["motion_dx_abs"] == 0.0 and still["motion_dx_corr"] == 0.0

    mirrored = torch.stack([_turning([-s for s in p], seed=i)[1] for i, p in enumerate(plans)])
    wrong, _ = motion_agreement(context, truth, mirrored)  # turns, but the other way
    assert wrong["motion_dx_corr"] == pytest.approx(-1.0) and wrong["motion_dx_abs"] > 3


def test_a_view_that_never_moves_has_no_agreement_to_score() -> None:
    context, future = _turning([0, 0, 0])
    out, why = motion_agreement(context[None], future[None], future[None])
    assert "motion_dx_corr" not in out and "never moves" in why
    with pytest.raises(ValueError, match="shapes differ"):
        motion_agreement(context[None], future[None], future[None, :2])
