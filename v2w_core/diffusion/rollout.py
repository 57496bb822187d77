"""Autoregressive rollout of a causal world model with causal action guidance (DESIGN §1.3–1.4).

Alignment. ``context`` holds frames x_0 … x_{K−1} (B, K, C, H, W) and ``actions`` the *recorded*
actions, ``actions[:, i]`` taken at frame i (the episode convention), so frame i+1 is its result.
Generated frame K+j (j = 0 … N−1) is conditioned on a_{K+j−1}; the last action used is a_{K+N−2}, so
``actions`` needs at least K+N−1 entries along dim 1 (extra trailing entries are ignored). The first
context frame gets the null action (its cause is not in the input); a rollout that starts mid-episode
and wants x_0 conditioned too passes one more leading frame of context.

Per generated frame:
  1. The window is the newest ≤ ``window − 1`` clean frames (oldest dropped) plus the new frame.
  2. History frames are noised to ``history_noise_level`` (forward process q(x_t | x_0), fresh noise)
     and are never denoised; the new frame starts from pure noise (t = 999 at zero terminal SNR).
  3. DDIM (diffusers' trailing timesteps, :func:`~v2w_core.diffusion.schedule.ddim_step`) denoises only
     the new frame. With guidance, the conditional and unconditional branches are one batch of 2·B
     copies of the new frame, ``[cond; uncond]``; they differ only in the new frame's action mask
     (the unconditional branch drops the newest action only, history actions stay).

Two paths compute the same thing:
  * ``full``: a forward over the whole window at every DDIM step (the reference; also supports the
    paper's option of drawing fresh history noise at every step, ``history_noise="per_step"``);
  * ``streaming``: ``model.encode_history`` once per generated frame, then ``model.step_newest`` on the
    new frame alone at every step. Valid because a causal model's history activations do not depend
    on the new frame, *and* the noised history is fixed for the whole frame (``history_noise=
    "per_frame"``). Within a generated frame it is exact up to float reassociation; when the window
    slides the history is re-encoded from scratch, so streaming stays equal to ``full`` with
    ``per_frame`` history noise at every frame (nothing is carried across frames but clean pixels).
    Not exact, by design and identically on both paths: a sliding window forgets the dropped frames
    (the model never sees more than ``window`` frames; SVD's frame-position indices restart at 0 in
    every window), and each history frame gets fresh noise every time the window moves, so a frame's
    noised copy differs from one generated frame to the next. Streaming vs. ``full`` with
    ``per_step`` noise differs by design (that is the paper's sampler, which cannot be cached).

Continuing a rollout (a play session's key presses, one frame per call): with ``history_encoding=
"incremental"`` a :class:`RolloutCarry` passed as ``carry=`` keeps the history cache extended by the last
generated frame, and the next call whose context ends with that frame starts from it instead of
re-encoding its window. N such calls draw and compute what one ``rollout(..., num_frames=N)`` does.

Random draws, both paths, in this order per generated frame: history noise (B, F_h, …) if the level is
> 0, the new frame's initial noise (B, 1, …), then per DDIM step [history noise again if per_step]
and the η-noise (B, 1, …) if η > 0; incremental: the history noise only for the first frame (or a
re-encode), and the generated frame's own history noise (B, 1, …) after its steps, when it joins the
cache. Same generator state → same frames on either path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from v2w_core.config import StrictConfig
from v2w_core.diffusion.guidance import combine_guidance
from v2w_core.diffusion.schedule import NoiseSchedule, NoiseScheduleConfig, ddim_table, ddim_update
from v2w_core.models.actions import align_actions

logger = logging.getLogger(__name__)


class RolloutConfig(StrictConfig):
    """Sampler settings. Defaults are the paper's (DESIGN §1.3–1.4) plus the streaming cache."""

    num_inference_steps: int = Field(50, ge=1, le=1000)
    eta: float = Field(1.0, ge=0.0, le=1.0)
    history_noise_level: int = Field(20, ge=0, le=999)
    # per_frame: history noised once per generated frame (streaming-compatible);
    # per_step: fresh history noise at every DDIM step (the paper's sampler; full path only).
    history_noise: Literal["per_frame", "per_step"] = "per_frame"
    window: int = Field(16, ge=2)
    # None = no guidance (one branch, all actions). A number s runs both branches, even s = 1.
    guidance_scale: float | None = 2.5
    guidance_rescale: float = Field(0.7, ge=0.0, le=1.0)
    mode: Literal["streaming", "full"] = "streaming"
    # recompute: re-encode the whole window for every generated frame (exact w.r.t. a full forward over
    # it); incremental: encode the context once, then extend the cache by each generated frame (one
    # single-frame forward instead of a window's). Equal while the window fills; an approximation once it
    # slides (kept frames remember dropped ones; docs/streaming.md has the measured difference). Streaming only.
    history_encoding: Literal["recompute", "incremental"] = "recompute"
    schedule: NoiseScheduleConfig = NoiseScheduleConfig()

    @model_validator(mode="after")
    def _streaming_needs_fixed_history(self) -> RolloutConfig:
        if self.mode == "streaming" and self.history_noise == "per_step":
            raise ValueError(
                "history_noise='per_step' redraws the history at every step, which invalidates the streaming "
                "cache; use mode='full' with it, or history_noise='per_frame' with streaming"
            )
        if self.history_encoding == "incremental" and self.mode != "streaming":
            raise ValueError(
                "history_encoding='incremental' extends the streaming cache; use it with mode='streaming'"
            )
        return self


