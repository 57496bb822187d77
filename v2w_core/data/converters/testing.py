"""Writers of small, synthetic data sets in each input format, for tests and ``bench/ingest.py``.

Why in the package rather than in tests/: the benchmark needs the same fixtures, and users can call
them to check a converter install end to end (``write_lerobot_v3`` + ``get_converter("lerobot", ...)``)
without downloading anything. Each writer follows the real format closely enough that the converter
exercises the same code paths it does on published data (multi-episode mp4s with per-episode time
ranges; TFRecord framing with masked CRC32C; one hdf5 file per DIAMOND CS:GO episode).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class FixtureEpisode:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    actions: np.ndarray  # (T, A) float32


def smooth_frames(length: int, height: int, width: int, seed: int) -> np.ndarray:
    """Smooth, moving content (gradients + a soft blob) so a lossy codec's error stays small and stable."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, size=3).astype(np.float32)
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    vy, vx = rng.choice([-1.0, 1.0], size=2) * rng.uniform(1.5, 2.5, size=2)
    out = np.empty((length, height, width, 3), dtype=np.uint8)
    sigma2 = 2 * (0.2 * min(height, width)) ** 2
    for t in range(length):
        blob = np.exp(-((yy - cy - vy * t) ** 2 + (xx - cx - vx * t) ** 2) / sigma2)
        for c in range(3):
            ramp = 0.25 * (xx / width) * 255 if c == 0 else 0.25 * (yy / height) * 255
            out[t, :, :, c] = np.clip(
                base[c] * 0.6 + ramp + 80 * blob * (1 if c != 1 else -1) + 3 * (t % 8), 0, 255
            )
    return out


def fixture_episodes(
    count: int, *, length: int = 12, height: int = 32, width: int = 48, action_dim: int = 6, seed: int = 0
) -> list[FixtureEpisode]:
    """``count`` episodes of slightly different lengths (length, length+1, ...)."""
    rng = np.random.default_rng(seed)
    return [
        FixtureEpisode(
            frames=smooth_frames(length + i, height, width, seed * 1000 + i),
            actions=rng.uniform(-1, 1, size=(length + i, action_dim)).astype(np.float32),
        )
        for i in range(count)
    ]


