"""Inline SVG charts, drawn on the server: no JavaScript library, nothing fetched from a CDN.

Pure functions from numbers to markup. Every text that reaches the SVG goes through `escape`, because
series names and markers come from device reports and model names.

- `line_chart`: latency p50/p95/p99 over time, with vertical markers where the model version changed.
- `scatter_chart`: the accuracy/latency frontier of a release's variants per hardware class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

WIDTH_PX = 760
HEIGHT_PX = 260
MARGIN_LEFT_PX = 58
MARGIN_RIGHT_PX = 190
LEGEND_CHARS = 28
MARGIN_Y_PX = 24
PALETTE = ("#2563eb", "#d97706", "#dc2626", "#059669", "#7c3aed", "#db2777", "#0891b2", "#65a30d")


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]  # (x, y); y None-free


@dataclass(frozen=True)
class Marker:
    x: float
    label: str


def _bounds(values: Sequence[float], pad_ratio: float = 0.08) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if math.isclose(lo, hi):
        lo, hi = lo - (abs(lo) * 0.1 or 1.0), hi + (abs(hi) * 0.1 or 1.0)
    pad = (hi - lo) * pad_ratio
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    return [lo + (hi - lo) * i / count for i in range(count + 1)]


def _fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _frame(title: str, y_label: str) -> list[str]:
    return [
        f'<svg class="chart" viewBox="0 0 {WIDTH_PX} {HEIGHT_PX}" role="img" aria-label="{escape(title)}" '
        'xmlns="http://www.w3.org/2000/svg">',
        f'<title>{escape(title)}</title>',
        f'<text x="4" y="14" class="axis-label">{escape(y_label)}</text>',
    ]


@dataclass(frozen=True)
class _Plot:
    """Data bounds mapped onto the plot area left of the legend; both charts share the grid and ticks."""

    x0: float
    x1: float
    y0: float
    y1: float
    height_px: float

    @property
    def width_px(self) -> float:
        return WIDTH_PX - MARGIN_LEFT_PX - MARGIN_RIGHT_PX

    def px(self, x: float) -> float:
        return MARGIN_LEFT_PX + (x - self.x0) / (self.x1 - self.x0) * self.width_px

    def py(self, y: float) -> float:
        return MARGIN_Y_PX + (1 - (y - self.y0) / (self.y1 - self.y0)) * self.height_px

    def y_grid(self, label: Callable[[float], str]) -> list[str]:
        out = []
        for tick in _ticks(self.y0, self.y1):
            y = self.py(tick)
            out.append(f'<line x1="{MARGIN_LEFT_PX}" x2="{MARGIN_LEFT_PX + self.width_px}" y1="{y:.1f}" '
                       f'y2="{y:.1f}" class="grid"/>')
            out.append(f'<text x="{MARGIN_LEFT_PX - 6}" y="{y + 4:.1f}" text-anchor="end" '
                       f'class="tick">{label(tick)}</text>')
        return out

    def legend_y(self, index: int) -> int:
        return MARGIN_Y_PX + 14 + index * 18


def empty_chart(title: str, message: str) -> str:
    return (f'<svg class="chart empty" viewBox="0 0 {WIDTH_PX} 80" role="img" aria-label="{escape(title)}" '
            f'xmlns="http://www.w3.org/2000/svg"><text x="{WIDTH_PX // 2}" y="44" text-anchor="middle" '
            f'class="muted">{escape(message)}</text></svg>')


def line_chart(title: str, series: Sequence[Series], markers: Sequence[Marker] = (), *,
               y_label: str = "ms", x_labels: tuple[str, str] = ("", "")) -> str:
    """Lines over a shared x axis; `markers` draw dashed verticals with a label (version changes)."""
    xs = [x for s in series for x, _ in s.points] + [m.x for m in markers]
    ys = [y for s in series for _, y in s.points]
    if not ys:
        return empty_chart(title, "no telemetry yet")
    x0, x1 = min(xs), max(xs)
    if math.isclose(x0, x1):
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = _bounds([0.0, *ys])
    plot = _Plot(x0, x1, max(y0, 0.0), y1, HEIGHT_PX - 2 * MARGIN_Y_PX)
    px, py, plot_w, plot_h = plot.px, plot.py, plot.width_px, plot.height_px
    out = _frame(title, y_label)
    out += plot.y_grid(_fmt)
    for marker in markers:
        x = px(marker.x)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{MARGIN_Y_PX}" y2="{MARGIN_Y_PX + plot_h}" '
                   'class="marker"/>')
        near_end = x > MARGIN_LEFT_PX + plot_w - 40
        out.append(f'<text x="{x - 3 if near_end else x + 3:.1f}" y="{MARGIN_Y_PX + 10}" class="marker-label" '
                   f'text-anchor="{"end" if near_end else "start"}">{escape(marker.label)}</text>')
    for index, s in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in sorted(s.points))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2" '
                   f'data-series="{escape(s.name)}"/>')
        for x, y in s.points:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}"/>')
        ly = plot.legend_y(index)
        out.append(f'<rect x="{WIDTH_PX - MARGIN_RIGHT_PX + 14}" y="{ly - 9}" width="12" height="4" '
                   f'fill="{color}"/>')
        out.append(f'<text x="{WIDTH_PX - MARGIN_RIGHT_PX + 32}" y="{ly - 3}" class="legend">'
                   f'{escape(s.name[:LEGEND_CHARS])}</text>')
    out.append(f'<text x="{MARGIN_LEFT_PX}" y="{HEIGHT_PX - 6}" class="tick">{escape(x_labels[0])}</text>')
    out.append(f'<text x="{MARGIN_LEFT_PX + plot_w}" y="{HEIGHT_PX - 6}" text-anchor="end" class="tick">'
               f'{escape(x_labels[1])}</text>')
    out.append("</svg>")
    return "\n".join(out)


def scatter_chart(title: str, groups: Sequence[Series], *, x_label: str = "latency (ms)",
                  y_label: str = "accuracy", point_labels: Sequence[Sequence[str]] = (),
                  point_titles: Sequence[Sequence[str]] = ()) -> str:
    """One colour per group (hardware class); x = latency, y = accuracy; labels name the variant."""
    xs = [x for g in groups for x, _ in g.points]
    ys = [y for g in groups for _, y in g.points]
    if not xs:
        return empty_chart(title, "no measured variants yet")
    x0, x1 = _bounds([0.0, *xs])
    y0, y1 = _bounds(ys, pad_ratio=0.25)
    plot = _Plot(max(x0, 0.0), x1, y0, y1, HEIGHT_PX - 2 * MARGIN_Y_PX - 10)
    px, py, plot_w, plot_h = plot.px, plot.py, plot.width_px, plot.height_px
    out = _frame(title, y_label)
    out += plot.y_grid(lambda tick: f"{tick:.3f}")
    for tick in _ticks(plot.x0, plot.x1):
        out.append(f'<text x="{px(tick):.1f}" y="{MARGIN_Y_PX + plot_h + 16}" text-anchor="middle" '
                   f'class="tick">{_fmt(tick)}</text>')
    out.append(f'<text x="{MARGIN_LEFT_PX + plot_w / 2:.0f}" y="{HEIGHT_PX - 4}" text-anchor="middle" '
               f'class="axis-label">{escape(x_label)}</text>')
    for index, g in enumerate(groups):
        color = PALETTE[index % len(PALETTE)]
        labels = point_labels[index] if index < len(point_labels) else ()
        titles = point_titles[index] if index < len(point_titles) else labels
        for j, (x, y) in enumerate(g.points):
            label = labels[j] if j < len(labels) else ""
            tip = titles[j] if j < len(titles) else label
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="5" fill="{color}" fill-opacity="0.8">'
                       f'<title>{escape(g.name)} {escape(tip)}: {x:.3g} ms, {y:.4f}</title></circle>')
            if label:
                out.append(f'<text x="{px(x) + 7:.1f}" y="{py(y) - 6:.1f}" class="point-label">'
                           f'{escape(label)}</text>')
        ly = plot.legend_y(index)
        out.append(f'<circle cx="{WIDTH_PX - MARGIN_RIGHT_PX + 20}" cy="{ly - 7}" r="5" fill="{color}"/>')
        out.append(f'<text x="{WIDTH_PX - MARGIN_RIGHT_PX + 32}" y="{ly - 3}" class="legend">'
                   f'{escape(g.name[:LEGEND_CHARS])}</text>')
    out.append("</svg>")
    return "\n".join(out)