@dataclass
class RolloutCarry:
    """What an incremental streaming rollout hands to its continuation (``rollout(..., carry=…)``).

    After a call with ``history_encoding="incremental"``: ``cache``, the history cache extended by the
    last generated frame (noised to the history level, with the action that led to it), and
    ``last_frame`` (B, C, H, W), that frame. A later call whose context ends with exactly that frame, with
    as many history frames as the cache holds, starts from the cache: no window re-encode. Any other
    call (a reset session, another context, ``recompute``) encodes afresh and replaces the carry.
    """

    cache: Any = None
    last_frame: torch.Tensor | None = None

    def continues(self, context: torch.Tensor, history_frames: int) -> bool:
        """Whether ``context`` (B, K, C, H, W) continues the rollout this carry was left by."""
        last = self.last_frame
        return (
            self.cache is not None
            and last is not None
            and self.cache.batch_size == context.shape[0]
            and self.cache.num_frames == history_frames
            and last.shape == context[:, -1].shape
            and last.device == context.device
            and torch.equal(last, context[:, -1])
        )

    def clear(self) -> None:
        self.cache = self.last_frame = None


def _randn(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    gen_device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=like.dtype).to(like.device)


def _check_inputs(model: Any, context: torch.Tensor, actions: torch.Tensor | None, num_frames: int) -> None:
    if context.ndim != 5:
        raise ValueError(f"context must be (B, K, C, H, W) frames, got shape {tuple(context.shape)}")
    b, k = context.shape[:2]
    if k < 1:
        raise ValueError("context needs at least one frame (K >= 1)")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "causal_mode", None) == "none":
        raise ValueError("rollout needs a causal model: call v2w_core.models.causalize(model) first")
    if actions is None:
        return
    if actions.ndim < 2 or actions.shape[0] != b:
        raise ValueError(
            f"actions must be (B, T, ...) with B = {b} like the context, got shape {tuple(actions.shape)}"
        )
    need = k + num_frames - 1
    if actions.shape[1] < need:
        raise ValueError(
            f"actions too short: {k} context frames + {num_frames} generated frames need the recorded actions "
            f"a_0 … a_{need - 1} ({need} entries, actions[:, i] taken at frame i), got {actions.shape[1]}; "
            f"pass more actions or generate at most {actions.shape[1] - k + 1} frames"
        )


@dataclass
class _WindowActions:
    """Actions of one window, laid out for both paths; ``None`` fields mean an action-free rollout.

    Branch order is ``[cond; uncond]`` (``torch.cat([x] * n)``), the order ``step_newest`` expects.
    """

    hist: torch.Tensor | None = None  # (B, Fh, ...) history actions (shared by both branches)
    hist_mask: torch.Tensor | None = None  # (B, Fh)
    new: torch.Tensor | None = None  # (n·B, 1, ...) newest frame's action, per branch
    new_mask: torch.Tensor | None = None  # (n·B, 1); False in the unconditional branch
    full: torch.Tensor | None = None  # (n·B, Fh+1, ...) whole window, per branch
    full_mask: torch.Tensor | None = None  # (n·B, Fh+1)


