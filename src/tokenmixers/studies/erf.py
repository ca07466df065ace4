"""``tokenmixers study erf``: every token mixer's effective receptive field in the same
skeleton, untrained and trained, in one figure and one table.

The models are trained by ``tokenmixers compare --skeleton isotropic`` (its folder is
``OUT/compare``, so ``--resume`` keeps finished runs and the comparison's own report sits
beside this one). Each mixer's ERF (:mod:`tokenmixers.erf`) is measured on the same test
images after the last block: once per seed with the trained weights, and once per seed
with the initial weights of that seed. The numbers are means over seeds, with the spread.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from tokenmixers.compare import CompareConfig, compare, entries, final_weights, run_name, seeds
from tokenmixers.erf import ERF, erf_map, erf_stats
from tokenmixers.studies.common import add_common_options, compare_config, run_study
from tokenmixers.zoo import create_model

CAPTIONS = {
    "erf.png": "Effective receptive field of the centre token after the last block (mean "
               "|input gradient| over the test images and seeds, log scale, each map "
               "normalised to its maximum); top: initial weights, bottom: trained",
}


def _images(cfg: CompareConfig, count: int, img_size: int) -> torch.Tensor:
    """The first ``count`` test images of a fixed shuffle, through the evaluation transform."""
    import numpy as np

    from tokenmixers.data import Transformed, eval_transform, load_data

    bundle = load_data(cfg.data, data_dir=cfg.data_dir, seed=cfg.seed)
    view = Transformed(bundle.val, eval_transform(img_size, bundle.in_chans, bundle.mean,
                                                  bundle.std, crop_pct=bundle.crop_pct))
    idx = np.random.default_rng(0).permutation(len(view))[:count]  # type: ignore[arg-type]
    return torch.stack([view[int(i)][0] for i in idx])


def _mean_map(maps: list[ERF]) -> ERF:
    first = maps[0]
    return ERF(torch.stack([m.map for m in maps]).mean(0), first.centre, first.reduction,
               first.patch, first.index)


def _spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def plot_grid(columns: list[tuple[str, ERF, ERF]], path: Path) -> Path:
    """Two rows (initial, trained), one column per mixer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(columns)
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.9), squeeze=False)
    for j, (label, untrained, trained) in enumerate(columns):
        for i, (state, erf) in enumerate((("initial", untrained), ("trained", trained))):
            ax = axes[i, j]
            m = erf.map / max(float(erf.map.max()), 1e-30)
            ax.imshow(torch.log10(m + 1e-4).numpy(), cmap="viridis", vmin=-4, vmax=0)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{label}\n{state}: 50% in {erf_stats(erf).area50:.0%}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def study_erf(cfg: CompareConfig, *, images: int = 32,
              progress: Any = print) -> dict[str, Any]:
    """Train (or keep) the comparison ``cfg`` describes, measure every model's ERF and write
    the report in ``cfg.out``'s parent; returns the rows."""
    from tokenmixers.report import render_report

    t0 = time.perf_counter()
    out = Path(cfg.out).parent
    compare(cfg, progress=progress)
    todo = entries(cfg)
    rows, columns = [], []
    batch: torch.Tensor | None = None
    for entry in todo:
        trained_maps, initial_maps = [], []
        for seed in seeds(cfg):
            loaded = final_weights(Path(cfg.out) / entry.key / run_name(seed))
            model = loaded.model
            if batch is None:
                batch = _images(cfg, images, model.img_size[0])
            trained_maps.append(erf_map(model, batch))
            torch.manual_seed(seed)
            fresh = create_model(entry.model, **{**entry.overrides, **_data_overrides(model)})
            initial_maps.append(erf_map(fresh, batch))
        row: dict[str, Any] = {"mixer": entry.key, "label": entry.label,
                               "seeds": len(trained_maps)}
        for state, maps in (("initial", initial_maps), ("trained", trained_maps)):
            stats = [erf_stats(m) for m in maps]
            for key in ("area50", "area90", "radius"):
                row[f"{state}_{key}"] = _spread([getattr(s, key) for s in stats])
            row[f"{state}_reach"] = max(max(s.reach.values()) for s in stats)
        rows.append(row)
        columns.append((entry.key, _mean_map(initial_maps), _mean_map(trained_maps)))
        progress(f"== {entry.label}: ERF measured on {images} test images, "
                 f"{len(trained_maps)} seed(s)")
    assert batch is not None
    plot_grid(columns, out / "erf.png")
    (out / "erf.json").write_text(json.dumps(rows, indent=1) + "\n")
    _write_report(cfg, rows, out, images=len(batch), wall=time.perf_counter() - t0,
                  render=render_report)
    return {"rows": rows, "out": out}


