"""Event times: ISO 8601 and LightMem's `2023/05/20 (Sat) 00:44` in, aware UTC datetimes out."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

# LightMem / LongMemEval session dates: "2023/05/20 (Sat) 00:44", seconds optional.
_LIGHTMEM = re.compile(r"^\s*(\d{4})/(\d{1,2})/(\d{1,2})\s*(?:\([A-Za-z]{3}\))?\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*$")

# A day's margin inside datetime's years 1-9999: summaries add a day to an event's date, and epoch
# seconds that far out round by tens of microseconds, so a time at either edge would fail later, far
# from its field. EARLIEST is the first time accepted, END the first one refused.
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
END = datetime(9999, 12, 30, tzinfo=UTC)

# Longest time text accepted: twice "2024-05-20T14:30:00.123456+05:30", room enough for any real one.
MAX_TIME_CHARS = 64

ACCEPTED = (
    "ISO 8601 (2024-05-20T14:30:00Z, 2024-05-20) or '2023/05/20 (Sat) 00:44', "
    f"from {EARLIEST.date().isoformat()} to {(END - timedelta(days=1)).date().isoformat()} UTC"
)


def parse_timestamp(value: str) -> datetime:
    """Parse a message timestamp; naive times are taken as UTC. Raises ValueError, also when out of range."""
    text = value.strip()
    match = _LIGHTMEM.match(text)
    try:
        if match:
            year, month, day, hour, minute, second = (int(g) if g else 0 for g in match.groups())
            parsed = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
        else:
            parsed = datetime.fromisoformat(text.replace("z", "Z"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            parsed = parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 is in year 0 once in UTC
        raise ValueError(f"{value!r} is out of range") from None
    if not EARLIEST <= parsed < END:
        raise ValueError(f"{value!r} is out of range")
    return parsed


def to_epoch(moment: datetime) -> float:
    """Seconds since the epoch, the form stored for range filters and ordering."""
    return moment.timestamp()


def from_epoch(seconds: float) -> datetime:
    """The aware UTC datetime for stored epoch seconds."""
    return datetime.fromtimestamp(seconds, tz=UTC)


def now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)
