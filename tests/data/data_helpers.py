"""Helpers shared by the data tests (imported as ``data_helpers``; pytest puts this directory on sys.path)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from v2w_core.data.episode import ActionSpace, Episode


def smooth_frames(t: int, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth moving colour gradients plus a moving block: typical "smooth content" for the lossy bound."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    frames = np.empty((t, h, w, 3), dtype=np.uint8)
    for i in range(t):
        for c in range(3):
            v = 128 + 90 * np.sin(0.15 * xx + 0.1 * yy + 0.2 * i + phase[c])
            frames[i, ..., c] = np.clip(np.rint(v), 0, 255).astype(np.uint8)
        x0 = (2 * i) % (w - 6)
        frames[i, 10:16, x0 : x0 + 6] = (220, 40, 40)
    return frames


def make_episode(
    kind: str = "continuous", *, episode_id: str | None = None, t: int = 6, seed: int = 0
) -> Episode:
    """A small valid episode of the given action type, with reward/done and extra metadata."""
    rng = np.random.default_rng(seed)
    frames = smooth_frames(t, seed=seed)
    if kind == "continuous":
        space = ActionSpace(
            type="continuous", dim=3, low=[-1, -1, 0], high=[1, 1, 2], names=["x", "y", "grip"]
        )
        actions = rng.uniform([-1, -1, 0], [1, 1, 2], size=(t, 3)).astype(np.float32)
    elif kind == "discrete":
        space = ActionSpace(type="discrete", dim=7)
        actions = rng.integers(0, 7, size=t).astype(np.int64)
    elif kind == "multi_hot":
        space = ActionSpace(type="multi_hot", dim=4)
        actions = rng.integers(0, 2, size=(t, 4)).astype(np.float32)
    else:
        raise ValueError(kind)
    return Episode(
        episode_id=episode_id if episode_id is not None else f"{kind}-ep{seed}",
        frames=frames,
        actions=actions,
        action_space=space,
        domain="robot" if kind == "continuous" else "game",
        source="unit-test",
        fps=10.0,
        reward=rng.normal(size=t).astype(np.float32),
        done=np.arange(t) == t - 1,
        extra={"note": "hello", "nested": {"a": [1, 2]}},
    )


def rewrite_tar(path: Path, edit: Callable[[str, bytes], bytes | None], *, fix_checksums: bool = False) -> None:
    """Rewrite a tar in place, passing each member through ``edit(name, data)`` (None drops it).

    ``fix_checksums``: recompute each sample's ``checksums.json`` after the edit, as a writer that stored
    bad data would have (so the schema checks behind the checksums are reached); otherwise the edit is
    corruption after writing, which the checksums catch.
    """
    from v2w_core.data.shards import CHECKSUMS_EXT, checksums_member

    members: list[tuple[tarfile.TarInfo, bytes]] = []
    with tarfile.open(path, "r") as tar:
        for info in tar:
            f = tar.extractfile(info)
            assert f is not None
            members.append((info, f.read()))
    edited = [(info, new) for info, data in members if (new := edit(info.name, data)) is not None]
    if fix_checksums:
        samples: dict[str, dict[str, bytes]] = {}
        for info, data in edited:
            key, ext = info.name.split(".", 1)
            samples.setdefault(key, {})[ext] = data
        edited = [(info, checksums_member(samples[info.name.split(".", 1)[0]])
                   if info.name.endswith("." + CHECKSUMS_EXT) else data) for info, data in edited]  # fmt: skip
    with tarfile.open(path, "w") as tar:
        for info, data in edited:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def assert_episodes_equal(
    a: Episode, b: Episode, *, exact_frames: bool = True, frame_mae: float = 0.0
) -> None:
    assert a.episode_id == b.episode_id
    if exact_frames:
        np.testing.assert_array_equal(a.frames, b.frames)
    else:
        assert a.frames.shape == b.frames.shape
        assert np.abs(a.frames.astype(np.int16) - b.frames).mean() <= frame_mae
    np.testing.assert_array_equal(a.actions, b.actions)
    assert a.actions.dtype == b.actions.dtype
    for name in ("reward", "done"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_array_equal(x, y)
            assert x.dtype == y.dtype
    assert a.action_space == b.action_space
    assert (a.domain, a.source, a.fps, a.extra) == (b.domain, b.source, b.fps, b.extra)
