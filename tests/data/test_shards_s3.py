"""Shards and manifest on the local S3-compatible server, and decode_sample on what Ray really yields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from data_helpers import assert_episodes_equal, make_episode

from v2w_core import storage
from v2w_core.data.codec import CodecConfig
from v2w_core.data.episode import Episode
from v2w_core.data.errors import ShardError
from v2w_core.data.ingest import main
from v2w_core.data.manifest import Manifest
from v2w_core.data.shards import ReadStats, ShardWriterConfig, decode_sample, iter_episodes, write_episodes

pytestmark = pytest.mark.slow


def test_s3_round_trip_and_missing_shard(s3_prefix: str, shapes_episodes: list[Episode]) -> None:
    root = s3_prefix + "shapes"
    config = ShardWriterConfig(codec=CodecConfig(name="h264-lossless"), shard_size_mb=0.045)
    write_episodes(shapes_episodes[:5], root, config)
    write_episodes(shapes_episodes[5:], root, config)  # append on S3
    manifest = Manifest.read(root)
    assert manifest.root == root and len(manifest) == 8
    assert all(u.startswith(root + "/shards/") for u in manifest.shard_uris())
    manifest.check()
    back = {e.episode_id: e for e in iter_episodes(manifest)}
    for ep in shapes_episodes:
        assert_episodes_equal(ep, back[ep.episode_id])

    victim = manifest.shard_uris()[0]
    n_victim = len(manifest.rows_by_shard()[victim[len(root) + 1 :]])
    storage.delete(victim)
    with pytest.raises(ShardError, match="does not exist"):
        list(iter_episodes(manifest))
    stats = ReadStats()
    assert len(list(iter_episodes(manifest, on_error="skip", stats=stats))) == 8 - n_victim
    assert stats.reconciles and stats.num_bad == n_victim and {b.shard for b in stats.bad} == {victim}


def test_ingest_cli_to_s3(s3_prefix: str) -> None:
    out = s3_prefix + "cli"
    args = ["--source", "bouncing-shapes", "--episodes", "3", "--seed", "5", "--out", out]
    assert main([*args, "--source-opt", "episode_length=5", "--codec", "zstd"]) == 0
    manifest = Manifest.read(out + "/manifest.parquet")
    manifest.check()
    stats = ReadStats()
    assert len(list(iter_episodes(manifest, stats=stats))) == 3 and stats.reconciles


def test_decode_sample_on_ray_read_webdataset(tmp_path: Path, ray_cluster: Any) -> None:
    """The Ray Data pipeline's input: ``read_webdataset(decoder=None)`` rows go straight into decode_sample."""
    import ray

    episodes = [make_episode(kind, seed=i) for i, kind in enumerate(["continuous", "discrete", "multi_hot"])]
    config = ShardWriterConfig(codec=CodecConfig(name="zstd"), shard_size_mb=0.01)
    manifest = write_episodes(episodes, str(tmp_path), config)

    def decode(row: dict[str, Any]) -> dict[str, Any]:
        ep = decode_sample(row, shard=row["__url__"])
        return {"episode_id": ep.episode_id, "hash": ep.content_hash()}

    rows = ray.data.read_webdataset(manifest.shard_uris(), decoder=None).map(decode).take_all()
    assert sorted((r["episode_id"], r["hash"]) for r in rows) == sorted(
        (e.episode_id, e.content_hash()) for e in episodes
    )
