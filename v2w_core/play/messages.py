"""What a browser may send, checked before anything touches a session.

Bodies are parsed here from raw bytes (not by FastAPI's model binding) so every problem — not JSON, not an
object, an unknown field, a wrong type, steps out of range — is one :class:`BadMessage` with a sentence the
page shows, and the session it was aimed at stays as it was. The action itself is checked against the
model's action space by :func:`v2w_core.play.controls.parse_action`.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from v2w_core.play.errors import BadMessage

#: Larger bodies are refused unread: the biggest legitimate one is a continuous action of a few numbers.
MAX_BODY_BYTES = 16 * 1024


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NewSession(_Message):
    """Start a session from a context (a held-out episode id, or ``blank``; default: the first listed)."""

    context: str | None = Field(None, max_length=200)
    seed: int | None = Field(None, ge=0, lt=2**63)


class Step(_Message):
    """Advance one frame under ``action`` with ``steps`` denoising steps (the page's quality slider)."""

    action: Any
    steps: int | None = Field(None, ge=1, le=1000)


class Reset(_Message):
    """Back to the start of the session's context (or another one), optionally with a new seed."""

    context: str | None = Field(None, max_length=200)
    seed: int | None = Field(None, ge=0, lt=2**63)


def parse(kind: type[_Message], body: bytes) -> Any:
    """``body`` as a ``kind`` message; an empty body is an empty object."""
    if len(body) > MAX_BODY_BYTES:
        raise BadMessage(f"message of {len(body)} bytes is larger than {MAX_BODY_BYTES}")
    try:
        raw = json.loads(body) if body.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadMessage(f"message is not JSON: {err}") from None
    if not isinstance(raw, dict):
        raise BadMessage(f"message must be a JSON object, got {type(raw).__name__}")
    if kind is Step and "action" not in raw:
        raise BadMessage("a step message needs an 'action'")
    try:
        return kind.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise BadMessage(f"{where}: {first['msg']}") from None
