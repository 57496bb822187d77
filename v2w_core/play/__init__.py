"""Play a world model in the browser: keyboard → next frame, served with Ray Serve (issue 20).

``v2w-play --model models:/<name>@champion`` (or ``python -m v2w_core.play``) resolves the model URI,
checks it before anything starts, then runs one Ray Serve deployment that loads the model once and keeps
one streaming rollout per browser session. The page it serves is static HTML/JS (no build step).

One job per module:

* :mod:`.source`   — a model URI → a local model directory, its sampler settings and its held-out split;
* :mod:`.controls` — the model's action space → keys and buttons, and the check of a browser's action;
* :mod:`.episodes` — the context picker: held-out episodes of the model's eval split;
* :mod:`.session`  — one browser's streaming rollout state, advanced one frame per request;
* :mod:`.sessions` — the bounded, isolated set of sessions (max count, idle timeout);
* :mod:`.messages` — what a browser may send, validated;
* :mod:`.engine`   — all of the above behind the few calls the HTTP routes make (no Ray needed);
* :mod:`.app`      — the Ray Serve deployment and its HTTP routes;
* :mod:`.server`   — start / stop Ray and the Serve application on loopback;
* :mod:`.cli`      — the command line.
"""

from __future__ import annotations

from v2w_core.play.errors import BadMessage, PlayError

__all__ = ["BadMessage", "PlayError"]
