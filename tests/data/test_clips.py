"""The Ray Data clip pipeline on a real local Ray, reading shards from moto_server (S3) or a local dir."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_helpers import rewrite_tar

from v2w_core import storage
from v2w_core.data.clips import (
    ClipConfig,
    build_clip_dataset,
    clip_starts,
    collate_clips,
    count_clips,
    normalize_frames,
)
from v2w_core.data.codec import CodecConfig
from v2w_core.data.episode import ActionSpace, Episode
from v2w_core.data.errors import ShardError
from v2w_core.data.manifest import Manifest
from v2w_core.data.shards import ShardWriterConfig, write_episodes

LENGTHS = {"ep-a": 40, "ep-b": 16, "ep-c": 23, "ep-d": 10, "ep-e": 33}


def _episodes(size: int = 24) -> list[Episode]:
    out = []
    for i, (eid, t) in enumerate(LENGTHS.items()):
        rng = np.random.default_rng(i)
        out.append(
            Episode(
                episode_id=eid,
                frames=rng.integers(0, 256, size=(t, size, size, 3), dtype=np.uint8),
                actions=rng.uniform(-1, 1, size=(t, 2)).astype(np.float32),
                action_space=ActionSpace(type="continuous", dim=2),
                domain="robot",
                source="unit-test",
                fps=10.0,
            )
        )
    return out


def _write(root: str, codec: str = "zstd") -> dict[str, Episode]:
    eps = _episodes()
    # random frames do not compress: every episode gets a shard of its own (5 shards)
    cfg = ShardWriterConfig(codec=CodecConfig(name=codec), shard_size_mb=0.004, eval_fraction=0.0)
    write_episodes(eps, root, cfg)
    return {e.episode_id: e for e in eps}


def _expected_clips(L: int, stride: int, ids: list[str] | None = None) -> int:
    return sum(count_clips(t, L, stride) for k, t in LENGTHS.items() if ids is None or k in ids)


def test_clip_maths() -> None:
    assert list(clip_starts(40, 16, 8)) == [0, 8, 16, 24]
    assert count_clips(40, 16, 8) == 4 == (40 - 16) // 8 + 1
    assert count_clips(16, 16, 3) == 1 and count_clips(10, 16, 1) == 0
    for t in range(60):
        for stride in (1, 3, 16, 20):
            starts = list(clip_starts(t, 16, stride))
            assert len(starts) == count_clips(t, 16, stride)
            assert all(s + 16 <= t for s in starts)
    x = np.array([0, 255], dtype=np.uint8)
    np.testing.assert_allclose(normalize_frames(x), [-1.0, 1.0])


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["zstd", "h264-lossless"])
def test_roundtrip_from_s3_is_exact(ray_cluster, s3_prefix: str, codec: str) -> None:
    root = storage.join(s3_prefix, "ds")
    source = _write(root, codec)
    L, stride = 16, 5
    clips = build_clip_dataset(root, ClipConfig(clip_length=L, stride=stride, shuffle="global", seed=7))
    rows = clips.dataset.take_all()
    assert len(rows) == clips.expected_clips == _expected_clips(L, stride)
    seen = set()
    for row in rows:
        ep = source[row["episode_id"]]
        s = int(row["start"])
        assert row["frames"].dtype == np.uint8 and row["frames"].shape == (L, 24, 24, 3)
        np.testing.assert_array_equal(row["frames"], ep.frames[s : s + L])
        np.testing.assert_array_equal(row["actions"], ep.actions[s : s + L])
        seen.add((row["episode_id"], s))
    assert seen == {(k, s) for k, t in LENGTHS.items() for s in clip_starts(t, L, stride)}
    report = clips.report()
    assert report.reconciles and report.read == 5 and report.num_bad == 0, report.summary()
    assert report.too_short == 1 and report.clips == len(rows)
    # seeded: the same seed gives the same order, another seed another order
    again = build_clip_dataset(root, ClipConfig(clip_length=L, stride=stride, shuffle="global", seed=7))
    order = [(r["episode_id"], int(r["start"])) for r in rows]
    assert [(r["episode_id"], int(r["start"])) for r in again.dataset.take_all()] == order


@pytest.mark.slow
def test_bad_inputs_are_counted_named_and_skipped(ray_cluster, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _write(str(root))
    manifest = Manifest.read(str(root))
    by_key = {r["key"]: manifest.shard_uri(r["shard"]) for r in manifest.rows()}
    assert len(set(by_key.values())) == 5  # one shard per episode
    # ep-a: corrupt frames; ep-c: removed from its shard although listed; ep-e's shard deleted.
    rewrite_tar(Path(by_key["ep-a"]), lambda n, d: b"garbage" if n == "ep-a.zst" else d)
    rewrite_tar(Path(by_key["ep-c"]), lambda n, d: None if n.startswith("ep-c.") else d)
    Path(by_key["ep-e"]).unlink()
    gone = {"ep-a", "ep-c", "ep-e"}

    clips = build_clip_dataset(str(root), ClipConfig(clip_length=8, stride=4, shuffle="blocks"))
    assert clips.missing_shards == [by_key["ep-e"]]
    rows = clips.dataset.take_all()
    good = sorted(set(LENGTHS) - gone)
    assert len(rows) == _expected_clips(8, 4, good)
    assert {r["episode_id"] for r in rows} == set(good) - {k for k in good if LENGTHS[k] < 8}
    report = clips.report()
    assert report.reconciles, report.summary()
    bad = {b.key: b for b in report.bad}
    assert set(bad) == gone
    assert bad["ep-a"].shard == by_key["ep-a"] and "checksum mismatch in ep-a.zst" in bad["ep-a"].reason
    assert bad["ep-e"].reason == "shard is missing" and bad["ep-e"].shard == by_key["ep-e"]
    assert bad["ep-c"].shard == by_key["ep-c"] and "not found" in bad["ep-c"].reason


@pytest.mark.slow
def test_fail_mode(ray_cluster, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _write(str(root))
    manifest = Manifest.read(str(root))
    by_key = {r["key"]: manifest.shard_uri(r["shard"]) for r in manifest.rows()}
    rewrite_tar(Path(by_key["ep-b"]), lambda n, d: d[:-7] if n == "ep-b.zst" else d)
    cfg = ClipConfig(clip_length=8, stride=8, on_error="fail", shuffle="none")
    with pytest.raises(Exception, match="ep-b.*checksum mismatch"):
        build_clip_dataset(str(root), cfg).dataset.take_all()
    rewrite_tar(Path(by_key["ep-b"]), lambda n, d: d, fix_checksums=True)  # bad video, valid checksums
    with pytest.raises(Exception, match="ep-b"):
        build_clip_dataset(str(root), cfg).dataset.take_all()
    Path(by_key["ep-d"]).unlink()
    with pytest.raises(ShardError, match=Path(by_key["ep-d"]).name):
        build_clip_dataset(str(root), cfg)


@pytest.mark.slow
def test_damaged_shards_on_s3(ray_cluster, s3_prefix: str) -> None:
    """Truncated (mid-member and at a member boundary) and garbled shards on S3: the Ray Data path and
    the plain reader both read around the damage, name it, reconcile the counts; ``fail`` names the shard."""
    from v2w_core.data.errors import CorruptSampleError
    from v2w_core.data.shards import ReadStats, iter_episodes

    root = s3_prefix + "damaged"
    episodes = _episodes()
    cfg = ShardWriterConfig(codec=CodecConfig(name="zstd"), eval_fraction=0.0)
    for group in (episodes[:2], episodes[2:4], episodes[4:]):  # shards: ep-a+ep-b, ep-c+ep-d, ep-e
        write_episodes(group, root, cfg)
    manifest = Manifest.read(root)
    by_key = {r["key"]: manifest.shard_uri(r["shard"]) for r in manifest.rows()}
    assert by_key["ep-a"] == by_key["ep-b"] and by_key["ep-c"] == by_key["ep-d"] != by_key["ep-a"]
    ab, cd, e = (storage.read_bytes(by_key[k]) for k in ("ep-a", "ep-c", "ep-e"))
    # ep-b cut in the middle of its frames; ep-d's shard ends exactly after ep-c (no end-of-archive
    # marker: tarfile's "empty header" case); 16 garbled bytes in the middle of ep-e's frames.
    storage.write_bytes(by_key["ep-a"], ab[: ab.index(b"ep-b.zst") + 2048])
    storage.write_bytes(by_key["ep-c"], cd[: cd.index(b"ep-d.actions.npy") - 1024])  # before its PAX header
    garbled = bytearray(e)
    mid = e.index(b"ep-e.zst") + 4096
    garbled[mid : mid + 16] = bytes(range(16))
    storage.write_bytes(by_key["ep-e"], bytes(garbled))
    gone = {"ep-b", "ep-d", "ep-e"}

    stats = ReadStats()
    plain = {ep.episode_id for ep in iter_episodes(root, on_error="skip", stats=stats)}
    assert plain == set(LENGTHS) - gone and stats.reconciles, stats.summary()
    assert {b.key: b.shard for b in stats.bad} == {k: by_key[k] for k in gone}

    clips = build_clip_dataset(root, ClipConfig(clip_length=8, stride=4, shuffle="none"))
    rows = clips.dataset.take_all()
    assert {r["episode_id"] for r in rows} == set(LENGTHS) - gone
    assert len(rows) == _expected_clips(8, 4, sorted(set(LENGTHS) - gone))
    report = clips.report()
    assert report.reconciles and {b.key: b.shard for b in report.bad} == {k: by_key[k] for k in gone}
    reasons = {b.key: b.reason for b in report.bad}
    assert "truncated" in reasons["ep-b"] and "checksum mismatch in ep-e.zst" in reasons["ep-e"]
    assert "not found" in reasons["ep-d"] or "missing" in reasons["ep-d"]

    with pytest.raises((ShardError, CorruptSampleError), match=by_key["ep-a"].rsplit("/", 1)[1]):
        list(iter_episodes(root))
    failing = ClipConfig(clip_length=8, stride=4, shuffle="none", on_error="fail")
    with pytest.raises(Exception, match=r"ep-b|ep-d|ep-e") as info:
        build_clip_dataset(root, failing).dataset.take_all()
    assert any(by_key[k].rsplit("/", 1)[1] in str(info.value) for k in gone)


@pytest.mark.slow
def test_ray_train_worker_consumes_clips(ray_cluster, s3_prefix: str, tmp_path: Path) -> None:
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    root = storage.join(s3_prefix, "ds")
    _write(root)
    clips = build_clip_dataset(root, ClipConfig(clip_length=16, stride=8, decode_num_cpus=0.5))

    def loop(config: dict) -> None:
        # Ray Train v2 keeps metrics only with checkpoints: check inside the worker, leave a note on disk.
        import torch

        shard = ray.train.get_dataset_shard("train")
        n, shapes = 0, set()
        for batch in shard.iter_torch_batches(batch_size=4, collate_fn=collate_clips):
            assert all(isinstance(e, str) for e in batch["episode_id"])
            frames = normalize_frames(batch["frames"])
            assert frames.dtype == torch.float32 and float(frames.min()) >= -1.0
            shapes.add((tuple(batch["frames"].shape[1:]), tuple(batch["actions"].shape[1:])))
            n += batch["frames"].shape[0]
        assert n == config["expected"], (n, config["expected"])
        assert shapes == {((16, 24, 24, 3), (16, 2))}, shapes
        Path(config["note"]).write_text(str(n))

    note = tmp_path / "clips-seen.txt"
    trainer = TorchTrainer(
        loop,
        train_loop_config={"expected": _expected_clips(16, 8), "note": str(note)},
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
        datasets={"train": clips.dataset},
        run_config=RunConfig(storage_path=str(tmp_path / "runs"), name="clips"),
    )
    trainer.fit()
    assert note.read_text() == str(_expected_clips(16, 8))
    assert clips.report().reconciles


def test_each_process_owns_its_clip_stats_actor(ray_cluster) -> None:
    """A non-detached actor dies with the process that created it. With one job-wide stats actor, a DAG
    stage (short-lived worker) that looked up the actor another stage had created lost it mid-read when
    that stage's worker exited. Each process must get its own."""
    import ray

    from v2w_core.data.clips import _stats_actor

    @ray.remote(num_cpus=0)
    class Holder:
        def actor_id(self) -> str:
            self.stats = _stats_actor()  # kept alive for as long as this process lives
            return self.stats._actor_id.hex()

    holder = Holder.remote()
    theirs = ray.get(holder.actor_id.remote())
    mine = _stats_actor()._actor_id.hex()
    assert mine != theirs
    assert _stats_actor()._actor_id.hex() == mine  # still shared by every dataset of one process
    ray.kill(holder)


def test_the_clip_stats_actor_outlives_the_handles_given_out(ray_cluster) -> None:
    """Handles pickled into a dataset's plan do not keep a non-detached actor alive: once the caller drops
    the one it got (a stage that passed ``.dataset`` to Ray Train and let its ClipDataset go), the actor
    must still be there for the decode tasks."""
    import gc
    import os
    import time

    import ray

    from v2w_core.data.clips import _stats_actor

    handle = _stats_actor()
    actor_id = handle._actor_id.hex()
    again = _stats_actor()  # a second dataset of the same process
    assert again._actor_id.hex() == actor_id
    del handle, again
    gc.collect()
    time.sleep(2)  # Ray destroys an unreferenced actor asynchronously
    alive = ray.get_actor(f"v2w_clip_stats_{os.getpid()}")
    assert alive._actor_id.hex() == actor_id
    assert ray.get(alive.snapshot.remote("x")) == {"read": {}, "bad": {}, "unlisted": 0}
