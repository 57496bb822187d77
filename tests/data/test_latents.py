"""VAE latents: LatentCodec loading (local and s3://), the encode stage's Ray Data path, and parquet round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from v2w_core import storage
from v2w_core.data.clips import ClipConfig, build_clip_dataset, normalize_frames
from v2w_core.data.codec import CodecConfig
from v2w_core.data.latents import encode_clips, read_latent_clips, write_latent_clips
from v2w_core.data.shards import ShardWriterConfig, write_episodes
from v2w_core.models.vae import LatentCodec

pytestmark = pytest.mark.slow


def upload_dir(local: Path, uri: str) -> str:
    for f in local.iterdir():
        storage.write_bytes(storage.join(uri, f.name), f.read_bytes())
    return uri


@pytest.fixture(scope="module")
def vae_dir(tiny_vae_dir) -> Path:
    return tiny_vae_dir


def test_codec_loads_from_local_and_s3_alike_and_checks_shapes(vae_dir, s3_prefix):
    local = LatentCodec.load(str(vae_dir))
    remote = LatentCodec.load(upload_dir(vae_dir, storage.join(s3_prefix, "vae")))
    x = torch.rand(3, 3, 32, 48) * 2 - 1
    z = local.encode(x)
    assert z.shape == (3, 4, 8, 12) and local.factor == 4 and local.scale == 0.5
    torch.testing.assert_close(remote.encode(x), z)
    # encode = posterior mean × scaling_factor: deterministic, and it is what decode inverts (÷ scale)
    torch.testing.assert_close(z, local.vae.encode(x).latent_dist.mean * 0.5)
    y = local.decode(z)
    assert y.shape == x.shape and float(y.abs().max()) <= 1.0
    with pytest.raises(ValueError, match="not divisible"):
        local.encode(torch.zeros(1, 3, 30, 48))
    with pytest.raises(ValueError, match="latents"):
        local.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(FileNotFoundError, match="from_pretrained directory"):
        LatentCodec.load(storage.join(s3_prefix, "no-vae"))


def test_encoded_clips_round_trip_through_parquet_in_s3(vae_dir, shapes_episodes, s3_prefix, ray_cluster):
    data = storage.join(s3_prefix, "data")
    lossless = ShardWriterConfig(codec=CodecConfig(name="zstd"), eval_fraction=0.0)  # compare exact pixels
    write_episodes(shapes_episodes, data, lossless)
    cfg = ClipConfig(clip_length=8, stride=4, shuffle="none")
    clips = build_clip_dataset(storage.join(data, "manifest.parquet"), cfg)
    out = storage.join(s3_prefix, "latents")
    write_latent_clips(encode_clips(clips.dataset, str(vae_dir), batch_size=3), out)
    report = clips.report()
    assert report.reconciles and report.clips == 8 * 2  # 12-frame episodes, clips of 8 every 4

    rows = read_latent_clips(out).take_all()
    assert len(rows) == report.clips
    by_key = {(r["episode_id"], int(r["start"])): r for r in rows}
    codec = LatentCodec.load(str(vae_dir))
    episodes = {e.episode_id: e for e in shapes_episodes}
    for (eid, start), row in list(by_key.items())[:4]:
        assert row["frames"].dtype == np.float32 and row["frames"].shape == (8, 4, 16, 16)
        pixels = torch.from_numpy(episodes[eid].frames[start : start + 8]).permute(0, 3, 1, 2)
        want = codec.encode(normalize_frames(pixels))
        torch.testing.assert_close(torch.from_numpy(row["frames"].copy()), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(row["actions"], episodes[eid].actions[start : start + 8])
