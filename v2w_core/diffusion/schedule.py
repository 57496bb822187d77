"""Noise schedule for Vid2World: diffusers schedulers, applied per frame.

DESIGN §1.2 fixes the schedule: 1000 scaled-linear betas 0.00085 → 0.012 rescaled to zero terminal SNR,
v-prediction, trailing timestep spacing. diffusers implements exactly this, so :class:`NoiseSchedule` only
builds the two schedulers from one config (DDPM for training-time noising, DDIM for sampling) and adds the
one thing diffusers' helpers lack: a *different timestep per frame*. diffusers' ``add_noise`` and
``get_velocity`` take a flat timestep vector with one entry per leading-axis sample, so a ``(B, F, ...)``
video with ``(B, F)`` timesteps is flattened to ``B·F`` samples (row-major, frame index fastest) and
reshaped back.

Sampling uses diffusers' ``DDIMScheduler`` for its timesteps and ``alphas_cumprod``, but the update itself
is :func:`ddim_step`: with zero terminal SNR (ᾱ_999 = 0) and η = 1, diffusers' ``DDIMScheduler.step``
returns NaN on the very first step (``sqrt(1 - ᾱ_prev - σ²)`` of a value that rounds to −1e-8). The
hand-written step is the same formula with that square root clamped at zero; the tests check it against
diffusers' step wherever diffusers' result is finite.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from v2w_core.config import NoiseScheduleConfig


def _check_per_frame(x: torch.Tensor, t: torch.Tensor, name: str = "x0") -> None:
    if x.ndim != 5:
        raise ValueError(f"{name} must be (B, F, C, H, W), got shape {tuple(x.shape)}")
    if t.shape != x.shape[:2]:
        raise ValueError(
            f"timesteps must be (B, F) = {tuple(x.shape[:2])} to match {name}, got {tuple(t.shape)}; "
            "broadcast a per-clip timestep with t[:, None].expand(B, F)"
        )
    if t.dtype.is_floating_point:
        raise ValueError(f"timesteps must be an integer tensor, got {t.dtype}")


class NoiseSchedule:
    """The training schedule (a diffusers ``DDPMScheduler``) plus per-frame noising and DDIM construction."""

    def __init__(self, config: NoiseScheduleConfig | None = None) -> None:
        self.config = config or NoiseScheduleConfig()
        self.scheduler = DDPMScheduler(**self.config.diffusers_kwargs())

    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.scheduler.alphas_cumprod

    def sample_timesteps(
        self,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Independent t ~ U{0..T-1} of the given shape (drawn on the generator's device, then moved)."""
        gen_device = generator.device if generator is not None else "cpu"
        t = torch.randint(0, self.num_train_timesteps, shape, generator=generator, device=gen_device)
        return t.to(device) if device is not None else t

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) with a timestep per frame: x0, noise (B, F, C, H, W), t (B, F) integer."""
        _check_per_frame(x0, t)
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
        b, f = t.shape
        flat = self.scheduler.add_noise(x0.flatten(0, 1), noise.flatten(0, 1), t.reshape(b * f))
        return flat.unflatten(0, (b, f))

    def get_velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v-prediction target √ᾱ_t·ε − √(1−ᾱ_t)·x0 with a timestep per frame (shapes as :meth:`add_noise`)."""
        _check_per_frame(x0, t)
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
        b, f = t.shape
        flat = self.scheduler.get_velocity(x0.flatten(0, 1), noise.flatten(0, 1), t.reshape(b * f))
        return flat.unflatten(0, (b, f))

    def ddim(self, num_inference_steps: int = 50) -> DDIMScheduler:
        """A DDIM scheduler with the same betas, ``set_alpha_to_one=True`` (the last step lands on x0)."""
        if num_inference_steps < 1 or num_inference_steps > self.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in 1..{self.num_train_timesteps}, got {num_inference_steps}"
            )
        sched = DDIMScheduler(**self.config.diffusers_kwargs(), set_alpha_to_one=True)
        sched.set_timesteps(num_inference_steps)
        return sched


