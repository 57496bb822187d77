"""RLDS / Open-X TFRecord converter: framing, wire format (checked against protobuf), round trip, bad records."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from v2w_core.data.converters import BadRecordError, convert, get_converter, rlds
from v2w_core.data.converters.testing import FixtureEpisode, fixture_episodes, write_rlds_tfrecords

#: Mean |decoded - written| of JPEG quality 95, 4:4:4, on the smooth fixture frames (grey levels).
JPEG_BOUND = 2.0


@pytest.fixture(scope="module")
def episodes() -> list[FixtureEpisode]:
    return fixture_episodes(4, length=6, height=24, width=32, action_dim=7)


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ------------------------------------------------------------------------------------------ framing
def test_crc32c_known_value_and_fallback() -> None:
    assert rlds.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    crc = 0xFFFFFFFF
    data = bytes(range(256)) * 3
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    assert rlds.crc32c(data) == crc ^ 0xFFFFFFFF


def test_tfrecord_round_trip_and_corruption(tmp_path: Path) -> None:
    path = tmp_path / "x.tfrecord"
    records = [b"", b"hello", bytes(range(256)) * 10]
    assert rlds.write_tfrecords(path, records) == 3
    assert [d for _, _, d in rlds.iter_tfrecords(path)] == records
    raw = bytearray(path.read_bytes())
    raw[12 + 2] ^= 0xFF  # record 0 is empty: bytes 12..15 are its data CRC
    path.write_bytes(bytes(raw))
    out = list(rlds.iter_tfrecords(path))
    assert isinstance(out[0][2], rlds.TFRecordError) and not out[0][2].fatal
    assert out[1][2] == b"hello" and out[2][2] == records[2]  # framing intact: reading continues
    path.write_bytes(bytes(raw[:-10]))  # truncate the last record
    out = list(rlds.iter_tfrecords(path))
    assert isinstance(out[-1][2], rlds.TFRecordError) and out[-1][2].fatal and len(out) == 3


# ---------------------------------------------------------------------------------- wire format
def _protobuf_classes() -> dict[str, Any]:
    """tf.train.Example & co. built from a hand-written descriptor with the protobuf package."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="v2w_test_example.proto", package="v2wtest", syntax="proto3"
    )

    def msg(name: str, fields: list[tuple[str, int, int, int, str]], nested: list[Any] | None = None) -> Any:
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
        for n in nested or []:
            m.nested_type.add().CopyFrom(n)
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    msg("BytesList", [("value", 1, F.TYPE_BYTES, rep, "")])
    msg("FloatList", [("value", 1, F.TYPE_FLOAT, rep, "")])
    msg("Int64List", [("value", 1, F.TYPE_INT64, rep, "")])
    feat = msg("Feature", [("bytes_list", 1, F.TYPE_MESSAGE, opt, ".v2wtest.BytesList"),
                           ("float_list", 2, F.TYPE_MESSAGE, opt, ".v2wtest.FloatList"),
                           ("int64_list", 3, F.TYPE_MESSAGE, opt, ".v2wtest.Int64List")])  # fmt: skip
    feat.oneof_decl.add(name="kind")
    for f in feat.field:
        f.oneof_index = 0

    def map_entry(name: str, value_type: str) -> Any:
        e = descriptor_pb2.DescriptorProto(name=name)
        e.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
        e.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=value_type)
        e.options.map_entry = True
        return e

    msg("Features", [("feature", 1, F.TYPE_MESSAGE, rep, ".v2wtest.Features.FeatureEntry")],
        [map_entry("FeatureEntry", ".v2wtest.Feature")])  # fmt: skip
    msg("FeatureList", [("feature", 1, F.TYPE_MESSAGE, rep, ".v2wtest.Feature")])
    msg("FeatureLists", [("feature_list", 1, F.TYPE_MESSAGE, rep, ".v2wtest.FeatureLists.FeatureListEntry")],
        [map_entry("FeatureListEntry", ".v2wtest.FeatureList")])  # fmt: skip
    msg("Example", [("features", 1, F.TYPE_MESSAGE, opt, ".v2wtest.Features")])
    msg("SequenceExample", [("context", 1, F.TYPE_MESSAGE, opt, ".v2wtest.Features"),
                            ("feature_lists", 2, F.TYPE_MESSAGE, opt, ".v2wtest.FeatureLists")])  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {
        n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"v2wtest.{n}"))
        for n in ("Example", "SequenceExample")
    }


