"""``csgo``: DIAMOND's CS:GO deathmatch hdf5 files (Pearce & Zhu, 2022) -> episodes.

Format: one hdf5 file per recorded episode (``hdf5_dm_july2021_<n>.hdf5``), 1000 frames each, with
per-frame datasets ``frame_<i>_x`` (the screen, 150x280x3 uint8 in **BGR** order, as captured by
OpenCV) and ``frame_<i>_y`` (the 51-dim action taken at that frame), plus ``frame_<i>_xaux`` /
``frame_<i>_helperarr`` that are not needed here. Frames are converted BGR -> RGB.

Action encoding (kept exactly as DIAMOND and the original behavioural-cloning code use it, so a model
trained on these episodes plugs into DIAMOND's play loop), 51 dims of 0/1:

* ``[0:11]``  keys held: w, a, s, d, space, ctrl, shift, 1, 2, 3, r (multi-hot),
* ``[11:13]`` mouse buttons: left click, right click (multi-hot),
* ``[13:36]`` mouse x movement, one-hot over 23 bins (:data:`MOUSE_X_BINS`, pixels per frame),
* ``[36:51]`` mouse y movement, one-hot over 15 bins (:data:`MOUSE_Y_BINS`).

Stored as a ``multi_hot`` action space with one name per dimension; the slices and bin centres are in
``extra["action_layout"]``. Data whose actions are not exact 0/1 can be read with
``action_type=continuous`` (the layout is recorded either way). ``frame_<i>_y`` is the action taken at
frame ``i``, so frame ``i + 1`` is its result: our alignment, unchanged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Generator
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from v2w_core.data.converters import register_converter
from v2w_core.data.converters._common import BadRecordError, Converter, ConvertOptions, safe_id
from v2w_core.data.episode import ActionSpace, Episode

log = logging.getLogger(__name__)

NAME = "csgo"
KEYS = ("w", "a", "s", "d", "space", "ctrl", "shift", "1", "2", "3", "r")
CLICKS = ("l_click", "r_click")
MOUSE_X_BINS = (-1000, -500, -300, -200, -100, -60, -30, -20, -10, -4, -2, 0,
                2, 4, 10, 20, 30, 60, 100, 200, 300, 500, 1000)  # fmt: skip
MOUSE_Y_BINS = (-200, -100, -50, -20, -10, -4, -2, 0, 2, 4, 10, 20, 50, 100, 200)
ACTION_NAMES = (
    tuple(f"key_{k}" for k in KEYS)
    + CLICKS
    + tuple(f"mouse_x_{b}" for b in MOUSE_X_BINS)
    + tuple(f"mouse_y_{b}" for b in MOUSE_Y_BINS)
)
ACTION_DIM = len(ACTION_NAMES)  # 51
ACTION_LAYOUT = {
    "keys": [0, 11],
    "clicks": [11, 13],
    "mouse_x": [13, 36],
    "mouse_y": [36, 51],
    "key_names": list(KEYS),
    "mouse_x_bins": list(MOUSE_X_BINS),
    "mouse_y_bins": list(MOUSE_Y_BINS),
}
FRAME_SHAPE = (150, 280, 3)
_FRAME_KEY = re.compile(r"^frame_(\d+)_x$")


class CsgoOptions(ConvertOptions):
    #: The data set was captured at 16 frames per second.
    fps: float = Field(default=16.0, gt=0)
    action_type: Literal["multi_hot", "continuous"] = "multi_hot"
    #: Glob of episode files when ``input`` is a directory (searched recursively).
    pattern: str = "*.hdf5"
    #: Require DIAMOND's native 150x280 frames (off: accept any H x W x 3).
    strict_shape: bool = True


@register_converter(NAME)
class CsgoConverter(Converter):
    """See the module docstring; options in :class:`CsgoOptions`."""

    name = NAME

    def __init__(self, input: str, **options: Any) -> None:
        opts = CsgoOptions.from_dict(dict(options), source=f"converter {NAME!r} options")
        super().__init__(input, opts)
        self.options: CsgoOptions = opts
        path = Path(input)
        if path.is_dir():
            self.files = sorted(p for p in path.rglob(opts.pattern) if p.is_file())
            self.base = path
        elif path.is_file():
            self.files, self.base = [path], path.parent
        else:
            raise FileNotFoundError(f"{input} is neither an hdf5 file nor a directory")
        if not self.files:
            raise FileNotFoundError(f"no files matching {opts.pattern!r} under {input}")

    def _records(self) -> Generator[tuple[tuple[str, str], Any], None, None]:
        for path in self.files:
            rel = str(path.relative_to(self.base))
            yield (rel, "file"), partial(self._convert, path, rel)

    def _convert(self, path: Path, rel: str) -> Episode:
        import h5py

        opts = self.options
        try:
            f = h5py.File(path, "r")
        except OSError as err:
            raise BadRecordError(rel, "file", f"not a readable hdf5 file: {err}") from None
        with f:
            indices = sorted(int(m.group(1)) for k in f if (m := _FRAME_KEY.match(k)))
            if not indices:
                raise BadRecordError(rel, "file", "no frame_<i>_x datasets")
            n = len(indices)
            if indices != list(range(n)):
                missing = sorted(set(range(indices[-1] + 1)) - set(indices))[:5]
                raise BadRecordError(
                    rel, f"frame_{missing[0]}_x", f"frames are not contiguous (missing {missing})"
                )
            first = self._read(f, rel, "frame_0_x")
            if first.ndim != 3 or first.shape[-1] != 3 or (opts.strict_shape and first.shape != FRAME_SHAPE):
                raise BadRecordError(rel, "frame_0_x", f"shape {first.shape}, expected {FRAME_SHAPE} (BGR)")
            frames = np.empty((n, *first.shape), dtype=np.uint8)
            actions = np.empty((n, ACTION_DIM), dtype=np.float32)
            for i in range(n):
                x = first if i == 0 else self._read(f, rel, f"frame_{i}_x")
                if x.shape != first.shape:
                    raise BadRecordError(rel, f"frame_{i}_x", f"shape {x.shape}, expected {first.shape}")
                if x.dtype != np.uint8:
                    raise BadRecordError(rel, f"frame_{i}_x", f"dtype {x.dtype}, expected uint8")
                frames[i] = x[..., ::-1]  # BGR -> RGB
                y = self._read(f, rel, f"frame_{i}_y").reshape(-1)
                if y.shape != (ACTION_DIM,):
                    raise BadRecordError(
                        rel, f"frame_{i}_y", f"{y.size} action values, expected {ACTION_DIM}"
                    )
                if not np.isfinite(y).all():
                    raise BadRecordError(rel, f"frame_{i}_y", "action contains NaN/inf")
                if opts.action_type == "multi_hot" and not np.isin(y, (0.0, 1.0)).all():
                    raise BadRecordError(
                        rel, f"frame_{i}_y", "action values other than 0/1 (use action_type=continuous)"
                    )
                actions[i] = y
        counts = {
            "mouse_x_one_hot": bool((actions[:, 13:36].sum(axis=1) == 1).all()),
            "mouse_y_one_hot": bool((actions[:, 36:51].sum(axis=1) == 1).all()),
        }
        return self.finish(
            file=rel,
            record="file",
            episode_id=safe_id(opts.id_prefix or NAME, Path(rel).with_suffix("").as_posix()),
            frames=frames,
            actions=actions,
            action_space=ActionSpace(type=opts.action_type, dim=ACTION_DIM, names=ACTION_NAMES),
            domain="game",
            fps=opts.fps,
            extra={"action_layout": ACTION_LAYOUT, "colour_order_in_file": "BGR", **counts},
        )

    @staticmethod
    def _read(f: Any, rel: str, key: str) -> np.ndarray:
        if key not in f:
            raise BadRecordError(rel, key, "missing")
        try:
            return np.asarray(f[key][()])
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise BadRecordError(rel, key, f"unreadable: {err}") from None


__all__ = [
    "ACTION_DIM",
    "ACTION_LAYOUT",
    "ACTION_NAMES",
    "MOUSE_X_BINS",
    "MOUSE_Y_BINS",
    "CsgoConverter",
    "CsgoOptions",
]  # fmt: skip
