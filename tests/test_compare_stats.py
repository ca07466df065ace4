"""The statistics and the report of `tokenmixers compare`, without training: known answers
for the interval and the paired test, nested stratified subsets, and a report rendered from
constructed runs (tables, marks, links, no legend over a point)."""

from __future__ import annotations

import math
import statistics
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tokenmixers.compare import CompareConfig, _prepare_out, sweep_epochs
from tokenmixers.data import nested_stratified_subset, training_views
from tokenmixers.data.arrays import ArrayImageDataset
from tokenmixers.report import busy_reasons, figures, legend_overlaps, write_report
from tokenmixers.stats import holm, paired_bootstrap, still_improving, summarize

T_975_DF1 = 12.706204736174707  # Student's t, 97.5th percentile, 1 degree of freedom


def test_summary_matches_hand_computation() -> None:
    s = summarize([90.0, 94.0])
    assert s.mean == 92.0 and s.std == pytest.approx(statistics.stdev([90.0, 94.0]))
    half = T_975_DF1 * statistics.stdev([90.0, 94.0]) / math.sqrt(2)
    assert (s.low, s.high) == pytest.approx((92.0 - half, 92.0 + half))
    one = summarize([91.0])
    assert one.std is None and one.low is None  # one seed: no spread, no interval


def test_paired_bootstrap_known_answers() -> None:
    rng = np.random.default_rng(1)
    hits = (rng.random((2, 500)) < 0.8).astype(int)
    same = paired_bootstrap(hits, hits, draws=2000)
    assert same.diff == 0 and same.p > 0.5 and same.low < 0 < same.high  # seeds resampled
    one = paired_bootstrap(hits[:1], hits[:1], draws=2000)
    assert one.p == 1.0 and one.low == one.high == 0
    # B is A with 60 of A's hits turned into misses: A never worse, better on 60 images
    better = hits.copy()
    worse = hits.copy()
    worse[:, np.flatnonzero(hits[0] & hits[1])[:60]] = 0
    test = paired_bootstrap(better, worse, draws=2000)
    assert test.diff == pytest.approx(12.0) and test.p < 0.01 and test.low > 0
    # a single differing image is not evidence
    tiny = hits.copy()
    tiny[:, np.flatnonzero(hits[0] & hits[1])[0]] = 0
    assert paired_bootstrap(hits, tiny, draws=2000).p > 0.05
    with pytest.raises(ValueError, match="same test images"):
        paired_bootstrap(hits, hits[:, :10])


def test_holm_and_still_improving() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert still_improving([50, 60, 70, 80]) == (True, pytest.approx(10.0))
    assert still_improving([90, 95, 95.1, 95.0, 95.1])[0] is False
    assert still_improving([50])[0] is True  # one epoch says nothing about convergence