def test_wire_format_matches_protobuf() -> None:
    classes = _protobuf_classes()
    # protobuf encodes -> our parser decodes
    ex = classes["Example"]()
    ex.features.feature["img"].bytes_list.value.extend([b"\xff\xd8abc", b""])
    ex.features.feature["f"].float_list.value.extend([1.5, -2.25, 3e10])
    ex.features.feature["i"].int64_list.value.extend([0, 1, -1, 2**62, -(2**63)])
    parsed = rlds.parse_example(ex.SerializeToString())
    assert parsed["img"] == [b"\xff\xd8abc", b""]
    np.testing.assert_array_equal(parsed["f"], np.array([1.5, -2.25, 3e10], dtype=np.float32))
    np.testing.assert_array_equal(parsed["i"], np.array([0, 1, -1, 2**62, -(2**63)], dtype=np.int64))
    # our encoder -> protobuf decodes
    data = rlds.encode_example({"a": np.array([0.5, 2.0], np.float32), "b": np.array([-3, 7]), "c": [b"x"]})
    back = classes["Example"].FromString(data)
    assert list(back.features.feature["a"].float_list.value) == [0.5, 2.0]
    assert list(back.features.feature["b"].int64_list.value) == [-3, 7]
    assert list(back.features.feature["c"].bytes_list.value) == [b"x"]
    # SequenceExample both ways
    seq = rlds.encode_sequence_example(
        {"ctx": [b"m"]}, {"s": [np.array([1.0], np.float32), np.array([2.0], np.float32)]}
    )
    sback = classes["SequenceExample"].FromString(seq)
    assert [list(f.float_list.value) for f in sback.feature_lists.feature_list["s"].feature] == [[1.0], [2.0]]
    flat = rlds.parse_example(sback.SerializeToString())
    np.testing.assert_array_equal(flat["s"], [1.0, 2.0])
    assert flat["ctx"] == [b"m"]


# ------------------------------------------------------------------------------------- converter
@pytest.mark.parametrize(("image_format", "sequence"), [("jpeg", False), ("png", True)])
def test_round_trip_rt1_layout(tmp_path: Path, episodes: list[FixtureEpisode], image_format: str,
                               sequence: bool) -> None:  # fmt: skip
    path = write_rlds_tfrecords(tmp_path / "fractal20220817_data-train.tfrecord-00000-of-00001", episodes,
                                image_format=image_format, sequence=sequence)  # fmt: skip
    conv = get_converter("rlds", str(path), preset="rt1", height=None, width=None)
    out = list(conv.episodes())
    assert len(out) == 4 and conv.stats.reconciles
    for i, (ep, ref) in enumerate(zip(out, episodes, strict=True)):
        assert ep.frames.shape == ref.frames.shape
        if image_format == "png":
            np.testing.assert_array_equal(ep.frames, ref.frames)
        else:
            assert _mae(ep.frames, ref.frames) < JPEG_BOUND
        np.testing.assert_array_equal(ep.actions, ref.actions)
        assert ep.episode_id == f"rlds-fractal20220817_data-train_tfrecord-00000-of-00001-r{i:06d}"
        assert ep.fps == 3.0 and ep.domain == "robot"
        assert ep.action_space.dim == 7
        assert ep.action_space.names == ("world_vector[0]", "world_vector[1]", "world_vector[2]",
                                         "rotation_delta[0]", "rotation_delta[1]", "rotation_delta[2]",
                                         "gripper_closedness_action")  # fmt: skip
        assert ep.extra["action_layout"] == [
            {"key": "steps/action/world_vector", "start": 0, "stop": 3},
            {"key": "steps/action/rotation_delta", "start": 3, "stop": 6},
            {"key": "steps/action/gripper_closedness_action", "start": 6, "stop": 7},
        ]
        assert ep.extra["episode_metadata"]["file_path"] == f"/fixture/episode_{i}.npz"
        assert ep.done is not None and ep.done[-1] and not ep.done[:-1].any()


