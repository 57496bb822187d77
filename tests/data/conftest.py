"""Data-only fixtures (helpers live in ``data_helpers.py``)."""

from __future__ import annotations

import pytest

from v2w_core.data.episode import Episode
from v2w_core.data.sources import get_source


@pytest.fixture
def shapes_episodes() -> list[Episode]:
    """Eight short bouncing-shapes episodes (deterministic)."""
    src = get_source("bouncing-shapes", episode_length=12)
    return list(src.episodes(8, seed=3))