def _window_actions(
    aligned: torch.Tensor | None, keep: torch.Tensor | None, lo: int, hi: int, guided: bool
) -> _WindowActions:
    """Slice globally aligned actions to frames lo..hi (hi = the new frame) and build the branches."""
    if aligned is None or keep is None:
        return _WindowActions()
    a_win, m_win = aligned[:, lo : hi + 1], keep[:, lo : hi + 1]
    masks = [m_win]
    if guided:
        m_uncond = m_win.clone()
        m_uncond[:, -1] = False  # drop only the newest frame's action
        masks.append(m_uncond)
    n = len(masks)
    return _WindowActions(
        hist=a_win[:, :-1],
        hist_mask=m_win[:, :-1],
        new=torch.cat([a_win[:, -1:]] * n),
        new_mask=torch.cat([m[:, -1:] for m in masks]),
        full=torch.cat([a_win] * n),
        full_mask=torch.cat(masks),
    )


def guided_update(
    v: torch.Tensor,
    x: torch.Tensor,
    coefficients: torch.Tensor,
    noise: torch.Tensor | None,
    guidance: tuple[float, float] | None,
    clip_sample_range: float | None = None,
) -> torch.Tensor:
    """Guidance then the DDIM update of the newest frame: ``v`` holds the branches ``[cond; uncond]``
    (guided) or the one branch; ``coefficients`` is the step's row of :func:`ddim_table`."""
    if guidance is not None:
        v_cond, v_uncond = v.chunk(2)
        v = combine_guidance(v_cond, v_uncond, *guidance)
    return ddim_update(coefficients, v, x, noise, clip_sample_range)


def denoise_newest(
    step_newest: Any,
    x: torch.Tensor,
    t_new: torch.Tensor,
    a_new: torch.Tensor | None,
    mask_new: torch.Tensor | None,
    cache: Any,
    coefficients: torch.Tensor,
    noise: torch.Tensor | None,
    guidance: tuple[float, float] | None,
    clip_sample_range: float | None = None,
) -> torch.Tensor:
    """One DDIM step of the newest frame on the streaming path: ``step_newest`` on every branch as one
    batch, guidance, update. Tensor work only (no host sync), so a runner can capture all of it as one
    CUDA graph (:meth:`~v2w_core.diffusion.fast_rollout.FastStreamer.denoise_newest`)."""
    n = t_new.shape[0] // x.shape[0]
    v = step_newest(torch.cat([x] * n), t_new, a_new, mask_new, cache)
    return guided_update(v, x, coefficients, noise, guidance, clip_sample_range)


