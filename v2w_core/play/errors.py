"""The two ways play fails: before serving (:class:`PlayError`, one line to the user) and per message
(:class:`BadMessage`: the browser sent something wrong; the request is rejected, the session lives on)."""

from __future__ import annotations


class PlayError(Exception):
    """A setup problem (unknown model URI, a model without actions, …): reported in one line, no traceback."""


class BadMessage(ValueError):
    """A malformed or out-of-range message from a browser: HTTP 400 with this text; nothing changes."""


class SessionGone(KeyError):
    """The session id is unknown: never created, expired after its idle timeout, or closed (HTTP 404)."""

    def __str__(self) -> str:  # KeyError quotes its argument; this one is a sentence
        return str(self.args[0]) if self.args else "unknown session"


class TooManySessions(RuntimeError):
    """Every session slot is taken by a live session (HTTP 503); idle ones are evicted first."""
