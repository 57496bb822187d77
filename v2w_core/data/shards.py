"""WebDataset shards of episodes: writing, decoding one sample, and reading without Ray.

Layout of one sample (one episode) in a tar, all members adjacent, ``<key>`` = the episode id::

    <key>.checksums.json  {"sha256": {ext: hex digest}} of every other member's stored bytes
    <key>.json          metadata: Episode.metadata() + codec + content_hash + checksums (utf-8 JSON)
    <key>.mp4           frames, codec "h264" / "h264-lossless" (libx264rgb in MP4)
       or <key>.zst     frames, codec "zstd" (zstd-compressed .npy of the uint8 array)
    <key>.actions.npy   actions (np.save, no pickle)
    <key>.reward.npy    optional
    <key>.done.npy      optional

Shards live under ``<root>/shards/<prefix>-<NNNNNN>.tar`` next to ``<root>/manifest.parquet``; a new
write uses a new prefix, so appending data never rewrites an existing shard.

:func:`decode_sample` accepts a sample exactly as ``ray.data.read_webdataset`` (Ray 2.60) yields it: a
dict with ``__key__`` and ``__url__`` (the shard path) plus one entry per member, keyed by the extension
after the key (``"mp4"``, ``"actions.npy"``, ``"json"``...). With ``decoder=None`` every value is raw
``bytes``; with Ray's default decoder ``.json`` arrives as a dict and ``.npy`` as an ndarray. Both are
accepted, but pass ``decoder=None``: Ray's decoder runs inside the read task, so one corrupt ``.npy`` or
``.json`` would fail the whole read instead of reaching :func:`decode_sample` to be counted and skipped.

The tars are written and read with the standard library's ``tarfile`` following webdataset's conventions
(its ``TarWriter`` is a thin wrapper over the same calls): the ``webdataset`` 1.0 package imports torch
when imported, which cost 3-15 s per process here (ingest jobs, data workers). Compatibility with the
webdataset package's own reader and with Ray's ``read_webdataset`` is tested.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tarfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Self

import numpy as np
from pydantic import Field

from v2w_core import storage
from v2w_core.config import StrictConfig
from v2w_core.data.codec import FRAMES_EXTENSION, LOSSLESS_CODECS, CodecConfig, decode_frames, encode_frames
from v2w_core.data.episode import FORMAT_VERSION, ActionSpace, Episode
from v2w_core.data.errors import CorruptSampleError, DataError, ManifestError, ShardError
from v2w_core.data.manifest import MANIFEST_NAME, Manifest, assign_split

log = logging.getLogger(__name__)

OnError = Literal["skip", "fail"]
SHARDS_DIR = "shards"
#: Member of every sample holding the checksums of the others (see :func:`encode_sample`).
CHECKSUMS_EXT = "checksums.json"
CHECKSUM_ALGORITHM = "sha256"
_TAR_BLOCK = 512
_ZERO_BLOCK = bytes(_TAR_BLOCK)
#: Read/write shards in large chunks: on S3 every read of the underlying file is a ranged GET.
_IO_BUFSIZE = 4 * 1024 * 1024
#: Sample key and extension of a tar member, the rule of webdataset's and Ray's readers.
_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


# ============================================================================================ encoding
def encode_sample(
    episode: Episode, codec: CodecConfig | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tar members of one episode (``{"__key__": id, ext: bytes}``) and its metadata dict.

    Besides the data members the sample carries ``<key>.checksums.json``: the sha256 of every other
    member's stored bytes, so any change to them (a flipped byte in a lossy video that still decodes,
    a cut member, a lost member) is caught on read, whatever the codec.
    """
    codec = codec or CodecConfig()
    episode.validate()
    meta = episode.metadata()
    meta["codec"] = codec.name
    meta["content_hash"] = episode.content_hash()
    meta["checksums"] = CHECKSUM_ALGORITHM
    sample: dict[str, Any] = {
        "__key__": episode.episode_id,
        "json": json.dumps(meta, sort_keys=True, allow_nan=False).encode("utf-8"),
        codec.extension: encode_frames(episode.frames, codec, fps=episode.fps),
        "actions.npy": _npy_bytes(episode.actions),
    }
    if episode.reward is not None:
        sample["reward.npy"] = _npy_bytes(episode.reward)
    if episode.done is not None:
        sample["done.npy"] = _npy_bytes(episode.done)
    sample[CHECKSUMS_EXT] = checksums_member(sample)
    return sample, meta


