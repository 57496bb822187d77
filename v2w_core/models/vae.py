"""The VAE that maps pixels to the latent space a paper-size world model works in.

Paper-scale Vid2World runs in a video diffusion model's latent space (ModelScope / SVD: Stable
Diffusion's ``AutoencoderKL``, 8× downsampling, 4 channels). :class:`LatentCodec` wraps a diffusers VAE
given as a ``from_pretrained`` directory (local or ``s3://``, e.g. ``…/text-to-video-ms-1.7b/vae``; only
safetensors are read), with the scaling the UNet was trained on (``config.scaling_factor``).

Encoding takes the posterior's *mean*: deterministic, so a latent data set is reproducible and its
content can be checked; the VAE's posterior std on natural images is ~1e-2 of the latent scale.
Pixels are in [-1, 1] (the clip pipeline's ``normalize_frames``), (N, 3, H, W); latents (N, C, H/f, W/f).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from v2w_core import storage
from v2w_core.models.io import read_weights

logger = logging.getLogger(__name__)


class LatentCodec:
    """Pixels ↔ scaled latents with a diffusers ``AutoencoderKL``, in chunks of ``batch_size`` frames."""

    def __init__(self, vae: Any, *, batch_size: int = 16) -> None:
        self.vae = vae.eval().requires_grad_(False)
        self.batch_size = batch_size
        self.scale = float(getattr(vae.config, "scaling_factor", 1.0))
        self.channels = int(vae.config.latent_channels)
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @classmethod
    def load(cls, uri: str, *, device: torch.device | str = "cpu", batch_size: int = 16) -> LatentCodec:
        """Build the VAE from ``<uri>/config.json`` and load ``<uri>/diffusion_pytorch_model.safetensors``."""
        from diffusers import AutoencoderKL

        try:
            raw = json.loads(storage.read_bytes(storage.join(uri, "config.json")))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no VAE at {uri}: expected a diffusers from_pretrained directory (config.json + "
                "diffusion_pytorch_model.safetensors), e.g. the 'vae' folder of the base model's repository"
            ) from None
        if raw.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
            raise ValueError(f"{uri}: config.json _class_name {raw['_class_name']!r} is not AutoencoderKL")
        vae = AutoencoderKL.from_config(raw)
        missing, unexpected = vae.load_state_dict(read_weights(uri), strict=False)
        if missing or unexpected:
            raise ValueError(f"{uri}: VAE weights do not match its config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        logger.info("loaded VAE from %s (%d latent channels, ×%d down)", uri, vae.config.latent_channels,
                    2 ** (len(vae.config.block_out_channels) - 1))
        return cls(vae.to(device), batch_size=batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        if height % self.factor or width % self.factor:
            raise ValueError(f"frames of {height}×{width} are not divisible by the VAE's ×{self.factor} "
                             "downsampling; resize the data set or use another VAE")
        return self.channels, height // self.factor, width // self.factor

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] → (N, C, H/f, W/f) scaled latents (posterior mean), float32."""
        if pixels.ndim != 4:
            raise ValueError(f"encode expects (N, 3, H, W) frames, got {tuple(pixels.shape)}")
        self.latent_shape(*pixels.shape[-2:])
        dtype = next(self.vae.parameters()).dtype
        out = [self.vae.encode(chunk.to(self.device, dtype)).latent_dist.mean.float() * self.scale
               for chunk in pixels.split(self.batch_size)]
        return torch.cat(out) if out else pixels.new_empty((0, self.channels, 0, 0))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) scaled latents → (N, 3, h·f, w·f) pixels, float32, clamped to [-1, 1]."""
        if latents.ndim != 4 or latents.shape[1] != self.channels:
            raise ValueError(f"decode expects (N, {self.channels}, h, w) latents, got {tuple(latents.shape)}")
        dtype = next(self.vae.parameters()).dtype
        out = [self.vae.decode(chunk.to(self.device, dtype) / self.scale).sample.float().clamp(-1, 1)
               for chunk in latents.split(self.batch_size)]
        return torch.cat(out)
