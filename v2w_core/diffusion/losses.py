"""Training objectives: diffusion forcing (the world model) and bidirectional pretraining (the base).

Diffusion forcing (DESIGN §1.2) gives every frame of a clip its own, independent noise level. A causal
model trained that way has seen every mix of "clean-ish past, noisy present", which is exactly what the
autoregressive sampler feeds it (history at a small fixed level, newest frame anywhere on the chain).
Actions are aligned (frame t carries a_{t−1}, frame 0 null) and each frame's action is dropped with
p = 0.2 so the same network also learns the action-free prediction that causal action guidance needs.

The bidirectional pretraining loss is the ordinary video-diffusion objective (one t per clip broadcast
to all frames, no actions): it builds the base model that the Vid2World transfer then causalizes, when
no pretrained weights are available. Both are plain MSE on v over all frames and elements.

``model`` is anything with the ``WorldModel.forward(x, timesteps, actions, action_mask)`` contract.

**History prefix** (``history_prefix_prob`` > 0, off by default): independent levels almost never give a
frame a clean history — with 16 frames the chance that frames 0..k−1 all sit below t = 50 is 0.05^k — yet
that is the only regime the autoregressive sampler uses (history at ``history_noise_level``, newest frame
anywhere on the chain). With this option a fraction of the clips get a prefix 0..k−1 (k uniform in
1..F−1) at low levels ``U{0..history_prefix_max_t}`` and keep independent levels from frame k on: every
such clip trains "predict frame k from a clean past and its action", the sampler's own question, where the
action is most informative. The rest of the batch is plain diffusion forcing.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from v2w_core.diffusion.schedule import NoiseSchedule
from v2w_core.models.actions import align_actions, sample_action_keep_mask

DEFAULT_ACTION_DROP_PROB = 0.2


class VelocityModel(Protocol):
    def __call__(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        actions: torch.Tensor | None = None,
        action_mask: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


def _randn(shape: torch.Size, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    gen_device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=like.dtype).to(like.device)


def _check_clip(x0: torch.Tensor) -> None:
    if x0.ndim != 5:
        raise ValueError(f"x0 must be a clip batch (B, F, C, H, W), got shape {tuple(x0.shape)}")


def forcing_timesteps(
    schedule: NoiseSchedule,
    batch: int,
    frames: int,
    *,
    history_prefix_prob: float = 0.0,
    history_prefix_max_t: int = 50,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(B, F) noise levels for diffusion forcing: independent U{0..T−1}, and with ``history_prefix_prob``
    a low-noise prefix per chosen clip (module docstring). Draw order: levels, then — only when the prefix
    is on, so the default draws stay those of plain diffusion forcing — clip choice, k, prefix levels."""
    t = schedule.sample_timesteps((batch, frames), generator=generator)
    if history_prefix_prob > 0 and frames > 1:
        if not 0 <= history_prefix_max_t < schedule.num_train_timesteps:
            raise ValueError(
                f"history_prefix_max_t must be in [0, {schedule.num_train_timesteps - 1}], got {history_prefix_max_t}"
            )
        gen_device = t.device
        chosen = torch.rand((batch, 1), generator=generator, device=gen_device) < history_prefix_prob
        k = torch.randint(1, frames, (batch, 1), generator=generator, device=gen_device)
        low = torch.randint(0, history_prefix_max_t + 1, (batch, frames), generator=generator, device=gen_device)
        in_prefix = chosen & (torch.arange(frames, device=gen_device)[None, :] < k)
        t = torch.where(in_prefix, low, t)
    return t.to(device) if device is not None else t


def diffusion_forcing_loss(
    model: VelocityModel,
    x0: torch.Tensor,
    actions: torch.Tensor | None,
    schedule: NoiseSchedule,
    *,
    action_drop_prob: float = DEFAULT_ACTION_DROP_PROB,
    history_prefix_prob: float = 0.0,
    history_prefix_max_t: int = 50,
    generator: torch.Generator | None = None,
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """MSE on v with a noise level per frame (:func:`forcing_timesteps`); recorded actions aligned and
    dropped per frame.

    ``actions`` are *recorded* (B, F, ...): ``actions[:, t]`` was taken at frame t (the episode
    convention); they are aligned here. ``None`` trains action-free. ``timesteps`` (B, F) and ``noise``
    override the random draws (tests, fixed-noise overfitting). Random draws use ``generator`` in the
    order timesteps, noise, action keep-mask.
    """
    _check_clip(x0)
    b, f = x0.shape[:2]
    if timesteps is None:
        timesteps = forcing_timesteps(schedule, b, f, history_prefix_prob=history_prefix_prob,
                                      history_prefix_max_t=history_prefix_max_t, generator=generator,
                                      device=x0.device)
    elif timesteps.shape != (b, f):
        raise ValueError(f"timesteps must be (B, F) = ({b}, {f}), got {tuple(timesteps.shape)}")
    timesteps = timesteps.to(x0.device)
    if noise is None:
        noise = _randn(x0.shape, x0, generator)

    mask = None
    if actions is not None:
        if actions.shape[:2] != (b, f):
            raise ValueError(
                f"recorded actions must start with (B, F) = ({b}, {f}) like x0, got {tuple(actions.shape)}"
            )
        actions, align_mask = align_actions(actions.to(x0.device))
        keep = sample_action_keep_mask((b, f), action_drop_prob, generator=generator).to(x0.device)
        mask = align_mask & keep

    x_t = schedule.add_noise(x0, noise, timesteps)
    target = schedule.get_velocity(x0, noise, timesteps)
    pred = model(x_t, timesteps, actions, mask)
    loss = F.mse_loss(pred.float(), target.float())
    keep_frac = mask.float().mean() if mask is not None else torch.zeros((), device=x0.device)
    # one device->host transfer for all stats (one sync per step on a GPU, not three)
    loss_v, t_mean, keep_v = torch.stack(
        [loss.detach(), timesteps.float().mean(), keep_frac.float()]
    ).tolist()
    return loss, {"loss": loss_v, "t_mean": t_mean, "action_keep_frac": keep_v}


def bidirectional_pretrain_loss(
    model: VelocityModel,
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    generator: torch.Generator | None = None,
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Ordinary video diffusion: one t per clip (``timesteps`` (B,) overrides it), no actions."""
    _check_clip(x0)
    b, f = x0.shape[:2]
    if timesteps is None:
        timesteps = schedule.sample_timesteps((b,), generator=generator, device=x0.device)
    elif timesteps.shape != (b,):
        raise ValueError(
            f"pretraining uses one timestep per clip: shape (B,) = ({b},), got {tuple(timesteps.shape)}"
        )
    per_frame = timesteps.to(x0.device)[:, None].expand(b, f)
    if noise is None:
        noise = _randn(x0.shape, x0, generator)
    x_t = schedule.add_noise(x0, noise, per_frame)
    target = schedule.get_velocity(x0, noise, per_frame)
    pred = model(x_t, per_frame, None, None)
    loss = F.mse_loss(pred.float(), target.float())
    loss_v, t_mean = torch.stack([loss.detach(), timesteps.float().mean()]).tolist()
    return loss, {"loss": loss_v, "t_mean": t_mean}
