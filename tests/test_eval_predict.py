"""``tokenmixers eval`` at several resolutions and ``tokenmixers predict`` on PNG files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tokenmixers.cli import _warnings_as_lines, main
from tokenmixers.data.folder import ImageModeWarning

COMMON = ["--data", "mnist5k", "--limit-train", "512", "--limit-val", "64", "--epochs", "1",
          "--batch-size", "64", "--lr", "4e-3", "--progress", "none"]
MODELS = {
    "vit": ["--model", "vit_tiny_patch16_224", "--model-kwargs", "patch_size=4",
            "embed_dim=32", "depth=1", "num_heads=2"],
    "mixer": ["--model", "mixer_s16_224", "--model-kwargs", "patch_size=4", "embed_dim=32",
              "num_blocks=1"],
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, args in MODELS.items():
        out[name] = root / name
        assert main(["train", *args, *COMMON, "--output", str(out[name])]) == 0
    return out


def test_eval_vit_at_several_resolutions(runs: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    report = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(runs["vit"]), "--img-size", "20,28,36",
                 "--limit", "64", "--json", str(report)]) == 0
    table = capsys.readouterr().out
    assert "img_size" in table and "top-1" in table and "top-5" in table
    rows = json.loads(report.read_text())
    assert [r["img_size"] for r in rows] == [20, 28, 36]
    for row in rows:
        assert row["count"] == 64 and 0 <= row["top1"] <= row["top5"] <= 100
        assert row["loss"] > 0 and row["data"] == "mnist5k"  # the data the run recorded
    # The native size reproduces the run's own validation number.
    last = json.loads((runs["vit"] / "metrics.jsonl").read_text().splitlines()[-1])
    assert rows[1]["top1"] == pytest.approx(last["top1"])
    assert rows[1]["loss"] == pytest.approx(last["val_loss"], rel=1e-4)


def test_eval_mixer_reports_sizes_it_cannot_take(runs: dict[str, Path],
                                                 capsys: pytest.CaptureFixture) -> None:
    weights = runs["mixer"] / "best" / "model.safetensors"
    assert main(["eval", "--checkpoint", str(weights), "--data", "mnist5k", "--img-size",
                 "28,36", "--limit", "32", "--json", "-"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert "top1" in rows[0] and "error" not in rows[0]
    assert "takes 28x28 images only" in rows[1]["error"]
    assert main(["eval", "--checkpoint", str(weights), "--img-size", "36", "--limit",
                 "32"]) == 1  # nothing could run
    assert "cannot run: " in capsys.readouterr().out


def test_eval_refuses_data_with_other_classes_or_missing_checkpoints(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from test_data import write_images

    write_images(tmp_path / "three", {"a": 3, "b": 3, "c": 3}, mode="L")
    assert main(["eval", "--checkpoint", str(runs["mixer"]), "--data",
                 f"imagefolder:{tmp_path / 'three'}", "--val-split", "0.4"]) == 2
    assert "classifies 10 classes but" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    (tmp_path / "empty_run").mkdir()
    assert main(["eval", "--checkpoint", str(tmp_path / "empty_run")]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_initial_checkpoint_of_another_class_count_is_refused(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from test_data import write_images

    write_images(tmp_path / "two" / "train", {"a": 4, "b": 4}, size=28, mode="L")
    write_images(tmp_path / "two" / "val", {"a": 2, "b": 2}, size=28, mode="L")
    assert main(["train", *MODELS["mixer"], "--data", f"imagefolder:{tmp_path / 'two'}",
                 "--img-size", "28", "--batch-size", "4", "--epochs", "1",
                 "--initial-checkpoint", str(runs["mixer"] / "best" / "model.safetensors"),
                 "--output", str(tmp_path / "ft"), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "the checkpoint has 10 classes and the model 2" in err
    assert not (tmp_path / "ft" / "config.yaml").exists()  # nothing half-started is left


def test_predict_on_png_files(runs: dict[str, Path], tmp_path: Path,
                              capsys: pytest.CaptureFixture) -> None:
    from tokenmixers.data import load_data

    val = load_data("mnist5k").val
    files = []
    for i in (0, 150, 999):
        img, label = val[i]
        path = tmp_path / f"digit{i}_label{label}.png"
        img.save(path)
        files.append(path)
    rgb = tmp_path / "rgb.png"  # colour files are converted to the model's channels
    Image.fromarray(np.stack([np.asarray(val[5][0])] * 3, axis=-1)).save(rgb)
    files.append(rgb)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert main(["predict", "--checkpoint", str(runs["mixer"]), "--topk", "3", "--json",
                     "-", *map(str, files)]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == [str(f) for f in files]
    conversions = [w for w in said if issubclass(w.category, ImageModeWarning)]
    assert len(conversions) == 1  # said once, not once per image
    assert "RGB -> L: colour becomes grayscale" in str(conversions[0].message)
    # on a terminal it is one line of the command's own, not Python's file:line form
    with _warnings_as_lines("predict"):
        line = warnings.formatwarning(conversions[0].message, ImageModeWarning, "x.py", 1)
    assert line == f"tokenmixers predict: warning: {conversions[0].message}\n"
    for r in results:
        probs = [t["prob"] for t in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1.0 + 1e-6
        assert all(t["class"] in [str(d) for d in range(10)] for t in r["top"])
    assert main(["predict", "--checkpoint", str(runs["vit"]), str(files[0])]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(files[0]) + ": ") and line.count("(") == 5  # top-5 default
    # bf16 autocast on the CPU: the same top class, probabilities close to float32's
    assert main(["predict", "--checkpoint", str(runs["mixer"]), "--amp", "bf16", "--topk",
                 "3", "--json", "-", *map(str, files)]) == 0
    low = json.loads(capsys.readouterr().out)
    for full, half in zip(results, low):
        assert half["top"][0]["class"] == full["top"][0]["class"]
        assert abs(half["top"][0]["prob"] - full["top"][0]["prob"]) < 0.05
    (tmp_path / "not_an_image.png").write_text("hello")
    assert main(["predict", "--checkpoint", str(runs["vit"]),
                 str(tmp_path / "not_an_image.png")]) == 2
    assert "could not read" in capsys.readouterr().err
