"""Errors of the data layer.

One hierarchy so a pipeline can catch "bad data" in one place and tell it apart from storage or
programming errors; every message names the episode, shard or key involved and says what to do.
"""

from __future__ import annotations


class DataError(Exception):
    """Base of every data-format error."""


class EpisodeError(DataError, ValueError):
    """An episode violates the schema (shape, dtype, range, id); the message names the episode."""

    def __init__(self, episode_id: str, problem: str, fix: str = "") -> None:
        self.episode_id = episode_id
        self.problem = problem
        msg = f"episode {episode_id!r}: {problem}"
        self.fix = fix
        if fix:
            msg += f"; {fix}"
        super().__init__(msg)

    def __reduce__(self) -> tuple[type[EpisodeError], tuple[str, str, str]]:
        return (type(self), (self.episode_id, self.problem, self.fix))


class VideoDecodeError(DataError, ValueError):
    """Compressed frames could not be decoded (truncated, corrupt, or not the declared codec)."""


class CorruptSampleError(DataError):
    """A stored sample could not be turned back into a valid episode.

    Carries ``shard`` and ``key`` so that a skipped sample can always be found again.
    """

    def __init__(self, shard: str, key: str, reason: str) -> None:
        self.shard = shard
        self.key = key
        self.reason = reason
        super().__init__(f"corrupt sample {key!r} in shard {shard}: {reason}")

    def __reduce__(self) -> tuple[type[CorruptSampleError], tuple[str, str, str]]:
        # Keep (shard, key, reason) across pickling, e.g. when raised inside a Ray task.
        return (type(self), (self.shard, self.key, self.reason))


class ShardError(DataError):
    """A whole shard is missing or unreadable (e.g. a truncated tar)."""

    def __init__(self, shard: str, reason: str) -> None:
        self.shard = shard
        self.reason = reason
        super().__init__(f"shard {shard}: {reason}")

    def __reduce__(self) -> tuple[type[ShardError], tuple[str, str]]:
        return (type(self), (self.shard, self.reason))


class ManifestError(DataError, ValueError):
    """The manifest is inconsistent with itself or with the shards it lists."""
