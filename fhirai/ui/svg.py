"""Small server-side SVG charts for the console: no JavaScript, no CDN, nothing for the CSP to
forbid. Each chart is one <svg class="chart"> (the stylesheet sets its text), colours are
presentation attributes (not style attributes), every label is XML-escaped, and every bar or
point has a <title> that browsers show as a tooltip, so the numbers are readable without a legend
lookup. The callers give finished numbers; nothing here touches the database."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr  # nosec B406  # escapes output; nothing here parses XML

from django.utils.safestring import SafeString, mark_safe

WIDTH = 760  # default size in SVG units; the chart scales to its container's width
HEIGHT = 200
LEFT, RIGHT, TOP, BOTTOM = 46, 10, 22, 34
PALETTE = ("#1f5fbf", "#1b7f3b", "#9a6700", "#b3261e", "#6b4fbb", "#5b6577")


@dataclass(frozen=True)
class Series:
    """One named row of values, one per label (None: no value, drawn as a gap)."""

    name: str
    values: Sequence[float | None]
    colour: str = ""


def _axis(peak: float, ticks: int = 4) -> tuple[float, float]:
    """(top, step): a round step (1, 2, 2.5 or 5 x 10^n) with at most `ticks` steps to the top."""
    if peak <= 0:
        return 1.0, 0.25
    rough = peak / ticks
    exponent = 10 ** math.floor(math.log10(rough))
    step = next(m * exponent for m in (1, 2, 2.5, 5, 10) if m * exponent >= rough)
    return step * math.ceil(peak / step), step


def _fmt(value: float) -> str:
    if value >= 1000 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _colours(series: Sequence[Series]) -> list[str]:
    return [s.colour or PALETTE[i % len(PALETTE)] for i, s in enumerate(series)]


def _frame(
    title: str,
    labels: Sequence[str],
    axis: tuple[float, float],
    unit: str,
    colours: list[str],
    names: list[str],
    size: tuple[int, int],
) -> tuple[list[str], float]:
    """The svg opening, y grid with tick values, x labels (thinned to fit) and a legend. Returns
    the parts and the width of one label's slot."""
    width, height = size
    top, step = axis
    plot_w = width - LEFT - RIGHT
    plot_h = height - TOP - BOTTOM
    slot = plot_w / max(1, len(labels))
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" role="img" width="100%" '
        f'viewBox="0 0 {width} {height}" preserveAspectRatio="xMinYMin meet">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(round(top / step) + 1):
        value = step * i
        y = TOP + plot_h - plot_h * value / top
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{width - RIGHT}" y2="{y:.1f}" stroke="#e3e7ee"/>')
        parts.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{escape(_fmt(value))}</text>')
    if unit:
        parts.append(f'<text x="4" y="{TOP - 8}">{escape(unit)}</text>')
    label_w = 7 * max((len(label) for label in labels), default=0) + 12  # about 7 units a character
    every = max(1, math.ceil(len(labels) * label_w / plot_w))
    for i, label in enumerate(labels):
        if i % every == 0:
            x = LEFT + slot * i + slot / 2
            parts.append(
                f'<text x="{x:.1f}" y="{height - BOTTOM + 14}" text-anchor="middle">{escape(label)}</text>'
            )
    x = LEFT
    for name, colour in zip(names, colours, strict=True):
        parts.append(f'<rect x="{x}" y="{height - 12}" width="10" height="10" fill={quoteattr(colour)}/>')
        parts.append(f'<text x="{x + 14}" y="{height - 3}">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    return parts, slot


def bar_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    stacked: bool = False,
    unit: str = "",
    size: tuple[int, int] = (WIDTH, HEIGHT),
) -> SafeString:
    """Bars per label: side by side (grouped) or stacked. A zero draws nothing; its tooltip is
    in the hour's other bars. Safe to put in a template as is."""
    colours = _colours(series)
    plot_h = size[1] - TOP - BOTTOM
    if stacked:
        peak = max((sum(s.values[i] or 0 for s in series) for i in range(len(labels))), default=0)
    else:
        peak = max((v or 0 for s in series for v in s.values), default=0)
    axis = _axis(float(peak))
    top = axis[0]
    parts, slot = _frame(title, labels, axis, unit, colours, [s.name for s in series], size)
    inner = slot * 0.8
    for i, label in enumerate(labels):
        x0 = LEFT + slot * i + (slot - inner) / 2
        base = 0.0
        for k, (s, colour) in enumerate(zip(series, colours, strict=True)):
            value = float(s.values[i] or 0)
            if value <= 0:
                continue
            h = plot_h * value / top
            if stacked:
                x, w, y = x0, inner, TOP + plot_h - plot_h * base / top - h
                base += value
            else:
                w = inner / len(series)
                x, y = x0 + w * k, TOP + plot_h - h
            tip = f"{label} {s.name}: {_fmt(value)}{(' ' + unit) if unit else ''}"
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w - 0.5, 0.5):.1f}" height="{h:.1f}" '
                f"fill={quoteattr(colour)}><title>{escape(tip)}</title></rect>"
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308  # nosec B308, B703  # every interpolated text is escaped above


def line_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    unit: str = "",
    size: tuple[int, int] = (WIDTH, HEIGHT),
) -> SafeString:
    """Lines with a dot per value; None breaks the line (an hour with nothing to measure)."""
    colours = _colours(series)
    plot_h = size[1] - TOP - BOTTOM
    peak = max((v for s in series for v in s.values if v is not None), default=0)
    axis = _axis(float(peak))
    top = axis[0]
    parts, slot = _frame(title, labels, axis, unit, colours, [s.name for s in series], size)
    for s, colour in zip(series, colours, strict=True):
        runs: list[list[str]] = [[]]
        for i, value in enumerate(s.values):
            if value is None:
                runs.append([])
                continue
            x = LEFT + slot * i + slot / 2
            y = TOP + plot_h - plot_h * float(value) / top
            runs[-1].append(f"{x:.1f},{y:.1f}")
            tip = f"{labels[i]} {s.name}: {_fmt(float(value))}{(' ' + unit) if unit else ''}"
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill={quoteattr(colour)}>'
                f"<title>{escape(tip)}</title></circle>"
            )
        for run in runs:
            if len(run) > 1:
                parts.append(
                    f'<polyline points="{" ".join(run)}" fill="none" stroke={quoteattr(colour)} stroke-width="1.5"/>'
                )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308  # nosec B308, B703  # every interpolated text is escaped above
