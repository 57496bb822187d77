"""``bouncing-shapes``: a tiny procedural world whose frames depend causally on discrete actions.

A red disc (the agent) is pushed by five discrete actions (no-op, up, down, left, right: each adds
one pixel/step of velocity, clipped) and bounces off the walls; a few coloured squares bounce around on
their own over a static gradient background. All state is integer, so episodes are bit-for-bit
reproducible on every platform. It exists so the whole pipeline (ingest, shards, training, rollouts)
has a real, learnable action-conditioned data set without any simulator installed: a world model that
ignores the actions cannot predict where the disc goes next.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from v2w_core.config import StrictConfig
from v2w_core.data.episode import ActionSpace, Episode
from v2w_core.data.sources import episode_seed, make_episode_id, register_source

SOURCE_NAME = "bouncing-shapes"
ACTION_NAMES = ("noop", "up", "down", "left", "right")
#: (dy, dx) velocity push of each action.
PUSH = np.array([(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)], dtype=np.int64)
AGENT_COLOUR = (230, 50, 40)
DISTRACTOR_COLOURS = ((60, 200, 80), (240, 210, 60), (80, 160, 240), (200, 90, 220))


class BouncingShapesConfig(StrictConfig):
    size: int = Field(default=64, ge=16, le=512)
    episode_length: int = Field(default=64, ge=1)
    num_distractors: int = Field(default=2, ge=0, le=len(DISTRACTOR_COLOURS))
    agent_radius: int = Field(default=5, ge=1)
    square_size: int = Field(default=8, ge=1)
    max_speed: int = Field(default=3, ge=1)
    #: Probability that the random policy repeats its previous action (longer, more visible pushes).
    sticky: float = Field(default=0.7, ge=0.0, le=1.0)
    fps: float = Field(default=15.0, gt=0)


@dataclass
class _Body:
    pos: np.ndarray  # (y, x) top-left for squares, centre for the disc; int64
    vel: np.ndarray  # (vy, vx); int64
    extent: int  # radius (disc) or side (square)


class BouncingShapesEnv:
    """The simulator: ``reset(rng)`` then ``step(action)``; both return the rendered RGB frame."""

    def __init__(self, config: BouncingShapesConfig | None = None) -> None:
        self.config = config or BouncingShapesConfig()
        s = self.config.size
        self._yy, self._xx = np.mgrid[0:s, 0:s]
        ramp = np.linspace(0.0, 1.0, s)[:, None]
        self._background = np.empty((s, s, 3), dtype=np.uint8)
        self._background[..., 0] = np.rint(20 + 20 * ramp).astype(np.uint8)
        self._background[..., 1] = np.rint(25 + 30 * ramp).astype(np.uint8)
        self._background[..., 2] = np.rint(60 + 60 * ramp).astype(np.uint8)
        self.agent: _Body | None = None
        self.distractors: list[_Body] = []

    # ----------------------------------------------------------------------------------------- dynamics
    def reset(self, rng: np.random.Generator) -> np.ndarray:
        cfg = self.config
        r = cfg.agent_radius
        self.agent = _Body(rng.integers(r, cfg.size - r, size=2), np.zeros(2, dtype=np.int64), r)
        self.distractors = []
        for _ in range(cfg.num_distractors):
            pos = rng.integers(0, cfg.size - cfg.square_size + 1, size=2)
            vel = rng.choice(np.array([-2, -1, 1, 2]), size=2)
            self.distractors.append(_Body(pos, vel, cfg.square_size))
        return self.render()

    def step(self, action: int) -> np.ndarray:
        """Apply ``action`` and advance one step; the returned frame is the action's result."""
        if self.agent is None:
            raise RuntimeError("call reset() before step()")
        if not 0 <= int(action) < len(ACTION_NAMES):
            raise ValueError(f"action {action} outside [0, {len(ACTION_NAMES)})")
        cfg = self.config
        a = self.agent
        a.vel = np.clip(a.vel + PUSH[int(action)], -cfg.max_speed, cfg.max_speed)
        self._move(a, lo=a.extent, hi=cfg.size - 1 - a.extent)
        for d in self.distractors:
            self._move(d, lo=0, hi=cfg.size - d.extent)
        return self.render()

    @staticmethod
    def _move(body: _Body, *, lo: int, hi: int) -> None:
        """Move and reflect off the walls, per axis, staying inside [lo, hi]."""
        pos = body.pos + body.vel
        for axis in range(2):
            if pos[axis] < lo:
                pos[axis] = 2 * lo - pos[axis]
                body.vel[axis] = -body.vel[axis]
            elif pos[axis] > hi:
                pos[axis] = 2 * hi - pos[axis]
                body.vel[axis] = -body.vel[axis]
        body.pos = np.clip(pos, lo, hi)

    def render(self) -> np.ndarray:
        assert self.agent is not None
        frame = self._background.copy()
        for colour, d in zip(DISTRACTOR_COLOURS, self.distractors, strict=False):
            y, x = (int(v) for v in d.pos)
            frame[y : y + d.extent, x : x + d.extent] = colour
        cy, cx = (int(v) for v in self.agent.pos)
        disc = (self._yy - cy) ** 2 + (self._xx - cx) ** 2 <= self.agent.extent**2
        frame[disc] = AGENT_COLOUR
        return frame

    def touching(self) -> bool:
        """Whether the disc's bounding box overlaps a square (the reward signal)."""
        assert self.agent is not None
        cy, cx = self.agent.pos
        r = self.agent.extent
        for d in self.distractors:
            y, x = d.pos
            if cy + r >= y and cy - r < y + d.extent and cx + r >= x and cx - r < x + d.extent:
                return True
        return False


