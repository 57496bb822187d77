"""Shards: round trips, sample layout, Ray-shaped samples, and every kind of bad input."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from data_helpers import assert_episodes_equal, make_episode, npy, rewrite_tar

from v2w_core.data.codec import LOSSY_MEAN_ABS_ERROR_BOUND, CodecConfig
from v2w_core.data.episode import Episode
from v2w_core.data.errors import CorruptSampleError, EpisodeError, ShardError
from v2w_core.data.manifest import Manifest
from v2w_core.data.shards import (
    CHECKSUMS_EXT,
    ReadStats,
    ShardWriter,
    ShardWriterConfig,
    checksums_member,
    decode_sample,
    iter_episodes,
    iter_samples,
    read_shard,
    write_episodes,
)


def _mixed_episodes() -> list[Episode]:
    eps = [make_episode(kind, seed=i) for i, kind in enumerate(["continuous", "discrete", "multi_hot"] * 2)]
    plain = make_episode("discrete", episode_id="no-reward-no-done", seed=9)
    plain.reward = plain.done = None
    plain.extra = {}
    return [*eps, plain]


@pytest.mark.parametrize("codec", ["h264-lossless", "zstd"])
def test_lossless_round_trip_is_exact(tmp_path: Path, codec: str) -> None:
    episodes = _mixed_episodes()
    config = ShardWriterConfig(codec=CodecConfig(name=codec), shard_size_mb=0.01)
    manifest = write_episodes(episodes, str(tmp_path), config)
    assert len(manifest.shard_uris()) > 1, "small target size must roll over to several shards"
    stats = ReadStats()
    back = {e.episode_id: e for e in iter_episodes(Manifest.read(str(tmp_path)), stats=stats)}
    assert stats.reconciles and stats.read == len(episodes) and not stats.bad
    for ep in episodes:
        assert_episodes_equal(ep, back[ep.episode_id])
        assert back[ep.episode_id].content_hash() == ep.content_hash()


def test_lossy_round_trip_within_bound(tmp_path: Path, shapes_episodes: list[Episode]) -> None:
    episodes = [*shapes_episodes, *_mixed_episodes()]
    write_episodes(episodes, str(tmp_path))
    back = {e.episode_id: e for e in iter_episodes(Manifest.read(str(tmp_path)))}
    for ep in episodes:
        # actions, reward, done and metadata exact; frames within the codec's stated bound
        assert_episodes_equal(
            ep, back[ep.episode_id], exact_frames=False, frame_mae=LOSSY_MEAN_ABS_ERROR_BOUND
        )


def test_sample_layout_in_tar(tmp_path: Path) -> None:
    ep = make_episode("continuous", episode_id="layout-ep")
    manifest = write_episodes([ep], str(tmp_path))
    (shard,) = manifest.shard_uris()
    with tarfile.open(shard) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("layout-ep.json").read())  # type: ignore[union-attr]
        actions = np.load(io.BytesIO(tar.extractfile("layout-ep.actions.npy").read()))  # type: ignore[union-attr]
    assert sorted(names) == [
        f"layout-ep.{x}" for x in ("actions.npy", "checksums.json", "done.npy", "json", "mp4", "reward.npy")
    ]
    assert (
        meta["codec"] == "h264" and meta["content_hash"] == ep.content_hash() and meta["format_version"] == 1
    )
    assert meta["action_space"] == {"type": "continuous", "dim": 3, "names": ["x", "y", "grip"],
                                    "low": [-1.0, -1.0, 0.0], "high": [1.0, 1.0, 2.0]}  # fmt: skip
    np.testing.assert_array_equal(actions, ep.actions)


def test_shard_size_target(tmp_path: Path, shapes_episodes: list[Episode]) -> None:
    target_mb = 0.02
    with ShardWriter(str(tmp_path), ShardWriterConfig(shard_size_mb=target_mb), prefix="sz") as writer:
        for ep in shapes_episodes:
            writer.write(ep)
    sizes = [(tmp_path / s).stat().st_size for s in writer.shards]
    assert len(sizes) >= 3
    per_shard: dict[str, int] = {}
    for row in writer.rows:
        per_shard[row["shard"]] = per_shard.get(row["shard"], 0) + 1
    for shard, size in zip(writer.shards, sizes, strict=True):
        # over target only when one sample alone exceeds it; +1 KiB tar end-of-archive blocks, +10 KiB padding
        assert size <= target_mb * 2**20 + 11 * 1024 or per_shard[shard] == 1
    assert all(s.startswith("shards/sz-") and s.endswith(".tar") for s in writer.shards)


def _raw_samples(tmp_path: Path, episodes: list[Episode], codec: str = "h264") -> list[dict]:
    manifest = write_episodes(episodes, str(tmp_path), ShardWriterConfig(codec=CodecConfig(name=codec)))
    return [s for uri in manifest.shard_uris() for s in iter_samples(uri)]


def test_decode_sample_accepts_ray_shapes(tmp_path: Path) -> None:
    """Ray's read_webdataset yields raw bytes (decoder=None) or json->dict, npy->ndarray (default decoder)."""
    ep = make_episode("continuous", episode_id="ray-ep")
    (raw,) = _raw_samples(tmp_path, [ep])
    assert set(raw) == {"__key__", "__url__", "json", "mp4", "actions.npy", "reward.npy", "done.npy",
                        CHECKSUMS_EXT}
    assert all(isinstance(raw[k], bytes) for k in raw if not k.startswith("__"))
    assert_episodes_equal(ep, decode_sample(raw, shard=raw["__url__"]), exact_frames=False, frame_mae=2.0)
    ray_default = dict(raw)
    meta = json.loads(raw["json"])
    # pandas/Arrow round trips turn JSON lists into arrays and numbers into numpy scalars
    meta["action_space"]["names"] = np.array(meta["action_space"]["names"], dtype=object)
    meta["action_space"]["low"] = np.array(meta["action_space"]["low"])
    meta["fps"] = np.float64(meta["fps"])
    ray_default["json"] = meta
    for k in ("actions.npy", "reward.npy", "done.npy"):
        ray_default[k] = np.load(io.BytesIO(raw[k]))
    assert_episodes_equal(ep, decode_sample(ray_default, shard="s"), exact_frames=False, frame_mae=2.0)


