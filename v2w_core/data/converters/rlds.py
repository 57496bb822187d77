"""``rlds``: RLDS / Open X-Embodiment TFRecords -> episodes, without TensorFlow.

Format. TFDS writes RLDS data sets (RT-1 ``fractal20220817_data``, Bridge, ...) as TFRecord files of
serialized ``tf.train.Example`` protos, one per *episode*, with the step sequence flattened: a step
feature ``steps/observation/image`` is a ``BytesList`` of T encoded images (JPEG/PNG),
``steps/action/world_vector`` a ``FloatList`` of T*3 floats, ``steps/is_first`` an ``Int64List`` of T
flags, and episode-level features live under ``episode_metadata/...``. Some exporters write
``tf.train.SequenceExample`` instead (per-step features in ``feature_lists``); both are read.

TFRecord framing, per record: ``uint64 length | uint32 masked_crc32c(length) | data | uint32
masked_crc32c(data)`` (little endian; mask = rotate right by 15 then add 0xa282ead8). A record whose
data CRC does not match is bad but the framing is intact, so reading continues with the next record;
a bad length CRC or a truncated record loses the framing, so the rest of that file is one bad record.

Why a hand-written wire-format parser instead of the ``protobuf`` package with a hand-written
descriptor: the three messages involved (Example/SequenceExample -> Features -> Feature ->
Bytes/Float/Int64List) use four wire types and no optional semantics; a ~100-line parser has no
dependency and no generated-code/runtime version coupling (protobuf's major versions have broken
dynamically built descriptors before), it turns packed float lists into numpy arrays with one
``frombuffer`` (no per-float Python objects), and the same code writes the test fixtures. CRC32C uses
``google-crc32c``'s C implementation when installed and a table-driven pure-Python fallback otherwise.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import Field

from v2w_core.data.converters import register_converter
from v2w_core.data.converters._common import BadRecordError, Converter, ConvertOptions, safe_id
from v2w_core.data.episode import ActionSpace, Episode

log = logging.getLogger(__name__)

NAME = "rlds"

# ====================================================================================== CRC32C
try:  # C implementation when available (~GB/s); the fallback is ~10 MB/s.
    import google_crc32c

    def crc32c(data: bytes | memoryview) -> int:
        return int(google_crc32c.value(bytes(data)))

except ImportError:  # pragma: no cover - depends on the environment
    _TABLE = []
    for _i in range(256):
        _c = _i
        for _ in range(8):
            _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
        _TABLE.append(_c)

    def crc32c(data: bytes | memoryview) -> int:
        crc = 0xFFFFFFFF
        table = _TABLE
        for byte in bytes(data):
            crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
        return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes | memoryview) -> int:
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# ==================================================================================== TFRecord
class TFRecordError(ValueError):
    """A record's framing or checksum is wrong; ``fatal`` when the rest of the file can't be read."""

    def __init__(self, reason: str, *, fatal: bool) -> None:
        super().__init__(reason)
        self.fatal = fatal


def iter_tfrecords(
    path: str | Path, *, verify: bool = True
) -> Iterator[tuple[int, int, bytes | TFRecordError]]:
    """``(index, byte offset, data or error)`` for every record of one file, streaming."""
    with open(path, "rb") as f:
        index = 0
        while True:
            offset = f.tell()
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                yield (
                    index,
                    offset,
                    TFRecordError(f"truncated header ({len(header)} of 12 bytes)", fatal=True),
                )
                return
            (length,) = struct.unpack("<Q", header[:8])
            (length_crc,) = struct.unpack("<I", header[8:])
            if verify and masked_crc32c(header[:8]) != length_crc:
                yield index, offset, TFRecordError("length checksum mismatch (framing lost)", fatal=True)
                return
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                yield (
                    index,
                    offset,
                    TFRecordError(f"truncated record ({len(data)} of {length} bytes)", fatal=True),
                )
                return
            if verify and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                yield index, offset, TFRecordError("data checksum mismatch", fatal=False)
            else:
                yield index, offset, data
            index += 1


def write_tfrecords(path: str | Path, records: Iterable[bytes]) -> int:
    """Write records with TFRecord framing; returns how many were written."""
    n = 0
    with open(path, "wb") as f:
        for data in records:
            length = struct.pack("<Q", len(data))
            f.write(length + struct.pack("<I", masked_crc32c(length)))
            f.write(data + struct.pack("<I", masked_crc32c(data)))
            n += 1
    return n


# ================================================================================ wire format
#: A parsed Feature: a list of bytes (BytesList), float32 array (FloatList) or int64 array (Int64List).
FeatureValue = list[bytes] | np.ndarray


class ProtoError(ValueError):
    """The bytes are not a well-formed Example/SequenceExample."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtoError("varint too long")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """``(field number, wire type, value)``; value is int (varint), memoryview (bytes) or bytes (fixed)."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise ProtoError(f"field {field}: length {n} runs past the end")
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = bytes(buf[pos : pos + 4]), pos + 4
        elif wire == 1:
            value, pos = bytes(buf[pos : pos + 8]), pos + 8
        else:
            raise ProtoError(f"field {field}: unsupported wire type {wire}")
        if pos > end:
            raise ProtoError("truncated message")
        yield field, wire, value


