"""The comparison report: tables of mean ± std over seeds with 95% intervals and paired
significance tests, the tuning trials, the data-size sweep and the plots, as Markdown (PNG
files beside it) and as one self-contained HTML page (images embedded).

Every number the report states about a run (epochs, seed, learning rate, training images)
is read from that run's record, which comes from its own ``config.yaml``; nothing is taken
from the command line of the comparison that wrote the report."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenmixers.stats import (
    DRAWS,
    THRESHOLD,
    WINDOW,
    Summary,
    holm,
    paired_bootstrap,
    still_improving,
    summarize,
)
from tokenmixers.text import format_table

__all__ = ["PLOTS", "PLOT_FILES", "Group", "busy_reasons", "figures", "groups", "legend_overlaps",
           "pairwise", "summary_rows", "write_report"]

PLOTS = {
    "accuracy_vs_params.png": "Test accuracy against parameters (mean ± std over seeds; "
                              "small dots: single seeds)",
    "accuracy_vs_resolution.png": "Test accuracy against test resolution (mean ± std over "
                                  "seeds)",
    "data_size.png": "Test accuracy against the number of training images (mean ± std over "
                     "seeds, small dots: single seeds; the same nested subsets for every "
                     "model)",
    "scaling.png": "Inference throughput (median; bars: slowest to fastest timed batch) and "
                   "peak memory against resolution (log-log)",
    "training_curves.png": "Training curves, one line per seed (validation: the held-out "
                           "split of the training set)",
}
PLOT_FILES = tuple(PLOTS)
#: The throughput benchmark is called busy (its img/s unreliable) when a model's timed
#: batches vary by more than BUSY_SPREAD (max/min rate) or other processes used more than
#: BUSY_OTHER_CORES CPU cores meanwhile (tokenmixers.compare measures both; not the load
#: average, which the comparison's own training lifts for minutes after it ends).
BUSY_SPREAD = 1.3
BUSY_OTHER_CORES = 0.5
#: Significance level of the paired tests, after Holm's correction over all pairs.
ALPHA = 0.05


# ---- aggregation ---------------------------------------------------------------------------
@dataclass
class Group:
    """One model at one training fraction: its runs (one per seed) and their summaries."""

    key: str
    label: str
    model: str
    fraction: float
    runs: list[dict[str, Any]]
    top1: dict[int, Summary] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def first(self) -> dict[str, Any]:
        return self.runs[0]

    def hits(self, size: int) -> np.ndarray | None:
        """Per-seed 0/1 hits on the test images at ``size``: ``[seeds, images]``."""
        rows = [_eval_at(r, size) for r in self.runs]
        if any(row is None or "correct" not in row for row in rows):
            return None
        return np.array([[c == "1" for c in row["correct"]] for row in rows],  # type: ignore[index]
                        dtype=np.float32)

    def values(self, key: str) -> list[Any]:
        return [r.get(key) for r in self.runs]

    def curve(self) -> list[float]:
        """The validation top-1 per epoch, averaged over seeds (epochs all seeds reached)."""
        curves = [[c["top1"] for c in r.get("curves", []) if "epoch" in c] for r in self.runs]
        n = min((len(c) for c in curves), default=0)
        return [float(np.mean([c[i] for c in curves])) for i in range(n)]


def _eval_at(record: dict[str, Any], size: int) -> dict[str, Any] | None:
    for row in record.get("eval", []):
        if row["img_size"] == size:
            return row
    return None


def eval_sizes(records: Sequence[dict[str, Any]]) -> list[int]:
    return sorted({row["img_size"] for r in records for row in r.get("eval", [])})


def groups(records: Sequence[dict[str, Any]]) -> list[Group]:
    """Records grouped by model and training fraction, in the order they first appear,
    seeds in ascending order."""
    out: dict[tuple[str, float], Group] = {}
    for r in records:
        key = (r["family"], float(r.get("train_fraction") or 1.0))
        if key not in out:
            out[key] = Group(r["family"], r["label"], r["model"], key[1], [])
        out[key].runs.append(r)
    sizes = eval_sizes(records)
    for g in out.values():
        g.runs.sort(key=lambda r: r.get("seed") or 0)
        for size in sizes:
            rows = [_eval_at(r, size) for r in g.runs]
            if all(row is not None and "top1" in row for row in rows):
                g.top1[size] = summarize([row["top1"] for row in rows])  # type: ignore[index]
            else:
                err = next((row["error"] for row in rows if row and "error" in row), "")
                g.errors[size] = err.splitlines()[0] if err else "not evaluated"
    return list(out.values())


def main_groups(all_groups: Sequence[Group]) -> list[Group]:
    """The groups of the largest training fraction (the main table's)."""
    if not all_groups:
        return []
    top = max(g.fraction for g in all_groups)
    return [g for g in all_groups if g.fraction == top]


def pairwise(gs: Sequence[Group], size: int) -> list[dict[str, Any]]:
    """Every pair of models at ``size``: the paired bootstrap over test images and seeds
    (:func:`tokenmixers.stats.paired_bootstrap`), p-values Holm-adjusted over the pairs."""
    pairs = []
    for i, first in enumerate(gs):
        for second in gs[i + 1:]:
            # the better one first: differences are >= 0
            a, b = sorted((first, second), key=lambda g: -g.top1[size].mean
                          if size in g.top1 else 0.0)
            ha, hb = a.hits(size), b.hits(size)
            if ha is None or hb is None or ha.shape[1] != hb.shape[1]:
                continue
            pairs.append({"a": a, "b": b, "test": paired_bootstrap(ha, hb)})
    for pair, adj in zip(pairs, holm([p["test"].p for p in pairs])):
        pair["p_holm"] = adj
        pair["significant"] = adj < ALPHA
    return pairs


def _significance(gs: Sequence[Group], pairs: Sequence[dict[str, Any]], size: int
                  ) -> dict[str, str]:
    """The table's mark per model, against the best mean: ``best``; ``*`` significantly
    lower; ``n.s.`` not significantly different."""
    ranked = [g for g in gs if size in g.top1]
    if len(ranked) < 2 or not pairs:
        return {}
    best = max(ranked, key=lambda g: g.top1[size].mean)
    marks = {best.key: "best"}
    for p in pairs:
        if p["a"] is best:
            marks[p["b"].key] = "*" if p["significant"] else "n.s."
    return marks


def _pm(s: Summary | None) -> str:
    if s is None:
        return "n/a"
    return f"{s.mean:.2f}" if s.std is None else f"{s.mean:.2f} ± {s.std:.2f}"


def _ci(s: Summary | None) -> str:
    """The interval, cut to the 0-100% an accuracy can take (with 2 seeds t = 12.7 makes it
    wide; the cut changes no conclusion)."""
    if s is None or s.low is None or s.high is None:
        return "n/a"
    return f"[{max(s.low, 0.0):.2f}, {min(s.high, 100.0):.2f}]"


def _improving(g: Group) -> tuple[str, bool, float | None]:
    flag, slope = still_improving(g.curve())
    if slope is None:
        return "yes (1 epoch)", True, None
    return (f"yes (+{slope:.1f}/ep)" if flag else f"no ({slope:+.1f}/ep)"), flag, slope


def _same(values: Sequence[Any]) -> str:
    vals = sorted({str(v) for v in values})
    return vals[0] if len(vals) == 1 else "/".join(vals)


def _bench_row(bench: dict[str, Any] | None, size: int) -> dict[str, Any]:
    for row in (bench or {}).get("rows", []):
        if row.get("img_size") == size:
            return row
    return {}


def _rate(row: dict[str, Any]) -> str:
    if "infer_img_s" not in row:
        return "-"
    return (f"{row['infer_img_s']:.0f} ({row['infer_img_s_min']:.0f}-"
            f"{row['infer_img_s_max']:.0f})")


def busy_reasons(bench: dict[str, Any]) -> list[str]:
    """Why one model's throughput figures are unreliable (empty: they are not), from its
    benchmark record: other processes' CPU use meanwhile, and the spread of its timed
    batches at each size (:data:`BUSY_OTHER_CORES`, :data:`BUSY_SPREAD`)."""
    others = bench.get("other_cores")
    reasons = []
    if others is not None and others > BUSY_OTHER_CORES:
        reasons.append(f"other processes used {others:.1f} CPU cores meanwhile")
    spreads = {r["img_size"]: r["infer_img_s_max"] / r["infer_img_s_min"]
               for r in bench.get("rows", []) if r.get("infer_img_s_min")}
    unstable = {size: v for size, v in spreads.items() if v > BUSY_SPREAD}
    if unstable:
        quiet = not reasons and others is not None
        reasons.append("timed batches varied by " + ", ".join(
            f"x{v:.2f} at {k} px" for k, v in unstable.items()) + " (max/min rate)" + (
            f", while other processes used only {others:.2f} CPU cores: a noisy measurement "
            "rather than a busy machine; read the median" if quiet else ""))
    return reasons


def _si(value: float) -> str:
    """1.23e12 -> '1.23T'."""
    for factor, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if value >= factor:
            return f"{value / factor:.3g}{prefix}"
    return f"{value:.3g}"


def summary_rows(gs: Sequence[Group], benches: dict[str, dict[str, Any]] | None = None,
                 *, links: bool = False) -> tuple[list[str], list[list[Any]]]:
    """The main table: one row per model (mean ± std over its seeds). ``links``: the model
    cell is ``(text, href)`` to its folder."""
    benches = benches or {}
    sizes = sorted({s for g in gs for s in (*g.top1, *g.errors)})
    train_size = gs[0].first["train_size"] if gs else 0
    pairs = pairwise(gs, train_size)
    marks = _significance(gs, pairs, train_size)
    header = ["family", "model", "params", "MMACs", "seeds", "epochs", "train imgs",
              "train MACs", "time/seed", *[f"top-1 @{s}" for s in sizes],
              f"95% CI @{train_size}", "vs best", "still improving", "infer img/s",
              "peak MB"]
    rows = []
    for g in gs:
        r = g.first
        seeds = g.values("seed")
        bench = _bench_row(benches.get(g.key), train_size)
        rows.append([
            g.label, (g.model, f"{g.key}/") if links else g.model,
            f"{r['params'] / 1e6:.3f}M", f"{r['macs'] / 1e6:.1f}", str(len(seeds)),
            _same(g.values("epochs")), _same(g.values("train_images")),
            _si(float(np.mean(g.values("train_macs")))),
            f"{np.mean(g.values('train_time_s')):.0f}s",
            *[_pm(g.top1.get(s)) for s in sizes], _ci(g.top1.get(train_size)),
            marks.get(g.key, "-"), _improving(g)[0], _rate(bench),
            f"{bench['peak_mem_mb']:.0f}" if "peak_mem_mb" in bench else "-",
        ])
    return header, rows


def summary_table(gs: Sequence[Group], benches: dict[str, dict[str, Any]] | None = None
                  ) -> str:
    header, rows = summary_rows(gs, benches)
    return format_table(rows, header, "ll" + "r" * (len(header) - 2))


# ---- plots ---------------------------------------------------------------------------------
def _legend_outside(ax: Any) -> None:
    """The legend right of the axes, where it cannot cover a data point."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _errbar(s: Summary) -> tuple[float, float]:
    """Error bars of the plots: ± one standard deviation over seeds, the spread itself. (The
    95% t-interval is in the table; with 2 seeds it is ± 9 standard deviations and would
    flatten every plot.)"""
    return (s.std or 0.0, s.std or 0.0)


def figures(records: Sequence[dict[str, Any]],
            benches: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The report's matplotlib figures by file name (not saved; see :func:`write_report`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter

    def plain_ticks(axis: Any, values: Sequence[float] | None = None) -> None:
        # log axes label 3x10^1; people read 28, 56, 112
        if values:
            axis.set_ticks(sorted(set(values)))
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())

    benches = benches or {}
    all_groups = groups(records)
    gs = main_groups(all_groups)
    colors = {g.key: f"C{i}" for i, g in enumerate(gs)}
    train_size = gs[0].first["train_size"]
    figs: dict[str, Any] = {}

    # 1. accuracy vs parameters
    fig, ax = plt.subplots(figsize=(7.6, 4.4))
    params = []
    for g in gs:
        s = g.top1.get(train_size)
        if s is None:
            continue
        x = g.first["params"] / 1e6
        params.append(x)
        lo, hi = _errbar(s)
        ax.errorbar([x], [s.mean], yerr=[[lo], [hi]], fmt="o", ms=7, capsize=4,
                    color=colors[g.key], label=f"{g.label} ({len(g.runs)} seeds)")
        tops = [_eval_at(r, train_size)["top1"] for r in g.runs]  # type: ignore[index]
        ax.plot([x] * len(tops), tops, ".", color=colors[g.key], alpha=0.5, ms=4)
    if params and max(params) / min(params) > 5:
        ax.set_xscale("log")
        plain_ticks(ax.xaxis)
        ax.set_xlabel("parameters (millions, log scale)")
    else:
        ax.set_xlabel("parameters (millions)")
    ax.set_ylabel(f"test top-1 (%) at {train_size} px")
    ax.grid(True, which="both", alpha=0.3)
    _legend_outside(ax)
    figs["accuracy_vs_params.png"] = fig

    # 2. accuracy vs test resolution
    fig, ax = plt.subplots(figsize=(7.6, 4.4))
    for g in gs:
        sizes = sorted(g.top1)
        if not sizes:
            continue
        errs = np.array([_errbar(g.top1[s]) for s in sizes]).T
        ax.errorbar(sizes, [g.top1[s].mean for s in sizes], yerr=errs, marker="o",
                    capsize=3, color=colors[g.key], label=g.label)
    ax.axvline(train_size, color="grey", ls=":", lw=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("test resolution (pixels; dotted: training resolution)")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(True, alpha=0.3)
    _legend_outside(ax)
    figs["accuracy_vs_resolution.png"] = fig

    # 3. data-size sweep
    fractions = sorted({g.fraction for g in all_groups})
    if len(fractions) > 1:
        fig, ax = plt.subplots(figsize=(7.6, 4.4))
        xs_all = []
        for g0 in gs:
            line = sorted((g for g in all_groups if g.key == g0.key and train_size in g.top1),
                          key=lambda g: g.fraction)
            if not line:
                continue
            xs = [int(g.first.get("train_images") or 0) for g in line]
            xs_all += xs
            errs = np.array([_errbar(g.top1[train_size]) for g in line]).T
            ax.errorbar(xs, [g.top1[train_size].mean for g in line], yerr=errs, marker="o",
                        capsize=3, color=colors[g0.key], label=g0.label)
            for x, g in zip(xs, line):
                tops = [_eval_at(r, train_size)["top1"] for r in g.runs]  # type: ignore[index]
                ax.plot([x] * len(tops), tops, ".", color=colors[g0.key], alpha=0.5, ms=4)
        ax.set_xscale("log")
        plain_ticks(ax.xaxis, xs_all)
        ax.set_xlabel("training images (log scale)")
        ax.set_ylabel(f"test top-1 (%) at {train_size} px")
        ax.grid(True, which="both", alpha=0.3)
        _legend_outside(ax)
        figs["data_size.png"] = fig

    # 4. throughput and memory vs resolution, log-log, with guides for linear and
    # quadratic cost in the number of tokens (tokens grow with resolution squared)
    rows_by = {k: sorted((b for b in v.get("rows", []) if "infer_img_s" in b),
                         key=lambda b: b["img_size"]) for k, v in benches.items()}
    if any(rows_by.values()):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12.5, 4.4))
        all_sizes: list[int] = []
        for g in gs:
            rows = rows_by.get(g.key, [])
            if not rows:
                continue
            xs = [b["img_size"] for b in rows]
            all_sizes += xs
            med = np.array([b["infer_img_s"] for b in rows])
            err = np.array([med - [b["infer_img_s_min"] for b in rows],
                            np.array([b["infer_img_s_max"] for b in rows]) - med])
            ax1.errorbar(xs, med, yerr=err, marker="o", capsize=3, color=colors[g.key],
                         label=g.label)
            ax2.plot(xs, [max(b["peak_mem_mb"], 0.1) for b in rows], marker="o",
                     color=colors[g.key], label=g.label)
        lo, hi = min(all_sizes), max(all_sizes)
        ref = max((b["infer_img_s"] for rows in rows_by.values() for b in rows
                   if b["img_size"] == lo), default=None)
        if ref and hi > lo:
            for slope, style, text in ((-2, "--", "cost linear in tokens"),
                                       (-4, ":", "cost quadratic in tokens")):
                ax1.plot([lo, hi], [ref, ref * (hi / lo) ** slope], color="grey", ls=style,
                         lw=1, label=text)
        for ax, ylabel in ((ax1, "inference throughput (images/s)"),
                           (ax2, "peak inference memory (MB above the model)")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            plain_ticks(ax.xaxis, all_sizes)
            plain_ticks(ax.yaxis)
            ax.set_xlabel("input resolution (pixels, log scale)")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        # one legend for both panels (models and the guides), right of the memory panel
        h2, l2 = ax2.get_legend_handles_labels()
        h1, l1 = ax1.get_legend_handles_labels()
        guides = [(h, lab) for h, lab in zip(h1, l1) if lab.startswith("cost ")]
        ax2.legend([*h2, *(h for h, _ in guides)], [*l2, *(lab for _, lab in guides)],
                   fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
        figs["scaling.png"] = fig

    # 5. training curves: one thin line per seed
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12.5, 4.4))
    for g in gs:
        for i, r in enumerate(g.runs):
            curve = [c for c in r.get("curves", []) if "epoch" in c]
            if not curve:
                continue
            ep = [c["epoch"] for c in curve]
            label = g.label if i == 0 else None
            ax1.plot(ep, [c["top1"] for c in curve], marker="o", ms=3, lw=1,
                     color=colors[g.key], label=label)
            ax2.plot(ep, [c["train_loss"] for c in curve], marker="o", ms=3, lw=1,
                     color=colors[g.key], label=label)
    ax1.set_ylabel("validation top-1 (%), held-out split")
    ax2.set_ylabel("training loss (label-smoothed cross-entropy)")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    _legend_outside(ax2)
    figs["training_curves.png"] = fig
    for name, fig in figs.items():
        fig.suptitle(PLOTS[name].split(" (")[0], fontsize=11)
        fig.tight_layout()
    return figs


def legend_overlaps(fig: Any) -> list[str]:
    """Data points (line vertices, error-bar ends, scatter points) that a legend of ``fig``
    covers, in display coordinates; empty when every point is visible."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    boxes = [leg.get_window_extent(renderer) for leg in legends]
    hits = []
    for ax in fig.axes:
        points = [ax.transData.transform(line.get_xydata()) for line in ax.lines
                  if len(line.get_xydata())]
        for coll in ax.collections:
            offsets = coll.get_offsets()
            if len(offsets):
                points.append(coll.get_offset_transform().transform(offsets))
            for path in getattr(coll, "get_segments", lambda: [])():
                points.append(ax.transData.transform(path))
        for pts in points:
            for x, y in np.asarray(pts, dtype=float):
                for box in boxes:
                    if box.x0 <= x <= box.x1 and box.y0 <= y <= box.y1:
                        hits.append(f"({x:.0f}, {y:.0f}) under a legend in {ax.get_title()!r}")
    return hits


# ---- the report ----------------------------------------------------------------------------
Cell = Any  # str, or (text, href)


def _md_cell(c: Cell) -> str:
    return f"[{c[0]}]({c[1]})" if isinstance(c, tuple) else str(c)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Cell]], left: int = 2) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * left + ["---:"] * (len(header) - left)) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_cell(c: Cell) -> str:
    if isinstance(c, tuple):
        return f'<a href="{html.escape(c[1])}">{html.escape(c[0])}</a>'
    return html.escape(str(c))


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def recipe_paragraph(settings: dict[str, Any]) -> str | None:
    """What training recipe the models got (``compare --recipe``), and which choice is the
    fair one; ``None`` for a comparison that did not record it."""
    mode = settings.get("recipe_mode")
    if mode is None:
        return None
    recipes = settings.get("recipes") or {}
    fair = ("A shared recipe (--recipe deit, or any one preset for every model) is the fair "
            "comparison: only the architecture then differs.")
    if mode == "own":
        used = ", ".join(f"{k}: {v or 'the data recipe'}" for k, v in recipes.items())
        return ("Training recipe: each paper family's own preset (tokenmixers train --recipe; "
                f"{used}), so the models differ in epochs, learning rate, batch, "
                f"augmentation and regularisation as well as in architecture, as in the "
                f"papers. {fair}")
    if mode == "none":
        return ("Training recipe: the data's recipe (DeiT-style, scaled to the dataset), the "
                "same for every model: a shared recipe is the fair comparison, since only "
                "the architecture then differs.")
    return (f"Training recipe: the {mode} preset (tokenmixers train --recipe {mode}) for "
            f"every model. {fair}")