def _corrupt(raw: dict, **changes: object) -> dict:
    """A sample whose stored members break the schema although its checksums match (a writer bug)."""
    sample = dict(raw)
    for k, v in changes.items():
        k = k.replace("_npy", ".npy")
        if v is None:
            sample.pop(k)
        else:
            sample[k] = v
    sample[CHECKSUMS_EXT] = checksums_member(sample)
    return sample


def test_decode_sample_errors_name_shard_and_key(tmp_path: Path) -> None:
    ep = make_episode("continuous", episode_id="victim", seed=1)
    (raw,) = _raw_samples(tmp_path, [ep], codec="h264-lossless")
    meta = json.loads(raw["json"])
    cases = {
        "undecodable video": (_corrupt(raw, mp4=b"\x00garbage" * 50), "undecodable video"),
        "missing video": (_corrupt(raw, mp4=None), "missing frames member victim.mp4"),
        "short actions": (_corrupt(raw, actions_npy=npy(ep.actions[:-2])), "frame/action length mismatch"),
        "nan actions": (_corrupt(raw, actions_npy=npy(np.full_like(ep.actions, np.nan))), "NaN/inf"),
        "int actions": (_corrupt(raw, actions_npy=npy(ep.actions.astype(np.int64))), "expected float32"),
        "pickled npy": (_corrupt(raw, actions_npy=b"\x93NUMPY junk"), "not a readable .npy"),
        "missing actions": (_corrupt(raw, actions_npy=None), "missing member victim.actions.npy"),
        "missing reward": (_corrupt(raw, reward_npy=None), "missing member victim.reward.npy"),
        "bad json": (_corrupt(raw, json=b"{not json"), "not valid JSON"),
        "missing json": (_corrupt(raw, json=None), "missing metadata"),
        "null domain": (_corrupt(raw, json=json.dumps({**meta, "domain": None}).encode()), "domain is None"),
        "null fps": (_corrupt(raw, json=json.dumps({**meta, "fps": None}).encode()), "fps is None"),
        "length disagrees": (
            _corrupt(raw, json=json.dumps({**meta, "length": 5}).encode()),
            "metadata says (5,",
        ),
        "newer format": (
            _corrupt(raw, json=json.dumps({**meta, "format_version": 99}).encode()),
            "format_version",
        ),
        "hash mismatch": (
            _corrupt(raw, json=json.dumps({**meta, "content_hash": "0" * 64}).encode()),
            "hash",
        ),
        "id mismatch": (_corrupt(raw, __key__="other"), "not the sample key"),
    }
    for name, (sample, expected) in cases.items():
        with pytest.raises(CorruptSampleError) as info:
            decode_sample(sample, shard="s3://bucket/ds/shards/x-000001.tar")
        err = info.value
        assert err.shard == "s3://bucket/ds/shards/x-000001.tar", name
        assert err.key == sample["__key__"], name
        assert expected in err.reason, f"{name}: {err.reason}"
        assert "x-000001.tar" in str(err) and repr(sample["__key__"]) in str(err)
    del meta["fps"]
    with pytest.raises(CorruptSampleError, match="metadata lacks field 'fps'"):
        decode_sample(_corrupt(raw, json=json.dumps(meta).encode()), shard="s")