@register_source(SOURCE_NAME)
class BouncingShapesSource:
    """Records episodes of :class:`BouncingShapesEnv` under a sticky random policy."""

    name = SOURCE_NAME

    def __init__(self, **options: object) -> None:
        self.config = BouncingShapesConfig.from_dict(dict(options), source=f"source {SOURCE_NAME!r} options")
        self.action_space = ActionSpace(type="discrete", dim=len(ACTION_NAMES), names=ACTION_NAMES)

    def episodes(self, num_episodes: int, *, seed: int) -> Iterator[Episode]:
        for index in range(num_episodes):
            yield self.episode(index, seed=seed)

    def episode(self, index: int, *, seed: int) -> Episode:
        """Episode ``index`` of the run seeded ``seed`` (independent of how many are generated)."""
        cfg = self.config
        env_seed, policy_seed = episode_seed(seed, index).spawn(2)
        env = BouncingShapesEnv(cfg)
        policy_rng = np.random.default_rng(policy_seed)
        n = cfg.episode_length
        frames = np.empty((n, cfg.size, cfg.size, 3), dtype=np.uint8)
        actions = np.empty(n, dtype=np.int64)
        reward = np.zeros(n, dtype=np.float32)
        frames[0] = env.reset(np.random.default_rng(env_seed))
        previous = 0
        for t in range(n):
            if t == 0 or policy_rng.random() >= cfg.sticky:
                previous = int(policy_rng.integers(len(ACTION_NAMES)))
            actions[t] = previous
            reward[t] = float(env.touching())
            if t + 1 < n:  # the last action's result is not recorded
                frames[t + 1] = env.step(previous)
        done = np.zeros(n, dtype=bool)
        done[-1] = True  # time limit
        return Episode(
            episode_id=make_episode_id(SOURCE_NAME, seed, index),
            frames=frames,
            actions=actions,
            action_space=self.action_space,
            domain="game",
            source=SOURCE_NAME,
            fps=cfg.fps,
            reward=reward,
            done=done,
            extra={"seed": seed, "index": index, "config": cfg.model_dump(mode="json")},
        )


__all__ = ["ACTION_NAMES", "BouncingShapesConfig", "BouncingShapesEnv", "BouncingShapesSource"]
