"""Causal action guidance (DESIGN §1.3) with guidance rescale.

The conditional branch sees every frame's action; the unconditional branch drops only the newest
frame's action, so the guided direction is "what this action changes about the next frame", not "what
actions change about the whole clip". The combination is classifier-free guidance on the model's output
(v here; the algebra is the same for ε):  ε̂ = ε_u + s·(ε_c − ε_u).

Large s inflates the output's scale and over-saturates frames; Lin et al. 2023 ("Common Diffusion Noise
Schedules and Sample Steps are Flawed", §3.4) rescale the guided output so its per-sample standard
deviation matches the conditional output's, then blend with the plain guided output by φ:
    ε_r = ε̂ · std(ε_c) / std(ε̂);   ε_final = φ·ε_r + (1 − φ)·ε̂.
The std is over every non-batch element of one sample (no mean subtraction in the rescale itself, as in
the paper and diffusers' ``rescale_noise_cfg``). Bessel's correction cancels in the ratio.
"""

from __future__ import annotations

import torch

DEFAULT_GUIDANCE_SCALE = 2.5
DEFAULT_GUIDANCE_RESCALE = 0.7


def _per_sample_std(x: torch.Tensor) -> torch.Tensor:
    dims = list(range(1, x.ndim))
    return x.float().std(dim=dims, keepdim=True)


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Blend ``guided`` with its copy rescaled to ``cond``'s per-sample std (φ = ``rescale``)."""
    if guided.shape != cond.shape:
        raise ValueError(f"guided {tuple(guided.shape)} and cond {tuple(cond.shape)} shapes differ")
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"guidance rescale φ must be in [0, 1], got {rescale}")
    if rescale == 0.0:
        return guided
    if guided.ndim < 2:
        raise ValueError("guidance rescale needs a batch axis and at least one feature axis")
    ratio = _per_sample_std(cond) / _per_sample_std(guided).clamp_min(torch.finfo(torch.float32).tiny)
    rescaled = guided * ratio.to(guided.dtype)
    return rescale * rescaled + (1.0 - rescale) * guided


def combine_guidance(
    cond: torch.Tensor,
    uncond: torch.Tensor,
    scale: float = DEFAULT_GUIDANCE_SCALE,
    rescale: float = DEFAULT_GUIDANCE_RESCALE,
) -> torch.Tensor:
    """ε̂ = ε_u + s·(ε_c − ε_u), then guidance rescale φ. Both inputs (B, ...); std is per sample."""
    if cond.shape != uncond.shape:
        raise ValueError(f"cond {tuple(cond.shape)} and uncond {tuple(uncond.shape)} shapes differ")
    guided = uncond + scale * (cond - uncond)
    return rescale_guidance(guided, cond, rescale)
