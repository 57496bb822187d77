"""Everything a play server does, as plain methods: the Ray Serve deployment (:mod:`.app`) only routes
HTTP to these, so the behaviour is one object that loads the model once and owns the sessions.

Requests from different sessions may arrive on different threads; steps of *one* session run one at a
time (its lock), and the model runs one step at a time (the engine's lock): a streaming rollout sets the
model's replay state while it steps, so two concurrent steps on one model would read each other's cache.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from v2w_core.diffusion.rollout import RolloutConfig
from v2w_core.play import messages
from v2w_core.play.controls import Controls, build_controls, parse_action
from v2w_core.play.episodes import ContextLibrary
from v2w_core.play.errors import BadMessage, PlayError
from v2w_core.play.media import mp4_bytes, png_data_url
from v2w_core.play.session import PlaySession
from v2w_core.play.sessions import SessionStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlaySettings:
    """What the deployment is built from (plain data: it travels to the Serve replica)."""

    model_dir: str
    label: str = ""
    rollout: dict[str, Any] | None = None  # sampler settings; None = RolloutConfig defaults
    eval_manifest: str | None = None
    vae_uri: str | None = None  # a latent-space model's VAE: contexts are encoded, new frames decoded
    device: str = "auto"  # auto: cuda when available
    steps: int | None = None  # default denoising steps per frame (None: the rollout config's)
    # "incremental": each session carries its window's history cache between key presses (one single-frame
    # history forward per frame instead of the window's; approximate once the window slides, see
    # docs/streaming.md); None: the rollout config's (default "recompute", exact)
    history_encoding: str | None = None
    max_steps: int = 50
    max_sessions: int = 8
    idle_timeout_s: float = 600.0
    context_frames: int = 8
    seed: int = 0
    video_fps: float = 8.0
    video_scale: int = 4
    fast_path: bool = True  # the GPU fast path (bf16, CUDA graphs) when on CUDA


class PlayEngine:
    def __init__(self, settings: PlaySettings) -> None:
        from v2w_core.tracking.models import load_model

        self.settings = settings
        device = settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        t0 = time.perf_counter()
        self.model = load_model(settings.model_dir, device=self.device).eval()
        self.load_seconds = time.perf_counter() - t0
        cfg = self.model.config
        if not self.model.is_causal:
            raise PlayError(f"{settings.model_dir} is not causal: it cannot be rolled out frame by frame")
        spec = cfg.action_space
        if spec is None:
            build_controls(None)  # raises the one-line "no action metadata" error
        self.rollout = RolloutConfig.from_dict(settings.rollout or {}, source="rollout config")
        if settings.steps is not None:
            self.rollout = self.rollout.model_copy(update={"num_inference_steps": settings.steps})
        if settings.history_encoding is not None:
            self.rollout = RolloutConfig.from_dict(
                {**self.rollout.model_dump(), "history_encoding": settings.history_encoding}, source="play settings"
            )  # validated: the mode must be one RolloutConfig knows
        self.max_steps = max(settings.max_steps, self.rollout.num_inference_steps)
        h, w = cfg.sample_size if not isinstance(cfg.sample_size, int) else (cfg.sample_size,) * 2
        self.codec = self._load_codec(int(cfg.data_channels))
        scale = self.codec.factor if self.codec is not None else 1
        self.frame_shape = (int(h) * scale, int(w) * scale, 3)  # what the page shows: pixels
        discrete = spec.type == "discrete"
        self.library = ContextLibrary(
            settings.eval_manifest, frame_shape=self.frame_shape, action_shape=() if discrete else (spec.dim,),
            action_dtype=np.int64 if discrete else np.float32, context_frames=settings.context_frames,
        )  # fmt: skip
        space = self.library.action_space()
        if space is not None and (space.type, space.dim) != (spec.type, spec.dim):
            raise PlayError(f"the held-out episodes' actions ({space.type}, {space.dim}) are not the model's "
                            f"({spec.type}, {spec.dim}): give the manifest the model was trained on")  # fmt: skip
        self.controls: Controls = build_controls(
            spec, getattr(space, "names", None), getattr(space, "low", None), getattr(space, "high", None)
        )
        self.runner = None
        if self.device.type == "cuda" and settings.fast_path:
            from v2w_core.diffusion.fast_rollout import FastPathConfig, FastStreamer

            self.runner = FastStreamer(self.model, FastPathConfig(autocast="bfloat16"))
        self.sessions = SessionStore(max_sessions=settings.max_sessions, idle_timeout_s=settings.idle_timeout_s)
        self._model_lock = threading.Lock()
        self._seeds = iter(range(settings.seed, 2**62))
        logger.info("play: loaded %s on %s in %.1f s", settings.label or settings.model_dir, self.device,
                    self.load_seconds)  # fmt: skip

    def _load_codec(self, channels: int) -> Any:
        """The VAE of a latent-space model (None for an RGB one); see :mod:`v2w_core.play.source`."""
        vae = self.settings.vae_uri
        if channels == 3:
            return None
        if not vae:
            raise PlayError(f"{self.settings.model_dir} makes {channels}-channel latents: play needs its VAE "
                            "(--vae)")  # fmt: skip
        from v2w_core.models.vae import LatentCodec

        codec = LatentCodec.load(vae, device=self.device)
        if codec.channels != channels:
            raise PlayError(f"the VAE at {vae} makes {codec.channels}-channel latents, the model {channels}")
        return codec

    # ------------------------------------------------------------------ the calls the routes make

    def info(self) -> dict[str, Any]:
        """What the page needs before the first frame: controls, contexts, slider range, limits."""
        return {
            "model": self.settings.label or self.settings.model_dir,
            "device": str(self.device),
            "frame": {"height": self.frame_shape[0], "width": self.frame_shape[1]},
            "actions": self.controls.to_json(),
            "contexts": self.library.names,
            "steps": {"default": self.rollout.num_inference_steps, "min": 1, "max": self.max_steps},
            "window": self.rollout.window,  # frames of context per step: the step's cost grows until it is full
            "history_encoding": self.rollout.history_encoding,
            "sessions": {
                "max": self.sessions.max_sessions,
                "idle_timeout_s": self.sessions.idle_timeout_s,
                "live": len(self.sessions),
            },
        }

    def _frame_reply(self, session: PlaySession, **extra: Any) -> dict[str, Any]:
        return {"session": session.id, "context": session.context.name, "index": session.frame_count - 1,
                "frame": png_data_url(session.latest_frame()), **extra}  # fmt: skip

    def new_session(self, body: bytes = b"") -> dict[str, Any]:
        msg = messages.parse(messages.NewSession, body)
        context = self.library.context(msg.context)
        seed = msg.seed if msg.seed is not None else next(self._seeds)
        session = self.sessions.add(
            lambda: PlaySession(context, window=self.rollout.window, seed=seed, device=self.device,
                                codec=self.codec)
        )
        return self._frame_reply(session, seed=seed)

    def step(self, session_id: str, body: bytes) -> dict[str, Any]:
        msg = messages.parse(messages.Step, body)
        session = self.sessions.get(session_id)
        action = parse_action(self.controls, msg.action)
        steps = msg.steps or self.rollout.num_inference_steps
        if steps > self.max_steps:
            raise BadMessage(f"steps {steps} is above this server's maximum {self.max_steps}")
        config = self.rollout.model_copy(update={"num_inference_steps": steps})
        with session.lock:
            t0 = time.perf_counter()
            with self._model_lock:
                session.step(self.model, action, config, runner=self.runner)
            compute_ms = (time.perf_counter() - t0) * 1000
            return self._frame_reply(session, steps=steps, compute_ms=round(compute_ms, 2))

    def reset(self, session_id: str, body: bytes = b"") -> dict[str, Any]:
        msg = messages.parse(messages.Reset, body)
        session = self.sessions.get(session_id)
        context = self.library.context(msg.context) if msg.context else None
        with session.lock:
            session.reset(context, msg.seed)
            return self._frame_reply(session, seed=session.seed)

    def video(self, session_id: str) -> bytes:
        session = self.sessions.get(session_id)
        with session.lock:
            frames = np.stack(session.recorded)
        return mp4_bytes(frames, fps=self.settings.video_fps, scale=self.settings.video_scale)

    def close(self, session_id: str) -> bool:
        return self.sessions.drop(session_id)
