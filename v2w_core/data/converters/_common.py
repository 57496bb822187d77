"""What every converter shares: options, bad-record policy, counts that reconcile, frame-skip.

Why a shared base: the three formats differ only in how bytes become (frames, actions). Resizing,
frame-skip, the ``on_error`` policy and the bookkeeping that proves nothing vanished are the same, and
having them in one place means ``skip`` behaves identically for a truncated mp4, a TFRecord whose CRC
does not match and an hdf5 dataset that cannot be read.

Streaming: converters are generators. Each holds at most one episode's frames (plus, for LeRobot, one
open parquet file and one open video), so memory is constant in the number of episodes, and the
generator can be fed straight to :func:`v2w_core.data.shards.write_episodes`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from v2w_core.config import StrictConfig
from v2w_core.data.episode import ActionSpace, Episode
from v2w_core.data.errors import DataError
from v2w_core.data.sources._frames import CropMode, ResampleName, resize_frames

log = logging.getLogger(__name__)

OnError = Literal["skip", "fail"]
#: How the actions between two kept frames are folded into one when ``frame_skip > 1``.
ActionReduce = Literal["first", "sum", "mean", "any"]


class BadRecordError(DataError):
    """One input record (an episode, a TFRecord, an hdf5 key) could not be converted.

    Carries the file and the record inside it, so a skipped record can always be found again.
    """

    def __init__(self, file: str, record: str, reason: str) -> None:
        self.file = file
        self.record = record
        self.reason = reason
        super().__init__(f"bad record {record} in {file}: {reason}")

    def __reduce__(self) -> tuple[type[BadRecordError], tuple[str, str, str]]:
        return (type(self), (self.file, self.record, self.reason))


@dataclass
class BadRecord:
    file: str
    record: str
    reason: str


@dataclass
class ConversionStats:
    """What a conversion saw, so a skipped record never disappears silently.

    ``records`` counts input episodes found; each one ends up either ``converted`` or in ``bad``
    (``reconciles``). ``frames_in`` are source frames of converted episodes, ``frames_out`` what was
    kept after frame-skip.
    """

    records: int = 0
    converted: int = 0
    bad: list[BadRecord] = field(default_factory=list)
    frames_in: int = 0
    frames_out: int = 0

    @property
    def num_bad(self) -> int:
        return len(self.bad)

    @property
    def reconciles(self) -> bool:
        return self.records == self.converted + self.num_bad

    def summary(self) -> str:
        return (
            f"{self.records} records: {self.converted} converted, {self.num_bad} bad; "
            f"{self.frames_in} frames in, {self.frames_out} out"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "converted": self.converted,
            "bad": [vars(b) for b in self.bad],
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
        }


class ConvertOptions(StrictConfig):
    """Options common to all converters (``--opt key=value`` on the command line)."""

    #: Output frame size; ``None`` for both keeps the recorded size.
    height: int | None = Field(default=64, ge=8)
    width: int | None = Field(default=64, ge=8)
    crop: CropMode = "none"
    resample: ResampleName = "bilinear"
    #: Keep every k-th frame; the k actions in between are folded by ``action_reduce``.
    frame_skip: int = Field(default=1, ge=1)
    action_reduce: ActionReduce = "first"
    on_error: OnError = "fail"
    #: Stop after this many converted episodes (``None``: all).
    max_episodes: int | None = Field(default=None, ge=1)
    #: Episodes shorter than this after frame-skip are bad records (too short to train on).
    min_length: int = Field(default=1, ge=1)
    #: Overrides the converter's default domain (robot/game).
    domain: Literal["robot", "game"] | None = None
    #: Prefix of generated episode ids (default: the converter's name and the data set's name).
    id_prefix: str | None = None

    @model_validator(mode="after")
    def _check_size(self) -> ConvertOptions:
        if (self.height is None) != (self.width is None):
            raise ValueError("set both height and width, or neither (keep the recorded size)")
        return self


_ID_BAD = re.compile(r"[^A-Za-z0-9_-]+")


def safe_id(*parts: object) -> str:
    """An episode id from arbitrary parts: only letters, digits, ``_`` and ``-`` (no dots)."""
    text = "-".join(str(p) for p in parts if str(p))
    text = _ID_BAD.sub("_", text).strip("_-") or "episode"
    return text[:200]


def reduce_actions(actions: np.ndarray, frame_skip: int, how: ActionReduce, space: ActionSpace) -> np.ndarray:
    """Fold each window of ``frame_skip`` actions into the action of the kept frame that starts it.

    Kept frame ``i`` is source frame ``i * k``; the source actions ``i*k .. i*k+k-1`` are what happened
    between it and kept frame ``i + 1``, so they are what the model must attribute that change to.
    ``first`` suits absolute commands (joint targets), ``sum`` deltas (end-effector displacements),
    ``mean`` rates, ``any`` button presses (multi-hot). Discrete ids only support ``first``.
    """
    if frame_skip == 1:
        return actions
    n_out = -(-actions.shape[0] // frame_skip)
    if how == "first":
        return np.ascontiguousarray(actions[::frame_skip])
    if space.type == "discrete":
        raise ValueError(f"action_reduce={how!r} is not defined for discrete actions; use 'first'")
    if how == "any" and space.type != "multi_hot":
        raise ValueError("action_reduce='any' is for multi-hot actions; use first/sum/mean")
    out = np.empty((n_out, *actions.shape[1:]), dtype=actions.dtype)
    for i in range(n_out):
        window = actions[i * frame_skip : (i + 1) * frame_skip]
        if how == "sum":
            out[i] = window.sum(axis=0)
        elif how == "mean":
            out[i] = window.mean(axis=0)
        else:  # any
            out[i] = window.max(axis=0)
    return out


def widen_bounds(space: ActionSpace, frame_skip: int, how: ActionReduce) -> ActionSpace:
    """Bounds of summed actions grow with the window; drop them rather than state wrong ones."""
    if frame_skip > 1 and how == "sum" and (space.low is not None or space.high is not None):
        return space.model_copy(update={"low": None, "high": None})
    return space


#: Errors that mean "this input record is bad", as opposed to a bug or an unusable environment.
_RECORD_ERRORS = (DataError, ValueError, TypeError, KeyError, IndexError, OSError)


class Converter:
    """Base class: subclasses implement :meth:`_records`, yielding one callable per input record.

    Each callable builds one :class:`Episode` (or raises :class:`BadRecordError` / another
    :class:`DataError`); the base class applies the ``on_error`` policy and counts.
    """

    name: str = "converter"

    def __init__(self, input: str, options: ConvertOptions) -> None:
        self.input = str(input)
        self.options = options
        self.stats = ConversionStats()

    # The EpisodeSource protocol of ``v2w_core.data.sources`` (seed is meaningless for recorded data).
    def episodes(self, num_episodes: int | None = None, *, seed: int = 0) -> Iterator[Episode]:
        del seed
        limit = num_episodes if num_episodes is not None else self.options.max_episodes
        if limit is not None and self.options.max_episodes is not None:
            limit = min(limit, self.options.max_episodes)
        records = self._records()
        try:
            yield from self._convert_records(records, limit)
        finally:
            records.close()  # release open files/decoders even when the consumer stops early
        log.info("%s: %s", self.name, self.stats.summary())

    def _convert_records(
        self, records: Iterator[tuple[tuple[str, str], Any]], limit: int | None
    ) -> Iterator[Episode]:
        for where, build in records:
            if limit is not None and self.stats.converted >= limit:
                break
            self.stats.records += 1
            try:
                episode = build()
            except _RECORD_ERRORS as err:
                file, record = where
                if isinstance(err, BadRecordError):
                    reason = err.reason
                elif isinstance(err, DataError):
                    reason = str(err)
                else:  # malformed input the format code did not anticipate (a None index, a bad type)
                    reason = f"{type(err).__name__}: {err}"
                if isinstance(err, BadRecordError):
                    file, record = err.file, err.record
                if self.options.on_error == "fail":
                    if isinstance(err, BadRecordError):
                        raise
                    raise BadRecordError(file, record, reason) from err
                self.stats.bad.append(BadRecord(file, record, reason))
                log.warning("%s: skipping bad record %s in %s: %s", self.name, record, file, reason)
                continue
            self.stats.converted += 1
            yield episode

    def _records(self) -> Generator[tuple[tuple[str, str], Any], None, None]:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------- helpers
    def finish(
        self,
        *,
        file: str,
        record: str,
        episode_id: str,
        frames: np.ndarray,
        actions: np.ndarray,
        action_space: ActionSpace,
        domain: Literal["robot", "game"],
        fps: float,
        reward: np.ndarray | None = None,
        done: np.ndarray | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Episode:
        """Frame-skip, resize and validate one converted episode; errors name ``file`` and ``record``."""
        opts = self.options
        if frames.shape[0] != actions.shape[0]:
            raise BadRecordError(file, record, f"{frames.shape[0]} frames but {actions.shape[0]} actions")
        if frames.shape[0] == 0:
            raise BadRecordError(file, record, "no frames")
        n_in = frames.shape[0]
        k = opts.frame_skip
        try:
            actions = reduce_actions(actions, k, opts.action_reduce, action_space)
        except ValueError as err:
            raise BadRecordError(file, record, str(err)) from None
        frames = frames[::k]
        if reward is not None:
            reward = np.add.reduceat(reward.astype(np.float32), np.arange(0, n_in, k)).astype(np.float32)
        if done is not None:
            done = np.logical_or.reduceat(done.astype(bool), np.arange(0, n_in, k))
        if frames.shape[0] < opts.min_length:
            raise BadRecordError(file, record, f"{frames.shape[0]} frames after frame_skip={k} < min_length")
        if opts.height is not None and opts.width is not None:
            frames = resize_frames(frames, opts.height, opts.width, crop=opts.crop, resample=opts.resample)
        info = dict(extra or {})
        info.update(
            {
                "input_file": file,
                "input_record": record,
                "source_fps": float(fps),
                "source_length": int(n_in),
                "frame_skip": k,
                "action_reduce": opts.action_reduce,
            }
        )
        episode = Episode(
            episode_id=episode_id,
            frames=np.ascontiguousarray(frames),
            actions=np.ascontiguousarray(actions),
            action_space=widen_bounds(action_space, k, opts.action_reduce),
            domain=opts.domain or domain,
            source=self.name,
            fps=float(fps) / k,
            reward=reward,
            done=done,
            extra=info,
        )
        self.stats.frames_in += n_in
        self.stats.frames_out += episode.length
        return episode


__all__ = [
    "ActionReduce",
    "BadRecord",
    "BadRecordError",
    "ConversionStats",
    "ConvertOptions",
    "Converter",
    "OnError",
    "reduce_actions",
    "safe_id",
]
