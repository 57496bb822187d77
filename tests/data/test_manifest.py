"""Manifest: columns, append/merge, "added since", splits, consistency checks, relocatable data sets."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import make_episode

from v2w_core.data.codec import CodecConfig
from v2w_core.data.episode import Episode
from v2w_core.data.errors import ManifestError
from v2w_core.data.manifest import MANIFEST_SCHEMA, Manifest, append_to_manifest, assign_split
from v2w_core.data.shards import ShardWriterConfig, iter_episodes, write_episodes

LOSSLESS = ShardWriterConfig(codec=CodecConfig(name="zstd"), eval_fraction=0.25)


def test_columns_and_values(tmp_path: Path, shapes_episodes: list[Episode]) -> None:
    manifest = write_episodes(shapes_episodes, str(tmp_path), LOSSLESS)
    table = pq.read_table(tmp_path / "manifest.parquet")  # plain parquet, readable by anyone
    assert table.schema.names == MANIFEST_SCHEMA.names == [
        "episode_id", "shard", "key", "length", "height", "width", "action_type", "action_dim", "domain",
        "source", "fps", "split", "content_hash", "codec", "sample_bytes", "created_at",
    ]  # fmt: skip
    row = manifest.rows()[0]
    ep = shapes_episodes[0]
    assert row["episode_id"] == row["key"] == ep.episode_id
    assert row["shard"].startswith("shards/") and row["shard"].endswith(".tar")  # relative to the manifest
    assert (row["length"], row["height"], row["width"]) == (12, 64, 64)
    assert (row["action_type"], row["action_dim"], row["domain"], row["source"]) == ("discrete", 5, "game",
                                                                                     "bouncing-shapes")  # fmt: skip
    assert row["content_hash"] == ep.content_hash() and row["codec"] == "zstd"
    assert row["created_at"].tzinfo is not None and row["split"] in ("train", "eval")
    manifest.check()


def test_append_keeps_old_shards_and_supports_since(tmp_path: Path) -> None:
    first = [make_episode("discrete", episode_id=f"old-{i}", seed=i) for i in range(3)]
    second = [make_episode("discrete", episode_id=f"new-{i}", seed=i) for i in range(2)]
    m1 = write_episodes(first, str(tmp_path), LOSSLESS)
    old_shards = {p: p.read_bytes() for p in (tmp_path / "shards").iterdir()}
    time.sleep(0.01)
    cut = datetime.now(UTC)
    m2 = write_episodes(second, str(tmp_path), LOSSLESS)
    assert len(m1) == 3 and len(m2) == 5 and len(Manifest.read(str(tmp_path))) == 5
    assert all(p.read_bytes() == data for p, data in old_shards.items()), "append must not touch old shards"
    since = m2.select(since=cut)
    assert sorted(since.episode_ids()) == ["new-0", "new-1"]
    assert sorted(e.episode_id for e in iter_episodes(since)) == ["new-0", "new-1"]
    with pytest.raises(ValueError, match="timezone-aware"):
        m2.select(since=datetime.now())
    m2.check()


def test_duplicate_episode_ids_rejected(tmp_path: Path) -> None:
    eps = [make_episode("discrete", episode_id=f"ep-{i}", seed=i) for i in range(2)]
    write_episodes(eps, str(tmp_path), LOSSLESS)
    with pytest.raises(ManifestError, match="'ep-1' is already in"):
        write_episodes([make_episode("discrete", episode_id="ep-9"), eps[1]], str(tmp_path), LOSSLESS)
    assert sorted(Manifest.read(str(tmp_path)).episode_ids()) == ["ep-0", "ep-1"], "manifest unchanged"
    m = Manifest.read(str(tmp_path))
    with pytest.raises(ManifestError, match="duplicate episode ids when merging manifests: ep-0, ep-1"):
        m.merge(m)
    with pytest.raises(ManifestError, match="duplicate"):
        append_to_manifest(str(tmp_path), m.rows()[:1])


def test_check_reports_missing_shards_and_duplicate_keys(tmp_path: Path) -> None:
    eps = [make_episode("discrete", episode_id=f"ep-{i}", seed=i) for i in range(4)]
    manifest = write_episodes(eps, str(tmp_path), LOSSLESS.model_copy(update={"shard_size_mb": 0.005}))
    manifest.check()
    missing = manifest.shard_uris()[-1]
    Path(missing).unlink()
    with pytest.raises(ManifestError, match=r"1 listed shard\(s\) missing: " + missing):
        manifest.check()
    manifest.check(check_shards=False)
    rows = manifest.rows()
    rows[1] = {
        **rows[1],
        "episode_id": rows[0]["episode_id"],
        "key": rows[0]["key"],
        "shard": rows[0]["shard"],
    }
    bad = Manifest.from_rows(rows, manifest.root)
    with pytest.raises(ManifestError) as info:
        bad.check(check_shards=False)
    assert "duplicate episode ids: ep-0" in str(info.value)
    assert "duplicate keys within a shard" in str(info.value)


def test_dataset_is_relocatable_and_merge_rebases(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_episodes([make_episode("multi_hot", episode_id="in-a")], str(a), LOSSLESS)
    write_episodes([make_episode("multi_hot", episode_id="in-b")], str(b), LOSSLESS)
    moved = tmp_path / "moved"
    shutil.copytree(a, moved)
    shutil.rmtree(a)
    ma = Manifest.read(str(moved / "manifest.parquet"))
    assert [e.episode_id for e in iter_episodes(ma)] == ["in-a"]
    merged = ma.merge(Manifest.read(str(b)))
    assert merged.rows()[1]["shard"].startswith(str(b))  # other root's relative paths became absolute
    merged.write(str(moved / "manifest.parquet"))
    again = Manifest.read(str(moved))
    again.check()
    assert sorted(e.episode_id for e in iter_episodes(again)) == ["in-a", "in-b"]


def test_split_is_deterministic_and_proportional(tmp_path: Path) -> None:
    ids = [f"ep-{i}" for i in range(4000)]
    splits = [assign_split(i, 0.1) for i in ids]
    assert splits == [assign_split(i, 0.1) for i in ids]
    assert 0.08 < splits.count("eval") / len(ids) < 0.12
    assert {assign_split(i, 0.0) for i in ids[:100]} == {"train"}
    assert {assign_split(i, 1.0) for i in ids[:100]} == {"eval"}
    # growing the fraction only moves train -> eval, never the other way
    assert all(assign_split(i, 0.2) == "eval" for i, s in zip(ids, splits, strict=True) if s == "eval")
    eps = [make_episode("discrete", episode_id=f"e-{i}", seed=i, t=2) for i in range(12)]
    manifest = write_episodes(eps, str(tmp_path), LOSSLESS)
    for split in ("train", "eval"):
        expected = sorted(r["episode_id"] for r in manifest.rows() if r["split"] == split)
        assert sorted(e.episode_id for e in iter_episodes(manifest, split=split)) == expected
    assert len(manifest.select(split="eval")) + len(manifest.select(split="train")) == 12


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest at .*v2w-ingest"):
        Manifest.read(str(tmp_path))
    (tmp_path / "manifest.parquet").write_bytes(b"not parquet")
    with pytest.raises(ManifestError, match="not a readable parquet"):
        Manifest.read(str(tmp_path))
    with pytest.raises(ManifestError, match="does not match the manifest schema"):
        Manifest(pa.table({"episode_id": ["x"]}), str(tmp_path))
