"""Charts of the HTML report, drawn as inline SVG from Python: a metric's distribution in one
session, and the trend of its mean across sessions. No script and no network are needed to
see them."""

from __future__ import annotations

import math
from collections import Counter
from html import escape
from typing import Any

__all__ = ["cost_svg", "distribution_svg", "trend_svg"]

_W, _H = 360, 190
_LEFT, _RIGHT, _TOP, _BOTTOM = 44, 12, 22, 34


def _fmt(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e12:
        return str(int(value))
    return f"{value:.3g}"


def _svg(kind: str, label: str, body: list[str]) -> str:
    return (
        f'<svg class="chart-svg {kind}" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" '
        f'role="img" aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        + "".join(body)
        + "</svg>"
    )


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    """Round tick values from a multiple of the step at or below ``low`` to one at or above
    ``high``: the axis spans them."""
    span = high - low or abs(high) or 1.0
    raw = span / count
    step = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= step * factor:
            step *= factor
            break
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(i * step, 10) for i in range(first, max(last, first + 1) + 1)]


def _bins(values: list[float], kind: str) -> list[tuple[str, float, float, int]]:
    """(label, start, end, count) per bar: one per value for bools and small integer
    ranges, else up to ten equal bins."""
    counts = Counter(values)
    low, high = min(values), max(values)
    if kind == "bool":
        return [("false", 0, 0, counts.get(0.0, 0)), ("true", 1, 1, counts.get(1.0, 0))]
    integral = all(v.is_integer() for v in values)
    if integral and high - low <= 15:
        return [(_fmt(v), v, v, counts.get(float(v), 0)) for v in range(int(low), int(high) + 1)]
    if low == high:
        return [(_fmt(low), low, high, len(values))]
    number = min(10, max(3, int(math.sqrt(len(values))) + 1))
    width = (high - low) / number
    bins = [0] * number
    for value in values:
        bins[min(number - 1, int((value - low) / width))] += 1
    return [
        (f"{_fmt(low + i * width)}\u2013{_fmt(low + (i + 1) * width)}", low + i * width, 0, count)
        for i, count in enumerate(bins)
    ]


def distribution_svg(metric: str, values: list[float], kind: str) -> str:
    """A histogram of one metric's values over a session's evaluated runs, with its mean."""
    label = f"distribution of {metric}"
    if not values:
        return _svg("distribution", label, [_text(_W / 2, _H / 2, "no value", "middle")])
    bins = _bins(values, kind)
    top = max(count for *_, count in bins)
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    slot = plot_w / len(bins)
    body = _axes(plot_h, [(0, "0"), (top, str(top))], top)
    for i, (text, _start, _end, count) in enumerate(bins):
        height = plot_h * count / top if top else 0
        x = _LEFT + i * slot + slot * 0.1
        y = _TOP + plot_h - height
        body.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" '
            f'height="{height:.1f}"><title>{escape(text)}: {count} run(s)</title></rect>'
        )
        if len(bins) <= 12 or i in (0, len(bins) - 1):
            body.append(_text(x + slot * 0.4, _H - _BOTTOM + 14, text, "middle", "tick"))
    mean = sum(values) / len(values)
    body.append(
        _text(
            _W - _RIGHT,
            _TOP - 8,
            f"n = {len(values)}, mean = {_fmt(round(mean, 4))}",
            "end",
            "caption",
        )
    )
    return _svg("distribution", label, body)


def _text(x: float, y: float, text: str, anchor: str, cls: str = "label") -> str:
    return (
        f'<text class="{cls}" x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}">{escape(text)}</text>'
    )


def _axes(
    plot_h: float, ticks: list[tuple[float, str]], top: float, bottom: float = 0
) -> list[str]:
    body = [
        f'<line class="axis" x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_TOP + plot_h}"/>',
        f'<line class="axis" x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{_W - _RIGHT}" '
        f'y2="{_TOP + plot_h}"/>',
    ]
    span = (top - bottom) or 1
    for value, text in ticks:
        y = _TOP + plot_h - plot_h * (value - bottom) / span
        body.append(
            f'<line class="grid" x1="{_LEFT}" y1="{y:.1f}" x2="{_W - _RIGHT}" y2="{y:.1f}"/>'
        )
        body.append(_text(_LEFT - 5, y + 4, text, "end", "tick"))
    return body


