"""The set of live sessions: isolated (one :class:`PlaySession` each), bounded in count and idle time.

A browser tab that is closed never says goodbye, so sessions expire ``idle_timeout_s`` after their last
request (checked whenever the store is touched; no background thread). When ``max_sessions`` live ones
exist, a new one is refused (HTTP 503) rather than evicting someone who is still playing: each session
holds a rollout window and its recording, and the model serves them one step at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from v2w_core.play.errors import SessionGone, TooManySessions
from v2w_core.play.session import PlaySession


class SessionStore:
    def __init__(self, *, max_sessions: int = 8, idle_timeout_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        if max_sessions < 1 or idle_timeout_s <= 0:
            raise ValueError("max_sessions must be >= 1 and idle_timeout_s > 0")
        self.max_sessions = max_sessions
        self.idle_timeout_s = idle_timeout_s
        self._clock = clock
        self._sessions: dict[str, PlaySession] = {}
        self._lock = threading.Lock()
        self.expired = 0  # sessions dropped for idleness, since start

    def _sweep(self) -> None:
        now = self._clock()
        for sid in [s for s, sess in self._sessions.items() if now - sess.last_used > self.idle_timeout_s]:
            del self._sessions[sid]
            self.expired += 1

    def add(self, make: Callable[[], PlaySession]) -> PlaySession:
        """Create a session with ``make`` if a slot is free (after expiring idle ones)."""
        with self._lock:
            self._sweep()
            if len(self._sessions) >= self.max_sessions:
                raise TooManySessions(
                    f"all {self.max_sessions} play sessions are in use; try again when one has been idle for "
                    f"{self.idle_timeout_s:.0f} s, or start the server with a larger --max-sessions"
                )
            session = make()
            session.last_used = self._clock()
            self._sessions[session.id] = session
            return session

    def get(self, session_id: str) -> PlaySession:
        """The live session ``session_id`` (its idle clock restarts), else :class:`SessionGone`."""
        with self._lock:
            self._sweep()
            session = self._sessions.get(session_id)
            if session is None:
                raise SessionGone(f"no play session {session_id[:40]!r}: it expired or never existed; start a new one")
            session.last_used = self._clock()
            return session

    def drop(self, session_id: str) -> bool:
        with self._lock:
            return self._sessions.pop(session_id, None) is not None

    def __len__(self) -> int:
        with self._lock:
            self._sweep()
            return len(self._sessions)