def test_writer_validates_before_writing(tmp_path: Path) -> None:
    ep = make_episode("continuous", episode_id="late-nan")
    ep.actions[3, 0] = np.nan  # mutated after construction
    with pytest.raises(EpisodeError, match="late-nan.*NaN"):
        write_episodes([make_episode("discrete"), ep], str(tmp_path))
    assert not (tmp_path / "manifest.parquet").exists(), "a failed write must not list anything"


# ------------------------------------------------------------------------------------ bad shards
@pytest.fixture
def dataset(tmp_path: Path, shapes_episodes: list[Episode]) -> tuple[Path, Manifest]:
    """8 episodes in 4 shards (2 per shard), lossless so the hash check is active."""
    config = ShardWriterConfig(codec=CodecConfig(name="h264-lossless"), shard_size_mb=0.045)
    manifest = write_episodes(shapes_episodes, str(tmp_path), config, prefix="bad")
    counts = [len(r) for r in manifest.rows_by_shard().values()]
    assert len(counts) >= 3 and sum(counts) == 8, counts
    return tmp_path, manifest


def _shard_path(root: Path, manifest: Manifest, i: int) -> Path:
    return root / list(manifest.rows_by_shard())[i]


def test_truncated_tar(dataset: tuple[Path, Manifest]) -> None:
    root, manifest = dataset
    path = _shard_path(root, manifest, 1)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(ShardError, match=path.name):
        list(iter_episodes(manifest))
    stats = ReadStats()
    got = list(iter_episodes(manifest, on_error="skip", stats=stats))
    assert stats.reconciles, stats.summary()
    assert stats.read == len(got) and stats.num_bad >= 1
    assert {b.shard for b in stats.bad} == {str(path)}
    listed = {r["key"] for r in manifest.rows_by_shard()[f"shards/{path.name}"]}
    assert {b.key for b in stats.bad} <= listed and {b.key for b in stats.bad} | {
        e.episode_id for e in got
    } >= listed
    # Without a manifest the complete samples before the damage still come out, the damage is counted.
    stats2 = ReadStats()
    list(read_shard(str(path), on_error="skip", stats=stats2))
    assert stats2.num_bad == 1 and stats2.bad[0].shard == str(path)


def test_truncated_at_member_boundary_detected_via_manifest(dataset: tuple[Path, Manifest]) -> None:
    """A tar cut exactly between samples looks complete to tarfile; only the manifest can tell."""
    root, manifest = dataset
    path = _shard_path(root, manifest, 0)
    keys = [r["key"] for r in manifest.rows_by_shard()[f"shards/{path.name}"]]
    rewrite_tar(path, lambda name, data: None if name.startswith(keys[-1]) else data)
    with pytest.raises(CorruptSampleError) as info:
        list(iter_episodes(manifest))
    assert info.value.key == keys[-1] and info.value.shard == str(path)
    stats = ReadStats()
    list(iter_episodes(manifest, on_error="skip", stats=stats))
    assert stats.reconciles and [b.key for b in stats.bad] == [keys[-1]]
    assert "missing from the shard" in stats.bad[0].reason


