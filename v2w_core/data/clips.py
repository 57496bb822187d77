"""The Ray Data clip pipeline: manifest -> shards -> decoded episodes -> fixed-length clips -> training.

``build_clip_dataset(manifest, ClipConfig(...))`` returns a :class:`ClipDataset` whose ``.dataset`` is a
``ray.data.Dataset`` with one row per clip::

    frames      uint8 (L, H, W, 3)      RGB, as stored (default), or float32 in [-1, 1] (``frames_dtype``)
    actions     float32 (L, A) | int64 (L,)   the recorded per-frame actions of the clip's frames
    episode_id  str
    start       int64                   index of the clip's first frame in its episode

A Ray Train worker consumes it with
``ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=..., collate_fn=collate_clips)``
(the string column needs :func:`collate_clips`; or ``select_columns(["frames", "actions"])`` first).

Design decisions (and why):

* **uint8 frames by default.** A clip is 4x smaller than float32 in the object store, in the shuffle
  and on the wire to the train worker; the worker normalises on its device (``x / 127.5 - 1``, the
  [-1, 1] range the diffusion model expects, see :func:`normalize_frames`). ``frames_dtype="float32"``
  does the same on the CPU here for consumers that want it.
* **Whole-episode decode, then slicing.** Each episode's video is decoded once by ``shards.decode_sample``
  (whole-clip conversion, not per-frame), validated, and all clips are cut from the array.
  Clip starts are ``0, stride, 2*stride, ...`` while a full clip fits: an episode of T frames gives
  ``floor((T - L) / stride) + 1`` clips (0 if T < L; those episodes are counted as ``too_short``).
* **Actions are not shifted here.** ``actions[i]`` is the action taken at the clip's frame i (the data
  convention); the model's ``align_actions`` turns that into "frame t carries a_{t-1}", nulling the
  clip's first frame, as in training on any 16-frame window.
* **Shards are read by our own reader.** A dataset of shard URIs, each read, verified (member checksums)
  and cut into clips by one ``map_batches`` task. ``ray.data.read_webdataset`` is not used: its tar
  reader fails the whole read at the first truncated or garbled byte, with no shard name.
* **Nothing disappears silently.** Every listed episode ends up either read or bad: a corrupt sample
  (``CorruptSampleError``, a checksum mismatch, a sample cut by a truncated tar) or a damaged stretch of
  a shard is logged with its shard (and key) and recorded in a small stats actor; with
  ``on_error="fail"`` it fails the pipeline instead. A shard listed in the manifest but missing from
  storage is reported by name before anything runs (its episodes count as bad, or it is fatal).
  Episodes listed but never found in their shard are reported as bad when :meth:`ClipDataset.report`
  reconciles the counts (``expected == read + bad``) after a pass over the data.
* **Shuffle** is seeded: shard order is shuffled with ``seed``; ``"global"`` then does a full
  ``random_shuffle(seed)`` of clips (all-to-all, needs clips to fit in the object store), ``"blocks"``
  only randomises block order (cheap; pair with ``iter_torch_batches(local_shuffle_buffer_size=...)``).
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from v2w_core import storage
from v2w_core.config import StrictConfig
from v2w_core.data.codec import LOSSLESS_CODECS
from v2w_core.data.errors import CorruptSampleError, ManifestError, ShardError
from v2w_core.data.manifest import Manifest
from v2w_core.data.shards import decode_sample, iter_samples, known_keys

log = logging.getLogger(__name__)

ShuffleMode = Literal["none", "blocks", "global"]


class ClipConfig(StrictConfig):
    """How episodes become training clips."""

    clip_length: int = Field(default=16, ge=1)
    stride: int = Field(default=8, ge=1)
    #: Which split of the manifest to read; None reads every episode.
    split: Literal["train", "eval"] | None = "train"
    shuffle: ShuffleMode = "global"
    seed: int = 0
    #: A corrupt sample is logged and skipped ("skip") or fails the pipeline ("fail").
    on_error: Literal["skip", "fail"] = "skip"
    frames_dtype: Literal["uint8", "float32"] = "uint8"
    #: Check lossless episodes' content hash against the manifest (cheap next to decoding).
    verify: bool = True
    #: Read tasks (default: one per shard, capped by Ray Data's heuristics).
    read_blocks: int | None = Field(default=None, ge=1)
    #: CPUs reserved per decode task. Fractional, so decoding and a train worker share a 2-core node.
    decode_num_cpus: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> ClipConfig:
        if self.stride > self.clip_length * 64:
            raise ValueError(f"stride {self.stride} is implausibly large for clip_length {self.clip_length}")
        return self


# --------------------------------------------------------------------------------------- clip maths
def clip_starts(length: int, clip_length: int, stride: int) -> range:
    """First-frame indices of the clips cut from an episode of ``length`` frames."""
    if length < clip_length:
        return range(0)
    return range(0, length - clip_length + 1, stride)


def count_clips(length: int, clip_length: int, stride: int) -> int:
    """``floor((T - L) / stride) + 1`` for ``T >= L``, else 0."""
    return 0 if length < clip_length else (length - clip_length) // stride + 1


def normalize_frames(frames: Any) -> Any:
    """uint8 [0, 255] -> float32 [-1, 1]; works on numpy arrays and torch tensors (on any device)."""
    if hasattr(frames, "float"):  # torch
        return frames.float() / 127.5 - 1.0
    return frames.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """(T, C, H, W) float in [-1, 1] or (T, H, W, 3) uint8 → (T, H, W, 3) uint8 (the inverse of
    :func:`normalize_frames`, channels last)."""
    if frames.dtype == np.uint8:
        return frames
    x = np.clip((np.asarray(frames, np.float32) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def collate_clips(batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """``collate_fn`` for ``iter_torch_batches``: tensors for frames/actions/start, ``episode_id`` kept as a
    list of str (Ray's default collate cannot make a tensor of strings)."""
    import torch

    out: dict[str, Any] = {
        k: torch.as_tensor(np.ascontiguousarray(batch[k])) for k in ("frames", "actions", "start")
    }
    out["episode_id"] = [str(x) for x in batch["episode_id"]]
    return out


# ---------------------------------------------------------------------------------------- counting
@dataclass
class BadEpisode:
    shard: str
    key: str
    reason: str


@dataclass
class ClipReport:
    """Counts of one pass, reconciled against the manifest: ``expected == read + bad``."""

    expected_episodes: int
    expected_clips: int
    read: int
    clips: int
    too_short: int
    bad: list[BadEpisode] = field(default_factory=list)
    missing_shards: list[str] = field(default_factory=list)
    unlisted: int = 0

    @property
    def num_bad(self) -> int:
        return len(self.bad)

    @property
    def reconciles(self) -> bool:
        return self.expected_episodes == self.read + self.num_bad

    def summary(self) -> str:
        return (f"episodes: expected {self.expected_episodes}, read {self.read}, bad {self.num_bad} "
                f"(missing shards {len(self.missing_shards)}), too short {self.too_short}, unlisted "
                f"{self.unlisted}; clips {self.clips} of {self.expected_clips} expected")  # fmt: skip


_STATS_ACTOR_PREFIX = "v2w_clip_stats"
#: This process's handle of its stats actor. A non-detached actor is destroyed when its last handle in its
#: owner goes away, and the handles pickled into a dataset's plan (run by Ray Data / Ray Train actors) do
#: not count: without this reference, the train stage's actor died mid-epoch once its ClipDataset was
#: dropped ("The actor is dead because all references to the actor were removed").
_stats_handle: tuple[tuple[str, str], Any] | None = None  # ((GCS address, job id), the creating handle)


def _stats_actor() -> Any:
    """This process's clip-stats actor, created on first use and shared by every clip dataset it builds:
    a new actor is a new worker process (~1 CPU-s of start-up on a small machine), not worth paying per
    dataset or epoch.

    One per *process*, not one per Ray job: a non-detached actor dies with the process that created it,
    and DAG stages run in short-lived workers (``max_calls=1``). With a job-wide name, the latent
    pipeline's train stage looked up the actor its encode stage had created, and lost it mid-read when
    that stage's worker exited ("The actor died ... all references to the actor were removed"). The
    process keeps a handle (``_stats_handle``) for as long as it lives, for the same reason.
    """
    import os

    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class ClipStats:
        """Per-episode outcomes reported by the decode tasks, per dataset. Keyed by episode id, so a
        second epoch over the same dataset does not double-count."""

        def __init__(self) -> None:
            self.data: dict[str, dict[str, Any]] = {}

        def _ds(self, ds_id: str) -> dict[str, Any]:
            return self.data.setdefault(ds_id, {"read": {}, "bad": {}, "unlisted": set()})

        def record(self, ds_id: str, ok: dict[str, int], bad: list[tuple[str, str, str]],
                   strays: list[tuple[str, str]]) -> None:  # fmt: skip
            d = self._ds(ds_id)
            d["read"].update(ok)
            for shard, key, reason in bad:
                d["bad"][key] = (shard, reason)
            d["unlisted"].update(strays)

        def snapshot(self, ds_id: str) -> dict[str, Any]:
            d = self._ds(ds_id)
            return {"read": dict(d["read"]), "bad": dict(d["bad"]), "unlisted": len(d["unlisted"])}

    global _stats_handle
    ctx = ray.get_runtime_context()
    key = (ctx.gcs_address, ctx.get_job_id())
    if _stats_handle is not None and _stats_handle[0] == key:
        # the creating handle: a second lookup by name would return a handle that does not keep the actor
        # alive, and replacing the first with it would let the actor die
        return _stats_handle[1]
    handle = ClipStats.options(name=f"{_STATS_ACTOR_PREFIX}_{os.getpid()}", get_if_exists=True).remote()
    _stats_handle = (key, handle)
    return handle


# ---------------------------------------------------------------------------------- the per-block fn
class _ShardsToClips:
    """Ray Data ``map_batches`` function: a batch of shard URIs -> every clip of their listed episodes.

    Reads each shard with :func:`shards.iter_samples` (not ``read_webdataset``, whose tar reader aborts the
    whole read at the first truncated or garbled byte): damage costs only the samples it touches, each
    named by shard and key. Clips leave as stacked ``(N, L, H, W, 3)`` arrays (one copy, no per-row Arrow
    conversion), a few episodes at a time (a generator, so a large shard is never held decoded whole),
    and each shard's outcome reaches the stats actor in one acknowledged call, so
    :meth:`ClipDataset.report` never races the counts. Holds the selected manifest rows (key -> expected
    length / hash / codec) so every sample is checked against the manifest.
    """

    #: Emit a batch once this many bytes of clips are ready.
    _FLUSH_BYTES = 64 * 2**20

    def __init__(self, config: ClipConfig, rows: Mapping[str, Mapping[str, Any]], stats: Any, ds_id: str,
                 known: set[str], frame_shape: tuple[int, int], action_shape: tuple[int, ...],
                 action_dtype: str) -> None:  # fmt: skip
        self.config = config
        self.known = frozenset(known)  # listed by the data set (other split, not selected): not strays
        self.rows = dict(rows)
        self.stats = stats
        self.ds_id = ds_id
        self.frame_shape = frame_shape
        self.action_shape = action_shape
        self.action_dtype = np.dtype(action_dtype)

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for shard in batch["shard"]:
            yield from self._one_shard(str(shard))

    def _one_shard(self, shard: str) -> Iterator[dict[str, np.ndarray]]:
        import ray

        L, stride = self.config.clip_length, self.config.stride
        frames_out: list[np.ndarray] = []
        actions_out: list[np.ndarray] = []
        ids: list[str] = []
        starts_out: list[int] = []
        pending = 0
        ok: dict[str, int] = {}
        bad: list[tuple[str, str, str]] = []
        strays: list[tuple[str, str]] = []
        failure: Exception | None = None
        try:
            for sample in iter_samples(shard):
                key = sample["__key__"]
                if key is None:  # damage between samples: the manifest finds what it swallowed
                    log.warning("shard %s is damaged: %s", shard, sample["__error__"])
                    if self.config.on_error == "fail":
                        failure = ShardError(shard, f"damaged tar: {sample['__error__']}")
                        break
                    continue
                row = self.rows.get(key)
                if row is None:
                    if key not in self.known:
                        strays.append((shard, key))
                    continue
                try:
                    episode = decode_sample(sample, shard=shard, verify=self.config.verify)
                    _check_row(episode, row, shard, verify=self.config.verify)
                except CorruptSampleError as err:
                    log.warning("bad sample: shard=%s key=%s: %s", err.shard, err.key, err.reason)
                    bad.append((err.shard, err.key, err.reason))
                    if self.config.on_error == "fail":
                        failure = ShardError(shard, err.reason) if sample.get("__error__") else err
                        break
                    continue
                starts = clip_starts(episode.length, L, stride)
                ok[key] = len(starts)
                if len(starts):
                    windows = np.lib.stride_tricks.sliding_window_view(episode.frames, L, axis=0)[::stride]
                    # (n, H, W, 3, L) view -> (n, L, H, W, 3) contiguous: one copy for all clips
                    frames_out.append(np.ascontiguousarray(np.moveaxis(windows[: len(starts)], -1, 1)))
                    actions_out.append(np.stack([episode.actions[s : s + L] for s in starts]))
                    ids.extend([key] * len(starts))
                    starts_out.extend(starts)
                    pending += frames_out[-1].nbytes
                if pending >= self._FLUSH_BYTES:
                    yield self._assemble(frames_out, actions_out, ids, starts_out)
                    frames_out, actions_out, ids, starts_out, pending = [], [], [], [], 0
        except ShardError as err:  # missing, unreadable or not a WebDataset tar: its unread samples are bad
            log.warning("shard %s: %s", shard, err.reason)
            unread = [k for k, r in self.rows.items() if r["shard"] == shard and k not in ok
                      and k not in {b[1] for b in bad}]  # fmt: skip
            bad.extend((shard, k, err.reason) for k in unread)
            if self.config.on_error == "fail":
                failure = err
        if strays:
            log.warning("shard %s holds %d sample(s) that no manifest lists (%s); ignored", shard,
                        len(strays), ", ".join(k for _, k in strays[:5]))  # fmt: skip
        ray.get(self.stats.record.remote(self.ds_id, ok, bad, strays))
        if failure is not None:
            raise failure
        if ids:
            yield self._assemble(frames_out, actions_out, ids, starts_out)

    def _assemble(self, frames: list[np.ndarray], actions: list[np.ndarray], ids: list[str],
                  starts: list[int]) -> dict[str, np.ndarray]:  # fmt: skip
        L = self.config.clip_length
        h, w = self.frame_shape
        if frames:
            f = frames[0] if len(frames) == 1 else np.concatenate(frames)
            a = actions[0] if len(actions) == 1 else np.concatenate(actions)
        else:
            f = np.zeros((0, L, h, w, 3), np.uint8)
            a = np.zeros((0, L, *self.action_shape), self.action_dtype)
        if self.config.frames_dtype == "float32":
            f = normalize_frames(f)
        return {
            "frames": f,
            "actions": a,
            "episode_id": np.array(ids, dtype=object),
            "start": np.array(starts, dtype=np.int64),
        }


def _check_row(episode: Any, row: Mapping[str, Any], shard: str, *, verify: bool) -> None:
    key = episode.episode_id
    if episode.length != row["length"]:
        raise CorruptSampleError(shard, key, f"has {episode.length} frames, manifest says {row['length']}")
    if verify and row["codec"] in LOSSLESS_CODECS and episode.content_hash() != row["content_hash"]:
        raise CorruptSampleError(shard, key, "content hash differs from the manifest's")


# --------------------------------------------------------------------------------------- the builder
@dataclass
class ClipDataset:
    """The clip ``dataset`` plus what is needed to account for every episode after a pass."""

    dataset: Any  # ray.data.Dataset
    manifest: Manifest  # the selected rows
    config: ClipConfig
    expected_clips: int
    missing_shards: list[str]
    _stats: Any = None
    _ds_id: str = ""
    _missing_bad: list[BadEpisode] = field(default_factory=list)
    _other_split_keys: set[str] = field(default_factory=set)

    def report(self) -> ClipReport:
        """Counts so far (call after iterating the dataset once). Listed episodes that were neither read
        nor reported bad are recorded as bad here ("not found in its shard")."""
        import ray

        snap = ray.get(self._stats.snapshot.remote(self._ds_id))
        bad = list(self._missing_bad)
        seen_bad = {b.key for b in bad}
        for key, (shard, reason) in sorted(snap["bad"].items()):
            if key not in seen_bad:
                bad.append(BadEpisode(shard, key, reason))
                seen_bad.add(key)
        read = snap["read"]
        lost = [r for r in self.manifest.rows() if r["key"] not in read and r["key"] not in seen_bad]
        for r in lost:
            shard = self.manifest.shard_uri(r["shard"])
            log.warning("bad sample: shard=%s key=%s: listed in the manifest but not found in the shard",
                        shard, r["key"])  # fmt: skip
            bad.append(BadEpisode(shard, r["key"], "listed in the manifest but not found in its shard"))
        L, stride = self.config.clip_length, self.config.stride
        lengths = {r["key"]: r["length"] for r in self.manifest.rows()}
        return ClipReport(
            expected_episodes=len(self.manifest),
            expected_clips=self.expected_clips,
            read=len(read),
            clips=sum(read.values()),
            too_short=sum(1 for k in read if count_clips(lengths[k], L, stride) == 0),
            bad=bad,
            missing_shards=list(self.missing_shards),
            unlisted=int(snap["unlisted"]),
        )


def build_clip_dataset(manifest: Manifest | str, config: ClipConfig | None = None) -> ClipDataset:
    """Lazily build the clip dataset of a manifest (a :class:`Manifest` or its URI); needs Ray.

    Fails fast, naming them, on missing shards (``on_error="fail"``) and on a selection that mixes
    frame sizes or action spaces (clips of different shapes cannot be batched).
    """
    import ray
    import ray.data

    config = config or ClipConfig()
    full = manifest if isinstance(manifest, Manifest) else Manifest.read(manifest)
    selected = full.select(split=config.split) if config.split else full
    if len(selected) == 0:
        raise ManifestError(f"manifest under {full.root} has no episodes in split {config.split!r}")
    _check_uniform(selected)

    stats = _stats_actor()
    ds_id = uuid.uuid4().hex
    by_shard = selected.rows_by_shard()
    shard_uris = {shard: selected.shard_uri(shard) for shard in by_shard}
    missing = sorted(uri for uri in shard_uris.values() if not storage.exists(uri))
    missing_bad: list[BadEpisode] = []
    if missing:
        msg = f"{len(missing)} shard(s) listed in the manifest are missing: {', '.join(missing)}"
        if config.on_error == "fail":
            raise ShardError(missing[0], msg)
        log.error("%s; their episodes are counted as bad", msg)
        for shard, rows in by_shard.items():
            if shard_uris[shard] in missing:
                for r in rows:
                    log.warning("bad sample: shard=%s key=%s: shard is missing", shard_uris[shard], r["key"])
                    missing_bad.append(BadEpisode(shard_uris[shard], r["key"], "shard is missing"))
    present = [u for u in shard_uris.values() if u not in missing]
    expected_clips = sum(count_clips(r["length"], config.clip_length, config.stride) for r in selected.rows())
    if not present:
        raise ShardError(full.root, "none of the listed shards exist")
    if config.shuffle != "none":
        random.Random(config.seed).shuffle(present)

    # Episodes of other splits (or left out of a snapshot) live in the same shards: skip them quietly.
    known = known_keys(full) - set(selected.episode_ids())
    rows = {r["key"]: {"length": r["length"], "codec": r["codec"], "content_hash": r["content_hash"],
                       "shard": shard_uris[r["shard"]]}
            for r in selected.rows() if shard_uris[r["shard"]] not in missing}  # fmt: skip
    first = selected.rows()[0]
    action_shape = () if first["action_type"] == "discrete" else (int(first["action_dim"]),)
    action_dtype = "int64" if first["action_type"] == "discrete" else "float32"
    fn = _ShardsToClips(config, rows, stats, ds_id, known, (first["height"], first["width"]),
                        action_shape, action_dtype)  # fmt: skip

    # One read task per shard (or ``read_blocks`` tasks): a block of shard URIs, read and cut into clips
    # by the same task.
    blocks = min(len(present), config.read_blocks or len(present))
    ds = ray.data.from_items([{"shard": uri} for uri in present], override_num_blocks=blocks)
    ds = ds.map_batches(fn, batch_size=None, batch_format="numpy", num_cpus=config.decode_num_cpus)
    if config.shuffle == "global":
        ds = ds.random_shuffle(seed=config.seed)
    elif config.shuffle == "blocks":
        ds = ds.randomize_block_order(seed=config.seed)
    log.info("clip dataset over %d shard(s), %d episodes (split %s), %d clips expected",
             len(present), len(selected), config.split, expected_clips)  # fmt: skip
    return ClipDataset(ds, selected, config, expected_clips, missing, stats, ds_id, missing_bad, known)


#: Set to "1" by a driver whose stdout is a terminal, for the Ray tasks that run Ray Data executions.
PROGRESS_ENV = "V2W_PROGRESS_BARS"


def configure_progress(enabled: bool | None = None) -> bool:
    """Ray Data progress bars only on a terminal: in a log file or a job's output they are thousands of
    blank and cursor-control lines. ``None``: on when ``$V2W_PROGRESS_BARS`` is "1", or (unset) when
    stdout is a TTY. Applies to Ray Data executions started by this process; returns the setting."""
    import os
    import sys

    import ray.data

    if enabled is None:
        flag = os.environ.get(PROGRESS_ENV)
        enabled = flag == "1" if flag is not None else sys.stdout.isatty()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = enabled
    ctx.enable_operator_progress_bars = enabled
    ctx.use_ray_tqdm = enabled
    ctx.print_on_execution_start = enabled
    ctx.enable_auto_log_stats = False
    return enabled


def _check_uniform(manifest: Manifest) -> None:
    cols = ("height", "width", "action_type", "action_dim")
    combos = {tuple(r[c] for c in cols) for r in manifest.rows()}
    if len(combos) > 1:
        shown = ", ".join(str(dict(zip(cols, c, strict=True))) for c in sorted(combos, key=str)[:4])
        raise ManifestError(
            f"manifest under {manifest.root} mixes frame sizes / action spaces ({shown}); "
            "build one clip dataset per kind (select rows) so clips can be batched"
        )


__all__ = [
    "BadEpisode",
    "ClipConfig",
    "ClipDataset",
    "ClipReport",
    "build_clip_dataset",
    "clip_starts",
    "collate_clips",
    "configure_progress",
    "count_clips",
    "normalize_frames",
    "to_uint8",
]
