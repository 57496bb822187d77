"""The action space → keys and buttons, and what the browser may send back (no server needed)."""

from __future__ import annotations

import numpy as np
import pytest

from v2w_core.models.actions import ActionSpec
from v2w_core.play.controls import build_controls, parse_action
from v2w_core.play.errors import BadMessage, PlayError


def test_multi_hot_buttons_follow_their_names() -> None:
    c = build_controls(ActionSpec(type="multi_hot", dim=3), ["MOVE_LEFT", "MOVE_RIGHT", "ATTACK"])
    assert [(x.label, x.key, x.dim) for x in c.controls] == [
        ("MOVE_LEFT", "ArrowLeft", 0), ("MOVE_RIGHT", "ArrowRight", 1), ("ATTACK", " ", 2)]  # fmt: skip
    assert c.neutral == [0.0, 0.0, 0.0]
    assert parse_action(c, [1, 0, 1]).tolist() == [1.0, 0.0, 1.0]
    assert parse_action(c, [1, 0, 1]).dtype == np.float32


def test_discrete_class_zero_is_nothing_pressed_and_keys_are_unique() -> None:
    c = build_controls(ActionSpec(type="discrete", dim=12))  # no names: generic labels, spare keys
    assert c.neutral == 0 and [x.dim for x in c.controls] == list(range(1, 12))
    assert len({x.key for x in c.controls}) == 11
    assert parse_action(c, 11).dtype == np.int64


def test_continuous_axes_use_the_bounds() -> None:
    c = build_controls(ActionSpec(type="continuous", dim=2), ["x", "grip"], low=[-1, 0], high=[1, 2])
    assert [(x.key, x.value) for x in c.controls] == [
        ("ArrowLeft", -1.0), ("ArrowRight", 1.0), ("ArrowDown", 0.0), ("ArrowUp", 2.0)]  # fmt: skip
    assert c.neutral == [0.0, 1.0]
    assert parse_action(c, [0.5, 2]).tolist() == [0.5, 2.0]


def test_no_action_metadata_is_a_clear_error() -> None:
    with pytest.raises(PlayError, match="no action metadata"):
        build_controls(None)


@pytest.mark.parametrize(("space", "raw", "match"), [
    (("discrete", 4), 4, "out of range"),
    (("discrete", 4), -1, "out of range"),
    (("discrete", 4), 1.5, "integer class id"),
    (("discrete", 4), True, "integer class id"),
    (("discrete", 4), "1", "integer class id"),
    (("multi_hot", 3), [1, 0], "list of 3"),
    (("multi_hot", 3), [2, 0, 0], "0 or 1"),
    (("multi_hot", 3), {"a": 1}, "list of 3"),
    (("multi_hot", 3), [None, 0, 0], "numbers only"),
    (("continuous", 2), [0.0, 1.5], "outside"),
    (("continuous", 2), [0.0, float("nan")], "finite"),
    (("continuous", 2), None, "list of 2"),
])  # fmt: skip
def test_bad_actions_are_rejected(space: tuple[str, int], raw: object, match: str) -> None:
    c = build_controls(ActionSpec(type=space[0], dim=space[1]))  # type: ignore[arg-type]
    with pytest.raises(BadMessage, match=match):
        parse_action(c, raw)
