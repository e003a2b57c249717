"""Durations as operators write them: ``90s``, ``5m``, ``2h30m``, ``1d``, or plain seconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``text``; raises ValueError with a message fit for an operator."""
    if isinstance(text, bool):
        raise ValueError("expected a duration such as 90s, 5m or 2h30m")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError("must not be negative")
        return float(text)
    value = text.strip().lower()
    if not value:
        raise ValueError("expected a duration such as 90s, 5m or 2h30m, got an empty value")
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if seconds < 0:
            raise ValueError("must not be negative")
        return seconds
    pos = 0
    total = 0.0
    for match in _PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(value) or pos == 0:
        raise ValueError(f"{text!r} is not a duration such as 90s, 5m or 2h30m")
    return total
