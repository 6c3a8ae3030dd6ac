"""Stats as pictures: the geometry of small SVG bar charts, drawn by the templates.

No chart library and no script: the server works out every bar's place and size, the page draws
them as SVG shapes coloured by CSS class, each with a title (a tooltip and a screen reader's text),
and a table below each chart holds the same figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_WIDTH = 640
_HEIGHT = 180
_AXIS = 28  # room for the labels under the bars
_GAP = 0.25  # share of a column left empty between bars


@dataclass(frozen=True)
class Segment:
    """One part of a stacked bar."""

    series: str
    value: int
    y: float
    height: float


@dataclass(frozen=True)
class Column:
    """One stacked bar and its label."""

    label: str
    x: float
    width: float
    total: int
    segments: list[Segment]
    show_label: bool


@dataclass(frozen=True)
class StackedBars:
    """Bars over time, each split by series (e.g. records by kind per week)."""

    width: int
    height: int
    plot_height: int
    top: int
    series: list[str]
    columns: list[Column]


def stacked_bars(labels: Sequence[str], counts: Sequence[Mapping[str, int]], series: Sequence[str]) -> StackedBars:
    """Columns for `labels`, each stacking `counts[i][s]` for every series `s`, scaled to the tallest."""
    plot = _HEIGHT - _AXIS
    top = max([sum(c.get(s, 0) for s in series) for c in counts] + [1])
    slot = _WIDTH / max(len(labels), 1)
    every = max(1, round(len(labels) / 8))  # at most about 8 labels under the axis
    columns: list[Column] = []
    for i, (label, count) in enumerate(zip(labels, counts, strict=True)):
        y = float(plot)
        segments: list[Segment] = []
        for name in series:
            value = count.get(name, 0)
            height = plot * value / top
            y -= height
            if value:
                segments.append(Segment(name, value, round(y, 2), round(height, 2)))
        columns.append(
            Column(
                label,
                round(i * slot + slot * _GAP / 2, 2),
                round(slot * (1 - _GAP), 2),
                sum(count.get(s, 0) for s in series),
                segments,
                show_label=(len(labels) - 1 - i) % every == 0,
            )
        )
    return StackedBars(_WIDTH, _HEIGHT, plot, top, list(series), columns)


@dataclass(frozen=True)
class Bar:
    """One horizontal bar: a figure against the largest of its chart."""

    label: str
    value: float
    text: str  # the value as shown
    share: float  # 0..100, of the largest value
    series: str  # CSS class


def bars(rows: Sequence[tuple[str, float, str, str]]) -> list[Bar]:
    """Horizontal bars for (label, value, shown text, series) rows, scaled to the largest value."""
    largest = max([value for _, value, _, _ in rows] + [0.0])
    return [
        Bar(label, value, text, round(100 * value / largest, 2) if largest else 0.0, series)
        for label, value, text, series in rows
    ]
