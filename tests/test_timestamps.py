"""Event times: the accepted forms, and a clear refusal at the edges of the calendar."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lightmem_mcp.timestamps import EARLIEST, END, from_epoch, parse_timestamp, to_epoch


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-20T14:30:00Z", datetime(2024, 5, 20, 14, 30, tzinfo=UTC)),
        ("2024-05-20T16:30:00+02:00", datetime(2024, 5, 20, 14, 30, tzinfo=UTC)),
        ("2024-05-20", datetime(2024, 5, 20, tzinfo=UTC)),
        ("2023/05/20 (Sat) 00:44", datetime(2023, 5, 20, 0, 44, tzinfo=UTC)),
        ("0001-01-02T00:00:00Z", EARLIEST),
        ("9999-12-29T23:59:59.999999Z", END - timedelta(microseconds=1)),
    ],
)
def test_accepted_times_are_aware_utc(text: str, expected: datetime) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "0001-01-01T00:00:00+14:00",  # year 0 once in UTC: an OverflowError in datetime
        "9999-12-31T23:59:59-01:00",
        "0001-01-01T00:00:00Z",
        "9999-12-30",
        "0001/01/01 (Mon) 00:00",
    ],
)
def test_times_at_the_edges_of_the_calendar_are_out_of_range(text: str) -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_timestamp(text)


@pytest.mark.parametrize("edge", [EARLIEST, END - timedelta(microseconds=1)])
def test_accepted_edges_survive_the_epoch_round_trip_and_a_day_window(edge: datetime) -> None:
    back = from_epoch(to_epoch(edge))
    day = datetime(back.year, back.month, back.day, tzinfo=UTC)

    assert abs(back - edge) < timedelta(milliseconds=1)
    assert to_epoch(day + timedelta(days=1)) > to_epoch(day)