def checksums_member(sample: Mapping[str, Any]) -> bytes:
    """The ``checksums.json`` member of a sample: sha256 of each other member's bytes."""
    digests = {ext: hashlib.sha256(data).hexdigest() for ext, data in sorted(sample.items())
               if not ext.startswith("__") and ext != CHECKSUMS_EXT}  # fmt: skip
    return json.dumps({CHECKSUM_ALGORITHM: digests}, sort_keys=True).encode("utf-8")


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _tar_size(sample: Mapping[str, Any]) -> int:
    """Bytes the sample occupies in a tar: per member a PAX header (two blocks: the fractional mtime),
    its header block, and its data padded to blocks."""
    return sum(
        3 * _TAR_BLOCK + -(-len(v) // _TAR_BLOCK) * _TAR_BLOCK
        for k, v in sample.items()
        if not k.startswith("__")
    )


# ============================================================================================ decoding
def decode_sample(sample: Mapping[str, Any], *, shard: str, verify: bool = True) -> Episode:
    """Turn one WebDataset sample back into a validated :class:`Episode`.

    Raises :class:`CorruptSampleError` (``shard``, ``key``, reason) for anything wrong with it: missing
    members, undecodable video or arrays, metadata that disagrees with the arrays, an episode that
    fails validation, and (``verify``, lossless codecs) frames/actions whose hash differs from the one
    recorded at write time.
    """
    key = str(sample.get("__key__", "<no __key__>"))

    def bad(reason: str) -> CorruptSampleError:
        return CorruptSampleError(shard, key, reason)

    if sample.get("__error__"):
        raise bad(str(sample["__error__"]))
    if "__key__" not in sample or sample["__key__"] is None:
        raise bad("sample has no __key__ (not a WebDataset sample?)")
    if verify:
        _verify_checksums(sample, key, shard, bad)
    meta = _load_json(sample, bad)
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise bad(f"format_version {version!r} is not readable by this version (<= {FORMAT_VERSION})")
    codec = meta.get("codec")
    if codec not in FRAMES_EXTENSION:
        raise bad(f"unknown codec {codec!r} in metadata")
    ext = FRAMES_EXTENSION[codec]
    if sample.get(ext) is None:
        raise bad(f"missing frames member {key}.{ext}")
    try:
        frames = decode_frames(_as_bytes(sample[ext], f"{key}.{ext}"), codec)
        expected = (meta["length"], meta["height"], meta["width"], 3)
        if frames.shape != tuple(expected):
            raise bad(f"decoded frames have shape {frames.shape} but metadata says {tuple(expected)}")
        actions = _load_npy(sample, "actions.npy", key, required=True)
        episode = Episode(
            episode_id=meta["episode_id"],
            frames=frames,
            actions=actions,
            action_space=ActionSpace.model_validate(meta["action_space"]),
            domain=meta["domain"],
            source=meta["source"],
            fps=meta["fps"],
            reward=_load_npy(sample, "reward.npy", key, required=bool(meta.get("has_reward"))),
            done=_load_npy(sample, "done.npy", key, required=bool(meta.get("has_done"))),
            extra=dict(meta.get("extra") or {}),
        )
    except CorruptSampleError:
        raise
    except KeyError as err:
        raise bad(f"metadata lacks field {err}") from None
    except (DataError, ValueError, TypeError) as err:  # EpisodeError, VideoDecodeError, pydantic, numpy
        raise bad(str(err)) from err
    if episode.episode_id != key:
        raise bad(f"metadata names episode {episode.episode_id!r}, not the sample key")
    if verify and codec in LOSSLESS_CODECS and meta.get("content_hash") != episode.content_hash():
        raise bad("content hash mismatch: decoded frames/actions differ from what was written")
    return episode


_warned_unchecked: set[str] = set()


def _verify_checksums(sample: Mapping[str, Any], key: str, shard: str, bad: Any) -> None:
    """Check every member against ``checksums.json``; a sample written before checksums existed (no
    such member, and metadata that does not announce one) is read with one warning per process."""
    raw = sample.get(CHECKSUMS_EXT)
    if raw is None:
        meta = sample.get("json")
        announced = (b'"checksums"' in meta) if isinstance(meta, (bytes, bytearray)) else (
            isinstance(meta, Mapping) and "checksums" in meta)  # fmt: skip
        if announced:
            raise bad(f"missing member {key}.{CHECKSUMS_EXT} (the metadata says the sample has checksums)")
        if "old" not in _warned_unchecked:
            _warned_unchecked.add("old")
            log.warning("shard %s (and maybe others) holds samples written without checksums (older "
                        "writer): their stored bytes are not verified; rewrite the data set to add them",
                        shard)  # fmt: skip
        return
    try:
        listed = json.loads(_as_bytes(raw, CHECKSUMS_EXT))[CHECKSUM_ALGORITHM]
        if not isinstance(listed, Mapping):
            raise TypeError("not an object")
    except (ValueError, TypeError, KeyError) as err:
        raise bad(f"{key}.{CHECKSUMS_EXT} is unreadable ({err})") from None
    members = {ext for ext in sample if not ext.startswith("__") and ext != CHECKSUMS_EXT}
    missing = sorted(set(listed) - members)
    if missing:
        raise bad(f"missing member(s) {', '.join(f'{key}.{m}' for m in missing)} (listed in its checksums)")
    extra = sorted(members - set(listed))
    if extra:
        raise bad(f"unexpected member(s) {', '.join(f'{key}.{m}' for m in extra)} (not in its checksums)")
    for ext in sorted(listed):
        value = sample[ext]
        if not isinstance(value, (bytes, bytearray, memoryview)):
            if "decoded" not in _warned_unchecked:
                _warned_unchecked.add("decoded")
                log.warning("samples arrive already decoded (Ray's default decoder?): their checksums "
                            "cannot be verified; read with decoder=None")  # fmt: skip
            continue
        if hashlib.sha256(value).hexdigest() != listed[ext]:
            raise bad(f"checksum mismatch in {key}.{ext}: its stored bytes differ from what was written")


def _as_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} holds a {type(value).__name__}, expected raw bytes")


