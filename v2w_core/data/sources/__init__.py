"""Registry of episode sources (simulators, procedural generators) that ``v2w-ingest`` can record from.

A source is registered under a name with :func:`register_source` and built with :func:`get_source`.
Sources with heavy or optional dependencies (ViZDoom, ALE, MuJoCo) should register lazily with
:func:`register_lazy_source`, so that importing this package never imports a simulator and a missing
simulator only fails when that source is actually requested.

Contract of a source: ``episodes(num_episodes, seed=...)`` yields valid :class:`Episode` objects whose
frame ``t + 1`` is the result of ``actions[t]``; the same ``(seed, index)`` always gives the same
episode, independent of how many episodes are requested (use :func:`episode_seed`).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from v2w_core.data.episode import Episode

log = logging.getLogger(__name__)


@runtime_checkable
class EpisodeSource(Protocol):
    """What ``v2w-ingest`` needs from a source."""

    name: str

    def episodes(self, num_episodes: int, *, seed: int) -> Iterator[Episode]: ...


SourceFactory = Callable[..., EpisodeSource]
F = TypeVar("F", bound=SourceFactory)

_REGISTRY: dict[str, SourceFactory] = {}
#: name -> module that registers it on import (built-in and optional sources).
_LAZY: dict[str, str] = {
    "bouncing-shapes": "v2w_core.data.sources.bouncing_shapes",
    "atari": "v2w_core.data.sources.atari",
    "vizdoom": "v2w_core.data.sources.vizdoom",
    "fetch": "v2w_core.data.sources.fetch",
}


class UnknownSourceError(KeyError):
    """No source is registered under the requested name; the message lists the available ones."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


def register_source(name: str) -> Callable[[F], F]:
    """Class/function decorator: ``factory(**options)`` must return an :class:`EpisodeSource`."""

    def decorator(factory: F) -> F:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not factory:
            raise ValueError(f"source {name!r} is already registered by {existing!r}")
        _REGISTRY[name] = factory
        return factory

    return decorator


def register_lazy_source(name: str, module: str) -> None:
    """Declare that importing ``module`` registers source ``name`` (imported on first use)."""
    _LAZY[name] = module


def available_sources() -> list[str]:
    return sorted(set(_REGISTRY) | set(_LAZY))


def get_source(name: str, **options: Any) -> EpisodeSource:
    """Build the source registered as ``name`` with its options (unknown options are errors)."""
    if name not in _REGISTRY and name in _LAZY:
        importlib.import_module(_LAZY[name])
    factory = _REGISTRY.get(name)
    if factory is None:
        raise UnknownSourceError(f"unknown source {name!r}; available: {', '.join(available_sources())}")
    return factory(**options)


def episode_seed(seed: int, index: int) -> np.random.SeedSequence:
    """Seed of episode ``index`` of a run seeded with ``seed``: independent of the episode count, so
    asking for more episodes later reproduces the first ones exactly."""
    return np.random.SeedSequence([seed, index])


def make_episode_id(source: str, seed: int, index: int) -> str:
    """Conventional episode id of a generated episode (letters, digits, '-' and '_' only)."""
    return f"{source}-s{seed}-e{index:06d}".replace(".", "_")


__all__ = [
    "EpisodeSource",
    "SourceFactory",
    "UnknownSourceError",
    "available_sources",
    "episode_seed",
    "get_source",
    "make_episode_id",
    "register_lazy_source",
    "register_source",
]
