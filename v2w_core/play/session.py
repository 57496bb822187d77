"""One browser's world: a streaming rollout advanced one frame per request.

The offline :func:`~v2w_core.diffusion.rollout.rollout` generates N frames from recorded actions known in
advance; a player's next action is known only when the key is pressed. A session keeps what the rollout
carries from one generated frame to the next — the clean frames of the window, the actions taken at them
and the generator's state — and calls the same streaming rollout for one frame each time. Nothing else
crosses frames in that sampler (see its module docstring), so *N calls of :meth:`PlaySession.step` give
the frames one ``rollout(..., num_frames=N)`` gives for the same actions and seed* (tested; up to float
reassociation), and the GPU fast path (``runner``) applies unchanged. With ``history_encoding=
"incremental"`` the session also carries the window's history cache from one key press to the next
(:class:`~v2w_core.diffusion.rollout.RolloutCarry`), and the equality still holds.

Per step the rollout gets the newest ``window`` frames as context (it keeps ``window − 1`` of them as
history, and the extra leading frame lets the oldest history frame keep its real action instead of the
null one) and the actions taken at them, the last being the player's.

A latent-space model (with its VAE, ``codec``) keeps its window as latents: the context is encoded once,
each generated latent is decoded once for the page, exactly as the evaluation's rollouts do.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import numpy as np
import torch

from v2w_core.data.clips import normalize_frames, to_uint8
from v2w_core.diffusion.rollout import RolloutCarry, RolloutConfig, rollout
from v2w_core.play.episodes import Context


class PlaySession:
    """The rollout state of one browser session; :meth:`step` and :meth:`reset` are safe across threads.

    ``max_recorded`` bounds the frames kept for "download this session" (the oldest go first), so a
    session left playing for hours cannot grow without end; the rollout itself only ever needs ``window``.
    """

    def __init__(self, context: Context, *, window: int, seed: int, device: torch.device | str = "cpu",
                 max_recorded: int = 3000, session_id: str | None = None, codec: Any = None) -> None:  # fmt: skip
        if context.frames.shape[0] < 1:
            raise ValueError("a session needs at least one context frame")
        self.id = session_id or uuid.uuid4().hex
        self.context = context
        self.window = window
        self.seed = seed
        self.device = torch.device(device)
        self.max_recorded = max_recorded
        self.codec = codec  # a LatentCodec for latent-space models, else None
        self.lock = threading.Lock()
        self.last_used = time.monotonic()
        self.steps_taken = 0
        self.reset()

    def reset(self, context: Context | None = None, seed: int | None = None) -> None:
        """Back to the start of ``context`` (default: the current one) with a fresh generator from ``seed``
        (default: the session's): a reset session replays exactly under the same keys."""
        self.context = context or self.context
        self.seed = self.seed if seed is None else seed
        frames = normalize_frames(torch.from_numpy(self.context.frames).permute(0, 3, 1, 2))
        if self.codec is not None:
            frames = self.codec.encode(frames)
        self._frames = list(frames.to(self.device).unbind(0))  # (C, H, W) in [-1, 1] or latents, newest last
        # actions[i] was taken at frames[i]; the action at the newest frame is the player's next key
        self._actions = [np.asarray(a) for a in self.context.actions[: len(self._frames) - 1]]
        self._generator = torch.Generator().manual_seed(self.seed)
        # history_encoding="incremental": the window's cache, extended by each generated frame, so a key
        # press runs one single-frame forward for the history instead of re-encoding the window
        self._carry = RolloutCarry()
        self.recorded = [f for f in self.context.frames]  # uint8 (H, W, 3): the context, then every step
        self.steps_taken = 0

    @property
    def frame_count(self) -> int:
        return len(self.recorded)

    def latest_frame(self) -> np.ndarray:
        return self.recorded[-1]

    def step(self, model: Any, action: np.ndarray, config: RolloutConfig, *, runner: Any = None) -> np.ndarray:
        """Generate the frame that follows the newest one under ``action`` (already checked by
        :func:`~v2w_core.play.controls.parse_action`); returns it as uint8 (H, W, 3)."""
        ctx = torch.stack(self._frames[-self.window :])[None]  # (1, K, C, H, W)
        k = ctx.shape[1]
        taken = self._actions[len(self._actions) - (k - 1) :] if k > 1 else []
        acts = torch.from_numpy(np.stack([*taken, action]))[None].to(self.device)  # (1, K, ...)
        new = rollout(model, ctx, acts, 1, config, generator=self._generator, runner=runner,
                      carry=self._carry)[0, 0]  # fmt: skip
        self._frames.append(new)
        self._actions.append(np.asarray(action))
        del self._frames[: -self.window], self._actions[: -self.window]
        pixels = new[None].float() if self.codec is None else self.codec.decode(new[None].float())
        frame = to_uint8(pixels.cpu().numpy())[0]
        self.recorded.append(frame)
        del self.recorded[: -self.max_recorded]
        self.steps_taken += 1
        return frame
