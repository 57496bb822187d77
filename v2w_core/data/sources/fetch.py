"""``fetch``: a 7-DoF Fetch arm (gymnasium-robotics on MuJoCo) driven by scripted reach/push/pick policies.

Why scripted rather than random: random end-effector deltas jitter in place and almost never touch the
block, so a world model would never see contact. The scripted controllers (proportional control of the
gripper towards phase-dependent targets) produce purposeful reaches, pushes and grasps, and noise,
random gains and occasional random "detours" keep the motions varied. Task per episode: ``reach``,
``push``, ``pick_and_place``, or ``mixed`` (drawn per episode).

Rendering is offscreen. MuJoCo picks its GL backend from ``MUJOCO_GL`` when it is first imported; this
module sets ``MUJOCO_GL=egl`` unless already set (EGL works headless with Mesa's software rasterizer:
Debian packages ``libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1``; ``osmesa`` needs ``libosmesa6``).
Frames are rendered with ``mujoco.Renderer`` from a camera framing the table, at ``supersample`` times
the output size without MSAA, then box-filtered down. On a CPU rasterizer (Mesa llvmpipe) the model's
defaults (4x MSAA into a 480x480 offscreen buffer, 4096^2 shadow map) cost ~3x more per frame than
this for the same antialiasing (measured: 21 vs 8 ms CPU per 64x64 frame).

Alignment: ``frames[t]`` shows the state the policy acted on; ``actions[t]`` (4-dim: end-effector
dx, dy, dz in units of 5 cm, gripper -1 close .. 1 open, all in [-1, 1]) is applied with one
``env.step`` (20 physics substeps, dt = 0.04 s, 25 fps), giving ``frames[t + 1]``. The last action is
recorded but not applied. Episodes are cut at ``episode_length`` (no time-limit wrapper) and are
deterministic given ``(seed, index)``: ``env.reset(seed=...)`` reseeds the goal/object sampling.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
from pydantic import Field

from v2w_core.config import StrictConfig
from v2w_core.data.episode import ActionSpace, Episode
from v2w_core.data.sources import episode_seed, make_episode_id, register_source
from v2w_core.data.sources._frames import resize_frame

log = logging.getLogger(__name__)

# MuJoCo reads MUJOCO_GL once, when it is first imported; set it before anything imports mujoco.
os.environ.setdefault("MUJOCO_GL", "egl")

SOURCE_NAME = "fetch"
Task = Literal["reach", "push", "pick_and_place"]
ENV_IDS: dict[str, str] = {
    "reach": "FetchReach-v4",
    "push": "FetchPush-v4",
    "pick_and_place": "FetchPickAndPlace-v4",
}
ACTION_NAMES = ("dx", "dy", "dz", "gripper")
#: Metres per unit action (gymnasium-robotics Fetch scales position actions by 0.05).
ACTION_SCALE = 0.05
#: Box the gripper wanders in once the task is done (metres, world frame; the table top is ~z 0.42).
WORKSPACE_LOW = (1.1, 0.5, 0.45)
WORKSPACE_HIGH = (1.5, 1.0, 0.65)


class FetchConfig(StrictConfig):
    """Options of the ``fetch`` source."""

    task: Literal["reach", "push", "pick_and_place", "mixed"] = "mixed"
    episode_length: int = Field(default=50, ge=2)
    height: int = Field(default=64, ge=8)
    width: int = Field(default=64, ge=8)
    #: Free camera looking at the table (MuJoCo ``MjvCamera`` fields).
    camera_distance: float = Field(default=1.2, gt=0)
    camera_azimuth: float = 150.0
    camera_elevation: float = -30.0
    camera_lookat: tuple[float, float, float] = (1.3, 0.75, 0.5)
    #: Render at this multiple of the output size and downsample (antialiasing without MSAA).
    supersample: int = Field(default=2, ge=1, le=4)
    #: MuJoCo's multisample antialiasing; on a CPU rasterizer 4x MSAA costs ~3x the frame time.
    msaa_samples: int = Field(default=0, ge=0, le=16)
    shadow_size: int = Field(default=1024, ge=0)
    #: Std of Gaussian noise added to the scripted action.
    noise: float = Field(default=0.1, ge=0.0)
    #: Per-step probability of starting a random detour (random action held 3-8 steps).
    detour_prob: float = Field(default=0.04, ge=0.0, le=1.0)


def _import_env() -> tuple[Any, Any]:
    try:
        import gymnasium
        import gymnasium_robotics
        import mujoco
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the 'fetch' source needs gymnasium-robotics and mujoco: pip install gymnasium-robotics 'mujoco<4'"
        ) from err
    gymnasium.register_envs(gymnasium_robotics)
    return gymnasium, mujoco


class _ScriptedPolicy:
    """Phase-based proportional controller for one episode, with noise, random gain and detours."""

    def __init__(self, task: str, rng: np.random.Generator, config: FetchConfig) -> None:
        self.task = task
        self.rng = rng
        self.config = config
        self.gain = float(rng.uniform(0.6, 1.3))
        self.phase = 0
        self.hold = 0  # steps left with the gripper closing (pick)
        self.detour_left = 0
        self.detour = np.zeros(4, dtype=np.float32)
        # reach: an optional intermediate waypoint makes curved, not only straight, motions
        self.via = rng.uniform([-0.12, -0.12, 0.0], [0.12, 0.12, 0.12]) if rng.random() < 0.5 else None
        self.push_height = float(rng.uniform(0.0, 0.01))
        self.wander: np.ndarray | None = None

    def _solved(self, obs: dict[str, np.ndarray]) -> bool:
        achieved = obs["observation"][:3] if self.task == "reach" else obs["achieved_goal"]
        return bool(np.linalg.norm(achieved - obs["desired_goal"]) < 0.03)

    def _towards(self, grip: np.ndarray, target: np.ndarray) -> np.ndarray:
        return np.clip(self.gain * (target - grip) / ACTION_SCALE, -1.0, 1.0)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        cfg, rng = self.config, self.rng
        if self.detour_left > 0:
            self.detour_left -= 1
            return self.detour.copy()
        if rng.random() < cfg.detour_prob:
            self.detour_left = int(rng.integers(3, 9)) - 1
            self.detour = rng.uniform(-1, 1, size=4).astype(np.float32)
            return self.detour.copy()
        o, goal = obs["observation"], obs["desired_goal"]
        grip = o[:3]
        gripper = 1.0
        if self.wander is not None or self._solved(obs):
            # Task done: keep moving (wander between random workspace points) instead of idling,
            # so the rest of the episode still shows action-driven motion.
            if self.wander is None or np.linalg.norm(self.wander - grip) < 0.03:
                self.wander = rng.uniform(WORKSPACE_LOW, WORKSPACE_HIGH)
            target = self.wander
            gripper = 1.0 if self.task == "reach" else -1.0
        elif self.task == "reach":
            target = goal
            if self.via is not None and self.phase == 0:
                target = (grip + goal) / 2 + self.via
                if np.linalg.norm(target - grip) < 0.03:
                    self.phase = 1
        elif self.task == "push":
            obj = o[3:6]
            direction = goal[:2] - obj[:2]
            direction /= max(np.linalg.norm(direction), 1e-6)
            behind = np.array([*(obj[:2] - 0.07 * direction), obj[2]])
            gripper = -1.0
            if self.phase == 0:  # above, behind the block
                target = behind + [0, 0, 0.08]
                if np.linalg.norm(target - grip) < 0.02:
                    self.phase = 1
            elif self.phase == 1:  # down to block height
                target = behind + [0, 0, self.push_height]
                if abs(grip[2] - target[2]) < 0.015:
                    self.phase = 2
            else:  # push through the goal
                target = np.array([*(goal[:2] + 0.03 * direction), obj[2] + self.push_height])
        else:  # pick_and_place
            obj = o[3:6]
            if self.phase == 0:  # above the block, open
                target = obj + [0, 0, 0.08]
                if np.linalg.norm(target - grip) < 0.015:
                    self.phase = 1
            elif self.phase == 1:  # descend, open
                target = obj + [0, 0, 0.005]
                if np.linalg.norm(target - grip) < 0.012:
                    self.phase, self.hold = 2, 4
            elif self.phase == 2:  # close
                target, gripper = grip, -1.0
                self.hold -= 1
                if self.hold <= 0:
                    self.phase = 3
            else:  # carry to the goal
                target, gripper = goal, -1.0
        action = np.empty(4, dtype=np.float32)
        action[:3] = self._towards(grip, np.asarray(target, dtype=np.float64))
        action[3] = gripper
        action += rng.normal(0.0, cfg.noise, size=4).astype(np.float32)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


@register_source(SOURCE_NAME)
class FetchSource:
    """Records Fetch arm episodes; see the module docstring."""

    name = SOURCE_NAME

    def __init__(self, **options: object) -> None:
        self.config = FetchConfig.from_dict(dict(options), source=f"source {SOURCE_NAME!r} options")
        self._gym, self._mujoco = _import_env()
        self._envs: dict[str, Any] = {}
        self._renderers: dict[str, Any] = {}
        self.action_space = ActionSpace(
            type="continuous", dim=4, names=ACTION_NAMES, low=(-1.0,) * 4, high=(1.0,) * 4
        )

    def _env(self, task: str) -> tuple[Any, Any]:
        if task not in self._envs:
            env = self._gym.make(ENV_IDS[task]).unwrapped  # no TimeLimit: episode_length is our cut
            cfg = self.config
            h, w = cfg.height * cfg.supersample, cfg.width * cfg.supersample
            # Rendering-only model settings: the offscreen buffer and shadow map are sized for the
            # output, not the model's 480x480 default, and MSAA is off (see FetchConfig).
            vis = env.model.vis
            vis.global_.offwidth, vis.global_.offheight = max(w, 1), max(h, 1)
            vis.quality.offsamples = cfg.msaa_samples
            vis.quality.shadowsize = cfg.shadow_size
            try:
                renderer = self._mujoco.Renderer(env.model, h, w)
            except Exception as err:  # mujoco raises plain Exceptions for GL failures
                raise RuntimeError(
                    f"MuJoCo offscreen rendering failed with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}: {err}. "
                    "Headless rendering needs EGL (apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1) "
                    "or OSMesa (MUJOCO_GL=osmesa, apt-get install libosmesa6)"
                ) from err
            self._envs[task], self._renderers[task] = env, renderer
        return self._envs[task], self._renderers[task]

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        for env in self._envs.values():
            env.close()
        self._envs.clear()
        self._renderers.clear()

    def __del__(self) -> None:  # free GL contexts before interpreter shutdown tears EGL down
        try:
            self.close()
        except Exception as err:  # noqa: BLE001 - never raise from __del__
            log.debug("fetch: closing renderers failed: %s", err)

    def _camera(self) -> Any:
        mj, cfg = self._mujoco, self.config
        cam = mj.MjvCamera()
        cam.type = mj.mjtCamera.mjCAMERA_FREE
        cam.distance, cam.azimuth, cam.elevation = (
            cfg.camera_distance,
            cfg.camera_azimuth,
            cfg.camera_elevation,
        )
        cam.lookat[:] = cfg.camera_lookat
        return cam

    def _render(self, env: Any, renderer: Any, camera: Any) -> np.ndarray:
        callback = getattr(env, "_render_callback", None)
        if callback is not None:
            callback()  # moves the goal marker to the current goal (what env.render() does first)
        renderer.update_scene(env.data, camera=camera)
        image = np.array(renderer.render(), dtype=np.uint8, copy=True)
        if self.config.supersample > 1:
            image = resize_frame(image, self.config.height, self.config.width, resample="box")
        return image

    def episodes(self, num_episodes: int, *, seed: int) -> Iterator[Episode]:
        try:
            for index in range(num_episodes):
                yield self.episode(index, seed=seed)
        finally:
            self.close()

    def episode(self, index: int, *, seed: int) -> Episode:
        """Episode ``index`` of the run seeded ``seed`` (independent of the other episodes)."""
        cfg = self.config
        env_seq, policy_seq = episode_seed(seed, index).spawn(2)
        rng = np.random.default_rng(policy_seq)
        task = cfg.task if cfg.task != "mixed" else str(rng.choice(list(ENV_IDS)))
        env, renderer = self._env(task)
        camera = self._camera()
        obs, _ = env.reset(seed=int(env_seq.generate_state(1)[0] & 0x7FFFFFFF))
        policy = _ScriptedPolicy(task, rng, cfg)
        n = cfg.episode_length
        frames = np.empty((n, cfg.height, cfg.width, 3), dtype=np.uint8)
        actions = np.empty((n, 4), dtype=np.float32)
        reward = np.zeros(n, dtype=np.float32)
        goal = obs["desired_goal"].astype(float).tolist()
        start = obs["observation"][3:6].astype(float).tolist() if task != "reach" else None
        info: dict[str, Any] = {}
        for t in range(n):
            frames[t] = self._render(env, renderer, camera)
            actions[t] = policy.act(obs)
            if t + 1 == n:
                break  # the last action's result is not recorded
            obs, r, _, _, info = env.step(actions[t])
            reward[t] = float(r)
        return Episode(
            episode_id=make_episode_id(SOURCE_NAME, seed, index),
            frames=frames,
            actions=actions,
            action_space=self.action_space,
            domain="robot",
            source=SOURCE_NAME,
            fps=float(1.0 / env.dt),
            reward=reward,
            done=np.zeros(n, dtype=bool),
            extra={
                "seed": seed,
                "index": index,
                "task": task,
                "env_id": ENV_IDS[task],
                "goal": goal,
                "object_start": start,
                "success": bool(info.get("is_success", 0.0)),
                "policy_gain": policy.gain,
                "config": cfg.model_dump(mode="json"),
                "mujoco_version": self._mujoco.__version__,
            },
        )


__all__ = ["ACTION_NAMES", "ENV_IDS", "FetchConfig", "FetchSource"]
