"""``tokenmixers study long-range``: which token mixers can tell whether two dots are joined
by a dashed contour (Pathfinder, the Long Range Arena task), at each difficulty.

Every mixer is trained in the same isotropic skeleton (``tokenmixers compare --skeleton
isotropic``: patch 4, so 64 tokens at 32 px) with one recipe on ``pathfinderSIZE:LEVEL``
for each level, in ``OUT/LEVEL/compare`` (``--resume`` keeps finished runs). The task needs
the whole contour, which spans the image: a mixer that cannot carry information far must
stay at chance (50%). A mixer "rises above chance" when its test accuracy does, by a
one-sided binomial test on its test images (pooled over seeds, each seed's correct count
added) at the 1% level, Holm-corrected over the mixers and levels.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tokenmixers.compare import compare
from tokenmixers.stats import holm
from tokenmixers.studies.common import (
    add_common_options,
    compare_config,
    eval_row,
    records,
    run_study,
    summarize_or_none,
    summary_text,
    top1_at,
)
from tokenmixers.text import split_list

CAPTIONS = {
    "long_range.png": "Test accuracy per mixer and difficulty (mean over seeds; whiskers: "
                      "95% t-interval when seeds > 1); dashed: chance (50%)",
    "samples.png": "Sample training images per difficulty (title: the label)",
}
ALPHA = 0.01
#: Images per level at ``--budget small`` (training, test): all ten mixers at three levels
#: and two seeds train in about an hour on a 2-core CPU. ``--budget paper`` uses the data's
#: own counts (10,000 and 2,000 at 32 px).
SMALL_IMAGES = (3_000, 1_000)


def image_counts(args: Any) -> tuple[int | None, int | None]:
    """(training, test) images per level: ``--train-images`` / ``--test-images`` when given,
    else :data:`SMALL_IMAGES` at ``--budget small`` and the data's own (None) otherwise."""
    small = args.budget == "small"
    return (args.train_images or (SMALL_IMAGES[0] if small else None),
            args.test_images or (SMALL_IMAGES[1] if small else None))


def _correct_counts(recs: list[dict[str, Any]], size: int) -> tuple[int, int]:
    """(correct, total) test answers at ``size``, summed over the runs (seeds)."""
    correct = total = 0
    for r in recs:
        answers = eval_row(r, size).get("correct", "")
        correct += answers.count("1")
        total += len(answers)
    return correct, total


