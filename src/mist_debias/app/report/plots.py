"""Report figures as PNG bytes: cell distributions with intervals, intersectional heatmaps, Δ, trajectories.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend state).
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
DPI = 100
MIN_BAR_LENGTH = 0.008
"""Shortest drawn Δ bar (on the 0–1 axis): a Δ near 0 still shows as a sliver next to its value label."""


@dataclass(frozen=True)
class Series:
    """One measured distribution: a label and per-cell ratios with interval ends (NaN where unknown)."""

    label: str
    ratios: Sequence[float]
    lower: Sequence[float] | None = None
    upper: Sequence[float] | None = None


def to_png(figure: Figure) -> bytes:
    """Render ``figure`` to PNG bytes."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _short(label: str, width: int = 18) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


@dataclass(frozen=True)
class Panel:
    """One bar panel: its title, cell labels, the series to compare and the target."""

    title: str
    cells: Sequence[str]
    series: Sequence[Series]
    target: Sequence[float]


def distribution_chart(panels: Sequence[Panel]) -> bytes:
    """Side-by-side panels of grouped bars (one bar per series and cell) with interval error bars and the
    target as dashed ticks; one legend above."""
    widths = [max(len(panel.cells) * max(len(panel.series), 1) * 0.55 + 1.0, 2.6) for panel in panels]
    figure = Figure(figsize=(min(sum(widths) + 0.8, 15.0), 3.6), layout="constrained")
    grid = figure.add_gridspec(1, len(panels), width_ratios=widths)
    for index, panel in enumerate(panels):
        ax = figure.add_subplot(grid[0, index])
        _bars(ax, panel)
        if index == 0:
            ax.set_ylabel("fraction of images")
            handles, labels = ax.get_legend_handles_labels()
            figure.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 6), fontsize=8)
    return to_png(figure)


