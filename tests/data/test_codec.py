"""Codecs: lossless modes are bit-exact, lossy H.264 stays within the stated bound, junk fails clearly."""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import smooth_frames

from v2w_core.data.codec import LOSSY_MEAN_ABS_ERROR_BOUND, CodecConfig, decode_frames, encode_frames
from v2w_core.data.errors import VideoDecodeError
from v2w_core.data.sources import get_source


@pytest.mark.parametrize("codec", ["h264-lossless", "zstd"])
@pytest.mark.parametrize("shape", [(1, 16, 16, 3), (9, 33, 47, 3), (3, 1, 1, 3)])
def test_lossless_is_bit_exact_on_noise(codec: str, shape: tuple[int, ...]) -> None:
    # Uniform noise is the hardest content, and odd sizes catch any chroma subsampling.
    frames = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    data = encode_frames(frames, CodecConfig(name=codec), fps=10)
    out = decode_frames(data, codec)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, frames)


def test_lossless_covers_every_colour_value() -> None:
    """All 256 levels in every channel, including the extremes yuv-based paths clip or round."""
    levels = np.arange(256, dtype=np.uint8)
    frame = np.stack(np.meshgrid(levels, levels[::-1], indexing="ij"), -1)
    frame = np.concatenate([frame, (levels[:, None] ^ levels[None, :])[..., None]], -1).astype(np.uint8)
    frames = np.stack([frame, np.roll(frame, 5, axis=1)])
    out = decode_frames(encode_frames(frames, CodecConfig(name="h264-lossless")), "h264-lossless")
    np.testing.assert_array_equal(out, frames)


def test_lossy_h264_within_bound_on_smooth_content() -> None:
    cases = {
        "gradients": smooth_frames(24, 64, 64),
        "bouncing-shapes": get_source("bouncing-shapes", episode_length=24).episode(0, seed=0).frames,
    }
    for name, frames in cases.items():
        data = encode_frames(frames, CodecConfig(), fps=15)
        out = decode_frames(data, "h264")
        assert out.shape == frames.shape, name
        mae = np.abs(out.astype(np.int16) - frames).mean()
        assert mae <= LOSSY_MEAN_ABS_ERROR_BOUND, f"{name}: mean abs error {mae:.3f}"
        assert len(data) < frames.nbytes / 5, f"{name}: lossy coding should compress well"


def test_lossy_quality_follows_crf() -> None:
    frames = smooth_frames(8, 32, 32)
    errs = []
    for crf in (0, 30):
        out = decode_frames(encode_frames(frames, CodecConfig(crf=crf)), "h264")
        errs.append(np.abs(out.astype(np.int16) - frames).mean())
    assert errs[0] < 0.5 < errs[1]


@pytest.mark.parametrize("fps", [29.97, 0.5, 240.0])
def test_frame_count_kept_at_any_fps(fps: float) -> None:
    frames = smooth_frames(17, 16, 16)
    assert (
        decode_frames(encode_frames(frames, CodecConfig(name="h264-lossless"), fps=fps), "h264").shape
        == frames.shape
    )


@pytest.mark.parametrize("codec", ["h264", "h264-lossless", "zstd"])
def test_undecodable_bytes_raise_clear_error(codec: str) -> None:
    frames = smooth_frames(8, 32, 32)
    data = encode_frames(frames, CodecConfig(name=codec))
    for junk in (b"", b"not a video at all" * 10, data[: len(data) // 3]):
        with pytest.raises(VideoDecodeError, match="undecodable|empty|zero frames|no video stream"):
            decode_frames(junk, codec)


def test_unknown_codec_and_bad_input() -> None:
    with pytest.raises(VideoDecodeError, match="unknown codec"):
        decode_frames(b"x", "h265")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uint8"):
        encode_frames(np.zeros((2, 8, 8, 3), dtype=np.float32))


def test_decodes_foreign_yuv420p_mp4() -> None:
    """Videos not written by us (e.g. a converter's yuv420p mp4) decode through the swscale fallback."""
    import io

    import av

    frames = smooth_frames(6, 32, 32)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10, options={"crf": "10"})
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    out = decode_frames(buf.getvalue(), "h264")
    assert out.shape == frames.shape
    # 4:2:0 chroma and limited range: only roughly equal
    assert np.abs(out.astype(np.int16) - frames).mean() < 6
