"""The parquet manifest: one row per episode, the single source of truth about what a data set holds.

Where it lives: ``<root>/manifest.parquet``, with the shards under ``<root>/shards/``.

The ``shard`` column is a path **relative to the manifest's directory** (``shards/<name>.tar``), so a
whole data set can be copied between a local directory and ``s3://`` (or between buckets) without
rewriting it; :meth:`Manifest.shard_uri` resolves it. An absolute URI (``s3://...`` or ``/...``) in that
column is used as is, which lets a merged manifest point at shards of another data set.

Splits are a deterministic function of the episode id (:func:`assign_split`), so appending episodes
never moves an existing episode between train and eval. ``created_at`` (UTC) supports "episodes added
since the last training run" (:meth:`Manifest.select`).

Appending rewrites the (small) parquet file in one atomic put; it assumes one writer at a time per
data set, which is how ``v2w-ingest`` and the pipeline use it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from v2w_core import storage
from v2w_core.data.errors import ManifestError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.parquet"

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("episode_id", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),  # relative to the manifest's directory
        pa.field("key", pa.string(), nullable=False),  # sample key inside the shard (== episode_id)
        pa.field("length", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("action_type", pa.string(), nullable=False),  # continuous | discrete | multi_hot
        pa.field("action_dim", pa.int32(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),  # robot | game
        pa.field("source", pa.string(), nullable=False),
        pa.field("fps", pa.float64(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # train | eval
        pa.field("content_hash", pa.string(), nullable=False),  # sha256(frames bytes + actions bytes)
        pa.field("codec", pa.string(), nullable=False),  # h264 | h264-lossless | zstd
        pa.field("sample_bytes", pa.int64(), nullable=False),  # size of the sample in the tar
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


def assign_split(episode_id: str, eval_fraction: float) -> str:
    """``"eval"`` for a stable ``eval_fraction`` of episode ids, ``"train"`` otherwise.

    The first 8 bytes of sha256(id) as a fraction of 2^64: deterministic across machines and Python
    versions (unlike ``hash()``), and independent of which other episodes exist.
    """
    if not 0.0 <= eval_fraction <= 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1], got {eval_fraction}")
    u = int.from_bytes(hashlib.sha256(episode_id.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return "eval" if u < eval_fraction else "train"


def _is_absolute(shard: str) -> bool:
    return "://" in shard or shard.startswith("/")


class Manifest:
    """A manifest table plus the directory (``root``) its relative shard paths are resolved against."""

    def __init__(self, table: pa.Table, root: str) -> None:
        try:
            self.table = table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)
        except (KeyError, ValueError, pa.ArrowInvalid) as err:
            raise ManifestError(f"manifest under {root} does not match the manifest schema: {err}") from None
        self.root = _normalize_root(root)

    # -------------------------------------------------------------------------------- construction
    @classmethod
    def empty(cls, root: str) -> Manifest:
        return cls(MANIFEST_SCHEMA.empty_table(), root)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], root: str) -> Manifest:
        rows = list(rows)
        if not rows:
            return cls.empty(root)
        return cls(pa.Table.from_pylist([dict(r) for r in rows], schema=MANIFEST_SCHEMA), root)

    @classmethod
    def read(cls, uri: str) -> Manifest:
        """Read ``uri`` (a ``manifest.parquet`` file, or the data-set root that holds one)."""
        if not str(uri).endswith(".parquet"):
            uri = storage.join(uri, MANIFEST_NAME)
        try:
            data = storage.read_bytes(uri)
        except FileNotFoundError:
            raise ManifestError(
                f"no manifest at {uri}; ingest data there first (v2w-ingest --out ...)"
            ) from None
        try:
            table = pq.read_table(io.BytesIO(data))
        except (pa.ArrowInvalid, OSError) as err:
            raise ManifestError(f"{uri} is not a readable parquet file: {err}") from None
        return cls(table, _parent(uri))

    def write(self, uri: str | None = None) -> str:
        """Write as parquet (atomically: one local rename or one S3 put); default ``<root>/manifest.parquet``."""
        uri = uri or storage.join(self.root, MANIFEST_NAME)
        buf = pa.BufferOutputStream()
        pq.write_table(self.table, buf, compression="zstd")
        storage.write_bytes(uri, buf.getvalue().to_pybytes())
        return uri

    # --------------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return self.table.num_rows

    def rows(self) -> list[dict[str, Any]]:
        return self.table.to_pylist()

    def episode_ids(self) -> list[str]:
        return self.table.column("episode_id").to_pylist()

    def shard_uri(self, shard: str) -> str:
        """Absolute URI of a value of the ``shard`` column."""
        return shard if _is_absolute(shard) else storage.join(self.root, *shard.split("/"))

    def shard_uris(self) -> list[str]:
        """Distinct shard URIs in first-listed order (what ``ray.data.read_webdataset`` should read)."""
        return [self.shard_uri(s) for s in dict.fromkeys(self.table.column("shard").to_pylist())]

    def rows_by_shard(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for row in self.rows():
            out.setdefault(row["shard"], []).append(row)
        return out

    def select(self, *, split: str | None = None, since: datetime | None = None) -> Manifest:
        """Rows of one split and/or created at or after ``since`` (e.g. the last training run)."""
        mask = pa.array([True] * len(self), type=pa.bool_())
        if split is not None:
            if split not in ("train", "eval"):
                raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
            mask = pc.and_(mask, pc.equal(self.table.column("split"), split))
        if since is not None:
            if since.tzinfo is None:
                raise ValueError("since must be timezone-aware (e.g. datetime.now(UTC))")
            ts = pa.scalar(since.astimezone(UTC), type=MANIFEST_SCHEMA.field("created_at").type)
            mask = pc.and_(mask, pc.greater_equal(self.table.column("created_at"), ts))
        return Manifest(self.table.filter(mask), self.root)

    # -------------------------------------------------------------------------------- combination
    def merge(self, other: Manifest) -> Manifest:
        """Rows of both, keeping this manifest's root; ``other``'s relative shard paths are rebased if
        its root differs. Duplicate episode ids are an error naming them."""
        table = other.table
        if other.root != self.root:
            shards = [s if _is_absolute(s) else other.shard_uri(s) for s in table.column("shard").to_pylist()]
            idx = table.schema.get_field_index("shard")
            table = table.set_column(idx, MANIFEST_SCHEMA.field("shard"), pa.array(shards, pa.string()))
        merged = Manifest(pa.concat_tables([self.table, table]), self.root)
        dupes = [k for k, n in Counter(merged.episode_ids()).items() if n > 1]
        if dupes:
            raise ManifestError(f"duplicate episode ids when merging manifests: {', '.join(sorted(dupes)[:10])}"
                                f"{' ...' if len(dupes) > 10 else ''}; episode ids must be unique")  # fmt: skip
        return merged

    # ------------------------------------------------------------------------------------- checking
    def check(self, *, check_shards: bool = True) -> None:
        """Raise :class:`ManifestError` listing every problem: duplicate ids or (shard, key) pairs,
        key != episode id, bad split values, and (``check_shards``) listed shards that do not exist."""
        problems: list[str] = []
        ids = self.episode_ids()
        dupes = sorted(k for k, n in Counter(ids).items() if n > 1)
        if dupes:
            problems.append(f"duplicate episode ids: {', '.join(dupes[:10])}")
        pairs = zip(self.table.column("shard").to_pylist(), self.table.column("key").to_pylist(), strict=True)
        dup_keys = sorted(f"{s}:{k}" for (s, k), n in Counter(pairs).items() if n > 1)
        if dup_keys:
            problems.append(f"duplicate keys within a shard: {', '.join(dup_keys[:10])}")
        mismatched = [i for i, k in zip(ids, self.table.column("key").to_pylist(), strict=True) if i != k]
        if mismatched:
            problems.append(f"key differs from episode_id for: {', '.join(mismatched[:10])}")
        bad_split = set(self.table.column("split").to_pylist()) - {"train", "eval"}
        if bad_split:
            problems.append(f"unknown split values: {sorted(bad_split)}")
        if check_shards:
            missing = [u for u in self.shard_uris() if not storage.exists(u)]
            if missing:
                problems.append(f"{len(missing)} listed shard(s) missing: {', '.join(missing[:10])}")
        if problems:
            raise ManifestError(f"manifest under {self.root} is inconsistent:\n  " + "\n  ".join(problems))


def _normalize_root(root: str | os.PathLike[str]) -> str:
    """One spelling per directory, so manifests of the same root compare equal when merged."""
    if storage.is_s3(root):
        return str(root).rstrip("/")
    return os.path.abspath(os.fspath(root))


def _parent(uri: str) -> str:
    if storage.is_s3(uri):
        return posixpath.dirname(str(uri).rstrip("/"))
    return os.path.dirname(os.path.abspath(uri))


def append_to_manifest(root: str, rows: Iterable[Mapping[str, Any]]) -> Manifest:
    """Append rows to ``<root>/manifest.parquet`` (created if missing) and return the result."""
    uri = storage.join(root, MANIFEST_NAME)
    existing = Manifest.read(uri) if storage.exists(uri) else Manifest.empty(root)
    merged = existing.merge(Manifest.from_rows(rows, root))
    merged.write(uri)
    return merged


__all__ = ["MANIFEST_NAME", "MANIFEST_SCHEMA", "Manifest", "append_to_manifest", "assign_split"]