def _bars(ax, panel: Panel) -> None:
    k = len(panel.cells)
    width = 0.8 / max(len(panel.series), 1)
    x = np.arange(k)
    for s, item in enumerate(panel.series):
        ratios = np.asarray(item.ratios, dtype=np.float64)
        offsets = x - 0.4 + width * (s + 0.5)
        error = None
        if item.lower is not None and item.upper is not None:
            lower = np.asarray(item.lower, dtype=np.float64)
            upper = np.asarray(item.upper, dtype=np.float64)
            error = np.vstack([np.clip(ratios - lower, 0, None), np.clip(upper - ratios, 0, None)])
        ax.bar(offsets, ratios, width * 0.92, yerr=error, capsize=3, label=item.label, color=PALETTE[s % len(PALETTE)])
    ax.hlines(panel.target, x - 0.45, x + 0.45, colors="black", linestyles="--", linewidth=1.2, label="target")
    rotate = k > 4 or max((len(c) for c in panel.cells), default=0) > 12
    ax.set_xticks(x, [_short(c) for c in panel.cells], rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.set_ylim(0, 1)
    ax.set_title(panel.title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def heatmap_chart(
    axes: Sequence[tuple[str, Sequence[str]]], series: Sequence[Series], target: Sequence[float], title: str
) -> bytes:
    """Intersectional heatmaps, one per series: rows are the first axis's values, columns the product of the
    others (cells in row-major order). Colour is ``r − t`` (blue under target, red over), text the ratio."""
    rows = len(axes[0][1])
    columns = math.prod(len(values) for _, values in axes[1:])
    column_labels = [" · ".join(combo) for combo in _product([values for _, values in axes[1:]])]
    t = np.asarray(target, dtype=np.float64).reshape(rows, columns)
    figure = Figure(
        figsize=(min(1.6 + 0.75 * columns * len(series), 15.0), 1.4 + 0.45 * rows + 0.5), layout="constrained"
    )
    gaps = np.abs(np.asarray([s.ratios for s in series], dtype=np.float64) - np.asarray(target, dtype=np.float64))
    limit = max(float(gaps[np.isfinite(gaps)].max(initial=0.0)), 0.05)
    image = None
    for index, item in enumerate(series):
        ax = figure.add_subplot(1, len(series), index + 1)
        r = np.asarray(item.ratios, dtype=np.float64).reshape(rows, columns)
        image = ax.imshow(r - t, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        for i in range(rows):
            for j in range(columns):
                text = "–" if math.isnan(r[i, j]) else f"{100 * r[i, j]:.0f}%"
                strong = not math.isnan(r[i, j]) and abs(r[i, j] - t[i, j]) > 0.6 * limit
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if strong else "black")
        ax.set_xticks(range(columns), [_short(c, 14) for c in column_labels], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(rows), axes[0][1] if index == 0 else [""] * rows, fontsize=8)
        ax.set_title(item.label, fontsize=9)
    figure.suptitle(title, fontsize=10)
    if image is not None:
        figure.colorbar(image, ax=figure.axes, shrink=0.8, label="ratio − target")
    return to_png(figure)


def _product(lists: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    return list(itertools.product(*lists))


def deviation_chart(concepts: Sequence[str], series: Sequence[Series], title: str, tolerance: float | None) -> bytes:
    """Horizontal grouped bars of Δ per concept (``series[i].ratios`` holds one Δ per concept), each labelled
    with its value; a bar shorter than :data:`MIN_BAR_LENGTH` is drawn at that length so it stays visible."""
    n = len(concepts)
    height = 0.8 / max(len(series), 1)
    figure = Figure(figsize=(7.5, 1.0 + 0.32 * n * max(len(series), 1) ** 0.5 + 0.3))
    ax = figure.add_subplot()
    y = np.arange(n)
    for s, item in enumerate(series):
        values = np.asarray(item.ratios, dtype=np.float64)
        drawn = np.where(np.isfinite(values), np.maximum(values, MIN_BAR_LENGTH), np.nan)
        bars = ax.barh(
            y - 0.4 + height * (s + 0.5), drawn, height * 0.92, label=item.label, color=PALETTE[s % len(PALETTE)]
        )
        labels = ["" if not np.isfinite(v) else f"{v:.3f}" for v in values]
        ax.bar_label(bars, labels, padding=3, fontsize=7)
    if tolerance is not None:
        ax.axvline(tolerance, color="black", linestyle="--", linewidth=1, label=f"tolerance (Δ = {tolerance:.3g})")
    ax.set_yticks(y, [_short(c, 24) for c in concepts])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("Δ (deviation ratio: 0 = on target, 1 = worst)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return to_png(figure)


def trajectory_chart(
    entries: Sequence[dict], cells: Sequence[str], target: Sequence[float] | None, title: str
) -> bytes:
    """The debias loop per iteration: each cell's ratio with its interval band (left), its weight (right)."""
    iterations = np.array([_float(e.get("iteration"), i) for i, e in enumerate(entries)])
    figure = Figure(figsize=(10.0, 3.3))
    left = figure.add_subplot(1, 2, 1)
    right = figure.add_subplot(1, 2, 2)
    for j, cell in enumerate(cells):
        colour = PALETTE[j % len(PALETTE)]
        ratios = np.array([_at(e.get("ratios"), j) for e in entries])
        lower = np.array([_at(e.get("lower"), j) for e in entries])
        upper = np.array([_at(e.get("upper"), j) for e in entries])
        left.plot(iterations, ratios, marker="o", markersize=3, color=colour, label=_short(cell))
        if np.any(np.isfinite(lower)) and np.any(np.isfinite(upper)):
            left.fill_between(iterations, lower, upper, color=colour, alpha=0.15)
        if target is not None and j < len(target):
            left.axhline(target[j], color=colour, linestyle=":", linewidth=1)
        weights = np.array([_at(e.get("weights"), j) for e in entries])
        if np.any(np.isfinite(weights)):
            right.plot(iterations, weights, marker="o", markersize=3, color=colour, label=_short(cell))
    left.set_xlabel("iteration")
    left.set_ylabel("ratio (band: interval)")
    left.set_ylim(0, 1)
    left.set_title("ratios per iteration")
    right.set_xlabel("iteration")
    right.set_ylabel("weight")
    right.set_title("edit weights per iteration")
    finite = iterations[np.isfinite(iterations)]
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(finite):
            ax.set_xlim(finite.min() - 0.5, finite.max() + 0.5)
    left.legend(fontsize=7, loc="best")
    figure.suptitle(title, fontsize=10)
    return to_png(figure)


def _float(value, default: float = math.nan) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _at(values, index: int) -> float:
    if isinstance(values, list | tuple) and index < len(values):
        return _float(values[index])
    return math.nan
