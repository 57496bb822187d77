"""Causal action guidance with guidance rescale, on hand-computed numbers."""

from __future__ import annotations

import pytest
import torch

from v2w_core.diffusion.guidance import combine_guidance, rescale_guidance


def test_combine_hand_computed() -> None:
    # sample 0: u = 0, c = [1,2,3,4] -> guided = 2.5c, std ratio 0.4 -> rescaled = c;
    #   0.7*c + 0.3*2.5c = [1.45, 2.9, 4.35, 5.8]
    # sample 1: u = [1,1,1,1], c = [1,-1,1,-1] -> guided = [1,-4,1,-4];
    #   std(c) = sqrt(4/3), std(guided) = sqrt(25/3) -> ratio 0.4 -> rescaled = [0.4,-1.6,0.4,-1.6];
    #   0.7*rescaled + 0.3*guided = [0.58, -2.32, 0.58, -2.32]
    cond = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, -1.0, 1.0, -1.0]])
    uncond = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    out = combine_guidance(cond, uncond, scale=2.5, rescale=0.7)
    expected = torch.tensor([[1.45, 2.9, 4.35, 5.8], [0.58, -2.32, 0.58, -2.32]])
    torch.testing.assert_close(out, expected)


def test_combine_without_rescale_is_plain_cfg() -> None:
    cond = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    uncond = torch.tensor([[0.5, 0.0], [3.0, 1.0]])
    out = combine_guidance(cond, uncond, scale=2.5, rescale=0.0)
    torch.testing.assert_close(out, torch.tensor([[1.75, 5.0], [3.0, 11.0]]))


def test_std_is_per_sample_over_all_non_batch_dims() -> None:
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(3, 1, 2, 4, 4, generator=g)
    uncond = torch.randn(3, 1, 2, 4, 4, generator=g)
    out = combine_guidance(cond, uncond, scale=2.5, rescale=1.0)
    for i in range(3):
        torch.testing.assert_close(out[i].std(), cond[i].std())
        solo = combine_guidance(cond[i : i + 1], uncond[i : i + 1], scale=2.5, rescale=1.0)
        torch.testing.assert_close(out[i : i + 1], solo)


def test_scale_one_returns_conditional() -> None:
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(2, 8, generator=g)
    uncond = torch.randn(2, 8, generator=g)
    torch.testing.assert_close(combine_guidance(cond, uncond, scale=1.0, rescale=0.7), cond)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        combine_guidance(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        rescale_guidance(torch.zeros(2, 3), torch.zeros(2, 3), 1.5)
