"""Shared converter machinery: frame-skip action folding, ids, options, laziness, registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from v2w_core.config import ConfigError
from v2w_core.data.converters import UnknownConverterError, available_converters, get_converter
from v2w_core.data.converters._common import ConvertOptions, reduce_actions, safe_id
from v2w_core.data.converters.testing import fixture_episodes, write_lerobot_v3
from v2w_core.data.episode import ActionSpace


def test_reduce_actions() -> None:
    cont = ActionSpace(type="continuous", dim=1)
    a = np.arange(7, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(reduce_actions(a, 3, "first", cont)[:, 0], [0, 3, 6])
    np.testing.assert_array_equal(reduce_actions(a, 3, "sum", cont)[:, 0], [3, 12, 6])
    np.testing.assert_array_equal(reduce_actions(a, 3, "mean", cont)[:, 0], [1, 4, 6])
    hot = ActionSpace(type="multi_hot", dim=2)
    m = np.array([[0, 0], [1, 0], [0, 0], [0, 1]], dtype=np.float32)
    np.testing.assert_array_equal(reduce_actions(m, 2, "any", hot), [[1, 0], [0, 1]])
    ids = ActionSpace(type="discrete", dim=4)
    np.testing.assert_array_equal(reduce_actions(np.arange(4), 2, "first", ids), [0, 2])
    with pytest.raises(ValueError, match="discrete"):
        reduce_actions(np.arange(4), 2, "sum", ids)
    with pytest.raises(ValueError, match="multi-hot"):
        reduce_actions(a, 2, "any", cont)
    assert reduce_actions(a, 1, "sum", cont) is a


def test_safe_id_and_options() -> None:
    assert safe_id("rlds-fractal.tfrecord-00001", "r000003") == "rlds-fractal_tfrecord-00001-r000003"
    assert safe_id("a/b c", "") == "a_b_c"
    with pytest.raises(ConfigError, match="height"):
        ConvertOptions.from_dict({"height": 64, "width": None})
    with pytest.raises(ConfigError, match="on_error"):
        ConvertOptions.from_dict({"on_error": "ignore"})


def test_registry() -> None:
    assert {"lerobot", "rlds", "csgo"} <= set(available_converters())
    with pytest.raises(UnknownConverterError, match="available: csgo, lerobot, rlds"):
        get_converter("nope", "/tmp")


def test_streaming_is_lazy(tmp_path: Path) -> None:
    """Episodes are produced one at a time: taking the first converts only the first."""
    root = write_lerobot_v3(tmp_path / "ds", fixture_episodes(4, length=6), episodes_per_file=2)
    conv = get_converter("lerobot", str(root))
    gen = conv.episodes()
    first = next(gen)
    assert first.extra["episode_index"] == 0
    assert conv.stats.records == 1 and conv.stats.converted == 1
    gen.close()  # releases the open video/parquet file
    assert conv._video.path is None
