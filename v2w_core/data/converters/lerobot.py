"""``lerobot``: LeRobotDataset v3 directories -> episodes, with pyarrow and PyAV only (no lerobot package).

The v3 layout (``codebase_version`` ``v3.x``), as documented by LeRobot:

* ``meta/info.json``: ``fps``, ``features`` (name -> dtype/shape/names; cameras have dtype ``video``),
  ``data_path`` / ``video_path`` templates (``data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet``,
  ``videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4``), ``robot_type``.
* ``meta/episodes/chunk-XXX/file-XXX.parquet``: one row per episode: ``episode_index``, ``length``,
  ``tasks``, ``data/chunk_index``, ``data/file_index``, ``dataset_from_index``/``dataset_to_index`` and,
  per camera, ``videos/<key>/chunk_index|file_index|from_timestamp|to_timestamp``.
* ``data/chunk-XXX/file-XXX.parquet``: one row per frame of several episodes (``episode_index``,
  ``frame_index``, ``timestamp``, ``index``, ``action``, ``observation.state``, ...).
* ``videos/<key>/chunk-XXX/file-XXX.mp4``: the frames of several episodes concatenated; an episode is
  the frames with presentation time in ``[from_timestamp, to_timestamp)``.

Why not the lerobot package: it pulls torch/torchvision/datasets and a specific PyAV/torchcodec stack;
the format is three parquet tables and mp4 files, which pyarrow and PyAV read directly.

Streaming: episodes are converted in the order of the episodes table; one data parquet file (only the
needed columns) and one video decoder are kept open, and consecutive episodes of the same mp4 are
decoded sequentially without re-seeking. LeRobot's ``action[t]`` is the command issued at
observation ``t``, which is exactly our alignment (frame ``t + 1`` is its result).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from v2w_core.data.converters import register_converter
from v2w_core.data.converters._common import BadRecordError, Converter, ConvertOptions, safe_id
from v2w_core.data.episode import ActionSpace, Episode

log = logging.getLogger(__name__)

NAME = "lerobot"


class LeRobotOptions(ConvertOptions):
    #: Video feature to use as frames (default: the first ``dtype: video`` feature in info.json).
    camera: str | None = None
    #: Frame column holding the action vector.
    action_key: str = "action"
    #: Optional per-frame columns copied to Episode.reward / Episode.done when present.
    reward_key: str = "next.reward"
    done_key: str = "next.done"


def _action_names(feature: dict[str, Any], dim: int) -> tuple[str, ...] | None:
    """LeRobot writes ``names`` as a list, or as ``{"motors": [...]}``; use it if it has ``dim`` entries."""
    names = feature.get("names")
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    if isinstance(names, list) and len(names) == dim and all(isinstance(n, str) for n in names):
        return tuple(names)
    return None


class _VideoCursor:
    """Sequential reader of one mp4 that hands out the frames of consecutive time ranges.

    Re-opens (and seeks) only when asked for a range before its position or far ahead of it, so a file
    holding many episodes is decoded once from start to end.
    """

    SEEK_AHEAD_S = 2.0

    def __init__(self) -> None:
        self.path: str | None = None
        self._container: Any = None
        self._frames: Iterator[Any] | None = None
        self._pending: Any = None
        self._position = -1.0

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = self._frames = self._pending = None
        self.path = None
        self._position = -1.0

    def _open(self, path: str, start: float) -> None:
        self.close()
        container = av.open(path)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if start > self.SEEK_AHEAD_S and stream.time_base is not None:
            container.seek(int(max(start - 1.0, 0.0) / stream.time_base), stream=stream, backward=True)
        self._container = container
        self._frames = iter(container.decode(stream))
        self.path = path

    def read(self, path: str, start: float, stop: float, half_frame: float) -> list[np.ndarray]:
        """RGB frames whose time t satisfies ``start - half <= t < stop - half``."""
        if (
            path != self.path
            or start - half_frame < self._position
            or start > self._position + self.SEEK_AHEAD_S
        ):
            self._open(path, start)
        assert self._frames is not None
        out: list[np.ndarray] = []
        while True:
            frame = self._pending if self._pending is not None else next(self._frames, None)
            self._pending = None
            if frame is None:
                break
            t = float(frame.time) if frame.time is not None else float(frame.pts or 0)
            if t < start - half_frame:
                continue
            if t >= stop - half_frame:
                self._pending = frame  # first frame of the next range
                break
            out.append(frame.to_ndarray(format="rgb24"))
            self._position = t
        return out


@register_converter(NAME)
class LeRobotConverter(Converter):
    """See the module docstring; options in :class:`LeRobotOptions`."""

    name = NAME

    def __init__(self, input: str, **options: Any) -> None:
        opts = LeRobotOptions.from_dict(dict(options), source=f"converter {NAME!r} options")
        super().__init__(input, opts)
        self.options: LeRobotOptions = opts
        self.root = Path(input)
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            raise FileNotFoundError(f"{info_path} not found: {input} is not a LeRobot dataset directory")
        self.info = json.loads(info_path.read_text())
        version = str(self.info.get("codebase_version", ""))
        if not version.startswith("v3"):
            raise ValueError(
                f"{info_path}: codebase_version {version!r} is not v3; convert it with lerobot's "
                "convert_dataset_v21_to_v30 first (v2 stores one file per episode)"
            )
        self.fps = float(self.info["fps"])
        features: dict[str, Any] = self.info.get("features", {})
        video_keys = [k for k, v in features.items() if v.get("dtype") == "video"]
        if not video_keys:
            raise ValueError(f"{info_path}: no video features; this converter needs frames stored as mp4")
        self.camera = opts.camera or video_keys[0]
        if self.camera not in video_keys:
            raise ValueError(f"camera {self.camera!r} is not a video feature of {input}; have {video_keys}")
        if opts.action_key not in features:
            raise ValueError(
                f"action_key {opts.action_key!r} is not a feature of {input}; have {sorted(features)}"
            )
        self.action_feature = features[opts.action_key]
        self.features = features
        self._data_cache: tuple[str, pa.Table] | None = None
        self._video = _VideoCursor()

    # ----------------------------------------------------------------------------------------- records
    def _episode_files(self) -> list[Path]:
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise FileNotFoundError(f"no meta/episodes/chunk-*/file-*.parquet under {self.root}")
        return files

    def _records(self) -> Generator[tuple[tuple[str, str], Any], None, None]:
        cam = self.camera
        columns = [
            "episode_index",
            "length",
            "data/chunk_index",
            "data/file_index",
            f"videos/{cam}/chunk_index",
            f"videos/{cam}/file_index",
            f"videos/{cam}/from_timestamp",
            f"videos/{cam}/to_timestamp",
        ]
        try:
            for path in self._episode_files():
                rel = str(path.relative_to(self.root))
                try:
                    pf = pq.ParquetFile(path)
                    have = set(pf.schema_arrow.names)
                    missing = [c for c in columns if c not in have]
                    if missing:
                        raise ValueError(f"missing columns {missing}")
                    cols = columns + (["tasks"] if "tasks" in have else [])
                    batches = pf.iter_batches(columns=cols, batch_size=256)
                    for batch in batches:
                        for row in batch.to_pylist():
                            yield (rel, f"episode {row['episode_index']}"), partial(self._convert, rel, row)
                except (OSError, ValueError, pa.ArrowException) as err:
                    # The episodes table itself is unreadable: one bad record standing for the whole file.
                    yield (
                        (rel, "episodes table"),
                        partial(_raise, rel, "episodes table", f"unreadable: {err}"),
                    )
        finally:
            self._video.close()
            self._data_cache = None

    # ------------------------------------------------------------------------------------- one episode
    def _data_table(self, rel: str) -> pa.Table:
        if self._data_cache is not None and self._data_cache[0] == rel:
            return self._data_cache[1]
        opts = self.options
        path = self.root / rel
        schema = pq.read_schema(path)
        wanted = ["episode_index", "frame_index", opts.action_key, opts.reward_key, opts.done_key]
        table = pq.read_table(path, columns=[c for c in wanted if c in schema.names])
        self._data_cache = (rel, table)
        return table

    def _convert(self, meta_file: str, row: dict[str, Any]) -> Episode:
        opts, cam = self.options, self.camera
        ep = int(row["episode_index"])
        record = f"episode {ep}"
        length = int(row["length"])
        data_rel = self.info["data_path"].format(
            chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"]), episode_index=ep
        )
        video_rel = self.info["video_path"].format(
            video_key=cam,
            chunk_index=int(row[f"videos/{cam}/chunk_index"]),
            file_index=int(row[f"videos/{cam}/file_index"]),
            episode_index=ep,
        )
        # --- tabular data
        try:
            table = self._data_table(data_rel)
        except (OSError, pa.ArrowException) as err:
            raise BadRecordError(data_rel, record, f"data file unreadable: {err}") from None
        if opts.action_key not in table.column_names:
            raise BadRecordError(data_rel, record, f"no {opts.action_key!r} column")
        rows = table.filter(pc.equal(table["episode_index"], ep))
        if rows.num_rows != length:
            raise BadRecordError(
                data_rel, record, f"{rows.num_rows} data rows but the episodes table says {length}"
            )
        rows = rows.sort_by("frame_index")
        frame_index = rows["frame_index"].to_numpy()
        if not np.array_equal(frame_index, np.arange(length)):
            raise BadRecordError(data_rel, record, "frame_index is not 0..length-1")
        actions = _column_matrix(rows[opts.action_key], data_rel, record)
        dim = actions.shape[1]
        space = ActionSpace(type="continuous", dim=dim, names=_action_names(self.action_feature, dim))
        reward = (
            rows[opts.reward_key].to_numpy().astype(np.float32)
            if opts.reward_key in rows.column_names
            else None
        )
        done = rows[opts.done_key].to_numpy().astype(bool) if opts.done_key in rows.column_names else None
        if reward is not None and reward.ndim != 1:
            reward = None
        if done is not None and done.ndim != 1:
            done = None
        # --- frames
        start = float(row[f"videos/{cam}/from_timestamp"])
        stop = float(row[f"videos/{cam}/to_timestamp"])
        video_path = self.root / video_rel
        try:
            frames_list = self._video.read(str(video_path), start, stop, 0.5 / self.fps)
        except (OSError, av.FFmpegError, ValueError) as err:
            self._video.close()
            raise BadRecordError(video_rel, record, f"video unreadable: {err}") from None
        if len(frames_list) != length:
            raise BadRecordError(
                video_rel,
                record,
                f"{len(frames_list)} video frames in [{start:.3f}, {stop:.3f}) s but length is {length}",
            )
        frames = np.stack(frames_list)
        return self.finish(
            file=video_rel,
            record=record,
            episode_id=safe_id(opts.id_prefix or f"{NAME}-{self.root.name}", f"ep{ep:06d}"),
            frames=frames,
            actions=actions,
            action_space=space,
            domain="robot",
            fps=self.fps,
            reward=reward,
            done=done,
            extra={
                "episode_index": ep,
                "tasks": list(row.get("tasks") or []),
                "robot_type": self.info.get("robot_type"),
                "camera": cam,
                "codebase_version": self.info.get("codebase_version"),
                "data_file": data_rel,
                "meta_file": meta_file,
                "action_layout": {
                    "key": opts.action_key,
                    "dtype": self.action_feature.get("dtype"),
                    "shape": self.action_feature.get("shape"),
                    "names": self.action_feature.get("names"),
                },
            },
        )


def _column_matrix(column: pa.ChunkedArray, file: str, record: str) -> np.ndarray:
    """A (T,) or (T, d) list/fixed-size-list column as a (T, d) float32 matrix."""
    arr = column.combine_chunks()
    n = len(arr)
    try:
        if (
            pa.types.is_list(arr.type)
            or pa.types.is_large_list(arr.type)
            or pa.types.is_fixed_size_list(arr.type)
        ):
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            if n and (lengths != lengths[0]).any():
                raise BadRecordError(file, record, "action vectors have different lengths")
            flat = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
            return flat.reshape(n, -1)
        return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(n, 1)
    except (pa.ArrowException, TypeError, ValueError) as err:
        raise BadRecordError(file, record, f"action column not numeric: {err}") from None


def _raise(file: str, record: str, reason: str) -> Episode:
    raise BadRecordError(file, record, reason)


__all__ = ["LeRobotConverter", "LeRobotOptions"]
