"""bench/action_signal.py: the translation it reads off two frames is the one applied to them."""

from __future__ import annotations

import numpy as np
import pytest

from bench.action_signal import translation


@pytest.mark.parametrize(("dx", "dy"), [(7, 0), (-6, 0), (3, -2), (0, 0)])
def test_phase_correlation_finds_the_shift(dx: int, dy: int) -> None:
    rng = np.random.default_rng(0)
    # a smooth random scene (what a rendered view looks like more than white noise does)
    scene = np.cumsum(np.cumsum(rng.normal(size=(64, 64)), 0), 1)
    moved = np.roll(scene, (dy, dx), axis=(0, 1))  # content moves right by dx, down by dy
    assert translation(scene, moved) == (dx, dy)
