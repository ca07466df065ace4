"""``tokenmixers study resolution``: train every mixer at one size, test it from half to
twice that size, and measure its throughput and memory at those sizes.

The Sequencer paper's claim under test: Sequencer2D loses little accuracy when the test
resolution grows, unlike ViT-style models. Each mixer is trained in the same isotropic
skeleton by ``tokenmixers compare`` (``OUT/compare``; ``--resume`` keeps finished runs) at
the data's size ``s``, evaluated on the test split at every multiple of 4 pixels from
``s/2`` to ``2s`` (the position embedding resampled as timm does; a mixer built for one
grid, such as the Mixer's token MLP or the random-mixing control, says why it cannot take
another size), and benchmarked at ``s/2``, ``s`` and ``2s`` in fresh processes
(``tokenmixers bench``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tokenmixers.compare import compare
from tokenmixers.data import parse_data
from tokenmixers.studies.common import (
    add_common_options,
    compare_config,
    records,
    refusal,
    run_study,
    summarize_or_none,
    summary_text,
    top1_at,
)

CAPTIONS = {
    "resolution.png": "Test accuracy against test resolution, trained at the marked size "
                      "(mean over seeds; band: 95% t-interval when seeds > 1); a line stops "
                      "where the model cannot take the size",
    "resolution_cost.png": "Inference throughput and peak memory against resolution, each "
                           "model in a fresh process (median; log-log)",
}


def study_sizes(train: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(test sizes: every multiple of 4 from ``train/2`` to ``2·train``, with ``train``;
    benchmark sizes: about ``train/2``, ``train`` and ``2·train``)."""
    low = max(4, math.ceil(train / 2 / 4) * 4)
    high = 2 * train // 4 * 4
    sizes = sorted({*range(low, high + 1, 4), train})
    return tuple(sizes), (low, train, high)


