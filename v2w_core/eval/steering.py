"""Steering response: does holding an action move the generated view the way it moves the game's view?

Controllability by shuffled actions (:mod:`v2w_core.eval.controllability`) and ego-motion agreement
(:mod:`v2w_core.eval.motion`) score the rollout under the *recorded* actions; a model that ignores its
actions scores ≈ 0 on both, but neither says what each action does. This probe asks the player's question
— "if I press LEFT now, does the view turn left?" — directly: from every chunk's context, with the chunk's
own seed, the model generates ``steering.horizon`` frames while one *probe action* is held, once per probe
(same noise, so the rollouts differ only through the action). The horizontal shift of each generated step
(phase correlation, as in :mod:`v2w_core.eval.motion`) is averaged per probe and set against the shift the
same action causes in the recorded data (every transition of the eval chunks taken under exactly that
action). Keys:

  * ``steer_dx_<probe>`` — mean horizontal shift per generated step while the probe is held (pixels,
    + = content moves right: a left turn);
  * ``steer_dx_truth_<probe>`` — mean shift of the recorded transitions taken under that action;
  * ``steer_dx_gain`` — least-squares slope of the model's per-probe shifts on the recorded ones (both
    centred over the probes): **1** when the actions move the view as far as in the game, **0** when they do
    not move it (or all move it alike), negative when they move it the wrong way. Absent (with a reason)
    when fewer than two probes were taken in the recorded chunks or the recorded actions do not move the
    view differently.

Probes: ``steering.actions`` names them (``{left: [1, 0, 0], ...}`` for multi-hot or continuous vectors,
``{fire: 1}`` for discrete ids); by default the no-op and each button alone (multi-hot), or every class
(discrete). Continuous action spaces have no default probes: name them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import Field

from v2w_core.config import StrictConfig
from v2w_core.eval.motion import horizontal_shifts

#: Recorded transitions a probe needs before its recorded shift counts in the gain (fewer: too noisy).
MIN_TRANSITIONS = 3
#: The recorded per-probe shifts must spread by at least this many pixels for a gain to mean anything.
MIN_SPREAD_PX = 0.5


class SteeringConfig(StrictConfig):
    """The steering probe of an evaluation (module docstring). ``horizon`` frames per probe and chunk."""

    enabled: bool = True
    horizon: int = Field(1, ge=1)
    #: probe name -> action (a vector for multi-hot / continuous spaces, an integer id for discrete ones);
    #: None = the default probes of the action space.
    actions: dict[str, Any] | None = None


def probe_actions(spec: Any, config: SteeringConfig) -> dict[str, np.ndarray]:
    """The probes for an action space (``spec``: ``.type`` and ``.dim``, e.g. the model's ActionSpec), as
    name -> action array of the recorded actions' per-frame shape; a probe that does not fit raises
    ValueError naming it."""
    kind, dim = spec.type, int(spec.dim)
    if config.actions is not None:
        out = {}
        for name, value in config.actions.items():
            if not re.fullmatch(r"[A-Za-z0-9_]+", str(name)):
                raise ValueError(f"steering.actions: probe name {name!r}: use letters, digits and _ only")
            arr = np.asarray(value)
            if kind == "discrete":
                if arr.ndim != 0 or not float(arr).is_integer() or not 0 <= int(arr) < dim:
                    raise ValueError(f"steering.actions.{name}: {value!r} is not a discrete action: give an id in [0, {dim})")
                out[name] = np.asarray(int(arr), dtype=np.int64)
            else:
                if arr.shape != (dim,):
                    raise ValueError(
                        f"steering.actions.{name}: {value!r} is not a {kind} action: give a list of {dim} numbers"
                    )
                out[name] = arr.astype(np.float32)
        return out
    if kind == "discrete":
        return {f"action{i}": np.asarray(i, dtype=np.int64) for i in range(dim)}
    if kind == "multi_hot":
        probes = {"none": np.zeros(dim, dtype=np.float32)}
        for i in range(dim):
            probes[f"button{i}"] = np.eye(dim, dtype=np.float32)[i]
        return probes
    return {}  # continuous: no natural probes (module docstring)


def held_actions(recorded: np.ndarray, context_frames: int, action: np.ndarray, horizon: int) -> np.ndarray:
    """A chunk's actions for a probe rollout: the context's recorded actions, then ``action`` for every
    generated frame (a_{K−1} … a_{K+horizon−2}: frame K+j carries a_{K+j−1})."""
    k = context_frames
    held = np.broadcast_to(action.astype(recorded.dtype), (horizon, *recorded.shape[1:]))
    return np.concatenate([recorded[: k - 1], held], axis=0)


def _matches(actions: np.ndarray, probe: np.ndarray) -> np.ndarray:
    """(T,) bool: which recorded per-frame actions equal the probe."""
    if probe.ndim == 0:
        return actions.astype(np.int64) == int(probe)
    return np.all(np.isclose(actions.reshape(len(actions), -1), probe.reshape(1, -1)), axis=1)


def recorded_shifts(
    frames: Sequence[np.ndarray], actions: Sequence[np.ndarray], probes: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Per probe, the horizontal shifts (pixels) of every recorded transition taken under exactly that
    action: ``frames[i]`` (T, H, W, 3) uint8 with ``actions[i]`` (T−1, ...) (the chunks' convention)."""
    out: dict[str, list[np.ndarray]] = {name: [] for name in probes}
    for f, a in zip(frames, actions, strict=True):
        dx = horizontal_shifts(np.asarray(f).transpose(0, 3, 1, 2))  # (T - 1,)
        for name, probe in probes.items():
            out[name].append(dx[_matches(np.asarray(a)[: len(dx)], probe)])
    return {name: np.concatenate(v) if v else np.zeros(0) for name, v in out.items()}


def steering_response(
    last_context: np.ndarray,
    steered: Mapping[str, np.ndarray],
    truth_shifts: Mapping[str, np.ndarray],
) -> tuple[dict[str, float], str | None]:
    """Steering keys (module docstring) from (B, C, H, W) last context frames, per probe (B, S, C, H, W)
    generated frames, and per probe the recorded shifts (:func:`recorded_shifts`); returns (metrics,
    reason ``steer_dx_gain`` is missing or None)."""
    out: dict[str, float] = {}
    model_dx, truth_dx = [], []
    for name, frames in steered.items():
        seq = np.concatenate([np.asarray(last_context)[:, None], np.asarray(frames)], axis=1)
        out[f"steer_dx_{name}"] = float(horizontal_shifts(seq).mean())
        recorded = truth_shifts.get(name, np.zeros(0))
        if len(recorded):
            out[f"steer_dx_truth_{name}"] = float(recorded.mean())
        if len(recorded) >= MIN_TRANSITIONS:
            model_dx.append(out[f"steer_dx_{name}"])
            truth_dx.append(out[f"steer_dx_truth_{name}"])
    if len(truth_dx) < 2:
        return out, (
            f"fewer than two probes were taken at least {MIN_TRANSITIONS} times in the recorded chunks: "
            "nothing to compare the model's steering with"
        )
    m, t = np.asarray(model_dx) - np.mean(model_dx), np.asarray(truth_dx) - np.mean(truth_dx)
    if np.ptp(truth_dx) < MIN_SPREAD_PX:
        return out, f"the recorded actions move the view alike (spread < {MIN_SPREAD_PX} px): no steering to measure"
    out["steer_dx_gain"] = float((m * t).sum() / (t * t).sum())
    return out, None


__all__ = [
    "SteeringConfig",
    "held_actions",
    "probe_actions",
    "recorded_shifts",
    "steering_response",
]
