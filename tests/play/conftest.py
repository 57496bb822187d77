"""Shared fixtures of the play tests: a tiny action-conditioned world model on disk, held-out episodes with
named buttons, and one real Ray Serve play server for the whole package (started once: ~15 s).

The model is :func:`~v2w_core.models.testing.tiny_world_model` (the demo's architecture, 64×64 frames)
causalized, with ViZDoom's action space (3 buttons, multi-hot) and an action head strong enough that
different buttons give visibly different frames. Two denoising steps per frame keep every step ≈ 0.2 s.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infra.stack import free_port

BUTTONS = ["MOVE_LEFT", "MOVE_RIGHT", "ATTACK"]
STEPS = 2
MAX_SESSIONS = 4


def make_model(path: Path) -> Path:
    from v2w_core.models.io import save_world_model
    from v2w_core.models.testing import tiny_world_model

    space = {"type": "multi_hot", "dim": len(BUTTONS)}
    model = tiny_world_model(action_space=space, causal_mode="extrapolative", action_head_std=1.0)
    save_world_model(model, str(path))
    return path


def make_episodes(root: Path, n: int = 2, length: int = 12) -> str:
    """``n`` held-out (split eval) episodes of moving stripes with the 3 named buttons; returns the manifest."""
    from v2w_core.data.episode import ActionSpace, Episode
    from v2w_core.data.shards import ShardWriterConfig, write_episodes

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    episodes = []
    for i in range(n):
        frames = np.stack([
            np.stack([(xx * 4 + 8 * t + 40 * i) % 256, (yy * 3) % 256, np.full_like(xx, 60 + 40 * i)], -1)
            for t in range(length)
        ]).astype(np.uint8)  # fmt: skip
        episodes.append(Episode(
            episode_id=f"held-out-{i}", frames=frames, actions=rng.integers(0, 2, (length, 3)).astype(np.float32),
            action_space=ActionSpace(type="multi_hot", dim=3, names=BUTTONS), domain="game", source="play-test",
            fps=10.0,
        ))  # fmt: skip
    write_episodes(episodes, str(root), ShardWriterConfig(eval_fraction=1.0))
    return str(root / "manifest.parquet")


@pytest.fixture(scope="package")
def play_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("play-model") / "model")


@pytest.fixture(scope="package")
def play_manifest(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_episodes(tmp_path_factory.mktemp("play-episodes"))


@dataclass
class Client:
    """A tiny HTTP client of the served API (urllib: what any other client would see)."""

    url: str

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path.lstrip("/"), data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                payload = resp.read()
                kind = resp.headers.get("Content-Type", "")
                return resp.status, json.loads(payload) if "json" in kind else payload
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, reply = self.call(method, path, body)
        assert status == 200, reply
        return reply


@pytest.fixture(scope="package")
def play_server(play_model_dir: Path, play_manifest: str) -> Iterator[Client]:
    """One real play server (Ray Serve on loopback) for the package: the API tests and the browser test."""
    from v2w_core.play import server
    from v2w_core.play.engine import PlaySettings

    settings = PlaySettings(model_dir=str(play_model_dir), label="tiny test model", eval_manifest=play_manifest,
                            steps=STEPS, max_steps=8, max_sessions=MAX_SESSIONS, context_frames=4)  # fmt: skip
    running = server.start(settings, port=free_port(8660))
    try:
        yield Client(running.url)
    finally:
        server.stop(running)