def _samples(datasets: dict[str, str], out: Path, data_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tokenmixers.data import load_data

    fig, axes = plt.subplots(len(datasets), 6, figsize=(7.5, 1.45 * len(datasets)),
                             squeeze=False)
    for i, (level, data) in enumerate(datasets.items()):
        bundle = load_data(data, data_dir=data_dir)
        for j in range(6):
            img, label = bundle.train[j]
            ax = axes[i, j]
            ax.imshow(img, cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(bundle.classes[int(label)], fontsize=7)
            if j == 0:
                ax.set_ylabel(level, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=110)
    plt.close(fig)


def _plot(table: dict[str, dict[str, Any]], levels: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    mixers = list(table)
    width = 0.8 / max(1, len(levels))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(mixers) + 2), 3.8))
    for k, level in enumerate(levels):
        xs = np.arange(len(mixers)) + (k - (len(levels) - 1) / 2) * width
        means, errs = [], [[], []]
        for m in mixers:
            s = table[m][level]["summary"]
            means.append(s.mean if s else np.nan)
            lo = s.mean - s.low if s and s.low is not None else 0.0
            hi = s.high - s.mean if s and s.high is not None else 0.0
            errs[0].append(lo)
            errs[1].append(hi)
        ax.bar(xs, means, width, yerr=errs, capsize=2, label=level)
    ax.axhline(50, color="black", ls="--", lw=1)
    ax.set_xticks(range(len(mixers)), mixers, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test top-1 (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, title="difficulty", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "long_range.png", dpi=110)
    plt.close(fig)


def study_long_range(args: Any, out: Path, progress: Any = print) -> dict[str, Any]:
    from scipy.stats import binomtest

    from tokenmixers.data.pathfinder import level_of
    from tokenmixers.report import render_report

    t0 = time.perf_counter()
    levels = [level_of(x) for x in split_list(args.levels)]
    train_images, test_images = image_counts(args)
    extra = "".join(f":{k}={v}" for k, v in (("n", train_images), ("test", test_images)) if v)
    table: dict[str, dict[str, Any]] = {}
    datasets = {level: f"pathfinder{args.size}:{level}{extra}" for level in levels}
    for level, data in datasets.items():
        cfg = compare_config(args, out / level, data=data, eval_sizes=(args.size,))
        progress(f"== {data}")
        compare(cfg, progress=progress)
        for key, recs in records(cfg).items():
            correct, total = _correct_counts(recs, args.size)
            p = binomtest(correct, total, 0.5, alternative="greater").pvalue if total else 1.0
            table.setdefault(key, {"label": recs[0]["label"]})[level] = {
                "summary": summarize_or_none([top1_at(r, args.size) for r in recs]),
                "correct": correct, "total": total, "p": p, "seeds": len(recs)}
    cells = [(m, lv) for m in table for lv in levels]
    for (m, lv), adj in zip(cells, holm([table[m][lv]["p"] for m, lv in cells])):
        table[m][lv]["p_holm"] = adj
        table[m][lv]["above"] = adj < ALPHA
    _plot(table, levels, out)
    _samples(datasets, out, args.data_dir)
    (out / "long_range.json").write_text(json.dumps(
        {m: {lv: {k: (v.__dict__ if k == "summary" and v else v) for k, v in row[lv].items()}
             for lv in levels} for m, row in table.items()}, indent=1, default=str) + "\n")
    _report(table, levels, out, size=args.size, wall=time.perf_counter() - t0,
            render=render_report)
    return {"out": out, "table": table}


def _report(table: dict[str, dict[str, Any]], levels: list[str], out: Path, *, size: int,
            wall: float, render: Any) -> None:
    header = ["mixer", *levels, *[f"above chance: {lv}" for lv in levels]]
    rows = []
    for m, row in table.items():
        rows.append([m, *[summary_text(row[lv]["summary"]) for lv in levels],
                     *[("yes" if row[lv]["above"] else "no") + f" (p={row[lv]['p_holm']:.2g})"
                       for lv in levels]])
    hardest = levels[-1]
    above = [m for m, row in table.items() if row[hardest]["above"]]
    chance = [m for m, row in table.items() if not row[hardest]["above"]]
    seeds = next(iter(table.values()))[levels[0]]["seeds"]
    finding = (f"At {hardest}, {len(above)} of {len(table)} mixers rise above chance "
               f"({', '.join(above) or 'none'}); {', '.join(chance) or 'none'} "
               f"{'do' if len(chance) != 1 else 'does'} not, at the 1% level after Holm's "
               f"correction over {len(table) * len(levels)} tests. {seeds} seed(s) per mixer; "
               "a mixer at chance here may still learn with more epochs or data, so 'not "
               "above chance' is a statement about this budget.")
    blocks: list[tuple[Any, ...]] = [
        ("p", f"Pathfinder at {size}px (two marked dots, joined or not by a dashed contour "
              "among distractors; 50% each), every mixer in the same isotropic skeleton, one "
              "recipe, trained by tokenmixers compare per difficulty (LEVEL/compare/"
              "report.md)."),
        ("h2", "Finding"), ("p", finding),
        ("h2", "Accuracy per difficulty"), ("table", header, rows, 1),
        ("img", "long_range.png"), ("img", "samples.png"),
        ("h2", "Notes"),
        ("ul", ["Cells: test top-1 (%), mean [95% t-interval] over seeds.",
                "Above chance: one-sided binomial test of the test answers (all seeds "
                "pooled) against 50%, Holm-corrected, at the 1% level.",
                f"Wall time: {wall / 60:.1f} min (runs kept by --resume not included)."]),
    ]
    render(blocks, out, title=f"Long range: Pathfinder {size}px, isotropic skeleton",
           captions=CAPTIONS)


def add_parser(studies: Any) -> None:
    p = studies.add_parser("long-range", help="Pathfinder: which mixers rise above chance "
                           "at each difficulty")
    add_common_options(p, data=False)
    p.add_argument("--size", type=int, default=32, choices=[32, 64, 128, 256],
                   help="image size (default 32: 64 tokens of 4x4 px)")
    p.add_argument("--levels", default="easy,intermediate,hard",
                   help="difficulties (default easy,intermediate,hard)")
    p.add_argument("--train-images", type=int, default=None,
                   help=f"generated training images per level (default: {SMALL_IMAGES[0]:,} "
                        "at --budget small, the data's own at --budget paper)")
    p.add_argument("--test-images", type=int, default=None,
                   help=f"generated test images per level (default: {SMALL_IMAGES[1]:,} at "
                        "--budget small, the data's own at --budget paper)")
    p.add_argument("--out", default="", help="default: runs/study-long-range-SIZE")
    p.set_defaults(func=_cmd)


def _cmd(args: Any) -> int:
    return run_study(args, f"runs/study-long-range-{args.size}",
                     lambda out: study_long_range(args, out))
