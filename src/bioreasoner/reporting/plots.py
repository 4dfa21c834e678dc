"""Figures that work offline and come out byte-identical: the lineage and the training curves.

    lineage_svg(lineage, path, level=95)      # reports/lineage.svg: key metrics by version
    curves_svg(run_dir, path, title)          # reports/curves_<run>.svg: one panel per series
    find_runs([Path("dvclive")])              # {"sft": (dvclive/sft, "dvclive/sft"), "rounds_v2_0": ...}

Matplotlib with the Agg backend and its object API (no pyplot state, no display, no network).
Every figure is drawn under matplotlib's default style plus `STYLE` (so a user's matplotlibrc
changes nothing), with the bundled DejaVu Sans drawn as paths, a fixed `svg.hashsalt` (the ids
of clip paths) and no date in the metadata: the same inputs give the same bytes.

DVCLive series are `plots/metrics/**/<name>.tsv` files under a run folder: tab-separated with a
header, columns `step` and `<name>` (a `timestamp` column, if any, is ignored).
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.style  # noqa: E402  (after the backend is chosen)
from matplotlib.figure import Figure  # noqa: E402

from bioreasoner.core.io import BadInputError, read_text  # noqa: E402

# The lineage panels: the metrics a reader checks first (all proportions, drawn on [0, 1]).
KEY_METRICS = (
    "hallucination_rate",
    "citation_precision",
    "missing_think_rate",
    "pass_rate",
    "pubmedqa_accuracy",
    "pubmedqa_macro_f1",
)
STYLE: dict[str, Any] = {
    "svg.hashsalt": "bioreasoner-report",  # fixed ids in the SVG (else random per run)
    "svg.fonttype": "path",  # glyphs as paths: no font needed to view, same look everywhere
    "font.family": "DejaVu Sans",  # bundled with matplotlib: no system font lookup
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "figure.titlesize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
SVG_METADATA = {"Date": None}  # no timestamp in the file
COLOR = "#1f77b4"
CURVE_COLUMNS = 4
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata=SVG_METADATA)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def _grid(fig: Figure, n: int, ncols: int) -> list[Any]:
    nrows = max(1, math.ceil(n / ncols))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n]


# --------------------------------------------------------------------------- lineage


def lineage_svg(lineage: Mapping[str, Any], path: Path, level: float = 95.0) -> Path:
    """One panel per key metric: the value per version (in lineage order) with its interval as an
    error bar, a star over a version whose change from its parent is significant."""
    versions = list(lineage["versions"])
    deltas = lineage.get("deltas", {})
    with matplotlib.style.context(["default", STYLE]):
        fig = Figure(figsize=(9.0, 5.4), layout="constrained")
        for ax, metric in zip(_grid(fig, len(KEY_METRICS), 3), KEY_METRICS, strict=True):
            xs, ys, err_lo, err_hi = [], [], [], []
            for i, v in enumerate(versions):
                cell = lineage["versions"][v].get(metric) or {}
                if cell.get("value") is None:
                    continue
                value, lo, hi = cell["value"], cell.get("lo"), cell.get("hi")
                xs.append(i)
                ys.append(value)
                err_lo.append(0.0 if lo is None else max(0.0, value - lo))
                err_hi.append(0.0 if hi is None else max(0.0, hi - value))
                if (deltas.get(v, {}).get(metric) or {}).get("significant"):
                    ax.annotate("*", (i, value + err_hi[-1]), ha="center", va="bottom", fontsize=11)
            if xs:
                ax.plot(xs, ys, color="0.7", linewidth=0.8, zorder=1)
                ax.errorbar(xs, ys, yerr=[err_lo, err_hi], fmt="o", color=COLOR, capsize=3, markersize=4, zorder=2)
            else:
                ax.text(0.5, 0.5, "undefined", ha="center", va="center", transform=ax.transAxes, color="0.5")
            ax.set_title(metric)
            ax.set_xticks(range(len(versions)), versions)
            ax.set_xlim(-0.5, len(versions) - 0.5)
            ax.set_ylim(-0.03, 1.1)
        fig.suptitle(f"Eval metrics by version: {level:g}% intervals; * = significant change from the parent version")
        return _save(fig, path)


# --------------------------------------------------------------------------- training curves


def read_series(path: Path) -> tuple[list[float], list[float]]:
    """(steps, values) of one DVCLive tsv; a malformed file is one `BadInputError` line."""
    rows = list(csv.reader(read_text(path).splitlines(), delimiter="\t"))
    if not rows or "step" not in rows[0]:
        raise BadInputError(path, "line 1", "no header with a `step` column")
    header = rows[0]
    others = [c for c in header if c not in ("step", "timestamp")]
    if not others:
        raise BadInputError(path, "line 1", "no value column beside `step`")
    col = header.index(path.stem if path.stem in others else others[-1])
    step_col = header.index("step")
    steps, values = [], []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            steps.append(float(row[step_col]))
            values.append(float(row[col]))
        except (ValueError, IndexError):
            raise BadInputError(path, f"line {lineno}", f"not a step and a number: {row!r}") from None
    return steps, values


def find_runs(roots: Iterable[Path]) -> dict[str, tuple[Path, str]]:
    """Run folders (those holding `plots/metrics`) under each root: name -> (folder, label). The
    name is the run's path below its root joined with `_` (the root's own name when the root is a
    run); the label is that path from the root's name on (`dvclive/rounds/v2_0`), never absolute."""
    runs: dict[str, tuple[Path, str]] = {}
    for root in roots:
        if not root.is_dir():
            continue
        for metrics in sorted(root.rglob("metrics")):
            run = metrics.parent.parent
            below = run.relative_to(root).parts if run != root else ()
            if metrics.parent.name != "plots" or not metrics.is_dir() or "plots" in below:
                continue  # not a run, or a folder inside another run's plots
            name = _SAFE.sub("_", "_".join(below or (root.resolve().name,)))
            if name in runs:
                raise BadInputError(run, None, f"two training runs are named {name!r} (also {runs[name][0]})")
            runs[name] = (run, "/".join((root.resolve().name, *below)))
    return runs