# ================================================================================ LeRobot v3
def _encode_mp4(path: Path, frames: np.ndarray, fps: int, *, codec: str = "libx264", crf: int = 10) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"  # what LeRobot writes
        stream.options = {"crf": str(crf)}
        stream.codec_context.time_base = Fraction(1, fps)
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            vf.time_base = Fraction(1, fps)
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_lerobot_v3(
    root: str | Path,
    episodes: Sequence[FixtureEpisode],
    *,
    fps: int = 10,
    episodes_per_file: int = 2,
    camera: str = "observation.images.top",
    task: str = "push the block",
    crf: int = 10,
) -> Path:
    """A LeRobotDataset v3 directory: several episodes per data parquet and per mp4 (chunk-000)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    height, width = episodes[0].frames.shape[1:3]
    dim = episodes[0].actions.shape[1]
    ep_rows: list[dict[str, Any]] = []
    global_index = 0
    for file_index, first in enumerate(range(0, len(episodes), episodes_per_file)):
        group = list(enumerate(episodes[first : first + episodes_per_file], start=first))
        cols: dict[str, list[Any]] = {k: [] for k in ("episode_index", "frame_index", "timestamp", "index",
                                                       "task_index", "action", "observation.state")}  # fmt: skip
        video_frames = []
        t0 = 0.0
        for ep_index, ep in group:
            n = ep.frames.shape[0]
            cols["episode_index"] += [ep_index] * n
            cols["frame_index"] += list(range(n))
            cols["timestamp"] += [i / fps for i in range(n)]
            cols["index"] += list(range(global_index, global_index + n))
            cols["task_index"] += [0] * n
            cols["action"] += [a.tolist() for a in ep.actions]
            cols["observation.state"] += [a[:2].tolist() for a in ep.actions]
            video_frames.append(ep.frames)
            ep_rows.append(
                {
                    "episode_index": ep_index,
                    "tasks": [task],
                    "length": n,
                    "data/chunk_index": 0,
                    "data/file_index": file_index,
                    "dataset_from_index": global_index,
                    "dataset_to_index": global_index + n,
                    f"videos/{camera}/chunk_index": 0,
                    f"videos/{camera}/file_index": file_index,
                    f"videos/{camera}/from_timestamp": t0,
                    f"videos/{camera}/to_timestamp": t0 + n / fps,
                    "meta/episodes/chunk_index": 0,
                    "meta/episodes/file_index": 0,
                }
            )
            t0 += n / fps
            global_index += n
        table = pa.table(
            {
                "action": pa.array(cols["action"], type=pa.list_(pa.float32(), dim)),
                "observation.state": pa.array(cols["observation.state"], type=pa.list_(pa.float32(), 2)),
                "timestamp": pa.array(cols["timestamp"], type=pa.float32()),
                "frame_index": pa.array(cols["frame_index"], type=pa.int64()),
                "episode_index": pa.array(cols["episode_index"], type=pa.int64()),
                "index": pa.array(cols["index"], type=pa.int64()),
                "task_index": pa.array(cols["task_index"], type=pa.int64()),
            }
        )
        data_path = root / f"data/chunk-000/file-{file_index:03d}.parquet"
        data_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, data_path)
        _encode_mp4(root / f"videos/{camera}/chunk-000/file-{file_index:03d}.mp4", np.concatenate(video_frames), fps,
                    crf=crf)  # fmt: skip
    meta = root / "meta/episodes/chunk-000/file-000.parquet"
    meta.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(ep_rows), meta)
    pq.write_table(pa.table({"task_index": [0], "task": [task]}), root / "meta/tasks.parquet")
    info = {
        "codebase_version": "v3.0",
        "robot_type": "fixture_arm",
        "total_episodes": len(episodes),
        "total_frames": global_index,
        "total_tasks": 1,
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200,
        "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": {
            camera: {
                "dtype": "video",
                "shape": [height, width, 3],
                "names": ["height", "width", "channels"],
                "info": {"video.fps": fps, "video.codec": "h264", "video.pix_fmt": "yuv420p"},
            },
            "observation.state": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
            "action": {"dtype": "float32", "shape": [dim], "names": [f"joint_{i}" for i in range(dim)]},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        },
    }
    (root / "meta/info.json").write_text(json.dumps(info, indent=2))
    return root


# ================================================================================ RLDS / Open-X
RT1_FIELDS = (("world_vector", 3), ("rotation_delta", 3), ("gripper_closedness_action", 1))


def _encode_image(frame: np.ndarray, fmt: str, quality: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(frame).save(buf, format="JPEG", quality=quality, subsampling=0)
    else:
        Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def rlds_example(ep: FixtureEpisode, *, index: int, image_format: str = "jpeg", quality: int = 95,
                 sequence: bool = False) -> bytes:  # fmt: skip
    """One episode as a flattened RLDS Example (or SequenceExample) in RT-1's layout.

    ``ep.actions`` must have 7 columns: world_vector (3), rotation_delta (3), gripper_closedness (1).
    """
    from v2w_core.data.converters.rlds import encode_example, encode_sequence_example

    n = ep.frames.shape[0]
    images = [_encode_image(f, image_format, quality) for f in ep.frames]
    steps: dict[str, Any] = {"steps/observation/image": images}
    col = 0
    for name, dim in RT1_FIELDS:
        steps[f"steps/action/{name}"] = ep.actions[:, col : col + dim].astype(np.float32)
        col += dim
    one_hot = np.zeros((n, 3), dtype=np.int64)
    one_hot[:, 1] = 1
    steps["steps/action/terminate_episode"] = one_hot
    steps["steps/is_first"] = (np.arange(n) == 0).astype(np.int64)
    steps["steps/is_last"] = (np.arange(n) == n - 1).astype(np.int64)
    steps["steps/is_terminal"] = (np.arange(n) == n - 1).astype(np.int64)
    steps["steps/reward"] = (np.arange(n) == n - 1).astype(np.float32)
    steps["steps/observation/natural_language_instruction"] = [b"pick the can"] * n
    context = {"episode_metadata/file_path": [f"/fixture/episode_{index}.npz".encode()]}
    if not sequence:
        return encode_example({**context, **{k: (v.reshape(-1) if isinstance(v, np.ndarray) else v)
                                             for k, v in steps.items()}})  # fmt: skip
    lists = {
        k: ([[b] for b in v] if isinstance(v, list) else [np.atleast_1d(x) for x in v])
        for k, v in steps.items()
    }
    return encode_sequence_example(context, lists)


def write_rlds_tfrecords(path: str | Path, episodes: Sequence[FixtureEpisode], *, start_index: int = 0,
                         **kwargs: Any) -> Path:  # fmt: skip
    """One TFRecord file holding one Example per episode (as TFDS shards RLDS data)."""
    from v2w_core.data.converters.rlds import write_tfrecords

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tfrecords(
        path, (rlds_example(ep, index=start_index + i, **kwargs) for i, ep in enumerate(episodes))
    )
    return path


# ================================================================================ DIAMOND CS:GO hdf5
def write_csgo_hdf5(path: str | Path, frames_rgb: np.ndarray, actions: np.ndarray) -> Path:
    """One DIAMOND/Pearce CS:GO episode file: ``frame_i_x`` (BGR uint8) and ``frame_i_y`` (51 floats)."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for i, (frame, action) in enumerate(zip(frames_rgb, actions, strict=True)):
            f.create_dataset(f"frame_{i}_x", data=frame[..., ::-1])  # stored BGR (OpenCV capture)
            f.create_dataset(f"frame_{i}_y", data=action.astype(np.float64))
            f.create_dataset(f"frame_{i}_xaux", data=np.zeros(54, dtype=np.float64))
            f.create_dataset(f"frame_{i}_helperarr", data=np.zeros(2, dtype=np.float64))
    return path


__all__ = [
    "RT1_FIELDS",
    "FixtureEpisode",
    "fixture_episodes",
    "rlds_example",
    "smooth_frames",
    "write_csgo_hdf5",
    "write_lerobot_v3",
    "write_rlds_tfrecords",
]
