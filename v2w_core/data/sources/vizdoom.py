"""``vizdoom``: first-person Doom episodes recorded headless under a sticky random button policy.

Why ViZDoom: it is the classic first-person game benchmark for world models, it renders on the CPU
without any display (``set_window_visible(False)``, no X server or GL needed), and its scenarios
(``basic``, ``defend_the_center``, ``health_gathering``, ...) ship inside the ``vizdoom`` wheel, so no
game data is downloaded.

Recording (one engine per source instance, reused across episodes because ``init()`` costs ~0.7 s):

* The engine and the policy are both seeded from :func:`episode_seed` ``(seed, index)``, and
  ``set_seed`` is called before every ``new_episode``, so an episode depends only on ``(seed, index)``,
  never on which episodes were recorded before it in the same process.
* Actions are multi-hot over the scenario's buttons (several can be held at once, as a player does).
  The policy is *sticky*: with probability ``sticky`` it keeps holding the previous combination, else
  it draws a new one with each button pressed independently with probability ``press_prob``. Sticky
  actions give long enough turns/walks that their effect on the frames is learnable.
* Step ``t``: read the screen -> ``frames[t]``; choose ``actions[t]``; ``make_action(actions[t],
  frame_skip)`` -> ``reward[t]``; the next screen is ``frames[t + 1]``. The last frame's action is the
  one the policy chose there (held when the episode was cut or ended); its result is not recorded,
  as the :class:`Episode` contract says. ``done[-1]`` is true only when the game itself ended the
  episode (death, scenario goal); an episode cut at ``episode_length`` has ``done`` all false.
* An episode that the game ends before ``min_length`` frames is re-run with the next engine seed
  (recorded in ``extra["engine_seed"]``), so every stored episode has a usable length.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from v2w_core.config import StrictConfig
from v2w_core.data.episode import ActionSpace, Episode
from v2w_core.data.sources import episode_seed, make_episode_id, register_source
from v2w_core.data.sources._frames import CropMode, ResampleName, resize_frames

log = logging.getLogger(__name__)

SOURCE_NAME = "vizdoom"
#: Doom's fixed simulation rate (tics per second); the recorded fps is this divided by ``frame_skip``.
DOOM_TICRATE = 35
#: Native render sizes offered by ViZDoom (width x height) that make sense for 64x64 training.
RESOLUTIONS = ("160X120", "200X150", "256X192", "320X240", "640X480")


class VizdoomConfig(StrictConfig):
    """Options of the ``vizdoom`` source (``v2w-ingest --source vizdoom --option key=value``)."""

    #: A bundled scenario name (``basic``, ``defend_the_center``, ``health_gathering``, ...) or a path
    #: to a ``.cfg`` file.
    scenario: str = "health_gathering"
    episode_length: int = Field(default=64, ge=2)
    #: Episodes that the game ends earlier than this are re-run with another engine seed.
    min_length: int = Field(default=2, ge=1)
    #: Game tics per recorded frame (the action is held for all of them). 4 -> 8.75 fps.
    frame_skip: int = Field(default=4, ge=1)
    height: int = Field(default=64, ge=8)
    width: int = Field(default=64, ge=8)
    crop: CropMode = "none"
    resample: ResampleName = "bilinear"
    render_resolution: str = "160X120"
    render_hud: bool = False
    #: Probability of holding the previous button combination for one more frame.
    sticky: float = Field(default=0.8, ge=0.0, le=1.0)
    #: Probability that each button is pressed in a newly drawn combination.
    press_prob: float = Field(default=0.4, ge=0.0, le=1.0)
    #: Override the scenario's button set (ViZDoom ``Button`` names, e.g. ``["MOVE_FORWARD", "TURN_LEFT"]``).
    buttons: tuple[str, ...] | None = None
    #: Retries per episode when the game ends before ``min_length``.
    max_retries: int = Field(default=20, ge=0)

    @model_validator(mode="after")
    def _check(self) -> VizdoomConfig:
        if self.min_length > self.episode_length:
            raise ValueError(
                f"min_length ({self.min_length}) must be <= episode_length ({self.episode_length})"
            )
        if self.render_resolution not in RESOLUTIONS:
            raise ValueError(
                f"render_resolution must be one of {RESOLUTIONS}, got {self.render_resolution!r}"
            )
        return self


def _import_vizdoom() -> Any:
    try:
        import vizdoom
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the 'vizdoom' source needs the vizdoom package: pip install 'vid2world[sim]' (or vizdoom)"
        ) from err
    return vizdoom


def scenario_config_path(scenario: str) -> Path:
    """Resolve a bundled scenario name or a ``.cfg`` path; the error lists the bundled scenarios."""
    vzd = _import_vizdoom()
    path = Path(scenario)
    if path.suffix == ".cfg" and path.exists():
        return path
    bundled = Path(vzd.scenarios_path) / f"{scenario}.cfg"
    if bundled.exists():
        return bundled
    names = sorted(p.stem for p in Path(vzd.scenarios_path).glob("*.cfg"))
    raise ValueError(
        f"unknown ViZDoom scenario {scenario!r}: not a .cfg file and not bundled ({', '.join(names)})"
    )


def _engine_seed(seq: np.random.SeedSequence, attempt: int) -> int:
    """A 31-bit engine seed (ViZDoom takes an unsigned int) for retry ``attempt`` of one episode."""
    return int(np.random.SeedSequence([*seq.generate_state(2), attempt]).generate_state(1)[0] & 0x7FFFFFFF)


@register_source(SOURCE_NAME)
class VizdoomSource:
    """Records ViZDoom episodes; see the module docstring for seeding and action alignment."""

    name = SOURCE_NAME

    def __init__(self, **options: object) -> None:
        self.config = VizdoomConfig.from_dict(dict(options), source=f"source {SOURCE_NAME!r} options")
        self._game: Any = None
        self._button_names: tuple[str, ...] = ()
        self._cfg_path = scenario_config_path(self.config.scenario)

    # ------------------------------------------------------------------------------------------ engine
    def _ensure_game(self) -> Any:
        if self._game is not None:
            return self._game
        vzd = _import_vizdoom()
        cfg = self.config
        game = vzd.DoomGame()
        game.load_config(str(self._cfg_path))
        # Headless: no window, no sound device; the screen buffer is still rendered in software.
        game.set_window_visible(False)
        game.set_sound_enabled(False)
        game.set_mode(vzd.Mode.PLAYER)
        game.set_screen_format(vzd.ScreenFormat.RGB24)
        game.set_screen_resolution(getattr(vzd.ScreenResolution, f"RES_{cfg.render_resolution}"))
        game.set_render_hud(cfg.render_hud)
        # Our episode_length is the cut; the scenario's own timeout would end episodes early.
        game.set_episode_timeout(0)
        # Doom writes its settings (``_vizdoom.ini``) into the working directory unless told otherwise;
        # keep them out of the repository and out of (possibly read-only) Ray working dirs.
        config_dir = Path(os.environ.get("V2W_VIZDOOM_CONFIG_DIR", Path.home() / ".cache" / "vizdoom"))
        config_dir.mkdir(parents=True, exist_ok=True)
        game.set_doom_config_path(str(config_dir / "_vizdoom.ini"))
        if cfg.buttons is not None:
            try:
                buttons = [getattr(vzd.Button, b) for b in cfg.buttons]
            except AttributeError as err:
                raise ValueError(f"unknown ViZDoom button in buttons={list(cfg.buttons)}: {err}") from None
            game.set_available_buttons(buttons)
        # ZDoom also creates an empty ``./_vizdoom`` home directory at init; remove it if we made it.
        home = Path.cwd() / "_vizdoom"
        home_existed = home.exists()
        game.init()
        if not home_existed and home.is_dir() and not any(home.iterdir()):
            home.rmdir()
        self._button_names = tuple(b.name for b in game.get_available_buttons())
        if not self._button_names:
            game.close()
            raise ValueError(f"scenario {cfg.scenario!r} declares no buttons; pass buttons=[...]")
        log.info("vizdoom: scenario %s, buttons %s", self._cfg_path.name, ", ".join(self._button_names))
        self._game = game
        return game

    def close(self) -> None:
        if self._game is not None:
            self._game.close()
            self._game = None

    def __del__(self) -> None:  # the engine holds a thread and shared memory; free them promptly
        try:
            self.close()
        except Exception as err:  # noqa: BLE001 - may run at interpreter shutdown; never raise here
            log.debug("vizdoom: closing the engine failed: %s", err)

    @property
    def action_space(self) -> ActionSpace:
        self._ensure_game()
        return ActionSpace(type="multi_hot", dim=len(self._button_names), names=self._button_names)

    # --------------------------------------------------------------------------------------- recording
    def episodes(self, num_episodes: int, *, seed: int) -> Iterator[Episode]:
        try:
            for index in range(num_episodes):
                yield self.episode(index, seed=seed)
        finally:
            self.close()

    def episode(self, index: int, *, seed: int) -> Episode:
        """Episode ``index`` of the run seeded ``seed`` (independent of the other episodes)."""
        cfg = self.config
        game = self._ensure_game()
        seq = episode_seed(seed, index)
        for attempt in range(cfg.max_retries + 1):
            engine_seed = _engine_seed(seq, attempt)
            policy_rng = np.random.default_rng([*seq.generate_state(2), attempt, 1])
            recorded = self._record(game, engine_seed, policy_rng)
            if recorded[0].shape[0] >= cfg.min_length:
                break
            log.debug("vizdoom: episode %d attempt %d ended after %d frames; retrying", index, attempt,
                      recorded[0].shape[0])  # fmt: skip
        else:
            raise RuntimeError(
                f"vizdoom: episode {index} (seed {seed}) ended before min_length={cfg.min_length} frames in "
                f"{cfg.max_retries + 1} attempts; lower min_length or use a longer-lived scenario"
            )
        raw_frames, actions, reward, terminated = recorded
        frames = resize_frames(raw_frames, cfg.height, cfg.width, crop=cfg.crop, resample=cfg.resample)
        done = np.zeros(frames.shape[0], dtype=bool)
        done[-1] = terminated
        return Episode(
            episode_id=make_episode_id(SOURCE_NAME, seed, index),
            frames=frames,
            actions=actions,
            action_space=self.action_space,
            domain="game",
            source=SOURCE_NAME,
            fps=DOOM_TICRATE / cfg.frame_skip,
            reward=reward,
            done=done,
            extra={
                "seed": seed,
                "index": index,
                "engine_seed": engine_seed,
                "attempt": attempt,
                "scenario": self._cfg_path.stem,
                "buttons": list(self._button_names),
                "terminated": bool(terminated),
                "native_resolution": cfg.render_resolution,
                "config": cfg.model_dump(mode="json"),
                "vizdoom_version": getattr(_import_vizdoom(), "__version__", "unknown"),
            },
        )

    def _record(
        self, game: Any, engine_seed: int, policy_rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """Play one episode; returns native-size frames, multi-hot actions, rewards, terminated."""
        cfg = self.config
        n_buttons = len(self._button_names)
        game.set_seed(engine_seed)
        game.new_episode()
        frames: list[np.ndarray] = []
        actions = np.zeros((cfg.episode_length, n_buttons), dtype=np.float32)
        reward = np.zeros(cfg.episode_length, dtype=np.float32)
        current = np.zeros(n_buttons, dtype=np.float32)
        terminated = False
        for t in range(cfg.episode_length):
            state = game.get_state()
            frames.append(np.array(state.screen_buffer, dtype=np.uint8, copy=True))
            if t == 0 or policy_rng.random() >= cfg.sticky:
                current = (policy_rng.random(n_buttons) < cfg.press_prob).astype(np.float32)
            actions[t] = current
            if t + 1 == cfg.episode_length:
                break  # the last action's result is not recorded; don't spend tics on it
            reward[t] = float(game.make_action([int(b) for b in current], cfg.frame_skip))
            if game.is_episode_finished():
                terminated = True
                break
        n = len(frames)
        return np.stack(frames), actions[:n], reward[:n], terminated


def bundled_scenarios() -> list[str]:
    """Names of the scenarios that ship inside the vizdoom wheel."""
    vzd = _import_vizdoom()
    return sorted(p.stem for p in Path(vzd.scenarios_path).glob("*.cfg"))


__all__ = ["VizdoomConfig", "VizdoomSource", "bundled_scenarios", "scenario_config_path"]