def curves_svg(run_dir: Path, path: Path, title: str) -> Path | None:
    """One panel per series of a run (sorted by path) with two or more steps (a one-step series,
    like `train/runtime`, is an end-of-run summary, not a curve); None when there is none."""
    base = run_dir / "plots" / "metrics"
    series = [(f.relative_to(base).with_suffix("").as_posix(), read_series(f)) for f in sorted(base.rglob("*.tsv"))]
    series = [(name, s) for name, s in series if len(s[0]) >= 2]
    if not series:
        return None
    ncols = min(CURVE_COLUMNS, len(series))
    nrows = math.ceil(len(series) / ncols)
    with matplotlib.style.context(["default", STYLE, {"axes.titlesize": 8}]):
        fig = Figure(figsize=(2.8 * ncols, 1.9 * nrows + 0.4), layout="constrained")
        for ax, (name, (steps, values)) in zip(_grid(fig, len(series), ncols), series, strict=True):
            ax.plot(steps, values, color=COLOR, linewidth=1.0, marker="o" if len(steps) < 3 else None, markersize=3)
            ax.set_title(name)
            ax.set_xlabel("step")
        fig.suptitle(f"Training curves: {title}")
        return _save(fig, path)


def render_all(
    lineage: Mapping[str, Any], live_roots: Sequence[Path], out_dir: Path, level: float = 95.0
) -> list[Path]:
    """reports/lineage.svg and reports/curves_<run>.svg for every run found under `live_roots`."""
    written = [lineage_svg(lineage, out_dir / "lineage.svg", level)]
    for name, (run, label) in find_runs(live_roots).items():
        out = curves_svg(run, out_dir / f"curves_{name}.svg", title=label)
        if out is not None:
            written.append(out)
    return written