def _noised(
    schedule: NoiseSchedule, clean: torch.Tensor, t_hist: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """History at its fixed noise level: one draw of q(x_t | x_0); level 0 keeps it clean (no draw)."""
    if int(t_hist.max()) == 0:
        return clean
    return schedule.add_noise(clean, _randn(tuple(clean.shape), clean, generator), t_hist)


@torch.no_grad()
def rollout(
    model: Any,
    context: torch.Tensor,
    actions: torch.Tensor | None,
    num_frames: int,
    config: RolloutConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    runner: Any | None = None,
    carry: RolloutCarry | None = None,
) -> torch.Tensor:
    """Generate ``num_frames`` frames after ``context`` (B, K, C, H, W) → (B, num_frames, C, H, W).

    ``actions`` are recorded actions (B, ≥ K+N−1, ...) (see module docstring for the alignment) or
    ``None`` for an action-free rollout (then guidance is off: there is no action to guide by).
    ``B`` independent rollouts run as one batch; ``generator`` makes them reproducible. The model is put
    in eval mode for the rollout and restored afterwards.

    ``runner`` replaces the model's ``encode_history`` / ``step_newest`` on the streaming path (same
    signatures), e.g. a :class:`~v2w_core.diffusion.fast_rollout.FastStreamer` that adds bf16 autocast,
    CUDA graphs and ``torch.compile``; a runner with a ``denoise_newest`` (the signature of
    :func:`denoise_newest` without its first argument) runs whole DDIM steps, guidance and update
    included. The noise draws are the rollout's either way.

    ``carry`` (incremental history only; ignored and cleared otherwise): continue from the cache a previous
    call left in it when ``context`` ends with that call's last frame, and leave this call's there (its
    last frame appended). A runner may provide ``attach_history(cache)`` (a carried cache into the
    buffers its captured graphs read) and ``detach_history(cache)`` (a copy its next write cannot reach).
    """
    cfg = config or RolloutConfig()
    _check_inputs(model, context, actions, num_frames)
    b, k = context.shape[:2]
    device = context.device
    schedule = NoiseSchedule(cfg.schedule)
    ddim = schedule.ddim(cfg.num_inference_steps)
    timesteps = [int(t) for t in ddim.timesteps]
    table = ddim_table(ddim, cfg.eta).to(device)  # one row of DDIM coefficients per step
    clip = ddim.config.clip_sample_range if ddim.config.clip_sample else None

    aligned = keep = None
    if actions is not None:
        # Global alignment over all K+N frames: frame i carries a_{i-1}; frame 0 null.
        recorded = actions[:, : k + num_frames - 1].to(device)
        pad = torch.zeros_like(recorded[:, :1])  # a_{K+N-1} would lead past the rollout; never used
        aligned, keep = align_actions(torch.cat([recorded, pad], dim=1))
    guided = cfg.guidance_scale is not None and aligned is not None
    n = 2 if guided else 1
    guidance = (cfg.guidance_scale, cfg.guidance_rescale) if guided else None

    was_training = bool(getattr(model, "training", False))
    model.eval()
    stream = runner if runner is not None else model
    incremental = cfg.history_encoding == "incremental"
    if incremental and not hasattr(stream, "append_history"):
        raise ValueError(f"history_encoding='incremental' needs a runner with append_history, not {type(stream).__name__}")
    history = context[:, -(cfg.window - 1) :]
    outputs: list[torch.Tensor] = []
    cache = None
    if carry is not None and incremental and carry.continues(context, history.shape[1]):
        cache = getattr(stream, "attach_history", _same)(carry.cache)
    try:
        for j in range(num_frames):
            new_index = k + j  # global index of the frame being generated
            fh = history.shape[1]
            acts = _window_actions(aligned, keep, new_index - fh, new_index, guided)
            t_hist = torch.full((b, fh), cfg.history_noise_level, dtype=torch.long, device=device)
            reencode = cache is None or not incremental  # incremental: the cache already holds this window
            if reencode:
                x_hist = _noised(schedule, history, t_hist, generator)
            x = _randn((b, 1, *context.shape[2:]), context, generator)
            if cfg.mode == "streaming" and reencode:
                extra = {"appendable": True} if incremental else {}
                cache = stream.encode_history(x_hist, t_hist, acts.hist, acts.hist_mask, **extra)

            for step, t in enumerate(timesteps):
                t_new = torch.full((n * b, 1), t, dtype=torch.long, device=device)
                if cache is not None:
                    z = _randn(tuple(x.shape), x, generator) if cfg.eta > 0 else None
                    denoise = getattr(stream, "denoise_newest", None)
                    args = (x, t_new, acts.new, acts.new_mask, cache, table[step], z, guidance, clip)
                    x = denoise(*args) if denoise is not None else denoise_newest(stream.step_newest, *args)
                    continue
                if cfg.history_noise == "per_step" and step > 0:
                    x_hist = _noised(schedule, history, t_hist, generator)
                xw = torch.cat([torch.cat([x_hist, x], dim=1)] * n)
                tw = torch.cat([t_hist.repeat(n, 1), t_new], dim=1)
                v = model(xw, tw, acts.full, acts.full_mask)[:, -1:]
                z = _randn(tuple(x.shape), x, generator) if cfg.eta > 0 else None
                x = guided_update(v, x, table[step], z, guidance, clip)
            outputs.append(x)
            history = torch.cat([history, x], dim=1)[:, -(cfg.window - 1) :]
            if incremental and (j + 1 < num_frames or carry is not None):  # the frame joins the cache
                t_one = t_hist[:, :1]
                x_one = _noised(schedule, x, t_one, generator)
                a_one = m_one = None
                if aligned is not None and keep is not None:
                    a_one, m_one = aligned[:, new_index : new_index + 1], keep[:, new_index : new_index + 1]
                cache = stream.append_history(cache, x_one, t_one, a_one, m_one, max_frames=cfg.window - 1)
            logger.debug("rollout: generated frame %d/%d (window %d)", j + 1, num_frames, fh + 1)
    finally:
        if was_training:
            model.train()
    if carry is not None:
        carry.clear()
        if incremental and cache is not None:
            carry.cache = getattr(stream, "detach_history", _same)(cache)
            carry.last_frame = outputs[-1][:, 0].clone()
    return torch.cat(outputs, dim=1)


def _same(cache: Any) -> Any:
    return cache