def _plot(rows: dict[str, dict[str, Any]], sizes: tuple[int, ...], train: int,
          benches: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, row in rows.items():
        pts = [(s, row["by_size"][s]) for s in sizes if row["by_size"][s] is not None]
        if not pts:
            continue
        xs = [s for s, _ in pts]
        line = ax.plot(xs, [v.mean for _, v in pts], "o-", ms=3, label=key)[0]
        if all(v.low is not None for _, v in pts):
            ax.fill_between(xs, [v.low for _, v in pts], [v.high for _, v in pts],
                            color=line.get_color(), alpha=0.15)
    ax.axvline(train, color="grey", ls=":", lw=1)
    ax.set_xlabel("test resolution (px)")
    ax.set_ylabel("test top-1 (%)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "resolution.png", dpi=110)
    plt.close(fig)

    if not benches:
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for key, bench in benches.items():
        ok = [r for r in bench["rows"] if "infer_img_s" in r]
        if not ok:
            continue
        xs = [r["img_size"] for r in ok]
        a1.plot(xs, [r["infer_img_s"] for r in ok], "o-", ms=3, label=key)
        a2.plot(xs, [r.get("peak_mem_mb") or float("nan") for r in ok], "o-", ms=3, label=key)
    for ax, what in ((a1, "images / s"), (a2, "peak memory (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("resolution (px)")
        ax.set_ylabel(what)
    if benches:
        a1.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "resolution_cost.png", dpi=110)
    plt.close(fig)


def study_resolution(args: Any, out: Path, progress: Any = print) -> dict[str, Any]:
    from tokenmixers.report import render_report

    t0 = time.perf_counter()
    train = args.img_size or parse_data(args.data).native_size
    sizes, bench_sizes = study_sizes(train)
    cfg = compare_config(args, out, img_size=args.img_size, eval_sizes=sizes,
                         bench=not args.no_bench, bench_sizes=bench_sizes)
    compare(cfg, progress=progress)
    found = records(cfg)
    rows: dict[str, dict[str, Any]] = {}
    for key, recs in found.items():
        by_size = {s: summarize_or_none([top1_at(r, s) for r in recs]) for s in sizes}
        reasons = {s: refusal(recs[0], s) for s in sizes if by_size[s] is None}
        rows[key] = {"label": recs[0]["label"], "by_size": by_size, "refused": reasons,
                     "seeds": len(recs)}
    benches = {}
    for key in found:
        path = Path(cfg.out) / key / "bench.json"
        if path.is_file():
            benches[key] = json.loads(path.read_text())
    _plot(rows, sizes, train, benches, out)
    result = {key: {"label": r["label"], "seeds": r["seeds"],
                    "top1": {s: (None if v is None else v.__dict__)
                             for s, v in r["by_size"].items()},
                    "refused": r["refused"]} for key, r in rows.items()}
    (out / "resolution.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    _report(rows, sizes, train, benches, out, data=args.data,
            wall=time.perf_counter() - t0, render=render_report)
    return {"out": out, "rows": rows}


def _retained(row: dict[str, Any], size: int, train: int) -> float | None:
    at, base = row["by_size"].get(size), row["by_size"].get(train)
    return None if at is None or base is None or base.mean == 0 else at.mean / base.mean


def _report(rows: dict[str, dict[str, Any]], sizes: tuple[int, ...], train: int,
            benches: dict[str, Any], out: Path, *, data: str, wall: float,
            render: Any) -> None:
    low, high = sizes[0], sizes[-1]
    header = ["mixer", *[f"{s}px" + (" (train)" if s == train else "") for s in sizes],
              f"kept at {low}px", f"kept at {high}px"]
    table = []
    for key, row in rows.items():
        kept = [_retained(row, s, train) for s in (low, high)]
        table.append([key, *[summary_text(row["by_size"][s]) for s in sizes],
                      *[("–" if k is None else f"{k:.0%}") for k in kept]])
    ranked = sorted(((k, _retained(r, high, train)) for k, r in rows.items()),
                    key=lambda kv: -1.0 if kv[1] is None else kv[1], reverse=True)
    able = [(k, v) for k, v in ranked if v is not None]
    refused = [k for k, r in rows.items() if r["refused"]]
    seeds = next(iter(rows.values()))["seeds"]
    finding = (
        (f"At twice the training size, {able[0][0]} keeps the most of its accuracy "
         f"({able[0][1]:.0%} of its top-1 at {train}px) and {able[-1][0]} the least "
         f"({able[-1][1]:.0%}). " if able else "No model took twice the training size. ")
        + (f"{', '.join(refused)} cannot take other sizes at all. " if refused else "")
        + (f"Intervals over {seeds} seeds are in the table; rankings within overlapping "
           "intervals are not established." if seeds > 1 else
           "With one seed per model, nothing here says how much of a difference is noise."))
    notes = [f"{k}: cannot run at {', '.join(f'{s}px' for s in r['refused'])} "
             f"({next(iter(r['refused'].values()))})" for k, r in rows.items() if r["refused"]]
    notes += ["Cells: test top-1 (%), mean [95% t-interval] over seeds; kept: top-1 at that "
              "size over top-1 at the training size.",
              "Isotropic models resample their position embedding to the test grid "
              "(bicubic, as timm's dynamic_img_size).",
              f"Wall time: {wall / 60:.1f} min (runs kept by --resume not included)."]
    cost_rows = []
    for key, bench in benches.items():
        for r in bench["rows"]:
            if "infer_img_s" in r:
                cost_rows.append([key, str(r["img_size"]), f"{r['infer_img_s']:.0f}",
                                  f"{r.get('peak_mem_mb') or float('nan'):.1f}"])
            else:
                cost_rows.append([key, str(r["img_size"]), "cannot run", "–"])
    blocks: list[tuple[Any, ...]] = [
        ("p", f"Every mixer in the same isotropic skeleton, trained at {train}px on {data} "
              "by tokenmixers compare (its report: compare/report.md), tested at each size "
              "from half to twice that."),
        ("h2", "Finding"), ("p", finding),
        ("h2", "Accuracy against test resolution"), ("table", header, table, 1),
        ("img", "resolution.png"),
    ]
    if cost_rows:
        blocks += [("h2", "Throughput and memory"),
                   ("table", ["mixer", "px", "images/s", "peak MB"], cost_rows, 1),
                   ("img", "resolution_cost.png")]
    blocks += [("h2", "Notes"), ("ul", notes)]
    render(blocks, out, title=f"Resolution robustness: {data}, isotropic skeleton",
           captions=CAPTIONS)


def add_parser(studies: Any) -> None:
    p = studies.add_parser("resolution", help="train at one size, test from half to twice "
                           "that size; throughput and memory per size")
    add_common_options(p)
    p.add_argument("--img-size", type=int, default=None,
                   help="training size (default: the data's own)")
    p.add_argument("--no-bench", action="store_true", help="skip throughput and memory")
    p.add_argument("--out", default="", help="default: runs/study-resolution-DATA")
    p.set_defaults(func=_cmd)


def _cmd(args: Any) -> int:
    return run_study(args, f"runs/study-resolution-{args.data.split(':')[0]}",
                     lambda out: study_resolution(args, out))
