"""The model's action space as keys and on-screen buttons, and the check of what a browser sends back.

The model's saved config says what an action *is* (``action_space``: type and dim); the held-out episodes
add what it *means* (button names, bounds), when they are at hand. From those, :func:`build_controls`
lays out the controls the page draws and binds:

* ``discrete`` (n classes): one button per class; the page sends the class id (class 0 when nothing is
  pressed, which recorders use for "no-op");
* ``multi_hot`` (n buttons held at once, e.g. ViZDoom's MOVE_LEFT / MOVE_RIGHT / ATTACK): one key per
  button, held keys → a 0/1 vector;
* ``continuous`` (n dims): two keys per dim (−/+), pressed → the dim's low/high bound (±1 without bounds),
  released → the middle.

Keys follow the names where a name says a direction (arrows, space to attack), else a fixed list.
:func:`parse_action` is the only door from the browser into the model: shape, type and range are checked
and anything else is a :class:`~v2w_core.play.errors.BadMessage`, never an exception inside the rollout.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from v2w_core.play.errors import BadMessage, PlayError

#: Keys (``KeyboardEvent.key``) for controls whose name says nothing; digits first, then letters.
SPARE_KEYS = [*"1234567890", *"qwertyuiopasdfghjklzxcvbnm"]
#: Name fragments → the key a player expects for them (checked in this order).
NAMED_KEYS = [
    (("left",), "ArrowLeft"),
    (("right",), "ArrowRight"),
    (("forward", "up", "jump"), "ArrowUp"),
    (("back", "down", "crouch"), "ArrowDown"),
    (("attack", "fire", "shoot", "use"), " "),
]
#: The −/+ key pairs of continuous dims, in order.
AXIS_KEYS = [("ArrowLeft", "ArrowRight"), ("ArrowDown", "ArrowUp"), ("a", "d"), ("s", "w"), ("q", "e"),
             ("z", "c"), ("j", "l"), ("k", "i"), ("n", "m"), ("f", "g"), ("v", "b"), ("h", "y")]  # fmt: skip


@dataclass(frozen=True)
class Control:
    """One on-screen button / key: pressing it sets ``dim`` (class id for discrete) to ``value``."""

    label: str
    key: str
    dim: int
    value: float


@dataclass(frozen=True)
class Controls:
    """What the page needs to turn key presses into actions (sent to it as JSON by ``/api/info``)."""

    type: str
    dim: int
    names: list[str]
    controls: list[Control]
    low: list[float] | None = None  # continuous only
    high: list[float] | None = None
    neutral: Any = None  # the action when nothing is pressed

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "controls": [asdict(c) for c in self.controls]}


def _key_for(name: str, taken: set[str]) -> str:
    low = name.lower()
    for fragments, key in NAMED_KEYS:
        if any(f in low for f in fragments) and key not in taken:
            return key
    for key in SPARE_KEYS:
        if key not in taken:
            return key
    raise PlayError(f"the action space has more controls than keys ({len(SPARE_KEYS) + len(NAMED_KEYS)})")


def build_controls(
    space: Any,
    names: list[str] | tuple[str, ...] | None = None,
    low: list[float] | tuple[float, ...] | None = None,
    high: list[float] | tuple[float, ...] | None = None,
) -> Controls:
    """Controls of an action space (anything with ``type`` and ``dim``, or ``None``).

    ``None`` — a model saved without an action space — is a :class:`PlayError`: there is nothing to play.
    ``names`` / ``low`` / ``high`` come from the episodes' action space when known.
    """
    if space is None:
        raise PlayError(
            "the model has no action metadata (its config.json has no action_space): it is an action-free "
            "base, not a world model to play; give a causalized, action-conditioned model (the pipeline's "
            "train stage output or a registered version)"
        )
    kind, dim = str(space.type), int(space.dim)
    if names is None or len(names) != dim:
        prefix = "class" if kind == "discrete" else ("button" if kind == "multi_hot" else "axis")
        names = [f"{prefix} {i}" for i in range(dim)]
    names = [str(n) for n in names]
    taken: set[str] = set()
    controls: list[Control] = []
    if kind == "discrete":
        for i, name in enumerate(names):
            if i == 0:
                continue  # class 0 is what "nothing pressed" sends
            key = _key_for(name, taken)
            taken.add(key)
            controls.append(Control(name, key, i, 1.0))
        return Controls(kind, dim, names, controls, neutral=0)
    if kind == "multi_hot":
        for i, name in enumerate(names):
            key = _key_for(name, taken)
            taken.add(key)
            controls.append(Control(name, key, i, 1.0))
        return Controls(kind, dim, names, controls, neutral=[0.0] * dim)
    if kind == "continuous":
        if dim > len(AXIS_KEYS):
            raise PlayError(f"continuous actions of {dim} dims: the page binds at most {len(AXIS_KEYS)}")
        lo = [float(v) for v in low] if low is not None else [-1.0] * dim
        hi = [float(v) for v in high] if high is not None else [1.0] * dim
        for i, name in enumerate(names):
            minus, plus = AXIS_KEYS[i]
            controls.append(Control(f"{name} −", minus, i, lo[i]))
            controls.append(Control(f"{name} +", plus, i, hi[i]))
        neutral = [(a + b) / 2 for a, b in zip(lo, hi, strict=True)]
        return Controls(kind, dim, names, controls, low=lo, high=hi, neutral=neutral)
    raise PlayError(f"unknown action type {kind!r} in the model's action space")


def parse_action(controls: Controls, raw: Any) -> np.ndarray:
    """The browser's action as the array one recorded action is: an int64 id () for discrete, float32
    (dim,) otherwise. Raises :class:`BadMessage` naming the problem (the session is left untouched)."""
    kind, dim = controls.type, controls.dim
    if kind == "discrete":
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise BadMessage(f"a discrete action is one integer class id in [0, {dim}), got {raw!r}")
        if not 0 <= raw < dim:
            raise BadMessage(f"action class {raw} is out of range [0, {dim})")
        return np.asarray(raw, dtype=np.int64)
    if not isinstance(raw, list) or len(raw) != dim:
        raise BadMessage(f"a {kind} action is a list of {dim} numbers, got {str(raw)[:80]!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in raw):
        raise BadMessage(f"a {kind} action holds numbers only, got {str(raw)[:80]!r}")
    values = [float(v) for v in raw]
    if not all(math.isfinite(v) for v in values):
        raise BadMessage("action values must be finite")
    if kind == "multi_hot":
        if any(v not in (0.0, 1.0) for v in values):
            raise BadMessage(f"multi_hot action values are 0 or 1 (a button is held or not), got {values}")
    else:
        assert controls.low is not None and controls.high is not None
        for i, (v, lo, hi) in enumerate(zip(values, controls.low, controls.high, strict=True)):
            if not lo <= v <= hi:
                raise BadMessage(f"action dim {i} ({controls.names[i]}) = {v} is outside [{lo}, {hi}]")
    return np.asarray(values, dtype=np.float32)
