"""The sweep's pictures: the metric against each searched parameter, and the parallel
coordinates W&B users read sweeps with (one line per trial across the parameters that
vary, coloured by the metric).

The figures are built by ``figures`` and only then saved, so what they show (axes, tick
labels, lines) can be checked without reading pixels. Only what trials tried is drawn:
a category no scored trial used gets no column, identical grid points are spread apart
(and counted), long names and plugin lists are shortened so that labels never overlap.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hpplug.sweep.report import PARALLEL, best_trial, is_number, is_scored, searched, show
from hpplug.sweep.spec import SweepSpec
from hpplug.sweep.state import Trial

NAME_CHARS = 18  # category labels longer than this are shortened
PANEL_CHARS, AXIS_CHARS = 40, 26  # axis names: under a scatter panel, under a parallel axis
FILES = {"scatter": "metric_vs_params.png", "parallel": PARALLEL}


def shorten(text: str, limit: int = NAME_CHARS) -> str:
    """``text`` cut in the middle with an ellipsis, so that both ends stay readable."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[len(text) - (limit - 1 - head):]


class Axis:
    """How one parameter's values are placed: numbers on a (log) scale, or the categories
    the trials tried, labelled by what tells them apart."""

    def __init__(self, spec: SweepSpec, name: str, values: list[Any]) -> None:
        declared = spec.parameters.get(name) or {}
        self.name = name
        self.numeric = "values" not in declared and all(is_number(v) for v in values)
        self.log = self.numeric and "log" in str(declared.get("distribution", "")) and all(v > 0 for v in values)
        self.categories: list[str] = []
        self.labels: list[str] = []
        self.common: list[str] = []
        self.bounds = (0.0, 0.0)  # numeric: the smallest and largest value (log10 on a log axis)
        if not self.numeric:  # numbers in increasing order, anything else in the YAML's
            tried = {show(v): v for v in values}
            if all(is_number(v) for v in values):
                self.categories = sorted(tried, key=lambda c: tried[c])
            else:
                order = [show(v) for v in declared.get("values", [])]
                self.categories = [c for c in order if c in tried] + sorted(set(tried) - set(order))
            self.labels, self.common = _category_labels(values, self.categories)

    def position(self, value: Any) -> float:
        if self.numeric:
            return float(value)
        return float(self.categories.index(show(value)))

    def unit(self, value: Any) -> float:
        """The value placed in [0, 1] (parallel coordinates)."""
        if not self.numeric:
            return self.position(value) / max(1, len(self.categories) - 1) if len(self.categories) > 1 else 0.5
        lo, hi = self.bounds
        x = math.log10(value) if self.log else float(value)
        return 0.5 if hi == lo else (x - lo) / (hi - lo)

    def bind(self, values: list[Any]) -> None:
        """Take the range of a numeric axis from the values drawn on it."""
        if self.numeric:
            xs = [math.log10(v) if self.log else float(v) for v in values]
            self.bounds = (min(xs), max(xs))

    def title(self, limit: int) -> str:
        """The axis name in at most ``limit`` characters a line; for plugin lists, the
        plugins every trial had on a second line."""
        if self.common:
            return shorten(self.name, limit) + "\n" + shorten(f"(each has {','.join(self.common)})", limit)
        return shorten(self.name, limit)


def _category_labels(values: list[Any], categories: list[str]) -> tuple[list[str], list[str]]:
    """Labels for the categories. Lists (plugin choices) that share items are labelled by
    what each adds (``+crop,flip``); the shared items are returned for the axis name."""
    lists = [v for v in values if isinstance(v, list)]
    common = [x for x in lists[0] if all(x in other for other in lists)] if lists and len(lists) == len(values) else []
    if not common or len(categories) < 2:
        return [shorten(c) for c in categories], []
    by_text = {show(v): v for v in lists}
    labels = []
    for c in categories:
        extra = [str(x) for x in by_text[c] if x not in common]
        labels.append(shorten("+" + ",".join(extra)) if extra else "+nothing")
    return labels, [str(x) for x in common]


def _spread(xs: list[float], width: float) -> list[float]:
    """Offsets that spread trials sharing one x position (a grid point) side by side,
    within ``width``, at most 0.12 apart."""
    groups: dict[float, list[int]] = {}
    for i, x in enumerate(xs):
        groups.setdefault(x, []).append(i)
    offsets = [0.0] * len(xs)
    for members in groups.values():
        n = len(members)
        for rank, i in enumerate(members):
            offsets[i] = (rank - (n - 1) / 2) * min(width / max(n - 1, 1), 0.12) if n > 1 else 0.0
    return offsets


def _tick_step(count: int, pixels: float, label_px: float) -> int:
    """Label every k-th category so that labels (rotated upright) have room."""
    return max(1, math.ceil(count * label_px / max(pixels, 1.0)))


