"""The context picker: held-out episodes a session can start from.

A world model continues *a* scene; the fair scenes to show are the ones it was not trained on, so the list
is the model's eval split (the registered version's frozen snapshot, or the manifest given with
``--episodes``; only its ``eval`` rows). A session starts from the first ``context_frames`` frames of the
picked episode and their recorded actions. Episodes are read on first use and a few are kept in memory.
Without a manifest the only context is ``blank`` (a grey scene): the model then shows what it makes of
nothing, which is still enough to check that keys reach it.

The episodes also name the actions (``ActionSpace.names``, e.g. MOVE_LEFT) and bound continuous ones, which
:mod:`v2w_core.play.controls` turns into labels and keys.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from v2w_core.play.errors import BadMessage, PlayError

logger = logging.getLogger(__name__)

BLANK = "blank"


@dataclass(frozen=True)
class Context:
    """Frames uint8 (K, H, W, 3) and the recorded actions taken at them (K, ...)."""

    name: str
    frames: np.ndarray
    actions: np.ndarray


class ContextLibrary:
    """Held-out episodes of one manifest (or none), cut to contexts of ``context_frames`` frames."""

    def __init__(self, manifest_uri: str | None, *, frame_shape: tuple[int, int, int], action_shape: tuple[int, ...],
                 action_dtype: Any, context_frames: int = 8, max_listed: int = 50, cache: int = 4) -> None:  # fmt: skip
        self.manifest_uri = manifest_uri
        self.frame_shape = frame_shape
        self.action_shape = action_shape
        self.action_dtype = np.dtype(action_dtype)
        self.context_frames = context_frames
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache
        self._lock = threading.Lock()
        self._manifest: Any = None
        self.episode_ids: list[str] = []
        if manifest_uri:
            from v2w_core.data.manifest import Manifest

            try:
                manifest = Manifest.read(manifest_uri)
            except Exception as err:  # noqa: BLE001 - any storage/parquet error is one line to the user
                raise PlayError(f"cannot read the held-out episodes' manifest {manifest_uri}: {err}") from None
            held_out = manifest.select(split="eval")
            h, w, _ = frame_shape
            rows = [r for r in held_out.rows() if r["length"] >= 1 and (r["height"], r["width"]) == (h, w)]
            rows.sort(key=lambda r: r["episode_id"])
            self._manifest = held_out
            self.episode_ids = [r["episode_id"] for r in rows[:max_listed]]
            if not self.episode_ids:
                logger.warning("play: %s lists no eval episodes of %dx%d frames; only the blank context",
                               manifest_uri, h, w)  # fmt: skip

    @property
    def names(self) -> list[str]:
        """What the picker lists: the episode ids, then ``blank``."""
        return [*self.episode_ids, BLANK]

    def _episode(self, episode_id: str) -> Any:
        from v2w_core.data.manifest import Manifest
        from v2w_core.data.shards import iter_episodes

        with self._lock:
            if episode_id in self._cache:
                self._cache.move_to_end(episode_id)
                return self._cache[episode_id]
        rows = [r for r in self._manifest.rows() if r["episode_id"] == episode_id]
        subset = Manifest.from_rows(rows, self._manifest.root)
        episode = next(iter(iter_episodes(subset)))
        with self._lock:
            self._cache[episode_id] = episode
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return episode

    def action_space(self) -> Any | None:
        """The first listed episode's ``ActionSpace`` (names, bounds), or None without episodes."""
        if not self.episode_ids:
            return None
        return self._episode(self.episode_ids[0]).action_space

    def context(self, name: str | None) -> Context:
        """The context called ``name`` (None: the first listed); :class:`BadMessage` for an unknown name."""
        name = name or self.names[0]
        if name == BLANK:
            k = self.context_frames
            frames = np.full((k, *self.frame_shape), 128, dtype=np.uint8)
            return Context(BLANK, frames, np.zeros((k, *self.action_shape), dtype=self.action_dtype))
        if name not in self.episode_ids:
            raise BadMessage(f"unknown context {name[:80]!r}; pick one of the listed held-out episodes")
        ep = self._episode(name)
        k = min(self.context_frames, ep.length)
        actions = np.asarray(ep.actions[:k], dtype=self.action_dtype)
        if actions.shape[1:] != self.action_shape:
            raise BadMessage(f"episode {name} has actions of shape {actions.shape[1:]}, the model takes "
                             f"{self.action_shape}")  # fmt: skip
        return Context(name, np.ascontiguousarray(ep.frames[:k]), actions)