def _parse_feature(buf: memoryview) -> FeatureValue:
    kind, out = None, None
    for field, wire, value in _fields(buf):
        if field == 1 and wire == 2:  # BytesList
            kind, out = "bytes", [bytes(v) for f, w, v in _fields(value) if f == 1 and w == 2]
        elif field == 2 and wire == 2:  # FloatList: packed (wire 2) or not (wire 5)
            parts = []
            for f, w, v in _fields(value):
                if f == 1 and w == 2:
                    if len(v) % 4:
                        raise ProtoError("packed float list length is not a multiple of 4")
                    parts.append(np.frombuffer(v, dtype="<f4"))
                elif f == 1 and w == 5:
                    parts.append(np.frombuffer(v, dtype="<f4"))
            kind, out = (
                "float",
                (np.concatenate(parts) if parts else np.zeros(0, np.float32)).astype(np.float32),
            )
        elif field == 3 and wire == 2:  # Int64List: packed varints (wire 2) or not (wire 0)
            ints: list[int] = []
            for f, w, v in _fields(value):
                if f == 1 and w == 2:
                    pos = 0
                    while pos < len(v):
                        x, pos = _varint(v, pos)
                        ints.append(x)
                elif f == 1 and w == 0:
                    ints.append(v)
            arr = np.array([x - (1 << 64) if x >= 1 << 63 else x for x in ints], dtype=np.int64)
            kind, out = "int64", arr
    if kind is None:
        return []  # an empty Feature (no kind set)
    assert out is not None
    return out


def _parse_features(buf: memoryview) -> dict[str, FeatureValue]:
    """``Features { map<string, Feature> feature = 1; }``."""
    out: dict[str, FeatureValue] = {}
    for field, wire, entry in _fields(buf):
        if field != 1 or wire != 2:
            continue
        key, value = "", memoryview(b"")
        for f, w, v in _fields(entry):
            if f == 1 and w == 2:
                key = bytes(v).decode("utf-8")
            elif f == 2 and w == 2:
                value = v
        out[key] = _parse_feature(value)
    return out


def parse_example(data: bytes) -> dict[str, FeatureValue]:
    """A serialized Example -- or SequenceExample, flattened -- as ``{key: value}``.

    SequenceExample ``feature_lists`` are concatenated over steps, which is exactly TFDS's flattened
    layout, so the converter sees one shape either way.
    """
    buf = memoryview(data)
    features: dict[str, FeatureValue] = {}
    for field, wire, value in _fields(buf):
        if field == 1 and wire == 2:  # Example.features / SequenceExample.context
            features.update(_parse_features(value))
        elif field == 2 and wire == 2:  # SequenceExample.feature_lists
            for f, w, entry in _fields(value):
                if f != 1 or w != 2:
                    continue
                key, steps = "", []
                for f2, w2, v2 in _fields(entry):
                    if f2 == 1 and w2 == 2:
                        key = bytes(v2).decode("utf-8")
                    elif f2 == 2 and w2 == 2:  # FeatureList { repeated Feature feature = 1; }
                        steps = [_parse_feature(v3) for f3, w3, v3 in _fields(v2) if f3 == 1 and w3 == 2]
                features[key] = _concat(steps)
    return features


def _concat(steps: list[FeatureValue]) -> FeatureValue:
    if not steps:
        return []
    if isinstance(steps[0], list):
        return [b for s in steps for b in s]  # type: ignore[union-attr]
    return np.concatenate([np.asarray(s) for s in steps])


# ---- encoding (fixtures, and users who want to write RLDS-like files)
def _key(field: int, wire: int) -> bytes:
    return _enc_varint((field << 3) | wire)


def _enc_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _enc_varint(len(payload)) + payload


def encode_feature(value: FeatureValue | Iterable[Any]) -> bytes:
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return _ld(2, _ld(1, value.astype("<f4").tobytes()))
    if isinstance(value, np.ndarray) and value.dtype.kind in "iub":
        return _ld(3, _ld(1, b"".join(_enc_varint(int(x)) for x in value.reshape(-1))))
    items = list(value)
    if all(isinstance(x, (bytes, bytearray)) for x in items):
        return _ld(1, b"".join(_ld(1, bytes(x)) for x in items))
    raise TypeError("feature values must be a float/int numpy array or a list of bytes")


