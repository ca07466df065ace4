"""The one-command studies end to end at a miniature budget (tiny data, one epoch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenmixers.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--seeds", "1", "--epochs", "1", "--limit-train", "192", "--limit-val", "48",
        "--progress", "none"]


def test_study_erf_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "erf"
    assert main(["study", "erf", "--mixers", "identity,pool", "--images", "4",
                 "--out", str(out), *TINY]) == 0
    assert "report.md" in capsys.readouterr().out
    rows = json.loads((out / "erf.json").read_text())
    assert [r["mixer"] for r in rows] == ["identity", "pool"]
    identity, pool = rows
    # no mixing: the centre token sees its own patch only; the pool reaches further
    assert identity["trained_reach"] == 0 and pool["trained_reach"] >= 1
    assert pool["trained_radius"][0] > identity["trained_radius"][0]
    md = (out / "report.md").read_text()
    assert "## Finding" in md and "| identity |" in md and "![" in md
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html  # self-contained
    assert (out / "compare" / "report.md").exists()  # the training comparison beside it
    # --resume keeps the trained runs (nothing trained again) and rewrites the report
    assert main(["study", "erf", "--mixers", "identity,pool", "--images", "4",
                 "--out", str(out), "--resume", *TINY]) == 0
    assert capsys.readouterr().out.count("done before, kept") == 2


def test_study_resolution_end_to_end(tmp_path: Path) -> None:
    from tokenmixers.studies.resolution import study_sizes

    assert study_sizes(28) == ((16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56), (16, 28, 56))
    assert study_sizes(32)[0][0] == 16 and study_sizes(32)[0][-1] == 64
    out = tmp_path / "res"
    assert main(["study", "resolution", "--mixers", "pool,token_mlp", "--no-bench",
                 "--out", str(out), *TINY]) == 0
    result = json.loads((out / "resolution.json").read_text())
    pool, mlp = result["pool"], result["token_mlp"]
    assert all(pool["top1"][str(s)] is not None for s in (16, 28, 56))
    # the token MLP is built for one grid: it says so at every other size
    assert [s for s, v in mlp["top1"].items() if v is not None] == ["28"]
    assert "takes 28x28 images only" in mlp["refused"]["16"]
    md = (out / "report.md").read_text()
    assert "28px (train)" in md and "token_mlp: cannot run at 16px" in md
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_study_long_range_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "lr"
    assert main(["study", "long-range", "--mixers", "identity,pool", "--levels", "easy,hard",
                 "--train-images", "128", "--test-images", "64", "--data-dir",
                 str(tmp_path / "data"), "--out", str(out), *TINY]) == 0
    result = json.loads((out / "long_range.json").read_text())
    assert list(result) == ["identity", "pool"]
    for row in result.values():
        for level in ("easy", "hard"):
            cell = row[level]
            assert cell["total"] == 48 and 0 <= cell["correct"] <= 48  # --limit-val 48
            assert 0 <= cell["p"] <= cell["p_holm"] <= 1
            assert cell["above"] == (cell["p_holm"] < 0.01)
    assert (out / "easy" / "compare" / "report.md").exists()
    md = (out / "report.md").read_text()
    assert "above chance: hard" in md and "samples.png" in md
    assert (out / "samples.png").stat().st_size > 1000


def test_long_range_image_counts_follow_the_budget() -> None:
    from argparse import Namespace

    from tokenmixers.data.pathfinder import DEFAULT_COUNTS, parse_spec
    from tokenmixers.studies.long_range import SMALL_IMAGES, image_counts

    def counts(budget: str, train: int | None = None, test: int | None = None):
        return image_counts(Namespace(budget=budget, train_images=train, test_images=test))

    assert counts("small") == SMALL_IMAGES
    assert counts("small", 500) == (500, SMALL_IMAGES[1])
    assert counts("paper") == (None, None)  # the data's own
    assert counts("paper", None, 300) == (None, 300)
    assert SMALL_IMAGES[0] < DEFAULT_COUNTS[32][0]
    spec = parse_spec("pathfinder32", f"hard:n={SMALL_IMAGES[0]}:test={SMALL_IMAGES[1]}")
    assert (spec.train, spec.test) == SMALL_IMAGES