def _scatter(fig: Any, spec: SweepSpec, trials: list[Trial], params: list[str]) -> None:
    from matplotlib.ticker import MaxNLocator

    cols = min(3, len(params))
    rows = math.ceil(len(params) / cols)
    axes = fig.subplots(rows, cols, squeeze=False)
    best = best_trial(spec, trials)
    for ax, name in zip(axes.flat, params):
        used = [t for t in trials if name in t.values]
        axis = Axis(spec, name, [t.values[name] for t in used])
        xs = [axis.position(t.values[name]) for t in used]
        if axis.numeric:
            if axis.log:
                ax.set_xscale("log")
            else:
                ax.xaxis.set_major_locator(MaxNLocator(5))
            offsets = [0.0] * len(xs)
        else:
            offsets = _spread(xs, 0.5)
            step = _tick_step(len(axis.categories), 4.2 * fig.dpi / 1.2, 14.0)
            ticks = list(range(0, len(axis.categories), step))
            ax.set_xticks(ticks, [axis.labels[i] for i in ticks], rotation=90, fontsize=7)
            ax.set_xlim(-0.6, len(axis.categories) - 0.4)
        for x, off, t in zip(xs, offsets, used):
            stopped = t.status == "stopped"
            ax.scatter([x + off], [t.metric], s=30, facecolors="none" if stopped else "C0", edgecolors="C0",
                       gid=f"trial {t.number}")
            if best is not None and t.id == best.id:
                ax.scatter([x + off], [t.metric], s=150, marker="*", color="C3", zorder=3, gid="best")
        if not axis.numeric:
            for i, c in enumerate(axis.categories):
                n = sum(1 for t in used if show(t.values[name]) == c)
                if n > 1:
                    ax.annotate(f"n={n}", (i, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom",
                                fontsize=7, color="0.4")
        ax.set_xlabel(axis.title(PANEL_CHARS), fontsize=8)
        ax.set_ylabel(shorten(spec.metric, PANEL_CHARS), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(params):]:
        ax.remove()
    fig.suptitle(f"sweep {spec.sweep_id}: {spec.metric} ({spec.goal}); hollow = stopped early, star = best, "
                 "n = trials at a grid point", fontsize=9)


def _parallel(fig: Any, spec: SweepSpec, trials: list[Trial], params: list[str]) -> None:
    import matplotlib as mpl

    ax = fig.subplots()
    used = trials  # a trial without a parameter (its plugin not chosen) has a gap there
    axes = []
    for name in params:
        values = [t.values[name] for t in used if name in t.values]
        axis = Axis(spec, name, values)
        axis.bind(values)
        axes.append(axis)
    metric = Axis(spec, spec.metric, [t.metric for t in used])
    metric.bind([t.metric for t in used])
    lo, hi = min(t.metric for t in used), max(t.metric for t in used)
    norm = mpl.colors.Normalize(lo, hi if hi > lo else lo + 1e-9)
    cmap = mpl.colormaps["viridis"]
    for t in sorted(used, key=lambda t: t.metric * (1 if spec.goal == "maximize" else -1)):
        ys = [a.unit(t.values[a.name]) if a.name in t.values else math.nan for a in axes]
        ax.plot(range(len(axes) + 1), ys + [metric.unit(t.metric)], color=cmap(norm(t.metric)),
                alpha=0.85, lw=1.4, ls="--" if t.status == "stopped" else "-", gid=f"trial {t.number}")
    for i, a in enumerate([*axes, metric]):
        ax.axvline(i, color="0.3", lw=0.8)
        for y, text in _axis_ticks(a):
            ax.text(i + 0.03, y, text, fontsize=7, va="center", ha="left", color="0.2",
                    bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})
    ax.set_xticks(range(len(axes) + 1), [a.title(AXIS_CHARS) for a in axes] + [shorten(spec.metric, AXIS_CHARS)],
                  fontsize=7.5)
    ax.set_xlim(-0.1, len(axes) + 0.6)
    ax.set_ylim(-0.05, 1.05)
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=shorten(spec.metric, PANEL_CHARS), pad=0.01)
    fig.suptitle(f"sweep {spec.sweep_id}: one line per trial, coloured by {spec.metric}; dashed = stopped early",
                 fontsize=9)


def _axis_ticks(axis: Axis) -> list[tuple[float, str]]:
    """Where to write values along one parallel axis: its categories (at most about 12, so
    that they fit), or its smallest, middle and largest value."""
    if not axis.numeric:
        n = len(axis.categories)
        return [(axis.unit(axis.categories[i]), axis.labels[i]) for i in range(0, n, max(1, math.ceil(n / 12)))]
    a, b = axis.bounds
    points = [(0.5, a)] if a == b else [(0.0, a), (0.5, (a + b) / 2), (1.0, b)]
    return [(u, show(10 ** v if axis.log else v)) for u, v in points]


def figures(spec: SweepSpec, trials: list[Trial]) -> dict[str, Any]:
    """The figures to save, by kind (``scatter``, ``parallel``); {} when nothing can be drawn
    (no scored trial, no searched parameter, or matplotlib missing)."""
    done = [t for t in trials if is_scored(t)]
    params = searched(spec)
    if not done or not params:
        return {}
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # the table and summary.json do not need it
        return {}

    def figure(width: float, height: float) -> Any:  # no pyplot: no global state, no display
        fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
        FigureCanvasAgg(fig)
        return fig

    cols = min(3, len(params))
    scatter = figure(4.2 * cols, 3.6 * math.ceil(len(params) / cols) + 0.4)
    _scatter(scatter, spec, done, params)
    parallel = figure(max(6.0, 1.9 * (len(params) + 1) + 1.2), 4.4)
    _parallel(parallel, spec, done, params)
    return {"scatter": scatter, "parallel": parallel}


def save(spec: SweepSpec, trials: list[Trial], sweep_dir: Path) -> dict[str, Path]:
    """Draw and save the figures in the sweep folder; returns their paths by kind."""
    paths = {}
    for kind, fig in figures(spec, trials).items():
        paths[kind] = sweep_dir / FILES[kind]
        fig.savefig(paths[kind])
    return paths