def _encode_features(features: dict[str, Any]) -> bytes:
    return b"".join(_ld(1, _ld(1, k.encode()) + _ld(2, encode_feature(v))) for k, v in features.items())


def encode_example(features: dict[str, Any]) -> bytes:
    """Serialize ``{key: float array | int array | list[bytes]}`` as a ``tf.train.Example``."""
    return _ld(1, _encode_features(features))


def encode_sequence_example(context: dict[str, Any], feature_lists: dict[str, list[Any]]) -> bytes:
    """Serialize a ``tf.train.SequenceExample`` (``feature_lists``: key -> one value per step)."""
    lists = b"".join(
        _ld(1, _ld(1, k.encode()) + _ld(2, b"".join(_ld(1, encode_feature(s)) for s in steps)))
        for k, steps in feature_lists.items()
    )
    return _ld(1, _encode_features(context)) + _ld(2, lists)


# ================================================================================== converter
#: Known data-set layouts: image key, action fields (in order), recording rate.
PRESETS: dict[str, dict[str, Any]] = {
    # RT-1 (Open X-Embodiment "fractal20220817_data"): 3 Hz; the paper's 7-dim arm action.
    "rt1": {
        "image_key": "steps/observation/image",
        "action_fields": ["world_vector", "rotation_delta", "gripper_closedness_action"],
        "fps": 3.0,
    },
    # Bridge (OXE "bridge"): 5 Hz, 7-dim action world_vector + rotation_delta + open_gripper.
    "bridge": {
        "image_key": "steps/observation/image",
        "action_fields": ["world_vector", "rotation_delta", "open_gripper"],
        "fps": 5.0,
    },
}


class RldsOptions(ConvertOptions):
    preset: Literal["rt1", "bridge"] | None = None
    #: Flattened key of the encoded camera frames.
    image_key: str | None = None
    #: Action fields concatenated in this order; names relative to ``steps/action/`` or full keys.
    #: Default: ``steps/action`` if it exists, else every numeric ``steps/action/*`` key, sorted.
    action_fields: list[str] | None = None
    fps: float | None = Field(default=None, gt=0)
    verify_crc: bool = True
    #: Decode JPEGs at reduced scale when the output is small (see ``_convert``); off = full decode.
    fast_jpeg: bool = True
    #: Glob of TFRecord files when ``input`` is a directory (searched recursively).
    pattern: str = "*.tfrecord*"


@dataclass
class _Layout:
    fields: list[tuple[str, int, int]]  # (key, start, stop) in the concatenated action