def test_undecodable_video_in_shard(dataset: tuple[Path, Manifest]) -> None:
    root, manifest = dataset
    path = _shard_path(root, manifest, 2)
    victim = manifest.rows_by_shard()[f"shards/{path.name}"][0]["key"]
    rewrite_tar(path, lambda name, data: data[: len(data) // 2] if name == f"{victim}.mp4" else data,
                fix_checksums=True)  # fmt: skip
    with pytest.raises(CorruptSampleError) as info:
        list(iter_episodes(manifest))
    assert (info.value.shard, info.value.key) == (str(path), victim)
    assert "undecodable video" in str(info.value)
    stats = ReadStats()
    got = [e.episode_id for e in iter_episodes(manifest, on_error="skip", stats=stats)]
    assert victim not in got and len(got) == 7
    assert stats.reconciles and [(b.shard, b.key) for b in stats.bad] == [(str(path), victim)]


def test_frame_action_mismatch_and_nan_in_stored_sample(dataset: tuple[Path, Manifest]) -> None:
    root, manifest = dataset
    path = _shard_path(root, manifest, 0)
    k1, k2 = (r["key"] for r in manifest.rows_by_shard()[f"shards/{path.name}"][:2])

    def edit(name: str, data: bytes) -> bytes:
        if name == f"{k1}.actions.npy":
            return npy(np.load(io.BytesIO(data))[:-1])
        if name == f"{k2}.reward.npy":
            return npy(np.full(12, np.nan, dtype=np.float32))
        return data

    rewrite_tar(path, edit, fix_checksums=True)
    with pytest.raises(CorruptSampleError, match=f"{k1}.*frame/action length mismatch"):
        list(iter_episodes(manifest))
    stats = ReadStats()
    assert len(list(iter_episodes(manifest, on_error="skip", stats=stats))) == 6
    reasons = {b.key: b.reason for b in stats.bad}
    assert "length mismatch" in reasons[k1] and "reward contains NaN" in reasons[k2]
    assert stats.reconciles


def test_bit_flip_caught_by_hash_in_lossless_mode(dataset: tuple[Path, Manifest]) -> None:
    root, manifest = dataset
    path = _shard_path(root, manifest, 0)
    key = manifest.rows_by_shard()[f"shards/{path.name}"][0]["key"]

    def edit(name: str, data: bytes) -> bytes:
        if name == f"{key}.actions.npy":
            arr = np.load(io.BytesIO(data))
            arr[0] = (arr[0] + 1) % 5  # still a valid action: only a hash can notice
            return npy(arr)
        return data

    rewrite_tar(path, edit)  # corruption after writing: the member checksum catches it
    with pytest.raises(CorruptSampleError, match=f"checksum mismatch in {key}.actions.npy"):
        list(iter_episodes(manifest))
    rewrite_tar(path, lambda name, data: data, fix_checksums=True)  # as if written so: the content hash
    with pytest.raises(CorruptSampleError, match="content hash mismatch"):
        list(iter_episodes(manifest))
    assert len(list(iter_episodes(manifest, verify=False))) == 8


def test_missing_shard(dataset: tuple[Path, Manifest]) -> None:
    root, manifest = dataset
    path = _shard_path(root, manifest, 1)
    n_missing = len(manifest.rows_by_shard()[f"shards/{path.name}"])
    path.unlink()
    with pytest.raises(ShardError, match=f"{path.name}.*does not exist"):
        list(iter_episodes(manifest))
    stats = ReadStats()
    got = list(iter_episodes(manifest, on_error="skip", stats=stats))
    assert len(got) == 8 - n_missing and stats.num_bad == n_missing and stats.reconciles
    assert all(b.shard == str(path) and "does not exist" in b.reason for b in stats.bad)


def test_unlisted_samples_are_counted_not_returned(dataset: tuple[Path, Manifest], caplog) -> None:
    root, manifest = dataset
    forgetful = Manifest(manifest.table.slice(1), manifest.root)  # the data set forgot its first episode
    forgetful.write()
    stats = ReadStats()
    with caplog.at_level("WARNING"):
        got = list(iter_episodes(str(root), stats=stats))
    assert len(got) == 7 and stats.unlisted == 1 and stats.reconciles
    assert sum("no manifest lists" in r.getMessage() for r in caplog.records) == 1


def test_selection_of_a_data_set_reads_quietly(dataset: tuple[Path, Manifest], caplog) -> None:
    """A frozen snapshot / split of the data set lists a subset of each shard's samples: the others are
    the data set's own episodes, not strays, and must not be warned about (evaluation did, per sample)."""
    root, manifest = dataset
    snapshot = Manifest(manifest.table.slice(0, 3), manifest.root)
    uri = snapshot.write(str(root / "manifest-eval-0123.parquet"))
    stats = ReadStats()
    with caplog.at_level("WARNING"):
        got = list(iter_episodes(uri, stats=stats))
        got_split = list(iter_episodes(manifest, split="train"))
    assert len(got) == 3 and stats.unlisted == 0 and stats.reconciles and stats.num_bad == 0
    assert len(got_split) == len(manifest.select(split="train"))
    assert not [r for r in caplog.records if r.levelname == "WARNING"], [r.getMessage() for r in caplog.records]


def test_shards_read_identically_by_rays_webdataset_reader(tmp_path: Path) -> None:
    """Our tarfile-based writer/reader follow webdataset's conventions: Ray's reader (a copy of the
    webdataset package's, and what the training pipeline uses) sees exactly the same samples."""
    from ray.data._internal.datasource.webdataset_datasource import _group_by_keys, _tar_file_iterator

    episodes = [make_episode(k, seed=i) for i, k in enumerate(["continuous", "discrete", "multi_hot"])]
    episodes.append(make_episode("discrete", episode_id="x" * 200))  # longest id: PAX headers
    manifest = write_episodes(episodes, str(tmp_path), ShardWriterConfig(shard_size_mb=0.02))
    for uri in manifest.shard_uris():
        ours = list(iter_samples(uri))
        with open(uri, "rb") as f:
            theirs = list(_group_by_keys(_tar_file_iterator(f), meta={"__url__": uri}))
        assert ours == theirs and ours
    assert len(list(iter_episodes(manifest))) == 4


def test_corrupt_tar_header(dataset: tuple[Path, Manifest]) -> None:
    root, manifest = dataset
    path = _shard_path(root, manifest, 0)
    keys = [r["key"] for r in manifest.rows_by_shard()[f"shards/{path.name}"]]
    data = bytearray(path.read_bytes())
    data[:2048] = b"\xff" * 2048  # the first member's headers and the start of its data destroyed
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=f"{path.name}: damaged tar: garbled tar data at bytes 0-"):
        list(iter_episodes(manifest))
    stats = ReadStats()
    got = {e.episode_id for e in iter_episodes(manifest, on_error="skip", stats=stats)}
    assert stats.reconciles and [(b.shard, b.key) for b in stats.bad] == [(str(path), keys[0])]
    assert "missing member" in stats.bad[0].reason and got == set(manifest.episode_ids()) - {keys[0]}


