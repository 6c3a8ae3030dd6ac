"""Event times: ISO 8601 and LightMem's `2023/05/20 (Sat) 00:44` in, aware UTC datetimes out."""

from __future__ import annotations

import re
from datetime import UTC, datetime

# LightMem / LongMemEval session dates: "2023/05/20 (Sat) 00:44", seconds optional.
_LIGHTMEM = re.compile(r"^\s*(\d{4})/(\d{1,2})/(\d{1,2})\s*(?:\([A-Za-z]{3}\))?\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*$")

ACCEPTED = "ISO 8601 (2024-05-20T14:30:00Z, 2024-05-20) or '2023/05/20 (Sat) 00:44'"


def parse_timestamp(value: str) -> datetime:
    """Parse a message timestamp; naive times are taken as UTC. Raises ValueError."""
    text = value.strip()
    match = _LIGHTMEM.match(text)
    if match:
        year, month, day, hour, minute, second = (int(g) if g else 0 for g in match.groups())
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    parsed = datetime.fromisoformat(text.replace("z", "Z"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def to_epoch(moment: datetime) -> float:
    """Seconds since the epoch, the form stored for range filters and ordering."""
    return moment.timestamp()


def from_epoch(seconds: float) -> datetime:
    """The aware UTC datetime for stored epoch seconds."""
    return datetime.fromtimestamp(seconds, tz=UTC)


def now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)
