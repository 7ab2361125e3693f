"""The worst-case-ε chart of the dashboard: series and their pixel geometry (numbers only; the
names go through the autoescaping templates of :mod:`.budget_page`)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#882255", "#000000")
_MAX_MARKERS = 200  # per series; beyond that the step line alone stays readable
_Y_CEILING = 1e6
"""Highest ε the chart's axis reaches. A stored value beyond it (a cap nobody can mean, like
1.7e308, or inf/NaN written into the ledger by hand) is drawn at this height -- its label
and the tables show the stored number -- instead of overflowing the axis arithmetic."""


@dataclass(frozen=True)
class SpendSeries:
    """Worst-case ε of one dataset: ``points`` are ``(release time, worst case after it)``, oldest first.

    ``points`` may leave releases out (those of DAGs the viewer may not read); ``spent_epsilon``
    is then the dataset's whole spend, shown in the legend (default: the last point's).
    ``caps`` are ``(change time, cap ε from then on)``, oldest first: the cap is drawn as it was
    over time; without them, flat at ``cap_epsilon``.
    """

    dataset: str
    cap_epsilon: float
    points: Sequence[tuple[dt.datetime, float]] = field(default_factory=tuple)
    spent_epsilon: float | None = None
    caps: Sequence[tuple[dt.datetime, float]] = field(default_factory=tuple)


def fmt_eps(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}"


def fmt_time(value: dt.datetime | str | None) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _nice_step(span: float, target_ticks: int = 5) -> float:
    raw = span / max(target_ticks, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= mult * magnitude:
            return mult * magnitude
    return 10 * magnitude


def chart_geometry(series: Sequence[SpendSeries], *, width: int = 760, height: int = 300) -> dict[str, Any]:
    """Pixel geometry of the cumulative-ε step chart (numbers only; names go through the template)."""
    left, right, top, bottom = 56, 48, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    times = [t for s in series for t, _ in (*s.points, *s.caps)]
    if times:
        t0, t1 = min(times), max(times)
    else:
        t0 = t1 = dt.datetime.now(dt.timezone.utc)
    # margins so the first jump and the last level stay visible; releases seconds apart
    # (a catch-up or a test run) still get an axis wide enough to tell them apart
    pad = max((t1 - t0) * 0.05, dt.timedelta(seconds=30))
    t0, t1 = t0 - pad, t1 + pad
    span_s = (t1 - t0).total_seconds()

    y_max_data = max([_plotted(s.cap_epsilon) for s in series]
                     + [_plotted(e) for s in series for _, e in (*s.points, *s.caps)] + [0.0])
    y_step = _nice_step(y_max_data * 1.05 if y_max_data > 0 else 1.0)
    y_max = y_step * math.ceil((y_max_data * 1.05 if y_max_data > 0 else 1.0) / y_step)

    def x(t: dt.datetime) -> float:
        return round(left + plot_w * (t - t0).total_seconds() / span_s, 2)

    def y(e: float) -> float:
        return round(top + plot_h * (1 - _plotted(e) / y_max), 2)

    y_ticks = []
    n = 0
    while n * y_step <= y_max * (1 + 1e-9):
        value = n * y_step
        y_ticks.append({"y": y(value), "label": f"{value:.4g}"})
        n += 1
    fmt = "%H:%M:%S" if span_s < 2 * 3600 else "%m-%d %H:%M" if span_s < 3 * 86400 else "%Y-%m-%d"
    x_ticks = []
    for i in range(5):
        t = t0 + dt.timedelta(seconds=span_s * i / 4)
        x_ticks.append({"x": x(t), "label": t.astimezone(dt.timezone.utc).strftime(fmt)})

    lines = []
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        pts: list[tuple[float, float]] = []
        markers = []
        previous = 0.0
        for t, e in s.points:
            pts.append((x(t), y(previous)))
            pts.append((x(t), y(e)))
            markers.append({"x": x(t), "y": y(e), "time": fmt_time(t), "spent": fmt_eps(e)})
            previous = e
        if s.points:
            pts.append((x(t1), y(previous)))
        cap_pts: list[tuple[float, float]] = []
        for t, c in s.caps:  # a step line: each cap holds until the next change
            if cap_pts:
                cap_pts.append((x(t), cap_pts[-1][1]))
            cap_pts.append((x(t), y(c)))
        if cap_pts:
            cap_pts.append((x(t1), cap_pts[-1][1]))
        lines.append({
            "dataset": s.dataset,
            "color": color,
            "points": " ".join(f"{px},{py}" for px, py in pts),
            "markers": markers if len(markers) <= _MAX_MARKERS else [],
            "cap_y": y(s.cap_epsilon),
            "cap_points": " ".join(f"{px},{py}" for px, py in cap_pts),
            "cap": fmt_eps(s.cap_epsilon),
            "spent": fmt_eps(previous if s.spent_epsilon is None else s.spent_epsilon),
        })
    return {
        "width": width, "height": height, "left": left, "right": width - right, "top": top,
        "bottom": height - bottom, "y_ticks": y_ticks, "x_ticks": x_ticks, "lines": lines,
    }


def _plotted(value: float) -> float:
    """Where a stored ε is drawn: within [0, _Y_CEILING]; NaN at 0."""
    return min(max(value, 0.0), _Y_CEILING) if not math.isnan(value) else 0.0
