"""Diffusion half of the causal core: schedule, training losses, guidance and autoregressive rollout.

* :mod:`.schedule` — diffusers DDPM/DDIM with zero-terminal-SNR v-prediction, noised per frame;
* :mod:`.losses` — diffusion forcing (per-frame t, aligned + dropped actions) and bidirectional pretraining;
* :mod:`.guidance` — causal action guidance combine with guidance rescale;
* :mod:`.rollout` — AR sampler, full-window and streaming-cache paths.
"""

from v2w_core.diffusion.guidance import combine_guidance, rescale_guidance
from v2w_core.diffusion.losses import bidirectional_pretrain_loss, diffusion_forcing_loss
from v2w_core.diffusion.rollout import RolloutConfig, rollout
from v2w_core.diffusion.schedule import NoiseSchedule, NoiseScheduleConfig, ddim_step

__all__ = [
    "NoiseSchedule",
    "NoiseScheduleConfig",
    "RolloutConfig",
    "bidirectional_pretrain_loss",
    "combine_guidance",
    "ddim_step",
    "diffusion_forcing_loss",
    "rescale_guidance",
    "rollout",
]