def write_report(records: Sequence[dict[str, Any]], out: Path, *, title: str,
                 tuning: dict[str, dict[str, Any]] | None = None,
                 benches: dict[str, dict[str, Any]] | None = None,
                 settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write report.md, report.html, summary.txt and the PNG plots into ``out``; returns
    their paths and ``legend_overlaps`` (data points under a legend: none expected)."""
    out = Path(out)
    tuning, benches, settings = tuning or {}, benches or {}, settings or {}
    if not records:
        raise ValueError("no runs to report")
    all_groups = groups(records)
    gs = main_groups(all_groups)
    train_size = gs[0].first["train_size"]
    figs = figures(records, benches)
    overlaps = {name: legend_overlaps(fig) for name, fig in figs.items()}
    for name, fig in figs.items():
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    for fig in figs.values():
        plt.close(fig)
    (out / "summary.txt").write_text(summary_table(gs, benches) + "\n")

    blocks: list[tuple[Any, ...]] = []  # ("h2"|"p"|"table"|"img"|"ul", ...)
    first = gs[0].first
    seeds = sorted({r.get("seed") for r in records})
    holdout = _same([r.get("holdout") for r in records])
    test_n = next((row.get("count") for row in first["eval"] if "count" in row), "?")
    blocks.append(("p", (
        f"{len(gs)} models, trained with seed(s) {', '.join(map(str, seeds))} (the seed "
        f"changes the initialisation, the data order and the augmentation). Each "
        f"trains on the training set minus a held-out {holdout} of it (stratified, the same "
        f"images for every model and seed), which gives the validation curves, the 'still "
        f"improving' flags and the tuning; the {test_n} test images are evaluated once, "
        f"with each run's final weights (never the best epoch). Epochs, seeds, learning "
        f"rates and training images are read from each run's own config.yaml.")))
    header, rows = summary_rows(gs, benches, links=True)
    blocks.append(("table", header, rows))
    blocks.append(("p", (
        f"top-1: test accuracy (%), mean ± standard deviation over seeds; 95% CI: Student's "
        f"t interval of the mean over seeds, cut to 0-100 (n/a with one seed; with 2 seeds it "
        f"is the mean ± 9 standard deviations, so read it as a warning, not a ranking). vs "
        f"best: the paired test "
        f"against the model with the best mean at {train_size} px: * significantly lower at "
        f"5%, n.s. not significantly different (paired bootstrap over test images and seeds, "
        f"{DRAWS} draws, "
        f"Holm-corrected over all pairs; see below). still improving: the validation top-1 "
        f"(mean over seeds) rose by {THRESHOLD} points per epoch or more over the last "
        f"{WINDOW} epochs (least-squares slope): more epochs would likely change the ranking. "
        f"train MACs: 3 x forward MACs x training images seen (forward and backward), per "
        f"seed. time/seed: training wall time. infer img/s: median of timed batches "
        f"(slowest-fastest).")))
    recipe_text = recipe_paragraph(settings)
    if recipe_text:
        blocks.append(("p", recipe_text))
    busy = [(key, reasons) for key, b in benches.items() if (reasons := busy_reasons(b))]
    if busy:
        blocks.append(("p", "WARNING: the throughput figures are unreliable (the machine "
                            "was busy, or the timed batches varied by more than "
                            f"x{BUSY_SPREAD}): " + "; ".join(
                                f"{k}: {', '.join(v)}" for k, v in busy)
                       + ". Measure again on a quiet machine (tokenmixers bench)."))

    pairs = pairwise(gs, train_size)
    if pairs:
        blocks.append(("h2", f"Paired differences at {train_size} px"))
        blocks.append(("table", ["better", "worse", "difference (points)", "95% interval",
                                 "p", "p (Holm)", "significant at 5%"],
                       [[p["a"].label, p["b"].label, f"{p['test'].diff:+.2f}",
                         f"[{p['test'].low:+.2f}, {p['test'].high:+.2f}]",
                         f"{p['test'].p:.4f}", f"{p['p_holm']:.4f}",
                         "yes" if p["significant"] else "no"] for p in pairs]))
        blocks.append(("p", (
            "Each pair is tested on the same test images: a bootstrap draw resamples the test "
            "images (the same ones for both models) and, independently per model, the seeds; "
            "the difference of mean accuracies over the draws gives the interval and the "
            "two-sided p-value. With few seeds the seed-to-seed spread is estimated roughly; "
            "a difference that is significant here is robust to which test images were drawn "
            "and to the seeds run, not to other recipes or datasets.")))

    if tuning:
        blocks.append(("h2", "Tuning (equal trials per model, validation split only)"))
        trow = []
        for g in gs:
            t = tuning.get(g.key)
            if not t:
                continue
            for trial in t["trials"]:
                chosen = trial["hparams"] == t["chosen"]
                trow.append([g.label, ", ".join(f"{k} {v:g}" for k, v in
                                                trial["hparams"].items()),
                             "diverged" if trial["val_top1"] is None else
                             f"{trial['val_top1']:.2f}", f"{trial['train_time_s']:.0f}s",
                             "chosen" if chosen else "",
                             (trial["run_dir"], trial["run_dir"] + "/")])
        blocks.append(("table", ["model", "trial", "val top-1", "time", "", "run"], trow))
        blocks.append(("p", (
            f"Every model got the same grid (seed {next(iter(tuning.values()))['seed']}, a "
            f"seed none of the reported runs uses); the final validation top-1 picked each "
            f"model's values, and the test split was loaded only after all tuning ended.")))

    fractions = sorted({g.fraction for g in all_groups})
    if len(fractions) > 1:
        blocks.append(("h2", "Data-size sweep"))
        srow = []
        for g0 in gs:
            line = sorted((g for g in all_groups if g.key == g0.key), key=lambda g: g.fraction)
            srow.append([g0.label, *[_pm(next((g.top1.get(train_size) for g in line
                                                 if g.fraction == f), None))
                                     for f in fractions]])
        counts = {g.fraction: g.first.get("train_images") for g in all_groups}
        blocks.append(("table", ["model", *[f"{counts[f]} imgs ({f:g})" for f in fractions]],
                       srow, 1))
        epochs = {g.fraction: _same(g.values("epochs")) for g in all_groups}
        blocks.append(("p", (
            "Test top-1 (%) at each training-set size, mean ± std over seeds. The subsets are "
            "nested and stratified (each class keeps its share; a larger subset holds every "
            "image of a smaller one) and the same for every model and seed. Smaller subsets "
            "train for more epochs so that every point gets the same optimizer updates: "
            + ", ".join(f"{counts[f]} images: {epochs[f]} epochs" for f in fractions) + ".")))

    for name in figs:
        blocks.append(("h2", PLOTS[name].split(" (")[0]))
        blocks.append(("img", name))

    blocks.append(("h2", "Runs"))
    run_rows = []
    for g in all_groups:
        for r in g.runs:
            d = r["run_dir"]
            run_rows.append([g.label, f"{g.fraction:g}", str(r.get("seed")), str(r.get("epochs")),
                             f"{r.get('lr', 0):.3g}", (d, d + "/"),
                             ("config.yaml", d + "/config.yaml"),
                             ("metrics.jsonl", d + "/metrics.jsonl")])
    blocks.append(("table", ["model", "fraction", "seed", "epochs", "lr", "folder", "config",
                             "metrics"], run_rows, 1))

    notes = []
    for g in gs:
        for size, err in g.errors.items():
            notes.append(f"{g.label} cannot run at {size} px: {err}")
    for key, b in benches.items():
        for row in b.get("rows", []):
            for err in row.get("errors", []):
                notes.append(f"{key} benchmark at {row['img_size']} px: {err}")
    bench = next((row for b in benches.values() for row in b.get("rows", [])
                  if "threads" in row), None)
    if bench:
        repeats = next(iter(benches.values()))["settings"].get("repeats", "?")
        loads = [max(b["load_before"], b["load_after"]) for b in benches.values()]
        others = [b.get("other_cores") or 0.0 for b in benches.values()]
        notes.append(
            f"Throughput: after all training, each model in a fresh process (tokenmixers "
            f"bench), median of {repeats} timed batches of {bench['batch_size']} "
            f"after warm-up, {bench['threads']} threads on {bench['device']}, torch "
            f"{bench['torch']}. Other processes used up to {max(others):.2f} CPU cores "
            f"meanwhile (from /proc/stat; the machine is called busy above "
            f"{BUSY_OTHER_CORES} or when a model's timed batches vary by more than "
            f"x{BUSY_SPREAD}); the 1-minute load average was up to {max(loads):.1f}, which "
            "includes this comparison's own training just before. Peak memory: rise of the "
            "process's peak resident set during inference.")
    if settings.get("wall_time_s"):
        notes.append(f"Wall time of the invocation that wrote this report: "
                     f"{_duration(settings['wall_time_s'])} (runs kept by --resume not "
                     "included).")
    blocks.append(("h2", "Notes"))
    blocks.append(("ul", notes))

    render_report(blocks, out, title=title, captions=PLOTS)
    return {"md": out / "report.md", "html": out / "report.html",
            "legend_overlaps": overlaps, **{p: out / p for p in figs}}


def render_report(blocks: Sequence[tuple[Any, ...]], out: Path, *, title: str,
                  captions: dict[str, str]) -> None:
    """Write ``blocks`` as ``out/report.md`` and a self-contained ``out/report.html`` (plots
    inlined), in the comparison's look. A block is ``("h2", text)``, ``("p", text)``,
    ``("table", header, rows[, left-aligned columns])``, ``("img", file in out)`` (captioned
    from ``captions``) or ``("ul", items)``; ``compare`` and the studies share it."""
    md = [f"# {title}", ""]
    for b in blocks:
        if b[0] == "h2":
            md += [f"## {b[1]}", ""]
        elif b[0] == "p":
            md += [b[1], ""]
        elif b[0] == "table":
            md += [_md_table(b[1], b[2], *(b[3:] or (2,))), ""]
        elif b[0] == "img":
            md += [f"![{captions.get(b[1], b[1])}]({b[1]})", ""]
        elif b[0] == "ul":
            md += [*[f"- {n}" for n in b[1]], ""]
    (out / "report.md").write_text("\n".join(md))

    parts = []
    for b in blocks:
        if b[0] == "h2":
            parts.append(f"<h2>{html.escape(b[1])}</h2>")
        elif b[0] == "p":
            parts.append(f"<p>{html.escape(b[1])}</p>")
        elif b[0] == "table":
            parts.append(_html_table(b[1], b[2]))
        elif b[0] == "img":
            data = base64.b64encode((out / b[1]).read_bytes()).decode()
            parts.append(f'<figure><img alt="{html.escape(captions.get(b[1], b[1]))}" '
                         f'src="data:image/png;base64,{data}"><figcaption>'
                         f"{html.escape(captions.get(b[1], b[1]))}</figcaption></figure>")
        elif b[0] == "ul":
            parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in b[1]) + "</ul>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1300px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 13px; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: right; }}
th:nth-child(-n+2), td:nth-child(-n+2) {{ text-align: left; }}
thead th {{ background: #f4f4f4; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }}
figcaption {{ color: #555; font-size: 13px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{''.join(parts)}
</body></html>
"""
    (out / "report.html").write_text(page)