def test_default_action_fields_and_directory_input(tmp_path: Path, episodes: list[FixtureEpisode]) -> None:
    write_rlds_tfrecords(tmp_path / "d" / "a.tfrecord-00000", episodes[:2])
    write_rlds_tfrecords(tmp_path / "d" / "a.tfrecord-00001", episodes[2:], start_index=2)
    out = list(get_converter("rlds", str(tmp_path / "d"), height=16, width=16).episodes())
    assert len(out) == 4 and out[0].frames.shape == (6, 16, 16, 3)
    # default: every numeric steps/action/* key, sorted (gripper, rotation, terminate one-hot, world)
    assert [f["key"].split("/")[-1] for f in out[0].extra["action_layout"]] == [
        "gripper_closedness_action", "rotation_delta", "terminate_episode", "world_vector"]  # fmt: skip
    assert out[0].action_space.dim == 10


def test_corrupt_records_named_and_skipped(tmp_path: Path, episodes: list[FixtureEpisode]) -> None:
    path = write_rlds_tfrecords(tmp_path / "bad.tfrecord", episodes)
    raw = bytearray(path.read_bytes())
    # flip a byte in the middle of record 1's data -> data CRC mismatch (framing stays intact)
    (len0,) = struct.unpack("<Q", raw[:8])
    rec1 = 12 + len0 + 4
    raw[rec1 + 12 + 100] ^= 0x55
    path.write_bytes(bytes(raw))
    with pytest.raises(BadRecordError) as info:
        list(get_converter("rlds", str(path), preset="rt1").episodes())
    assert (
        "bad.tfrecord" in str(info.value) and "record 1" in str(info.value) and "checksum" in str(info.value)
    )
    conv = get_converter("rlds", str(path), preset="rt1", on_error="skip")
    out = list(conv.episodes())
    assert [e.extra["record_index"] for e in out] == [0, 2, 3]
    assert conv.stats.reconciles and conv.stats.num_bad == 1
    # without CRC checks the flipped byte lands in a JPEG or a float: either a decode error or garbage,
    # never a crash
    list(get_converter("rlds", str(path), preset="rt1", on_error="skip", verify_crc=False).episodes())


def test_missing_image_key_and_bad_jpeg(tmp_path: Path, episodes: list[FixtureEpisode]) -> None:
    good = rlds.encode_example({"steps/observation/image": [b"not a jpeg"] * 2,
                                "steps/action/world_vector": np.zeros(6, np.float32)})  # fmt: skip
    nokey = rlds.encode_example({"steps/action/world_vector": np.zeros(6, np.float32)})
    path = tmp_path / "odd.tfrecord"
    rlds.write_tfrecords(path, [good, nokey, b"\xff\xff\xff"])
    conv = get_converter("rlds", str(path), on_error="skip", action_fields=["world_vector"])
    assert list(conv.episodes()) == []
    reasons = [b.reason for b in conv.stats.bad]
    assert "step 0: image does not decode" in reasons[0]
    assert "no encoded images under 'steps/observation/image'" in reasons[1]
    assert "not a tf.train.Example" in reasons[2]
    assert conv.stats.records == 3 and conv.stats.reconciles


def test_convert_to_shards(tmp_path: Path, episodes: list[FixtureEpisode]) -> None:
    path = write_rlds_tfrecords(tmp_path / "in.tfrecord", episodes)
    result = convert(
        "rlds", str(path), str(tmp_path / "out"), None, preset="rt1", frame_skip=2, action_reduce="sum"
    )
    assert result.written == 4 and result.stats.frames_in == sum(e.frames.shape[0] for e in episodes)


def test_fast_jpeg_matches_full_decode(tmp_path: Path) -> None:
    eps = fixture_episodes(1, length=3, height=128, width=160, action_dim=7)
    path = write_rlds_tfrecords(tmp_path / "big.tfrecord", eps)
    fast = next(iter(get_converter("rlds", str(path), preset="rt1", height=24, width=24).episodes()))
    full = next(
        iter(get_converter("rlds", str(path), preset="rt1", height=24, width=24, fast_jpeg=False).episodes())
    )
    assert fast.frames.shape == full.frames.shape == (3, 24, 24, 3)
    assert _mae(fast.frames, full.frames) < 2.0