def test_nested_stratified_subsets() -> None:
    labels = np.repeat(np.arange(10), [40, 50, 60, 30, 40, 50, 60, 30, 40, 100])
    subsets = {f: nested_stratified_subset(labels, f) for f in (0.1, 0.25, 0.5, 1.0)}
    for small, large in ((0.1, 0.25), (0.25, 0.5), (0.5, 1.0)):
        assert set(subsets[small]) <= set(subsets[large])
    for f, idx in subsets.items():  # every class keeps its share
        counts = np.bincount(labels[idx], minlength=10)
        assert np.array_equal(counts, [max(1, round(f * n)) for n in np.bincount(labels)])
    # nothing but the labels and the fraction decides: the same for every model and seed
    assert np.array_equal(nested_stratified_subset(labels, 0.25), subsets[0.25])
    images = np.zeros((len(labels), 4, 4), dtype=np.uint8)
    data = ArrayImageDataset(images, labels, [str(i) for i in range(10)])
    train, val, idx = training_views(data, holdout=0.1, train_fraction=0.5)
    assert len(train) == len(idx["train"]) == 225  # type: ignore[arg-type]
    assert not set(idx["train"]) & set(idx["val"]) and len(val) == 50  # type: ignore[arg-type]
    assert np.array_equal(np.bincount(labels[idx["val"]]), np.bincount(labels) // 10)
    assert training_views(data, holdout=0.1, train_fraction=0.5)[2] == idx
    assert sweep_epochs(5, full=3600, part=360, batch=64) == 56  # same optimizer updates


def test_out_folder_refusals(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    _prepare_out(CompareConfig(out=str(out), resume=True), out)  # nothing yet: starts
    out.mkdir()
    (out / "mine").mkdir()  # a run a user put there
    with pytest.raises(ValueError, match="--resume to continue it, --overwrite to replace it"):
        _prepare_out(CompareConfig(out=str(out)), out)
    with pytest.raises(ValueError, match="no comparison there"):
        _prepare_out(CompareConfig(out=str(out), resume=True), out)
    (out / "vit").mkdir()
    _prepare_out(CompareConfig(out=str(out), overwrite=True), out)
    assert (out / "mine").is_dir() and not (out / "vit").exists()  # only its own runs go


# ---- a report from constructed runs ----------------------------------------------------
def _record(key: str, label: str, seed: int, acc: float, fraction: float = 1.0,
            n: int = 200) -> dict[str, Any]:
    rng = np.random.default_rng(zlib.crc32(f"{key}{seed}{fraction}".encode()))
    hits = (rng.random(n) < acc).astype(int)
    run = f"{key}/seed{seed}" if fraction == 1 else f"{key}/frac{fraction:g}/seed{seed}"
    curve = [{"epoch": e, "top1": 100 * acc * (e / 4 if key == "vit" else 1), "train_loss":
              2.0 / e, "step": 10 * e} for e in range(1, 5)]
    return {
        "family": key, "label": label, "mixer": key, "skeleton": "native", "model": key + "_m",
        "overrides": {}, "model_config": {}, "params": 300_000 + len(key) * 1000,
        "macs": 16e6, "train_size": 28, "run_dir": run, "options": {}, "seed": seed,
        "epochs": 4, "batch_size": 64, "lr": 2e-3, "holdout": 0.1,
        "train_fraction": fraction, "train_images": int(3600 * fraction), "steps": 40,
        "train_macs": 3 * 16e6 * 2560, "train_time_s": 10.0, "curves": curve,
        "eval": [{"img_size": 28, "top1": 100 * hits.mean(), "count": n,
                  "correct": "".join(map(str, hits))},
                 {"img_size": 32, "top1": 100 * hits.mean() - 3, "count": n}],
    }


def _records() -> list[dict[str, Any]]:
    out = []
    for fraction in (0.25, 1.0):
        for key, label, acc in (("vit", "ViT", 0.6), ("mixer", "MLP-Mixer", 0.95),
                                ("vil", "Vision-LSTM", 0.94)):
            for seed in (0, 1):
                out.append(_record(key, label, seed, acc * (0.8 if fraction < 1 else 1),
                                   fraction))
    return out


def test_report_renders_with_marks_links_and_visible_points(tmp_path: Path) -> None:
    records = _records()
    bench_rows = [{"img_size": s, "infer_img_s": 1000 / s, "infer_img_s_min": 900 / s,
                   "infer_img_s_max": 1100 / s, "peak_mem_mb": s / 10, "batch_size": 32,
                   "threads": 2, "device": "cpu", "torch": "x"} for s in (28, 56)]
    benches = {k: {"settings": {"repeats": 7}, "rows": bench_rows, "load_before": 0.1,
                   "load_after": 0.2, "other_cores": 0.9}
               for k in ("vit", "mixer", "vil")}
    result = write_report(records, tmp_path, title="t", benches=benches)
    assert all(not hits for hits in result["legend_overlaps"].values())
    md = (tmp_path / "report.md").read_text()
    main_table = md.split("\n\n")[2]  # title, description, the table
    row = {line.split(" | ")[0].strip("| "): line.split(" | ")
           for line in main_table.splitlines()[2:]}
    vit = [r for r in records if r["family"] == "vit" and r["train_fraction"] == 1.0]
    tops = [r["eval"][0]["top1"] for r in vit]
    assert f"{statistics.mean(tops):.2f} ± {statistics.stdev(tops):.2f}" in row["ViT"]
    assert "[vit_m](vit/)" in row["ViT"] and "*" in row["ViT"]  # far below the best
    # 95% vs 94% on 200 images: either may come out best, and the other is n.s.
    assert {row["MLP-Mixer"][12], row["Vision-LSTM"][12]} == {"best", "n.s."}
    assert any(c.startswith("yes") for c in row["ViT"])  # its curve still climbs
    assert any(c.startswith("no") for c in row["MLP-Mixer"])
    assert "WARNING: the throughput figures are unreliable" in md
    assert "other processes used 0.9 CPU cores" in md
    quiet = {"other_cores": 0.02, "rows": [{**bench_rows[0], "infer_img_s_min": 10.0}]}
    assert "a noisy measurement rather than a busy machine" in busy_reasons(quiet)[0]
    assert busy_reasons({"other_cores": 0.02, "rows": bench_rows}) == []
    assert "## Data-size sweep" in md
    assert "[config.yaml](vit/frac0.25/seed1/config.yaml)" in md
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and 'href="vit/seed0/"' in html


def test_legend_check_sees_a_covered_point() -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    grid = np.mgrid[0:1:20j, 0:1:20j].reshape(2, -1)
    ax.plot(grid[0], grid[1], "o", label="points everywhere, some under the legend")
    ax.legend(loc="center")
    assert legend_overlaps(fig)
    plt.close(fig)
    figs = figures(_records())
    assert set(figs) >= {"accuracy_vs_params.png", "data_size.png", "training_curves.png"}
    for fig in figs.values():
        assert legend_overlaps(fig) == []
        plt.close(fig)