def ddim_coefficients(scheduler: DDIMScheduler, timestep: int, eta: float = 1.0) -> torch.Tensor:
    """The five numbers of one DDIM update at ``timestep``, as a float32 (5,) tensor: √ᾱ_t, √(1−ᾱ_t),
    √ᾱ_prev, √max(1 − ᾱ_prev − σ², 0) and σ = η·√((1−ᾱ_prev)/(1−ᾱ_t)·(1 − ᾱ_t/ᾱ_prev)).

    Apart from the schedule, they depend only on the step, so a captured CUDA graph can take them as a
    static input refreshed once per step (:func:`ddim_update`), instead of baking one step's Python floats
    in; :func:`ddim_table` stacks them for every step of a sampler.
    """
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(...) before ddim_step")
    cfg = scheduler.config
    timestep = int(timestep)
    prev_timestep = timestep - cfg.num_train_timesteps // scheduler.num_inference_steps
    alphas = scheduler.alphas_cumprod
    alpha_prod_t = alphas[timestep]
    alpha_prod_t_prev = alphas[prev_timestep] if prev_timestep >= 0 else scheduler.final_alpha_cumprod
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
    std_dev_t = eta * variance**0.5
    direction = (1 - alpha_prod_t_prev - std_dev_t**2).clamp_min(0) ** 0.5
    parts = (alpha_prod_t**0.5, beta_prod_t**0.5, alpha_prod_t_prev**0.5, direction, std_dev_t)
    return torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in parts])


def ddim_table(scheduler: DDIMScheduler, eta: float = 1.0) -> torch.Tensor:
    """(steps, 5) :func:`ddim_coefficients` of every step of ``scheduler.timesteps``, in sampling order."""
    return torch.stack([ddim_coefficients(scheduler, int(t), eta) for t in scheduler.timesteps])


def ddim_update(
    coefficients: torch.Tensor,
    v_pred: torch.Tensor,
    sample: torch.Tensor,
    variance_noise: torch.Tensor | None = None,
    clip_sample_range: float | None = None,
) -> torch.Tensor:
    """x_t → x_prev from one step's :func:`ddim_coefficients` (a (5,) tensor, on ``sample``'s device for a
    graph): only tensor arithmetic, no host sync, so it can run inside a captured CUDA graph."""
    sqrt_a, sqrt_b, sqrt_a_prev, direction, sigma = coefficients.unbind()
    pred_x0 = sqrt_a * sample - sqrt_b * v_pred
    pred_eps = sqrt_a * v_pred + sqrt_b * sample
    if clip_sample_range is not None:
        pred_x0 = pred_x0.clamp(-clip_sample_range, clip_sample_range)
    prev = sqrt_a_prev * pred_x0 + direction * pred_eps
    if variance_noise is not None:
        prev = prev + sigma * variance_noise
    return prev


def ddim_step(
    scheduler: DDIMScheduler,
    v_pred: torch.Tensor,
    timestep: int,
    sample: torch.Tensor,
    *,
    eta: float = 1.0,
    variance_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM update x_t → x_prev for a v-prediction model (DDIM eq. 12/16).

    Why not ``scheduler.step``: at zero terminal SNR its first η = 1 step computes
    ``sqrt(1 − ᾱ_prev − σ²)`` with σ² = 1 − ᾱ_prev exactly, which rounds below zero → NaN. This is the
    same arithmetic with that square root's argument clamped at 0 (:func:`ddim_coefficients`, then
    :func:`ddim_update`); it reads timesteps, ``alphas_cumprod`` and ``final_alpha_cumprod`` from the
    diffusers scheduler.
    """
    if eta > 0 and variance_noise is None:
        raise ValueError("eta > 0 needs variance_noise (draw it from the rollout's generator)")
    coefficients = ddim_coefficients(scheduler, timestep, eta)
    cfg = scheduler.config
    return ddim_update(
        coefficients.to(sample.device),
        v_pred,
        sample,
        variance_noise if eta > 0 else None,
        cfg.clip_sample_range if cfg.clip_sample else None,
    )