@register_converter(NAME)
class RldsConverter(Converter):
    """See the module docstring; options in :class:`RldsOptions`."""

    name = NAME

    def __init__(self, input: str, **options: Any) -> None:
        opts = RldsOptions.from_dict(dict(options), source=f"converter {NAME!r} options")
        super().__init__(input, opts)
        self.options: RldsOptions = opts
        preset = PRESETS.get(opts.preset or "", {})
        self.image_key: str = opts.image_key or preset.get("image_key", "steps/observation/image")
        self.action_fields: list[str] | None = opts.action_fields or preset.get("action_fields")
        self.fps: float = opts.fps or preset.get("fps", 10.0)
        path = Path(input)
        if path.is_dir():
            self.files = sorted(p for p in path.rglob(opts.pattern) if p.is_file())
        elif path.is_file():
            self.files = [path]
        else:
            raise FileNotFoundError(f"{input} is neither a TFRecord file nor a directory")
        if not self.files:
            raise FileNotFoundError(f"no files matching {opts.pattern!r} under {input}")
        self.base = path if path.is_dir() else path.parent

    def _records(self) -> Generator[tuple[tuple[str, str], Any], None, None]:
        for path in self.files:
            rel = str(path.relative_to(self.base))
            for index, offset, data in iter_tfrecords(path, verify=self.options.verify_crc):
                record = f"record {index} (byte offset {offset})"
                if isinstance(data, TFRecordError):
                    reason = str(data) + ("; rest of the file unreadable" if data.fatal else "")
                    yield (rel, record), partial(_raise, rel, record, reason)
                    continue
                yield (rel, record), partial(self._convert, rel, record, index, data)

    def _action_keys(self, features: dict[str, FeatureValue]) -> list[str]:
        if self.action_fields is not None:
            return [f if f.startswith("steps/") else f"steps/action/{f}" for f in self.action_fields]
        if "steps/action" in features:
            return ["steps/action"]
        return sorted(
            k for k, v in features.items() if k.startswith("steps/action/") and isinstance(v, np.ndarray)
        )

    def _convert(self, file: str, record: str, index: int, data: bytes) -> Episode:
        try:
            features = parse_example(data)
        except (ProtoError, UnicodeDecodeError) as err:
            raise BadRecordError(file, record, f"not a tf.train.Example: {err}") from None
        images = features.get(self.image_key)
        if not isinstance(images, list) or not images:
            have = ", ".join(sorted(k for k, v in features.items() if isinstance(v, list))) or "none"
            raise BadRecordError(
                file, record, f"no encoded images under {self.image_key!r} (bytes features: {have})"
            )
        n = len(images)
        is_first = features.get("steps/is_first")
        if isinstance(is_first, np.ndarray) and is_first.size != n:
            raise BadRecordError(file, record, f"{n} images but {is_first.size} steps/is_first flags")
        # --- actions
        keys = self._action_keys(features)
        if not keys:
            raise BadRecordError(file, record, "no action fields (set action_fields)")
        parts, layout, start = [], [], 0
        for key in keys:
            value = features.get(key)
            if not isinstance(value, np.ndarray):
                raise BadRecordError(file, record, f"action field {key!r} missing or not numeric")
            if value.size % n:
                raise BadRecordError(
                    file, record, f"action field {key!r} has {value.size} values for {n} steps"
                )
            part = value.reshape(n, -1).astype(np.float32)
            parts.append(part)
            layout.append((key, start, start + part.shape[1]))
            start += part.shape[1]
        actions = np.concatenate(parts, axis=1)
        # --- frames
        decoded = []
        opts = self.options
        # JPEG can decode at 1/2, 1/4 or 1/8 scale inside the IDCT ("draft" mode): several times faster
        # when the output is much smaller than the camera image. Keep >= 2x the output size so the
        # final resize still low-pass filters.
        draft = (2 * opts.width, 2 * opts.height) if opts.width and opts.height and opts.fast_jpeg else None
        for t, blob in enumerate(images):
            try:
                with Image.open(io.BytesIO(blob)) as im:
                    if draft is not None and im.format == "JPEG":
                        im.draft("RGB", draft)
                    decoded.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            except (UnidentifiedImageError, OSError, ValueError) as err:
                raise BadRecordError(file, record, f"step {t}: image does not decode: {err}") from None
        shapes = {d.shape for d in decoded}
        if len(shapes) != 1:
            raise BadRecordError(file, record, f"images of different sizes {sorted(shapes)}")
        frames = np.stack(decoded)
        reward = features.get("steps/reward")
        reward = reward.astype(np.float32) if isinstance(reward, np.ndarray) and reward.size == n else None
        terminal = features.get("steps/is_terminal")
        done = terminal.astype(bool) if isinstance(terminal, np.ndarray) and terminal.size == n else None
        names = tuple(f"{k.removeprefix('steps/action/')}[{i}]" if stop - s > 1 else k.removeprefix("steps/action/")
                      for k, s, stop in layout for i in range(stop - s))  # fmt: skip
        meta = {k.removeprefix("episode_metadata/"): _small(v) for k, v in features.items()
                if k.startswith("episode_metadata/")}  # fmt: skip
        return self.finish(
            file=file,
            record=record,
            episode_id=safe_id(self.options.id_prefix or f"{NAME}-{Path(file).name}", f"r{index:06d}"),
            frames=frames,
            actions=actions,
            action_space=ActionSpace(type="continuous", dim=actions.shape[1], names=names),
            domain="robot",
            fps=self.fps,
            reward=reward,
            done=done,
            extra={
                "record_index": index,
                "image_key": self.image_key,
                "action_layout": [{"key": k, "start": s, "stop": e} for k, s, e in layout],
                "episode_metadata": {k: v for k, v in meta.items() if v is not None},
            },
        )


def _small(value: FeatureValue) -> Any:
    """Episode metadata worth keeping in JSON: short strings and short numeric lists."""
    if isinstance(value, list):
        if len(value) == 1 and len(value[0]) <= 1024:
            try:
                return value[0].decode("utf-8")
            except UnicodeDecodeError:
                return None
        return None
    if value.size <= 16:
        return value.tolist()
    return None


def _raise(file: str, record: str, reason: str) -> Episode:
    raise BadRecordError(file, record, reason)


__all__ = [
    "PRESETS",
    "RldsConverter",
    "RldsOptions",
    "crc32c",
    "encode_example",
    "encode_sequence_example",
    "iter_tfrecords",
    "masked_crc32c",
    "parse_example",
    "write_tfrecords",
]