def _plain(value: Any) -> Any:
    """Undo pandas/Arrow conversions (arrays for lists, numpy scalars) in Ray-decoded JSON."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _load_json(sample: Mapping[str, Any], bad: Any) -> dict[str, Any]:
    raw = sample.get("json")
    if raw is None:
        raise bad("missing metadata member .json")
    try:
        meta = (
            raw
            if isinstance(raw, Mapping)
            else json.loads(raw if isinstance(raw, str) else _as_bytes(raw, "json"))
        )
    except (ValueError, TypeError) as err:
        raise bad(f"metadata .json is not valid JSON: {err}") from None
    if not isinstance(meta, Mapping):
        raise bad(f"metadata .json holds a {type(meta).__name__}, expected an object")
    return _plain(meta)


def _load_npy(sample: Mapping[str, Any], name: str, key: str, *, required: bool) -> np.ndarray | None:
    value = sample.get(name)
    if value is None:
        if required:
            raise ValueError(f"missing member {key}.{name}")
        return None
    if isinstance(value, np.ndarray):
        return value  # already decoded by Ray's default decoder
    try:
        return np.load(io.BytesIO(_as_bytes(value, f"{key}.{name}")), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{key}.{name} is not a readable .npy array: {err}") from None


# ============================================================================================= writing
class ShardWriterConfig(StrictConfig):
    codec: CodecConfig = CodecConfig()
    #: Target shard size; a shard is closed before a sample would push it past this (one oversized
    #: episode still gets a shard of its own).
    shard_size_mb: float = Field(default=256.0, gt=0)
    #: Fraction of episodes assigned to the eval split (by a hash of the episode id, see manifest.py).
    eval_fraction: float = Field(default=0.05, ge=0.0, le=1.0)


class ShardWriter:
    """Packs episodes into size-bounded WebDataset tars under ``<root>/shards/`` (local or ``s3://``).

    Each :meth:`write` returns the episode's manifest row; nothing is added to the manifest here, so a
    crashed write leaves at worst unreferenced shards, never a manifest that lists missing data. Use
    :func:`write_episodes` to write and append to the manifest in one go.
    """

    def __init__(
        self, root: str, config: ShardWriterConfig | None = None, *, prefix: str | None = None
    ) -> None:
        self.root = str(root)
        self.config = config or ShardWriterConfig()
        self.created_at = datetime.now(UTC)
        self.prefix = prefix or f"{self.created_at:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
        if "." in self.prefix or "/" in self.prefix:
            raise ValueError(f"shard prefix {self.prefix!r} must not contain '.' or '/'")
        self.rows: list[dict[str, Any]] = []
        self.shards: list[str] = []  # relative paths of the shards written so far
        self._index = 0
        self._stream: Any = None
        self._tar: tarfile.TarFile | None = None
        self._size = 0
        self._target = int(self.config.shard_size_mb * 1024 * 1024)

    def write(self, episode: Episode) -> dict[str, Any]:
        """Append one episode (validated first) to the current shard; returns its manifest row."""
        sample, meta = encode_sample(episode, self.config.codec)
        size = _tar_size(sample)
        if self._tar is not None and self._size + size > self._target:
            self._close_shard()
        if self._tar is None:
            self._open_shard()
        assert self._tar is not None
        _add_sample(self._tar, sample, mtime=self.created_at.timestamp())
        self._size += size
        row = {
            "episode_id": episode.episode_id,
            "shard": self.shards[-1],
            "key": episode.episode_id,
            "length": episode.length,
            "height": episode.height,
            "width": episode.width,
            "action_type": episode.action_space.type,
            "action_dim": episode.action_space.dim,
            "domain": episode.domain,
            "source": episode.source,
            "fps": float(episode.fps),
            "split": assign_split(episode.episode_id, self.config.eval_fraction),
            "content_hash": meta["content_hash"],
            "codec": self.config.codec.name,
            "sample_bytes": size,
            "created_at": self.created_at,
        }
        self.rows.append(row)
        return row

    def _open_shard(self) -> None:
        rel = f"{SHARDS_DIR}/{self.prefix}-{self._index:06d}.tar"
        self._index += 1
        self._stream = storage.open_output_stream(storage.join(self.root, rel))
        self._tar = tarfile.open(  # noqa: SIM115 - closed in _close_shard, after the samples of a shard
            fileobj=self._stream, mode="w|", bufsize=_IO_BUFSIZE, format=tarfile.PAX_FORMAT
        )
        self._size = 0
        self.shards.append(rel)
        log.info("writing shard %s", storage.join(self.root, rel))

    def _close_shard(self) -> None:
        tar, stream = self._tar, self._stream
        self._tar = self._stream = None
        try:
            if tar is not None:
                tar.close()  # writes the end-of-archive blocks; leaves the stream it was given open
        finally:
            if stream is not None:
                stream.close()  # for S3 this completes the upload

    def close(self) -> list[dict[str, Any]]:
        self._close_shard()
        return self.rows

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_episodes(
    episodes: Iterable[Episode],
    root: str,
    config: ShardWriterConfig | None = None,
    *,
    prefix: str | None = None,
) -> Manifest:
    """Write episodes as new shards under ``root`` and append them to ``root/manifest.parquet``.

    Episode ids already in the manifest are rejected before anything is written for them. Returns the
    updated manifest.
    """
    manifest_uri = storage.join(root, MANIFEST_NAME)
    existing = Manifest.read(manifest_uri) if storage.exists(manifest_uri) else Manifest.empty(root)
    known = set(existing.episode_ids())
    with ShardWriter(root, config, prefix=prefix) as writer:
        for episode in episodes:
            if episode.episode_id in known:
                raise ManifestError(
                    f"episode {episode.episode_id!r} is already in {manifest_uri}; episode ids must be unique "
                    "(ingest with another seed, or write to another root)"
                )
            known.add(episode.episode_id)
            writer.write(episode)
    new = Manifest.from_rows(writer.rows, root=root)
    merged = existing.merge(new)
    merged.write(manifest_uri)
    log.info("wrote %d episodes in %d shards; manifest %s now lists %d", len(new), len(writer.shards),
             manifest_uri, len(merged))  # fmt: skip
    return merged


# ============================================================================================= reading
@dataclass
class BadSample:
    shard: str
    key: str | None
    reason: str


@dataclass
class ReadStats:
    """What a read produced, so nothing disappears silently: ``expected == read + bad`` when reading
    through a manifest (``reconciles``)."""

    expected: int | None = None
    read: int = 0
    bad: list[BadSample] = field(default_factory=list)
    #: samples found in a shard that no manifest of the data set lists (ignored, logged once per shard).
    unlisted: int = 0

    @property
    def num_bad(self) -> int:
        return len(self.bad)

    @property
    def reconciles(self) -> bool:
        return self.expected is None or self.expected == self.read + self.num_bad

    def summary(self) -> str:
        exp = "?" if self.expected is None else str(self.expected)
        return f"expected {exp}, read {self.read}, bad {self.num_bad}, unlisted {self.unlisted}"


def iter_samples(uri: str) -> Iterator[dict[str, Any]]:
    """Raw samples of one shard, shaped as Ray yields them (``__key__``, ``__url__``, ext -> bytes).

    Damage never ends the read early: a truncated tar yields every complete sample before the cut, a
    garbled stretch is skipped and reading resumes at the next intact member header. Damage shows up as

    * a sample with an ``__error__`` entry (the damage lies inside that sample: a member cut short, or
      a garbled stretch between two of its members) - :func:`decode_sample` raises it as corrupt;
    * a record ``{"__key__": None, "__url__": uri, "__error__": reason}`` where the damage cannot be
      tied to one sample (between samples, a missing end-of-archive marker). Samples it swallowed whole
      are found by the manifest; samples it cut are found by their missing members and checksums.

    Raises :class:`ShardError` for a missing shard, or for a tar that breaks the WebDataset rules.
    """
    try:
        stream = storage.open_input_stream(uri)
    except FileNotFoundError:
        raise ShardError(uri, "shard does not exist") from None
    except storage.StorageError as err:
        raise ShardError(uri, f"cannot open: {err}") from err
    with stream:
        try:
            yield from _group_members(stream, uri)
        except OSError as err:  # the storage layer failed mid-read (connection reset, ...)
            raise ShardError(uri, f"read failed: {err}") from err


def _add_sample(tar: tarfile.TarFile, sample: Mapping[str, Any], *, mtime: float) -> None:
    """Members ``<key>.<ext>`` in sorted order, adjacent, read-only: webdataset's TarWriter conventions."""
    key = sample["__key__"]
    for ext in sorted(k for k in sample if not k.startswith("__")):
        data = sample[ext]
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mtime, info.mode = len(data), mtime, 0o444
        info.uname = info.gname = "bigdata"
        tar.addfile(info, io.BytesIO(data))


class _BufferedReader:
    """Large reads from the shard stream (every read of an S3 file is a ranged GET), tracking the offset."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._buf = b""
        self._pos = 0
        self.offset = 0

    def read(self, n: int) -> bytes:
        parts: list[bytes] = []
        while n > 0:
            if self._pos >= len(self._buf):
                self._buf, self._pos = self._stream.read(max(_IO_BUFSIZE, n)), 0
                if not self._buf:
                    break
            chunk = self._buf[self._pos : self._pos + n]
            self._pos += len(chunk)
            n -= len(chunk)
            parts.append(chunk)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.offset += len(data)
        return data


@dataclass
class _Damage:
    reason: str
    #: the damage is a member cut short (this member name), so it belongs to the sample being read
    inside: str | None = None
    #: the damage ended at a member header whose name is this (reading resumed there)
    resumed_at: str | None = None


def _parse_pax(data: bytes) -> dict[str, str]:
    """PAX extended-header records (``"<len> <key>=<value>\\n"``)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(data) and data[i] != 0:
        space = data.index(b" ", i)
        length = int(data[i:space])
        if length <= 0:
            raise ValueError("bad PAX record length")
        key, value = data[space + 1 : i + length - 1].split(b"=", 1)
        out[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        i += length
    return out


def _iter_members(reader: _BufferedReader) -> Iterator[tuple[str, bytes] | _Damage]:
    """``(name, data)`` of each regular member, with :class:`_Damage` where the tar is broken.

    A small tar walker rather than ``tarfile``'s: ``tarfile`` stops silently at a garbled header in the
    middle of an archive (everything after it vanishes without an error), raises on one after a PAX
    header, and cannot resume after a truncated member. Here every header block is checked (its
    checksum) and a bad one starts a scan for the next intact header; PAX (``x``), global PAX (``g``)
    and GNU long-name (``L``) headers are understood, which covers what ``tarfile``/webdataset write.
    """
    overrides: dict[str, str] = {}
    bad_from: int | None = None  # start of a garbled stretch being skipped
    zeros_from: int | None = None  # start of a run of all-zero blocks
    while True:
        start = reader.offset
        block = reader.read(_TAR_BLOCK)
        if len(block) < _TAR_BLOCK:
            if bad_from is not None:
                yield _Damage(f"garbled tar data from byte {bad_from} to the end of the shard ({start})")
            elif zeros_from is None or start - zeros_from < 2 * _TAR_BLOCK:
                what = "inside a member header" if block else "without the end-of-archive marker"
                yield _Damage(f"truncated: the shard ends at byte {start + len(block)} {what}")
            return
        if block == _ZERO_BLOCK:
            if zeros_from is None:
                zeros_from = start
            continue
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            if bad_from is None:
                bad_from = zeros_from if zeros_from is not None else start
            zeros_from = None
            continue
        name = overrides.get("path", info.name)
        if bad_from is not None or zeros_from is not None:
            gap_from = bad_from if bad_from is not None else zeros_from
            what = "garbled" if bad_from is not None else "zeroed"
            yield _Damage(f"{what} tar data at bytes {gap_from}-{start} skipped", resumed_at=name)
            bad_from = zeros_from = None
        try:
            size = int(overrides.get("size", info.size))
        except ValueError:
            size = info.size
        data = reader.read(size)
        if len(data) < size:
            yield _Damage(f"truncated: the shard ends at byte {reader.offset}, inside member {name} "
                          f"({len(data)} of {size} bytes)", inside=name)  # fmt: skip
            return
        reader.read(-size % _TAR_BLOCK)  # padding; if it is cut, the next read reports the truncation
        if info.type == tarfile.XHDTYPE:
            try:
                overrides = _parse_pax(data)
            except (ValueError, UnicodeDecodeError):
                overrides = {}
                yield _Damage(f"unreadable PAX header at byte {start}")
            continue
        if info.type == tarfile.XGLTYPE:
            continue
        if info.type == tarfile.GNUTYPE_LONGNAME:
            overrides = {"path": data.rstrip(b"\0").decode("utf-8", "surrogateescape")}
            continue
        overrides = {}
        if info.type in tarfile.REGULAR_TYPES:
            yield name, data


def _complete(sample: Mapping[str, Any]) -> bool:
    """Whether a sample holds every member its checksums list (older samples: has its metadata)."""
    raw = sample.get(CHECKSUMS_EXT)
    if raw is None:
        return "json" in sample
    try:
        return set(json.loads(raw)[CHECKSUM_ALGORITHM]) <= set(sample)
    except (ValueError, TypeError, KeyError):
        return False


def _group_members(stream: Any, uri: str) -> Iterator[dict[str, Any]]:
    """Group adjacent tar members into samples by key, with webdataset's/Ray's rule: the key is the
    member name up to the first dot of its basename, the rest is the extension."""
    current: dict[str, Any] | None = None
    seen: set[str] = set()
    for item in _iter_members(_BufferedReader(stream)):
        if isinstance(item, _Damage):
            where = _KEY_RE.match(item.inside or item.resumed_at or "")
            key = where.group(1) if where else None
            if current is not None and key == current["__key__"]:
                current.setdefault("__error__", f"shard damaged inside this sample: {item.reason}")
                continue
            if current is not None and item.resumed_at is None:  # the shard ends here
                if not _complete(current):
                    current["__error__"] = f"shard damaged inside this sample: {item.reason}"
                    yield current
                    current = None
                    continue
                yield current
                current = None
            if item.inside is not None and key is not None:  # cut inside the first member of a sample
                yield {"__key__": key, "__url__": uri, "__error__": f"shard damaged inside this sample: "
                       f"{item.reason}"}  # fmt: skip
            else:
                yield {"__key__": None, "__url__": uri, "__error__": item.reason}
            continue
        name, data = item
        match = _KEY_RE.match(name)
        if match is None:
            continue
        key, ext = match.groups()
        if current is None or key != current["__key__"]:
            if current is not None:
                yield current
            if key in seen:
                raise ShardError(uri, f"members of sample {key!r} are not adjacent (not a WebDataset tar)")
            seen.add(key)
            current = {"__key__": key, "__url__": uri}
        if ext in current:
            raise ShardError(uri, f"duplicate member {name}")
        current[ext] = data
    if current is not None:
        yield current


def read_shard(
    uri: str, *, on_error: OnError = "fail", stats: ReadStats | None = None, verify: bool = True
) -> Iterator[Episode]:
    """Episodes of one shard without Ray or a manifest; bad samples are raised or (``skip``) recorded."""
    stats = stats if stats is not None else ReadStats()
    yield from _read_one_shard(uri, None, on_error=on_error, stats=stats, verify=verify)


def iter_episodes(
    manifest: Manifest | str,
    *,
    split: str | None = None,
    on_error: OnError = "fail",
    stats: ReadStats | None = None,
    verify: bool = True,
) -> Iterator[Episode]:
    """Every episode the manifest (a :class:`Manifest`, or its URI / its root's) lists, optionally one
    split, shard by shard.

    With ``on_error="skip"`` a bad sample, a missing shard or a damaged tar is logged with shard and
    key and recorded in ``stats`` instead of raised; listed episodes that never show up are recorded as
    bad too, so ``stats.reconciles`` holds at the end. The manifest may be a selection (a split, a
    frozen snapshot): samples of the same shards that the data set's own manifest lists are skipped
    quietly; only samples no manifest lists count as ``unlisted``.
    """
    if isinstance(manifest, str):
        manifest = Manifest.read(manifest)
    stats = stats if stats is not None else ReadStats()
    selected = manifest.select(split=split) if split else manifest
    stats.expected = (stats.expected or 0) + len(selected)
    known = known_keys(manifest)
    for shard, rows in selected.rows_by_shard().items():
        yield from _read_one_shard(
            selected.shard_uri(shard),
            {r["key"]: r for r in rows},
            on_error=on_error,
            stats=stats,
            verify=verify,
            known=known,
        )
    level = logging.WARNING if stats.bad else logging.INFO
    log.log(level, "read episodes of %s: %s", selected.root, stats.summary())


def known_keys(manifest: Manifest) -> set[str]:
    """Keys listed by ``manifest`` or by the data set's own manifest in its root (when ``manifest`` is a
    selection of it, such as a frozen eval split): other samples in the shards are not strays."""
    keys = set(manifest.table.column("key").to_pylist())
    uri = storage.join(manifest.root, MANIFEST_NAME)
    try:
        if storage.exists(uri):
            keys |= set(Manifest.read(uri).table.column("key").to_pylist())
    except (DataError, storage.StorageError) as err:
        log.debug("cannot read %s to tell selected-out samples from strays: %s", uri, err)
    return keys


def _read_one_shard(
    uri: str,
    expected: dict[str, dict[str, Any]] | None,
    *,
    on_error: OnError,
    stats: ReadStats,
    verify: bool,
    known: set[str] | None = None,
) -> Iterator[Episode]:
    pending = dict(expected) if expected is not None else None
    damage: list[str] = []
    strays: list[str] = []

    def record(key: str | None, reason: str, err: Exception) -> None:
        if on_error == "fail":
            raise err
        stats.bad.append(BadSample(uri, key, reason))
        log.warning("skipping bad sample: shard=%s key=%s: %s", uri, key, reason)

    try:
        for sample in iter_samples(uri):
            key = sample["__key__"]
            if key is None:  # damage not tied to one sample
                reason = str(sample["__error__"])
                if on_error == "fail":
                    raise ShardError(uri, f"damaged tar: {reason}")
                damage.append(reason)
                if pending is None:
                    record(None, reason, ShardError(uri, reason))
                else:
                    log.warning("shard %s is damaged: %s", uri, reason)
                continue
            key = str(key)
            if pending is not None:
                if key not in pending:
                    if known is None or key not in known:
                        strays.append(key)
                    continue
                row = pending.pop(key)
            if sample.get("__error__") and on_error == "fail":
                raise ShardError(uri, f"damaged tar: {sample['__error__']} (sample {key})")
            try:
                episode = decode_sample(sample, shard=uri, verify=verify)
                if pending is not None:
                    _check_against_row(episode, row, uri, verify=verify)
            except CorruptSampleError as err:
                record(key, err.reason, err)
                continue
            stats.read += 1
            yield episode
    except ShardError as err:
        if on_error == "fail":
            raise
        if pending is None:
            record(None, err.reason, err)
        shard_failure: str | None = err.reason
    else:
        shard_failure = None
    if strays:
        stats.unlisted += len(strays)
        log.warning("shard %s holds %d sample(s) that no manifest lists (%s%s); ignored", uri, len(strays),
                    ", ".join(strays[:5]), " ..." if len(strays) > 5 else "")  # fmt: skip
    if pending:
        reason = shard_failure or "listed in the manifest but missing from the shard"
        if damage and not shard_failure:
            reason += f" (shard damaged: {'; '.join(damage)})"
        if on_error == "fail":
            key = next(iter(pending))
            raise CorruptSampleError(uri, key, f"{reason} ({len(pending)} missing)")
        for key in pending:
            record(key, reason, CorruptSampleError(uri, key, reason))


def _check_against_row(episode: Episode, row: Mapping[str, Any], shard: str, *, verify: bool) -> None:
    if episode.length != row["length"]:
        raise CorruptSampleError(shard, episode.episode_id,
                                 f"has {episode.length} frames but the manifest says {row['length']}")  # fmt: skip
    if verify and row["codec"] in LOSSLESS_CODECS and episode.content_hash() != row["content_hash"]:
        raise CorruptSampleError(shard, episode.episode_id, "content hash differs from the manifest's")


__all__ = [
    "CHECKSUMS_EXT",
    "BadSample",
    "OnError",
    "ReadStats",
    "ShardWriter",
    "ShardWriterConfig",
    "decode_sample",
    "encode_sample",
    "iter_episodes",
    "iter_samples",
    "known_keys",
    "read_shard",
    "write_episodes",
]