def trend_svg(metric: str, points: list[dict[str, Any]]) -> str:
    """The mean of one metric in each session, oldest first, with its 95% interval; a dashed
    marker where a prompt version or a bot setting changed since the session before."""
    label = f"trend of the mean of {metric} across sessions"
    shown = [(i, p, p["metrics"].get(metric)) for i, p in enumerate(points)]
    valued = [(i, p, m) for i, p, m in shown if m is not None]
    if not valued:
        return _svg("trend", label, [_text(_W / 2, _H / 2, "no value", "middle")])
    lows = [m["ci_low"] if m["ci_low"] is not None else m["mean"] for _, _, m in valued]
    highs = [m["ci_high"] if m["ci_high"] is not None else m["mean"] for _, _, m in valued]
    low, high = float(min(lows)), float(max(highs))
    if low == high:  # one value throughout: centre it
        low, high = low - 1, high + 1
    ticks = _ticks(low, high)
    bottom, top = ticks[0], ticks[-1]
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    body = _axes(plot_h, [(t, _fmt(t)) for t in ticks], top, bottom)

    def x_of(i: int) -> float:
        return _LEFT + plot_w * (i + 0.5) / len(points)

    def y_of(value: float) -> float:
        return _TOP + plot_h - plot_h * (value - bottom) / (top - bottom)

    for i, point, _ in shown:
        if point["changes"]:
            x = x_of(i) - plot_w / len(points) / 2
            what = "; ".join(point["changes"])
            body.append(
                f'<g class="change-marker"><line x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" '
                f'y2="{_TOP + plot_h}"/><text x="{x:.1f}" y="{_TOP - 6}" text-anchor="middle">'
                f"{'P' if any(c.startswith('prompt') for c in point['changes']) else 'B'}</text>"
                f"<title>changed here: {escape(what)}</title></g>"
            )
    path = " ".join(f"{x_of(i):.1f},{y_of(m['mean']):.1f}" for i, _, m in valued)
    body.append(f'<polyline class="line" points="{path}"/>')
    for i, point, m in valued:
        x = x_of(i)
        interval = ""
        if m["ci_low"] is not None:
            interval = f" [{_fmt(round(m['ci_low'], 4))}, {_fmt(round(m['ci_high'], 4))}]"
            body.append(
                f'<line class="interval" x1="{x:.1f}" y1="{y_of(m["ci_low"]):.1f}" '
                f'x2="{x:.1f}" y2="{y_of(m["ci_high"]):.1f}"/>'
            )
        tip = (
            f"session {point['session_id'][:12]} ({point['started_at'][:16].replace('T', ' ')}, "
            f"{point['session_status']}): mean {_fmt(round(m['mean'], 4))}{interval}, n = {m['n']}"
        )
        latest = " latest" if i == len(points) - 1 else ""
        if point["session_status"] != "complete":
            # Interrupted, aborted or partial: its mean is of part of the runs.
            latest += " incomplete"
        body.append(
            f'<circle class="point{latest}" cx="{x:.1f}" cy="{y_of(m["mean"]):.1f}" r="4">'
            f"<title>{escape(tip)}</title></circle>"
        )
    if len(points) <= 8:
        for i, point in enumerate(points):
            name = point["session_id"][:6]
            body.append(_text(x_of(i), _H - _BOTTOM + 16, name, "middle", "tick"))
    else:
        first, last = points[0]["started_at"][:10], points[-1]["started_at"][:10]
        body.append(_text(_LEFT, _H - _BOTTOM + 16, first, "start", "tick"))
        body.append(_text(_W - _RIGHT, _H - _BOTTOM + 16, last, "end", "tick"))
    body.append(_text(_W / 2, _H - 4, f"{len(points)} session(s), oldest first", "middle", "tick"))
    return _svg("trend", label, body)


def cost_svg(metric: str, points: list[dict[str, Any]]) -> str:
    """Each variant's cost per run (x) against the metric's mean with its 95% interval (y):
    the lower right holds the cheap variants that do well."""
    label = f"{metric}: mean and 95% interval against cost per run, one point per variant"
    if not points:
        return _svg("cost", label, [_text(_W / 2, _H / 2, "no variant has a price", "middle")])
    xs = [p["cost"] for p in points]
    # Room to the right of the dearest variant, so that its point is not on the edge.
    xs.append(max(xs) * 1.15)
    ys = [v for p in points for v in (p["mean"], p["low"], p["high"]) if v is not None]
    x_ticks = _ticks(0.0, max(xs) or 1.0)
    y_ticks = _ticks(min(ys), max(ys))
    x_low, x_high = x_ticks[0], x_ticks[-1]
    y_low, y_high = y_ticks[0], y_ticks[-1]

    def x_of(value: float) -> float:
        return _LEFT + (value - x_low) / ((x_high - x_low) or 1) * (_W - _LEFT - _RIGHT)

    def y_of(value: float) -> float:
        return _H - _BOTTOM - (value - y_low) / ((y_high - y_low) or 1) * (_H - _TOP - _BOTTOM)

    body = [_text(_LEFT, 14, metric, "start", "title")]
    body += _axes(_H - _TOP - _BOTTOM, [(t, _fmt(t)) for t in y_ticks], y_high, y_low)
    step = (x_ticks[1] - x_ticks[0]) if len(x_ticks) > 1 else (x_high or 1.0)
    digits = max(0, -math.floor(math.log10(step)))
    for i, tick in enumerate(x_ticks):
        anchor = "end" if i == len(x_ticks) - 1 else "middle"
        body.append(_text(x_of(tick), _H - _BOTTOM + 16, f"${tick:.{digits}f}", anchor, "tick"))
    for point in points:
        x, y = x_of(point["cost"]), y_of(point["mean"])
        interval = ""
        if point["low"] is not None and point["high"] is not None:
            interval = f" [{_fmt(round(point['low'], 4))}, {_fmt(round(point['high'], 4))}]"
            body.append(
                f'<line class="interval" x1="{x:.1f}" y1="{y_of(point["low"]):.1f}" '
                f'x2="{x:.1f}" y2="{y_of(point["high"]):.1f}"/>'
            )
        tip = (
            f"{point['variant']}: mean {_fmt(round(point['mean'], 4))}{interval}, "
            f"${point['cost']:.6g} per run"
        )
        body.append(
            f'<circle class="point variant" cx="{x:.1f}" cy="{y:.1f}" r="4">'
            f"<title>{escape(tip)}</title></circle>"
        )
        # Labelled on the side with room, never across the title or off the chart.
        right = x > _LEFT + (_W - _LEFT - _RIGHT) * 0.55
        body.append(
            _text(
                x - 6 if right else x + 6,
                max(y - 6, _TOP + 8),
                point["variant"],
                "end" if right else "start",
                "tick",
            )
        )
    body.append(_text(_W / 2, _H - 4, "US dollars per run", "middle", "tick"))
    return _svg("cost", label, body)
