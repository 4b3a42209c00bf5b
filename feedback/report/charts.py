"""Inline SVG charts for the report: no script, no library, no network.

The report must open from a file, a mail client or an admin page with nothing
fetched, so charts are drawn here as SVG markup. Every text that reaches the
SVG goes through :func:`markupsafe.escape`; the result is ``Markup`` so the
Jinja template (autoescaping) inserts it as is. Points carry a ``<title>`` for a
native hover tooltip.
"""

from __future__ import annotations

from typing import Callable, Sequence

from markupsafe import Markup, escape

PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777")
GRID = "#e5e7eb"
AXIS_TEXT = "#6b7280"
LEFT, RIGHT, TOP, BOTTOM = 46, 12, 12, 26


def color(i: int) -> str:
    """The i-th series colour."""
    return PALETTE[i % len(PALETTE)]


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _frame(
    width: int, height: int, labels: Sequence[str], y_max: float, fmt: Callable[[float], str], ticks: int = 4
) -> tuple[list[str], Callable[[int], float], Callable[[float], float], float]:
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    n = max(1, len(labels))
    step = plot_w / n

    def x(i: int) -> float:
        return LEFT + step * (i + 0.5)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / y_max)

    parts = []
    for t in range(ticks + 1):
        value = y_max * t / ticks
        yy = y(value)
        parts.append(f'<line x1="{LEFT}" x2="{width - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="{GRID}"/>')
        parts.append(
            f'<text x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end" font-size="11" fill="{AXIS_TEXT}">'
            f"{escape(fmt(value))}</text>"
        )
    every = 1 if n <= 13 else 2
    for i, label in enumerate(labels):
        if i % every == 0 or i == n - 1:
            parts.append(
                f'<text x="{x(i):.1f}" y="{height - 8}" text-anchor="middle" font-size="11" fill="{AXIS_TEXT}">'
                f"{escape(label)}</text>"
            )
    return parts, x, y, step


def _svg(width: int, height: int, title: str, parts: list[str]) -> Markup:
    body = "".join(parts)
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-label="{escape(title)}" font-family="system-ui, sans-serif">{body}</svg>'
    )


def line_chart(
    labels: Sequence[str],
    series: Sequence[dict],
    *,
    title: str,
    fmt: Callable[[float], str] = lambda v: f"{v:g}",
    y_max: float | None = None,
    width: int = 560,
    height: int = 220,
) -> Markup:
    """Lines over weeks. Each series: ``label``, ``values`` (None = no data), optional ``color``,
    ``weak`` (per point: drawn hollow, e.g. too few ratings) and ``dash``."""
    peak = max((v for s in series for v in s["values"] if v is not None), default=0)
    y_max = y_max or _nice_max(peak * 1.1)
    parts, x, y, _ = _frame(width, height, labels, y_max, fmt)
    for i, s in enumerate(series):
        stroke = s.get("color") or color(i)
        dash = ' stroke-dasharray="5 4"' if s.get("dash") else ""
        run: list[str] = []
        segments = []
        for j, v in enumerate(s["values"]):
            if v is None:
                if len(run) > 1:
                    segments.append(run)
                run = []
                continue
            run.append(f"{x(j):.1f},{y(v):.1f}")
        if len(run) > 1:
            segments.append(run)
        for seg in segments:
            parts.append(f'<polyline fill="none" stroke="{stroke}" stroke-width="2.2"{dash} points="{" ".join(seg)}"/>')
        weak = s.get("weak") or [False] * len(s["values"])
        for j, v in enumerate(s["values"]):
            if v is None:
                continue
            fill = "#fff" if weak[j] else stroke
            tip = f"{s['label']} · {labels[j]}: {fmt(v)}" + (" (few ratings)" if weak[j] else "")
            parts.append(
                f'<circle cx="{x(j):.1f}" cy="{y(v):.1f}" r="3.6" fill="{fill}" stroke="{stroke}" stroke-width="1.8">'
                f"<title>{escape(tip)}</title></circle>"
            )
    return _svg(width, height, title, parts)


def stacked_bars(
    labels: Sequence[str],
    stacks: Sequence[dict],
    *,
    title: str,
    fmt: Callable[[float], str] = lambda v: f"{v:,.0f}",
    width: int = 560,
    height: int = 220,
) -> Markup:
    """Stacked bars per week. Each stack: ``label``, ``values``, optional ``color``."""
    totals = [sum(s["values"][i] for s in stacks) for i in range(len(labels))]
    y_max = _nice_max(max(totals, default=0) * 1.05)
    parts, x, y, step = _frame(width, height, labels, y_max, fmt)
    bar = step * 0.62
    for i in range(len(labels)):
        base = 0.0
        for k, s in enumerate(stacks):
            v = s["values"][i]
            if not v:
                continue
            top, bottom = y(base + v), y(base)
            tip = escape(f"{s['label']} · {labels[i]}: {fmt(v)}")
            fill = s.get("color") or color(k)
            parts.append(
                f'<rect x="{x(i) - bar / 2:.1f}" y="{top:.1f}" width="{bar:.1f}" height="{bottom - top:.1f}" '
                f'fill="{fill}"><title>{tip}</title></rect>'
            )
            base += v
    return _svg(width, height, title, parts)


def hbars(
    items: Sequence[tuple[str, float, float | None]],
    *,
    title: str,
    fmt: Callable[[float], str] = lambda v: f"{v:,.0f}",
    width: int = 560,
    bar_color: str = "#dc2626",
) -> Markup:
    """Horizontal bars: (label, value, previous value or None); the previous value is a thin grey bar."""
    row, label_w = 30, 130
    height = TOP + row * max(1, len(items)) + 6
    peak = max([v for _, v, _ in items] + [p or 0 for _, _, p in items] + [1])
    scale = (width - label_w - 70) / peak
    parts = []
    for i, (label, value, previous) in enumerate(items):
        top = TOP + i * row
        parts.append(
            f'<text x="{label_w - 8}" y="{top + 14}" text-anchor="end" font-size="12" fill="#374151">'
            f"{escape(label)}</text>"
        )
        tip = escape(f"{label}: {fmt(value)}")
        parts.append(
            f'<rect x="{label_w}" y="{top + 3}" width="{max(1.0, value * scale):.1f}" height="14" rx="2" '
            f'fill="{bar_color}"><title>{tip}</title></rect>'
        )
        if previous is not None:
            tip = escape(f"{label}, previous week: {fmt(previous)}")
            parts.append(
                f'<rect x="{label_w}" y="{top + 19}" width="{max(1.0, previous * scale):.1f}" height="4" rx="1" '
                f'fill="#9ca3af"><title>{tip}</title></rect>'
            )
        parts.append(
            f'<text x="{label_w + max(1.0, value * scale) + 6:.1f}" y="{top + 14}" font-size="12" fill="#374151">'
            f"{escape(fmt(value))}</text>"
        )
    return _svg(width, height, title, parts)
