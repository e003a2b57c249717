"""The operator listing's parameters (GET /sessions): states, page cursors, times."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, Field

from ..model import SessionState
from .schemas import SessionBody

# GET /sessions?state=...: one state, or "live" (every one but ended); "suspended"
# includes those being suspended.
LIST_STATES: dict[str, tuple[SessionState, ...]] = {
    "live": (
        SessionState.PROVISIONING,
        SessionState.READY,
        SessionState.SUSPENDING,
        SessionState.SUSPENDED,
    ),
    "provisioning": (SessionState.PROVISIONING,),
    "ready": (SessionState.READY,),
    "suspended": (SessionState.SUSPENDING, SessionState.SUSPENDED),
    "ended": (SessionState.ENDED,),
}
LIST_LIMIT_MAX = 500


def _date_time_text(value: object) -> object:
    # RFC 3339 text only, as the schema's format says: pydantic would also take a
    # number of seconds ("0.5"), which no date-time is.
    if isinstance(value, str) and not re.match(r"^\d{4}-\d{2}-\d{2}[Tt ]", value):
        raise ValueError("must be an RFC 3339 date-time, e.g. 2026-01-31T12:00:00Z")
    return value


DateTime = Annotated[datetime, BeforeValidator(_date_time_text)]
# A page cursor: the created_at (exact, as Python writes the float) and the id (hex of
# its UTF-8) of the last session shown. Any string of this shape is a position, so the
# pattern is the whole truth about what the API accepts.
CURSOR_PATTERN = r"^[0-9]{1,16}\.[0-9]{1,17}~([0-9a-f]{2}){1,64}$"


def encode_cursor(after: tuple[float, str]) -> str:
    at, sid = after
    return f"{at!r}~{sid.encode().hex()}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    """A cursor the pattern admitted, back into its (created_at, id)."""
    at, _, sid = cursor.partition("~")
    return float(at), bytes.fromhex(sid).decode(errors="replace")


class SessionList(BaseModel):
    sessions: list[SessionBody] = Field(
        description="newest first; without user_id (an operator's listing) no session "
        "carries connect (its token), nor any env, file or secret"
    )
    next_cursor: str | None = Field(
        None, description="pass as cursor for the next page; null on the last page"
    )