def _data_overrides(model: Any) -> dict[str, Any]:
    """What ``compare`` set from the data when it built the model (classes, channels,
    size), so the untrained twin is the same architecture."""
    return {"num_classes": model.num_classes, "in_chans": model.patch_embed.in_chans,
            "img_size": model.img_size[0]}


def _pm(value: tuple[float, float], fmt: str) -> str:
    mean, std = value
    return f"{mean:{fmt}} ± {std:{fmt}}"


def _write_report(cfg: CompareConfig, rows: list[dict[str, Any]], out: Path, *, images: int,
                  wall: float, render: Any) -> None:
    header = ["mixer", "model", "50% area: initial", "50% area: trained", "90% area: trained",
              "radius px: initial", "radius px: trained", "reach (patches)"]
    table = [[r["mixer"], r["label"], _pm(r["initial_area50"], ".1%"),
              _pm(r["trained_area50"], ".1%"), _pm(r["trained_area90"], ".1%"),
              _pm(r["initial_radius"], ".1f"), _pm(r["trained_radius"], ".1f"),
              f"{r['trained_reach']:g}"] for r in rows]
    by_radius = sorted(rows, key=lambda r: r["trained_radius"][0])
    widest, narrowest = by_radius[-1], by_radius[0]
    grew = [r["mixer"] for r in rows if r["trained_radius"][0] > r["initial_radius"][0]]
    finding = (
        f"Trained, {widest['mixer']} integrates over the widest area (radius of gyration "
        f"{_pm(widest['trained_radius'], '.1f')} px) and {narrowest['mixer']} over the "
        f"narrowest ({_pm(narrowest['trained_radius'], '.1f')} px); training widened the field "
        f"of {len(grew)} of {len(rows)} mixers ({', '.join(grew) or 'none'}). With "
        f"{rows[0]['seeds']} seed(s) per mixer, differences smaller than the ± spreads are "
        "not established.")
    blocks: list[tuple[Any, ...]] = [
        ("p", f"Every mixer in the same isotropic skeleton, trained by tokenmixers compare "
              f"on {cfg.data} (its report: compare/report.md); the effective receptive field "
              f"of the centre token after the last block, on {images} test images."),
        ("h2", "Finding"), ("p", finding),
        ("h2", "Effective receptive fields"), ("table", header, table, 2), ("img", "erf.png"),
        ("h2", "Notes"),
        ("ul", [
            "ERF (Luo et al. 2016): mean over images of |d(centre output, summed over "
            "channels) / d(input pixels)|, summed over the input channels.",
            "50% / 90% area: RepLKNet's high-contribution area ratio, the smallest rectangle "
            "centred on the centre token's pixels that holds that share of the total, over "
            "the image's area. Radius: the radius of gyration about the map's centre of mass. "
            "Reach: how many patches beyond its own the non-zero gradient extends (largest "
            "direction).",
            "± is the standard deviation over seeds (each seed: its own initial weights and "
            "its own training run).",
            f"Wall time: {wall / 60:.1f} min (runs kept by --resume not included).",
        ]),
    ]
    render(blocks, out, title=f"Effective receptive fields: {cfg.data}, isotropic skeleton",
           captions=CAPTIONS)


def add_parser(studies: Any) -> None:
    p = studies.add_parser("erf", help="every mixer's effective receptive field in one "
                           "skeleton, untrained and trained")
    add_common_options(p)
    p.add_argument("--images", type=int, default=32, help="test images per ERF (default 32)")
    p.add_argument("--out", default="", help="default: runs/study-erf-DATA")
    p.set_defaults(func=_cmd)


def _cmd(args: Any) -> int:
    if args.images < 1:
        raise ValueError(f"--images {args.images}: expected at least 1")
    return run_study(args, f"runs/study-erf-{args.data.split(':')[0]}",
                     lambda out: study_erf(compare_config(args, out), images=args.images))
