"""Latent clip data sets: the clip pipeline's pixel clips encoded once by the VAE, stored as parquet.

Paper-size models train on VAE latents. Encoding every clip at every epoch would cost more than the
UNet step on small GPUs, so the pipeline's ``encode`` stage does it once (Ray Data, one VAE per actor,
a GPU each when the cluster has them) and writes parquet with tensor columns next to its other outputs:
``frames`` float32 (F, C, h, w) scaled latents (the layout ``train`` takes for latents), ``actions``,
``episode_id`` and ``start``. Training and base pretraining then read that instead of the shards.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from v2w_core import storage

log = logging.getLogger(__name__)


class EncodeClips:
    """Ray Data callable class: pixel clips → latent clips with one VAE per actor."""

    def __init__(self, vae_uri: str, batch_size: int = 16) -> None:
        import torch

        from v2w_core.models.vae import LatentCodec

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.codec = LatentCodec.load(vae_uri, device=device, batch_size=batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from v2w_core.data.clips import normalize_frames

        frames = torch.from_numpy(np.ascontiguousarray(batch["frames"]))  # (B, F, H, W, 3) uint8
        if frames.dtype != torch.uint8 or frames.ndim != 5:
            raise ValueError(f"encode expects uint8 (B, F, H, W, 3) pixel clips, got {frames.dtype} "
                             f"{tuple(frames.shape)}")
        b, f = frames.shape[:2]
        pixels = normalize_frames(frames.flatten(0, 1).permute(0, 3, 1, 2))
        latents = self.codec.encode(pixels).cpu()
        out = {k: v for k, v in batch.items() if k != "frames"}
        out["frames"] = latents.unflatten(0, (b, f)).numpy()
        return out


def encode_clips(dataset: Any, vae_uri: str, *, batch_size: int = 8, actors: int = 1,
                 num_gpus: float = 0.0, num_cpus: float = 1.0) -> Any:
    """Lazily map a pixel clip dataset (``build_clip_dataset(...).dataset``) to latent clips."""
    from ray.data import ActorPoolStrategy

    return dataset.map_batches(EncodeClips, fn_constructor_kwargs={"vae_uri": vae_uri}, batch_size=batch_size,
                               batch_format="numpy", compute=ActorPoolStrategy(size=actors),
                               num_gpus=num_gpus, num_cpus=num_cpus)


def write_latent_clips(dataset: Any, uri: str) -> None:
    """Write (executes the dataset) as parquet files under ``uri`` (local or ``s3://``)."""
    fs, path = storage.get_filesystem(uri)
    dataset.write_parquet(path, filesystem=fs)


def read_latent_clips(uri: str, *, shuffle: str = "none", seed: int = 0) -> Any:
    """The latent clips written by :func:`write_latent_clips` as a Ray dataset (``shuffle`` as ClipConfig)."""
    import ray.data

    fs, path = storage.get_filesystem(uri)
    ds = ray.data.read_parquet(path, filesystem=fs)
    if shuffle == "global":
        ds = ds.random_shuffle(seed=seed)
    elif shuffle == "blocks":
        ds = ds.randomize_block_order(seed=seed)
    return ds
