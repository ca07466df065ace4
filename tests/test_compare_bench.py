"""`tokenmixers bench` and a miniature `tokenmixers compare`, end to end."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
import torch
import yaml

from tokenmixers.cli import main

TINY = ["img_size=32", "patch_size=8", "embed_dim=48"]  # names both ViT and Mixer take


def test_bench_json_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "vit_tiny_patch16_224,mixer_s16_224", "--model-kwargs",
                 *TINY, "--img-size", "32,64", "--batch-size", "2", "--repeats", "2",
                 "--warmup", "1", "--threads", "1", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "infer img/s" in table and "matmul peak" in table
    records = json.loads(out.read_text())
    assert [(r["model"], r["img_size"]) for r in records] == [
        ("vit_tiny_patch16_224", 32), ("vit_tiny_patch16_224", 64),
        ("mixer_s16_224", 32), ("mixer_s16_224", 64)]
    vit32, vit64 = records[0], records[1]
    for r in (vit32, vit64):
        for key in ("model", "img_size", "params", "macs", "flops", "infer_img_s",
                    "train_img_s", "peak_mem_mb", "train_peak_mem_mb", "mfu", "train_mfu"):
            assert key in r, key
        assert r["flops"] == 2 * r["macs"] and r["infer_img_s"] > 0 and r["mfu"] > 0
        assert r["infer_img_s_min"] <= r["infer_img_s"] <= r["infer_img_s_max"]
    assert vit64["macs"] > vit32["macs"]
    # img_size/patch_size overrides do not fit a Mixer built for 32 px at 64: reported, not fatal
    assert "errors" in records[3] and "img_size=64" in records[3]["errors"][0]


def test_bench_rejects_unknown_model() -> None:
    assert main(["bench", "--model", "vit_tiny_patch16_22"]) == 2


MINI = ["compare", "--models", "mixer,shiftvit", "--seeds", "2", "--epochs", "1",
        "--limit-train", "96", "--limit-val", "48", "--batch-size", "16", "--eval-sizes",
        "24,28", "--bench-sizes", "28", "--bench-batch-size", "2", "--threads", "1",
        "--progress", "none"]


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A miniature comparison: two models, two seeds, one epoch on a few dozen digits."""
    out = tmp_path_factory.mktemp("compare") / "cmp"
    assert main([*MINI, "--out", str(out)]) == 0
    return out


def _table(md: str) -> dict[str, dict[str, str]]:
    """The report's main table: model label -> column -> cell."""
    lines = md.split("\n\n")[2].splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(header, cells)) for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}


def test_miniature_compare(mini: Path) -> None:
    for name in ("report.md", "report.html", "summary.txt", "accuracy_vs_params.png",
                 "accuracy_vs_resolution.png", "scaling.png", "training_curves.png"):
        assert (mini / name).stat().st_size > 0, name
    md = (mini / "report.md").read_text()
    table = _table(md)
    assert set(table) == {"MLP-Mixer", "ShiftViT"}
    assert "MLP-Mixer cannot run at 24 px" in md  # the Mixer is built for 28 px only
    assert (mini / "report.html").read_text().count("data:image/png;base64,") == 4
    for label, key in (("MLP-Mixer", "mixer"), ("ShiftViT", "shiftvit")):
        runs = [json.loads((mini / key / f"seed{s}" / "compare.json").read_text())
                for s in (0, 1)]
        # mean, std and the 95% t-interval, recomputed here from the per-seed records
        tops = [next(r["top1"] for r in run["eval"] if r["img_size"] == 28) for run in runs]
        mean, std = statistics.mean(tops), statistics.stdev(tops)
        half = 12.706204736174707 * std / math.sqrt(2)
        assert table[label]["top-1 @28"] == f"{mean:.2f} ± {std:.2f}"
        low, high = max(mean - half, 0.0), min(mean + half, 100.0)  # cut to 0-100
        assert table[label]["95% CI @28"] == f"[{low:.2f}, {high:.2f}]"
        # what the report states is what each run's own config.yaml holds
        configs = [yaml.safe_load((mini / key / f"seed{s}" / "config.yaml").read_text())
                   for s in (0, 1)]
        assert table[label]["epochs"] == str(configs[0]["epochs"]) == "1"
        assert table[label]["seeds"] == "2" and [c["seed"] for c in configs] == [0, 1]
        assert all(c["holdout"] == 0.1 for c in configs)  # validation never on the test split
        assert f"[{key}/seed1](config.yaml)" not in md and \
            f"[config.yaml]({key}/seed1/config.yaml)" in md
        assert table[label]["vs best"] in ("best", "*", "n.s.")
        assert table[label]["still improving"].startswith("yes")  # after one epoch: unknown
        bench = json.loads((mini / key / "bench.json").read_text())
        assert bench["rows"][0]["infer_img_s"] > 0 and "other_cores" in bench
        assert runs[0]["train_macs"] == 3 * runs[0]["macs"] * runs[0]["train_images_seen"]


