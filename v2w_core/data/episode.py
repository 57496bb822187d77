"""The episode: the unit every source produces, every shard stores and every reader returns.

An episode is validated when it is built, again before it is written and again after it is read, so a
bad recording is caught where it enters the system (with the episode named), not three stages later as
a NaN loss. Actions are aligned with frames: ``actions[t]`` is the action taken *at* frame ``t`` and
frame ``t + 1`` is its result (the last action's result is not recorded).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from v2w_core.config import StrictConfig
from v2w_core.data.errors import EpisodeError

Domain = Literal["robot", "game"]
ActionType = Literal["continuous", "discrete", "multi_hot"]

#: Episode ids double as WebDataset sample keys: the key ends at the first dot of a tar member name,
#: and a slash would create directories, so only letters, digits, ``_`` and ``-`` are allowed.
EPISODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,199}$")

#: Bumped when the stored layout changes incompatibly; readers refuse newer versions.
FORMAT_VERSION = 1


class ActionSpace(StrictConfig):
    """What the action arrays mean; stored with every episode so a reader needs no side channel.

    * ``continuous``: ``actions`` is ``(T, dim)`` float32, optionally bounded by ``low``/``high``.
    * ``discrete``: ``actions`` is ``(T,)`` int64 ids in ``[0, dim)``.
    * ``multi_hot``: ``actions`` is ``(T, dim)`` float32 of exact 0/1 (e.g. game buttons held at once);
      float so a model can project it with one matmul.
    """

    type: ActionType
    dim: int = Field(ge=1)
    names: tuple[str, ...] | None = None
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> ActionSpace:
        if self.names is not None and len(self.names) != self.dim:
            raise ValueError(f"names has {len(self.names)} entries but dim is {self.dim}")
        for bound_name in ("low", "high"):
            bound = getattr(self, bound_name)
            if bound is None:
                continue
            if self.type != "continuous":
                raise ValueError(f"{bound_name} only applies to continuous action spaces, not {self.type}")
            if len(bound) != self.dim:
                raise ValueError(f"{bound_name} has {len(bound)} entries but dim is {self.dim}")
            if not all(np.isfinite(bound)):
                raise ValueError(f"{bound_name} must be finite (leave it out for an unbounded action)")
        if (
            self.low is not None
            and self.high is not None
            and any(lo > hi for lo, hi in zip(self.low, self.high, strict=True))
        ):
            raise ValueError("low must be <= high in every dimension")
        return self

    @property
    def action_shape(self) -> tuple[int, ...]:
        """Shape of one action: ``()`` for a discrete id, ``(dim,)`` otherwise."""
        return () if self.type == "discrete" else (self.dim,)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.int64) if self.type == "discrete" else np.dtype(np.float32)


def _first(indices: np.ndarray, n: int = 5) -> str:
    """A short list of offending time steps for error messages."""
    idx = np.unique(indices)
    shown = ", ".join(str(int(i)) for i in idx[:n])
    return shown + (f", ... ({idx.size} in total)" if idx.size > n else "")


@dataclass(eq=False)
class Episode:
    """One recorded episode; see the module docstring for the action alignment.

    ``extra`` holds JSON-serialisable, source-specific metadata (e.g. a simulator's map name).
    """

    episode_id: str
    frames: np.ndarray
    actions: np.ndarray
    action_space: ActionSpace
    domain: Domain
    source: str
    fps: float
    reward: np.ndarray | None = None
    done: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------------ shape info
    @property
    def length(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    # ------------------------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`EpisodeError` (naming this episode and the fix) if any field breaks the schema."""
        eid = self.episode_id
        if not isinstance(eid, str) or not EPISODE_ID_RE.match(eid):
            raise EpisodeError(
                str(eid),
                "invalid episode id",
                "use 1-200 characters of letters, digits, '_' or '-', starting with a letter or digit "
                "(no dots: WebDataset cuts the sample key at the first '.'; no '/'), e.g. replace '.' by '_'",
            )
        if not isinstance(self.action_space, ActionSpace):
            raise EpisodeError(eid, f"action_space is a {type(self.action_space).__name__}",
                               "pass an ActionSpace(type=..., dim=...)")  # fmt: skip
        if self.domain not in ("robot", "game"):
            raise EpisodeError(eid, f"domain is {self.domain!r}", "use 'robot' or 'game'")
        if not isinstance(self.source, str) or not self.source:
            raise EpisodeError(eid, "source is empty", "name the simulator or data set it came from")
        if not isinstance(self.fps, (int, float)) or not np.isfinite(self.fps) or self.fps <= 0:
            raise EpisodeError(
                eid, f"fps is {self.fps!r}", "give the recording's frame rate as a positive number"
            )
        self._validate_frames()
        self._validate_actions()
        self._validate_optional("reward", np.dtype(np.float32), "float32")
        self._validate_optional("done", np.dtype(np.bool_), "bool")
        try:
            json.dumps(self.extra, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise EpisodeError(eid, f"extra is not JSON-serialisable ({err})",
                               "keep only str/int/float/bool/list/dict values in extra") from None  # fmt: skip

    def _validate_frames(self) -> None:
        eid, frames = self.episode_id, self.frames
        if not isinstance(frames, np.ndarray):
            raise EpisodeError(eid, f"frames is a {type(frames).__name__}, not a numpy array",
                               "pass np.asarray(frames, dtype=np.uint8)")  # fmt: skip
        if frames.dtype != np.uint8:
            raise EpisodeError(eid, f"frames have dtype {frames.dtype}, expected uint8",
                               "convert to 0..255 uint8 (e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1])")  # fmt: skip
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise EpisodeError(eid, f"frames have shape {frames.shape}, expected (T, H, W, 3) RGB",
                               "stack frames along axis 0 in channels-last RGB order")  # fmt: skip
        if min(frames.shape[:3]) < 1:
            raise EpisodeError(
                eid, f"frames have shape {frames.shape}", "an episode needs at least one frame of size >= 1x1"
            )

    def _validate_actions(self) -> None:
        eid, actions, space = self.episode_id, self.actions, self.action_space
        n = self.frames.shape[0]
        if not isinstance(actions, np.ndarray):
            raise EpisodeError(eid, f"actions is a {type(actions).__name__}, not a numpy array",
                               f"pass np.asarray(actions, dtype=np.{space.dtype})")  # fmt: skip
        if actions.shape[:1] != (n,):
            got = actions.shape[0] if actions.ndim else "no"
            raise EpisodeError(
                eid,
                f"frame/action length mismatch: {n} frames but {got} actions",
                "record one action per frame (actions[t] is taken at frame t; repeat or pad the last action "
                "if the recorder drops it)",
            )
        expected_shape = (n, *space.action_shape)
        if actions.shape != expected_shape:
            raise EpisodeError(eid, f"actions have shape {actions.shape}, expected {expected_shape} for a "
                               f"{space.type} space of dim {space.dim}", "fix the array or the ActionSpace")  # fmt: skip
        if actions.dtype != space.dtype:
            raise EpisodeError(eid, f"actions have dtype {actions.dtype}, expected {space.dtype} for {space.type}",
                               f"cast with actions.astype(np.{space.dtype})")  # fmt: skip
        if space.type == "discrete":
            bad = np.nonzero((actions < 0) | (actions >= space.dim))[0]
            if bad.size:
                raise EpisodeError(eid, f"discrete action ids outside [0, {space.dim}) at t={_first(bad)}",
                                   "fix the ids or declare a larger dim")  # fmt: skip
            return
        finite = np.isfinite(actions)
        if not finite.all():
            raise EpisodeError(eid, f"actions contain NaN/inf at t={_first(np.nonzero(~finite)[0])}",
                               "drop or repair those steps before writing")  # fmt: skip
        if space.type == "multi_hot":
            bad = np.nonzero((actions != 0) & (actions != 1))[0]
            if bad.size:
                raise EpisodeError(eid, f"multi-hot actions other than 0/1 at t={_first(bad)}",
                                   "threshold them to exact 0.0/1.0")  # fmt: skip
            return
        for bound, op, word in ((space.low, np.less, "below low"), (space.high, np.greater, "above high")):
            if bound is not None:
                bad = np.nonzero(op(actions, np.asarray(bound, dtype=np.float32)))[0]
                if bad.size:
                    raise EpisodeError(eid, f"continuous actions {word} bound at t={_first(bad)}",
                                       "clip them or widen the ActionSpace bounds")  # fmt: skip

    def _validate_optional(self, name: str, dtype: np.dtype, dtype_name: str) -> None:
        value = getattr(self, name)
        if value is None:
            return
        eid, n = self.episode_id, self.frames.shape[0]
        if not isinstance(value, np.ndarray) or value.shape != (n,):
            shape = getattr(value, "shape", type(value).__name__)
            raise EpisodeError(eid, f"{name} has shape {shape}, expected ({n},) (one per frame)",
                               f"pass a 1-D numpy array of length {n} or None")  # fmt: skip
        if value.dtype != dtype:
            raise EpisodeError(eid, f"{name} has dtype {value.dtype}, expected {dtype_name}",
                               f"cast with {name}.astype(np.{dtype_name})")  # fmt: skip
        if dtype.kind == "f" and not np.isfinite(value).all():
            bad = np.nonzero(~np.isfinite(value))[0]
            raise EpisodeError(eid, f"{name} contains NaN/inf at t={_first(bad)}", "repair those steps")

    # ------------------------------------------------------------------------------------ identity
    def content_hash(self) -> str:
        """sha256 of the raw frame bytes followed by the raw action bytes (C order).

        Stored in the manifest at write time; after a lossless round trip the re-decoded episode must
        hash the same, which verifies codec and storage end to end.
        """
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.frames).data)
        h.update(np.ascontiguousarray(self.actions).data)
        return h.hexdigest()

    def metadata(self) -> dict[str, Any]:
        """JSON-serialisable description of everything except the arrays (stored as ``<key>.json``)."""
        return {
            "format_version": FORMAT_VERSION,
            "episode_id": self.episode_id,
            "domain": self.domain,
            "source": self.source,
            "fps": float(self.fps),
            "length": self.length,
            "height": self.height,
            "width": self.width,
            "action_space": self.action_space.model_dump(mode="json"),
            "has_reward": self.reward is not None,
            "has_done": self.done is not None,
            "extra": self.extra,
        }


__all__ = ["EPISODE_ID_RE", "FORMAT_VERSION", "ActionSpace", "ActionType", "Domain", "Episode"]
