"""The papers' ablations: each is its family's model with one change (and, where the zoo
holds it, exactly that zoo entry), every variant builds and runs, the verdict rules, and
``study ablations`` end to end at a miniature budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tokenmixers
from tokenmixers.cli import main
from tokenmixers.compare import FAMILIES
from tokenmixers.studies.ablations import (
    ABLATIONS,
    agreement,
    change_of,
    family_args,
    parse_families,
    variants,
    verdict,
)
from tokenmixers.zoo import resolved_arguments

ZOO_ABLATIONS = [(f, a) for f, spec in ABLATIONS.items() for a in spec.ablations if a.zoo]


@pytest.mark.parametrize(("family", "ablation"), ZOO_ABLATIONS,
                         ids=[a.key for _, a in ZOO_ABLATIONS])
def test_zoo_ablation_is_the_paper_model_with_the_change(family: str, ablation) -> None:
    name, over, full = family_args(family, "paper")
    assert over == {}
    # the zoo entry's full argument set is the paper model's with the ablation's change
    assert resolved_arguments(ablation.zoo) == resolved_arguments(name, change_of(ablation, full))
    row = next(v for v in variants(family, "paper") if v["key"] == ablation.key)
    assert row["model"] == ablation.zoo and row["overrides"] == {}


def test_every_family_of_compare_has_its_ablations() -> None:
    assert set(ABLATIONS) == set(FAMILIES)
    for family, spec in ABLATIONS.items():
        keys = [v["key"] for v in variants(family, "small")]
        assert keys[0] == "baseline" and len(set(keys)) == len(keys) == len(spec.ablations) + 1
        for a in spec.ablations:
            assert a.expect in (None, "lower", "same", "higher") and a.paper


@pytest.mark.parametrize("family", list(ABLATIONS))
def test_every_small_variant_builds_runs_and_differs_from_its_baseline(family: str) -> None:
    rows = variants(family, "small")
    base = rows[0]
    counts = {}
    for row in rows:
        model = tokenmixers.create_model(row["model"], **row["overrides"], img_size=28,
                                         in_chans=1, num_classes=10).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
        counts[row["key"]] = sum(p.numel() for p in model.parameters())
        if row is not base:  # a change that changes nothing would be a silent no-op
            assert row["overrides"] != base["overrides"], row["key"]
    if family == "shiftvit":  # MLP width traded for depth at (about) equal size
        for key in ("tau_2_deeper", "tau_8_shallower"):
            assert abs(counts[key] / counts["baseline"] - 1) < 0.1, (key, counts)
    if family == "sequencer":  # D = C/2 doubles, C/8 halves the hidden size
        assert counts["hidden_c2"] > counts["baseline"] > counts["hidden_c8"]


def test_vsequencer_change_flattens_the_pyramid() -> None:
    a = next(a for a in ABLATIONS["sequencer"].ablations if a.key == "vsequencer_pe")
    _, _, full = family_args("sequencer", "small")
    change = change_of(a, full)
    assert change["patch_sizes"] == (4, 1) and change["embed_dims"] == (96, 96)
    assert change["hidden_sizes"] == (48, 48) and change["union"] == "flat"
    assert change["pos_embed"] is True and change["with_fc"] is False


def test_verdict_and_agreement_rules() -> None:
    assert verdict(0.5, 3.0) == "higher" and verdict(-3.0, -0.1) == "lower"
    assert verdict(-1.0, 2.0) == "no difference shown"
    assert agreement("lower", "lower") == "agree"
    assert agreement("lower", "higher") == "disagree"
    assert agreement("lower", "no difference shown") == "not shown at this scale"
    assert agreement("same", "no difference shown") == "agree"
    assert agreement("same", "lower") == "disagree"
    assert agreement(None, "lower") == "–"


def test_bad_family_names_the_choices() -> None:
    assert parse_families("all") == list(ABLATIONS)
    assert parse_families("vit, mixer") == ["vit", "mixer"]
    with pytest.raises(ValueError, match=r"--family vitt: 'vitt' .*did you mean vit\?.*vil"):
        parse_families("vitt")


@pytest.mark.usefixtures("one_thread")
def test_study_ablations_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "abl"
    args = ["study", "ablations", "--family", "mixer", "--seeds", "2", "--epochs", "1",
            "--limit-train", "160", "--limit-val", "40", "--progress", "none", "--out",
            str(out)]
    assert main(args) == 0
    assert "report.md" in capsys.readouterr().out
    result = json.loads((out / "ablations.json").read_text())
    rows = result["mixer"]
    assert [r["key"] for r in rows] == ["baseline", "pos_embed", "class_token"]
    for r in rows[1:]:
        assert r["low"] <= r["diff"] <= r["high"] and 0 <= r["p"] <= r["p_holm"] <= 1
        assert r["ours"] == ("no difference shown" if r["p_holm"] >= 0.05
                             else verdict(r["low"], r["high"]))
        assert r["agree"] == agreement(r["expect"], r["ours"])
    # the class token adds one token to what the token MLP mixes: more parameters
    assert rows[2]["params"] > rows[0]["params"]
    md = (out / "report.md").read_text()
    assert "## mixer:" in md and "pos_embed=learn" in md and "Sec. 2" in md
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert (out / "mixer" / "compare" / "report.md").exists()
    # --resume keeps every run
    assert main([*args, "--resume"]) == 0
    assert capsys.readouterr().out.count("done before, kept") == 6  # 3 models x 2 seeds
    assert json.loads((out / "ablations.json").read_text())["mixer"][1]["diff"] == rows[1]["diff"]