def test_compare_out_and_resume(mini: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    shutil.copytree(mini, out)
    capsys.readouterr()
    # an existing comparison is neither deleted nor mixed without --resume or --overwrite
    assert main([*MINI, "--out", str(out)]) == 2
    assert "--resume to continue it, --overwrite to replace it" in capsys.readouterr().err
    # --resume with an option that changes results: refused, naming it
    changed = [*MINI[:6], "2", *MINI[7:]]  # --epochs 2
    assert main([*changed, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--epochs was 1, now 2" in err and "--overwrite" in err
    # --resume adding a seed trains exactly that seed's runs and keeps the others
    more = [*MINI[:4], "3", *MINI[5:]]
    assert main([*more, "--out", str(out), "--resume", "--no-bench"]) == 0
    err = capsys.readouterr().err
    assert err.count("done before, kept") == 4 and err.count(", seed 2") == 2
    assert _table((out / "report.md").read_text())["ShiftViT"]["seeds"] == "3"


def test_tune_reads_no_test_image_before_tuning_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from tokenmixers import compare as C
    from tokenmixers.data import arrays, training_views
    from tokenmixers.data.splits import stratified_split

    events: list[str] = []
    load = arrays.load_mnist5k

    class Guarded(torch.utils.data.Dataset):
        """The test split, refusing to be read while tuning runs."""

        def __init__(self, inner: torch.utils.data.Dataset) -> None:
            self.inner, self.targets = inner, inner.targets  # type: ignore[attr-defined]

        def __len__(self) -> int:
            assert "test" in events, "the test split was read before tuning ended"
            return len(self.inner)  # type: ignore[arg-type]

        def __getitem__(self, i: int) -> object:
            assert "test" in events, "the test split was read before tuning ended"
            return self.inner[i]

    monkeypatch.setattr(arrays, "load_mnist5k", lambda: (load()[0], Guarded(load()[1])))
    tune, test_set = C.tune_entry, C._test_set
    monkeypatch.setattr(C, "tune_entry", lambda *a, **k: (events.append("tune"),
                                                           tune(*a, **k))[1])
    monkeypatch.setattr(C, "_test_set", lambda cfg: (events.append("test"), test_set(cfg))[1])
    out = tmp_path / "tuned"
    assert main(["compare", "--models", "mixer", "--seeds", "1", "--epochs", "1",
                 "--limit-train", "64", "--limit-val", "32", "--batch-size", "16",
                 "--tune", "lr", "--lr-grid", "1e-3,3e-3", "--eval-sizes", "28",
                 "--no-bench", "--threads", "1", "--progress", "none",
                 "--out", str(out)]) == 0
    assert events == ["tune", "test"]
    trials = sorted((out / "mixer" / "tune").iterdir())
    assert [t.name for t in trials] == ["lr0.001", "lr0.003"]  # the same grid for every model
    md = (out / "report.md").read_text()
    assert "## Tuning" in md and md.count("chosen") >= 1
    chosen = json.loads((out / "mixer" / "seed0" / "compare.json").read_text())["lr"]
    assert chosen in (1e-3, 3e-3)
    # the validation images (held out of the training set) are none of the test images
    labels = arrays._mnist5k_arrays()[1]
    train_idx, test_idx = stratified_split(labels, 1000, seed=arrays.MNIST5K_SEED)
    from tokenmixers.data import fixed_subset

    limited = fixed_subset(load()[0], 64)
    _, _, idx = training_views(limited, holdout=0.1)
    val_global = train_idx[np.asarray(limited.indices)[idx["val"]]]  # type: ignore[attr-defined]
    assert len(val_global) and not set(val_global) & set(test_idx)
