"""``atari``: Atari 2600 episodes from the Arcade Learning Environment under a sticky random policy.

Why the bare ``ALEInterface`` and not gymnasium's wrapper: the ROMs ship inside ``ale-py``, and driving
the emulator directly gives exact control over what makes an episode reproducible: the emulator seed
is set and the ROM reloaded before every episode, the emulator's own sticky actions
(``repeat_action_probability``) default to 0 because stickiness is the *policy's* (recorded) choice,
and nothing else (no wrapper-side RNG, no gymnasium version drift) touches the actions.

Recording, with ``k = frame_skip`` emulator frames per recorded frame:

* With the emulator's sticky actions off (default) the console is deterministic, so the ROM is loaded
  once and each episode starts with ``reset_game()``; with them on, the emulator is re-seeded from
  ``(seed, index)`` and the ROM reloaded per episode (~0.4 s).
* After reset, the policy performs a random number (``0..noop_max``) of NOOPs, so episodes of
  deterministic games start from different states; these are not recorded.
* Step ``t``: screen -> ``frames[t]``; choose ``actions[t]`` (index into the game's minimal action set;
  sticky: repeat the previous one with probability ``sticky``); ``act`` it ``k`` times, summing the
  reward -> ``reward[t]``; the next screen is ``frames[t + 1]``. The last frame's action is recorded but
  not executed (its result is not stored). ``done[-1]`` is true when the game ended by itself.
* Episodes cut short by a game over before ``min_length`` are retried with the next emulator seed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from v2w_core.config import StrictConfig
from v2w_core.data.episode import ActionSpace, Episode
from v2w_core.data.sources import episode_seed, make_episode_id, register_source
from v2w_core.data.sources._frames import CropMode, ResampleName, resize_frames

log = logging.getLogger(__name__)

SOURCE_NAME = "atari"
#: The 2600's frame rate.
ATARI_FPS = 60.0


class AtariConfig(StrictConfig):
    """Options of the ``atari`` source (``--source-opt game=pong``)."""

    #: ROM id as ale-py names it (``breakout``, ``pong``, ``space_invaders``, ...).
    game: str = "breakout"
    episode_length: int = Field(default=64, ge=2)
    min_length: int = Field(default=2, ge=1)
    frame_skip: int = Field(default=4, ge=1)
    height: int = Field(default=64, ge=8)
    width: int = Field(default=64, ge=8)
    crop: CropMode = "none"
    resample: ResampleName = "bilinear"
    sticky: float = Field(default=0.75, ge=0.0, le=1.0)
    noop_max: int = Field(default=30, ge=0)
    #: The emulator's own action repetition (ALE v5 uses 0.25); off by default, see the module docstring.
    repeat_action_probability: float = Field(default=0.0, ge=0.0, le=1.0)
    #: Full 18-action set instead of the game's minimal one.
    full_action_space: bool = False
    #: Restrict the policy to these ALE action names (e.g. ``["NOOP", "LEFT", "RIGHT"]``), in this order.
    actions: tuple[str, ...] | None = None
    mode: int | None = None
    difficulty: int | None = None
    max_retries: int = Field(default=20, ge=0)

    @model_validator(mode="after")
    def _check(self) -> AtariConfig:
        if self.min_length > self.episode_length:
            raise ValueError(
                f"min_length ({self.min_length}) must be <= episode_length ({self.episode_length})"
            )
        return self


def _import_ale() -> Any:
    try:
        import ale_py
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the 'atari' source needs ale-py (pip install ale-py; it ships the ROMs)") from err
    return ale_py


def available_games() -> list[str]:
    return sorted(_import_ale().roms.get_all_rom_ids())


@register_source(SOURCE_NAME)
class AtariSource:
    """Records ALE episodes; see the module docstring for seeding and action alignment."""

    name = SOURCE_NAME

    def __init__(self, **options: object) -> None:
        self.config = AtariConfig.from_dict(dict(options), source=f"source {SOURCE_NAME!r} options")
        ale_py = _import_ale()
        games = ale_py.roms.get_all_rom_ids()
        if self.config.game not in games:
            raise ValueError(
                f"unknown Atari game {self.config.game!r}; ale-py ships: {', '.join(sorted(games))}"
            )
        self._rom = ale_py.roms.get_rom_path(self.config.game)
        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
        self._ale = ale_py.ALEInterface()
        self._ale.setLoggerMode(ale_py.LoggerMode.Error)
        self._load(0)
        legal = (
            self._ale.getLegalActionSet()
            if self.config.full_action_space
            else self._ale.getMinimalActionSet()
        )
        self._actions = list(legal)
        if self.config.actions is not None:
            by_name = {a.name: a for a in self._ale.getLegalActionSet()}
            unknown = [n for n in self.config.actions if n not in by_name]
            if unknown or not self.config.actions:
                raise ValueError(f"unknown ALE actions {unknown}; legal: {', '.join(by_name)}")
            self._actions = [by_name[n] for n in self.config.actions]
        self.action_space = ActionSpace(
            type="discrete", dim=len(self._actions), names=tuple(a.name for a in self._actions)
        )

    def _load(self, emulator_seed: int) -> None:
        """Seed the emulator and (re)load the ROM: the seed only takes effect on load."""
        cfg, ale = self.config, self._ale
        ale.setInt("random_seed", emulator_seed)
        ale.setFloat("repeat_action_probability", cfg.repeat_action_probability)
        ale.setInt("frame_skip", 1)
        ale.loadROM(self._rom)
        if cfg.mode is not None:
            ale.setMode(cfg.mode)
        if cfg.difficulty is not None:
            ale.setDifficulty(cfg.difficulty)
        ale.reset_game()

    def episodes(self, num_episodes: int, *, seed: int) -> Iterator[Episode]:
        for index in range(num_episodes):
            yield self.episode(index, seed=seed)

    def episode(self, index: int, *, seed: int) -> Episode:
        """Episode ``index`` of the run seeded ``seed`` (independent of the other episodes)."""
        cfg = self.config
        seq = episode_seed(seed, index)
        for attempt in range(cfg.max_retries + 1):
            state = [*seq.generate_state(2), attempt]
            emulator_seed = int(np.random.SeedSequence(state).generate_state(1)[0] & 0x7FFFFFFF)
            rng = np.random.default_rng([*state, 1])
            recorded = self._record(emulator_seed, rng)
            if recorded[0].shape[0] >= cfg.min_length:
                break
        else:
            raise RuntimeError(
                f"atari: episode {index} (seed {seed}) of {cfg.game} ended before min_length={cfg.min_length} "
                f"frames in {cfg.max_retries + 1} attempts"
            )
        raw, actions, reward, terminated, noops = recorded
        frames = resize_frames(raw, cfg.height, cfg.width, crop=cfg.crop, resample=cfg.resample)
        done = np.zeros(frames.shape[0], dtype=bool)
        done[-1] = terminated
        return Episode(
            episode_id=make_episode_id(SOURCE_NAME, seed, index),
            frames=frames,
            actions=actions,
            action_space=self.action_space,
            domain="game",
            source=SOURCE_NAME,
            fps=ATARI_FPS / cfg.frame_skip,
            reward=reward,
            done=done,
            extra={
                "seed": seed,
                "index": index,
                "game": cfg.game,
                "emulator_seed": emulator_seed,
                "attempt": attempt,
                "noop_start": noops,
                "terminated": bool(terminated),
                "ale_action_ids": [int(a.value) for a in self._actions],
                "config": cfg.model_dump(mode="json"),
                "ale_version": getattr(_import_ale(), "__version__", "unknown"),
            },
        )

    def _record(
        self, emulator_seed: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool, int]:
        cfg, ale = self.config, self._ale
        if cfg.repeat_action_probability > 0:
            self._load(emulator_seed)  # the emulator's RNG matters: reseed it (loading costs ~0.4 s)
        else:
            ale.reset_game()  # the 2600 itself is deterministic: a reset reproduces the same start
        noops = int(rng.integers(0, cfg.noop_max + 1))
        noop = type(self._actions[0]).NOOP
        for _ in range(noops):
            ale.act(noop)
        n_actions = len(self._actions)
        frames: list[np.ndarray] = []
        actions = np.zeros(cfg.episode_length, dtype=np.int64)
        reward = np.zeros(cfg.episode_length, dtype=np.float32)
        current = 0
        terminated = ale.game_over()
        for t in range(cfg.episode_length):
            if terminated:
                break
            frames.append(ale.getScreenRGB())
            if t == 0 or rng.random() >= cfg.sticky:
                current = int(rng.integers(n_actions))
            actions[t] = current
            if t + 1 == cfg.episode_length:
                break  # the last action's result is not recorded
            total = 0.0
            for _ in range(cfg.frame_skip):
                total += ale.act(self._actions[current])
                if ale.game_over():
                    terminated = True
                    break
            reward[t] = total
        n = len(frames)
        if n == 0:
            return np.zeros((0, 1, 1, 3), np.uint8), actions[:0], reward[:0], True, noops
        return np.stack(frames), actions[:n], reward[:n], terminated, noops


__all__ = ["AtariConfig", "AtariSource", "available_games"]
