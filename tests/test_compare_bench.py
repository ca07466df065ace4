"""`tokenmixers bench` and a miniature `tokenmixers compare`, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def test_miniature_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--models", "mixer,shiftvit", "--epochs", "1", "--limit-train", "128",
            "--limit-val", "64", "--eval-sizes", "24,28", "--bench-sizes", "28",
            "--bench-batch-size", "4", "--threads", "1", "--progress", "none",
            "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    header = printed.strip().splitlines()[0].split()
    assert header[:5] == ["family", "model", "params", "MMACs", "train"]
    assert "top-1" in header and "@24" in header and "@28" in header
    for name in ("report.md", "report.html", "accuracy_vs_params.png",
                 "accuracy_vs_resolution.png", "scaling.png", "training_curves.png"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text()
    assert "| MLP-Mixer | mixer_s16_224 |" in md and "| ShiftViT |" in md
    assert "MLP-Mixer cannot run at 24 px" in md  # the Mixer is built for 28 px only
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    record = json.loads((out / "shiftvit" / "compare.json").read_text())
    assert {row["img_size"] for row in record["eval"]} == {24, 28}
    assert record["bench"][0]["infer_img_s"] > 0 and 0.2e6 < record["params"] < 0.5e6
    # --resume keeps finished families
    assert main([*args, "--resume"]) == 0
    assert "done before, kept" in capsys.readouterr().err
