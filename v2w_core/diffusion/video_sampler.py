"""Unconditional clip sampling from a *bidirectional* base (all frames denoised together, one noise level).

The autoregressive sampler (:mod:`v2w_core.diffusion.rollout`) needs a causal model. Before causalization a
pretrained base is judged by what it generates on its own: whole clips, DDIM over every frame at once.
This is how the shipped base was checked to "look like the game" (``pipelines/pretrain_base.py``).
"""

from __future__ import annotations

import torch

from v2w_core.diffusion.schedule import NoiseSchedule, ddim_step


@torch.no_grad()
def sample_clips(
    model: torch.nn.Module,
    batch: int,
    num_frames: int,
    *,
    num_inference_steps: int = 50,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    schedule: NoiseSchedule | None = None,
) -> torch.Tensor:
    """(batch, num_frames, C, H, W) clips in [-1, 1] from pure noise (t = 999 at zero terminal SNR)."""
    cfg = model.config  # type: ignore[attr-defined]
    param = next(model.parameters())
    shape = (batch, num_frames, cfg.data_channels, *cfg.sample_size)
    gen_device = generator.device if generator is not None else param.device
    scheduler = (schedule or NoiseSchedule()).ddim(num_inference_steps)
    x = torch.randn(shape, generator=generator, device=gen_device).to(param.device, param.dtype)
    for t in scheduler.timesteps:
        t_frames = torch.full((batch, num_frames), int(t), device=param.device, dtype=torch.long)
        v = model(x, t_frames).to(x.dtype)
        noise = torch.randn(shape, generator=generator, device=gen_device).to(x) if eta > 0 else None
        x = ddim_step(scheduler, v, int(t), x, eta=eta, variance_noise=noise)
    return x.clamp(-1.0, 1.0)


__all__ = ["sample_clips"]