# ------------------------------------------------- damage anywhere: counted, named, never silently wrong
def _clean_read(manifest: Manifest) -> dict[str, str]:
    return {e.episode_id: e.content_hash() for e in iter_episodes(manifest)}


def _check_damaged_read(manifest: Manifest, path: Path, clean: dict[str, str]) -> ReadStats:
    """Skip mode reads around the damage: counts reconcile, only the damaged shard has bad samples,
    every episode that comes out is exactly what was written; fail mode raises one error naming it."""
    stats = ReadStats()
    got = {e.episode_id: e.content_hash() for e in iter_episodes(manifest, on_error="skip", stats=stats)}
    assert stats.reconciles, stats.summary()
    assert {b.shard for b in stats.bad} <= {str(path)}
    assert all(clean[k] == h for k, h in got.items())
    assert set(got) | {b.key for b in stats.bad} == set(clean)
    if stats.bad:
        with pytest.raises((ShardError, CorruptSampleError)) as info:
            list(iter_episodes(manifest))
        assert path.name in str(info.value) and "\n" not in str(info.value)
    return stats


def test_truncated_at_every_block(dataset: tuple[Path, Manifest]) -> None:
    """Cut a shard at every 512-byte boundary (member boundaries included: tarfile's "empty header")
    and in the middle of blocks (tarfile's "unexpected end of data")."""
    root, manifest = dataset
    clean = _clean_read(manifest)
    path = _shard_path(root, manifest, 1)
    data = path.read_bytes()
    listed = {r["key"] for r in manifest.rows_by_shard()[f"shards/{path.name}"]}
    cuts = sorted({*range(0, len(data), 512), *range(300, len(data), 4096)})
    end_of_archive = -(-len(data.rstrip(b"\0")) // 512) * 512 + 1024  # last member + two zero blocks
    bad_counts = []
    for cut in cuts:
        path.write_bytes(data[:cut])
        stats = _check_damaged_read(manifest, path, clean)
        bad_counts.append(stats.num_bad)
        assert {b.key for b in stats.bad} <= listed
        # Without a manifest the damage is still reported (as the cut sample, or keyless at a boundary).
        raw = ReadStats()
        list(read_shard(str(path), on_error="skip", stats=raw))
        assert {b.shard for b in raw.bad} <= {str(path)}
        assert raw.num_bad >= 1 or cut >= end_of_archive, cut  # only a cut in the final padding is harmless
    assert bad_counts[0] == len(listed) and min(bad_counts) == 0 and max(bad_counts) == len(listed)
    path.write_bytes(data)


def test_garbled_bytes_anywhere(dataset: tuple[Path, Manifest]) -> None:
    """16 garbled bytes at many places (headers, PAX records, data, padding, end marker): never an
    exception in skip mode, never a wrong episode, counts reconcile."""
    root, manifest = dataset
    clean = _clean_read(manifest)
    path = _shard_path(root, manifest, 0)
    data = path.read_bytes()
    rng = np.random.default_rng(0)
    for at in sorted({*range(0, len(data) - 16, 1531), *range(0, 4096, 128)}):
        damaged = bytearray(data)
        damaged[at : at + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(damaged))
        _check_damaged_read(manifest, path, clean)
    path.write_bytes(data)


def test_sixteen_flipped_bytes_in_lossy_video_are_caught(tmp_path: Path, shapes_episodes) -> None:
    """Lossy H.264 has no content hash to check; the member checksum names the shard and the key."""
    manifest = write_episodes(shapes_episodes[:3], str(tmp_path), ShardWriterConfig(), prefix="lossy")
    (shard,) = manifest.shard_uris()
    victim = shapes_episodes[1].episode_id

    def flip(name: str, data: bytes) -> bytes:
        if name != f"{victim}.mp4":
            return data
        out = bytearray(data)
        for i in range(len(out) // 2, len(out) // 2 + 16):
            out[i] ^= 0xFF
        return bytes(out)

    rewrite_tar(Path(shard), flip)
    stats = ReadStats()
    got = [e.episode_id for e in iter_episodes(manifest, on_error="skip", stats=stats)]
    assert victim not in got and len(got) == 2 and stats.reconciles
    assert [(b.shard, b.key) for b in stats.bad] == [(shard, victim)]
    assert "checksum mismatch" in stats.bad[0].reason
    with pytest.raises(CorruptSampleError, match=f"{victim}.*lossy-000000.tar.*checksum mismatch"):
        list(iter_episodes(manifest))


def test_old_shards_without_checksums_read_with_one_warning(tmp_path: Path, shapes_episodes, caplog) -> None:
    from v2w_core.data import shards

    manifest = write_episodes(shapes_episodes[:4], str(tmp_path), ShardWriterConfig(), prefix="old")

    def strip(name: str, data: bytes) -> bytes | None:
        if name.endswith("." + CHECKSUMS_EXT):
            return None
        if name.endswith(".json"):
            meta = json.loads(data)
            meta.pop("checksums")
            return json.dumps(meta, sort_keys=True).encode()
        return data

    for uri in manifest.shard_uris():
        rewrite_tar(Path(uri), strip)
    shards._warned_unchecked.clear()
    with caplog.at_level("WARNING"):
        stats = ReadStats()
        assert len(list(iter_episodes(manifest, stats=stats))) == 4 and stats.num_bad == 0
        assert len(list(iter_episodes(manifest))) == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "without checksums" in warnings[0], warnings
    # A sample that announces checksums but lost the member is bad, not "old".
    rewrite_tar(Path(manifest.shard_uris()[0]), lambda n, d: d)
    sample = next(iter_samples(write_episodes(shapes_episodes[4:5], str(tmp_path / "new")).shard_uris()[0]))
    del sample[CHECKSUMS_EXT]
    with pytest.raises(CorruptSampleError, match="missing member .*checksums.json"):
        decode_sample(sample, shard="s")
