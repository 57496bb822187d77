"""Episodes and clips held in memory, for single-host runs without Ray Data or object storage.

The pipeline reads episodes from WebDataset shards through Ray Data. A one-GPU experiment (pretraining
the shipped base, quality-vs-steps benchmarks) records from a simulator straight into memory instead;
these helpers do that in parallel processes and cut clips the same way the Ray Data pipeline does
(:func:`~v2w_core.data.clips.clip_starts`), with the manifest's split rule
(:func:`~v2w_core.data.manifest.assign_split`), so an in-memory split equals the one a pipeline run of
the same source, seed and ``eval_fraction`` would make.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from v2w_core.data.clips import clip_starts
from v2w_core.data.episode import Episode
from v2w_core.data.manifest import assign_split

logger = logging.getLogger(__name__)


def _record_range(source: str, options: dict[str, Any], seed: int, indices: Sequence[int],
                  own_cwd: bool = False) -> list[Episode]:
    from v2w_core.data.sources import get_source

    if own_cwd:  # a pool worker: ViZDoom writes _vizdoom/ into the cwd, and parallel engines race on it
        import os
        import tempfile

        os.chdir(tempfile.mkdtemp(prefix="v2w-record-"))

    src = get_source(source, **options)
    try:
        return [src.episode(i, seed=seed) for i in indices]  # type: ignore[attr-defined]
    finally:
        close = getattr(src, "close", None)
        if close is not None:
            close()


def record_episodes(
    source: str, options: dict[str, Any], *, seed: int, indices: Sequence[int], workers: int = 1
) -> list[Episode]:
    """Episodes ``indices`` of ``source`` seeded with ``seed`` (each depends only on (seed, index)),
    recorded in ``workers`` processes; returned in index order."""
    indices = list(indices)
    if workers <= 1 or len(indices) < 2 * workers:
        return _record_range(source, options, seed, indices)
    parts = [indices[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        done = list(pool.map(_record_range, [source] * workers, [options] * workers, [seed] * workers, parts,
                             [True] * workers))
    by_index = {i: ep for part, eps in zip(parts, done, strict=True) for i, ep in zip(part, eps, strict=True)}
    return [by_index[i] for i in indices]


def split_episodes(episodes: Sequence[Episode], eval_fraction: float) -> tuple[list[Episode], list[Episode]]:
    """(train, eval) by the manifest's rule, so it matches a pipeline run over the same episodes."""
    train, held_out = [], []
    for ep in episodes:
        (held_out if assign_split(ep.episode_id, eval_fraction) == "eval" else train).append(ep)
    return train, held_out


def episode_clips(
    episodes: Sequence[Episode], clip_length: int, stride: int, *, with_actions: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """All clips of ``clip_length`` frames every ``stride`` frames: frames uint8 (N, F, H, W, 3) and the
    recorded actions (N, F, ...) or None."""
    frames, actions = [], []
    for ep in episodes:
        for s in clip_starts(ep.length, clip_length, stride):
            frames.append(ep.frames[s : s + clip_length])
            if with_actions:
                actions.append(ep.actions[s : s + clip_length])
    if not frames:
        raise ValueError(f"no episode has {clip_length} frames: no clips")
    return np.stack(frames), (np.stack(actions) if with_actions else None)


__all__ = ["episode_clips", "record_episodes", "split_episodes"]
