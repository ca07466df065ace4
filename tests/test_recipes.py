"""Paper recipe presets (``train --recipe``): each preset against a table of the paper's (or
the authors' released configuration's) numbers written here, ``--print-config`` complete and
side-effect free, explicit options over the preset over the dataset recipe, drop path by zoo
model name, the global batch split over processes, "not applied" warnings, clear errors for
unknown names, and ``compare --budget paper`` planning each family's own preset."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenmixers.cli import main
from tokenmixers.compare import CompareConfig, entries, planned_configs
from tokenmixers.report import recipe_paragraph
from tokenmixers.train import recipes
from tokenmixers.train.config import (
    OPTION_NAMES,
    ConfigError,
    build_config,
    read_yaml,
    resolve,
    run_identity,
)
from tokenmixers.train.recipes import FAMILY_RECIPES, PRESETS, RecipeWarning

TINY_MIXER = ["--model", "mixer_s16_224", "--model-kwargs", "patch_size=4", "embed_dim=32",
              "num_blocks=1"]


def resolved(options: dict[str, Any], world_size: int = 1) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeWarning)
        return resolve(build_config(options), world_size)


# ---- the papers' numbers --------------------------------------------------------------------
# Each table: the paper's learning rate at its global batch (the test checks lr_base x batch
# / 512 gives it back), and the options the preset must hold, per model where they differ.

# DeiT, arXiv 2012.12877, Table 9 (DeiT-B column; page not checked), and
# facebookresearch/deit main.py / README_deit.md (4 GPUs x 256 = 1024 images per step).
DEIT = dict(
    batch=1024, lr=5e-4 * 1024 / 512,  # "0.0005 x batchsize/512"
    common=dict(epochs=300, opt="adamw", sched="cosine", weight_decay=0.05, warmup_epochs=5.0,
                smoothing=0.1, drop=0.0, clip_grad=None, auto_augment="rand-m9-mstd0.5-inc1",
                mixup=0.8, cutmix=1.0, reprob=0.25, img_size=224, min_lr=1e-5,
                warmup_lr=1e-6, ema=True, ema_decay=0.99996),
    models={"vit_tiny_patch16_224": dict(drop_path=0.1),
            "vit_small_patch16_224": dict(drop_path=0.1),
            "vit_base_patch16_224": dict(drop_path=0.1)},
    top1={"vit_tiny_patch16_224": 72.2, "vit_small_patch16_224": 79.8,
          "vit_base_patch16_224": 81.8},
)

# AugReg ("How to train your ViT?"), arXiv 2106.10270, ImageNet-1k setting, as released in
# google-research/big_vision configs/vit_i1k.py: batch 4096, lr 1e-3, 300 epochs, clip 1,
# wd 1e-4 not scaled by lr (= AdamW 0.1), 10k warm-up steps, no label smoothing, per size
# Ti/16 light1 = randaug(2,0) no mixup, S/16 and B/16 medium2 = randaug(2,15) mixup 0.5.
AUGREG = dict(
    batch=4096, lr=1e-3,
    common=dict(epochs=300, opt="adamw", weight_decay=0.1, clip_grad=1.0, smoothing=0.0,
                cutmix=0.0, reprob=0.0, drop_path=0.0, min_lr=0.0, img_size=224,
                warmup_epochs=round(10_000 * 4096 / 1_268_355, 2)),
    models={"vit_tiny_patch16_224": dict(auto_augment="rand-m0-n2", mixup=0.0),
            "vit_small_patch16_224": dict(auto_augment="rand-m15-n2", mixup=0.5),
            "vit_base_patch16_224": dict(auto_augment="rand-m15-n2", mixup=0.5)},
    top1={},  # not found (the paper's ImageNet-1k figures were not reachable)
)

# MLP-Mixer, arXiv 2105.01601, ImageNet-1k from scratch as released in big_vision
# configs/mlp_mixer_i1k.py (Mixer-B/16, 76.3%): batch 4096, lr 1e-3, 300 epochs, clip 1,
# wd 1e-4 (= AdamW 0.1), RandAugment(2,15), mixup 0.5, stochastic depth 0.1.
MIXER = dict(
    batch=4096, lr=1e-3,
    common=dict(epochs=300, weight_decay=0.1, clip_grad=1.0, auto_augment="rand-m15-n2",
                mixup=0.5, cutmix=0.0, smoothing=0.0, img_size=224),
    models={"mixer_b16_224": dict(drop_path=0.1)},
    top1={"mixer_b16_224": 76.3},
)

# ShiftViT, arXiv 2201.10801 (follows Swin), as released in microsoft/SPACH: main.py
# (lr 5e-4 x batch/512, 8 x 128 = 1024, 20 warm-up epochs, min lr 1e-5) and
# models/shiftvit.py (drop path per model); top-1 from the SPACH README.
SHIFTVIT = dict(
    batch=1024, lr=5e-4 * 1024 / 512,
    common=dict(epochs=300, weight_decay=0.05, warmup_epochs=20.0, min_lr=1e-5,
                smoothing=0.1, auto_augment="rand-m9-mstd0.5-inc1", mixup=0.8, cutmix=1.0,
                reprob=0.25, img_size=224),
    models={"shiftvit_tiny_light": dict(drop_path=0.2), "shiftvit_tiny": dict(drop_path=0.2),
            "shiftvit_small_light": dict(drop_path=0.4), "shiftvit_small": dict(drop_path=0.4),
            "shiftvit_base_light": dict(drop_path=0.5), "shiftvit_base": dict(drop_path=0.6)},
    top1={"shiftvit_tiny_light": 79.4, "shiftvit_tiny": 81.7, "shiftvit_small_light": 81.6,
          "shiftvit_small": 82.8},
)

# Sequencer, arXiv 2205.01972, appendix (training hyper-parameters; page not checked) and
# okojoalg/sequencer README: 8 GPUs x 256 = 2048, lr 2e-3, wd 0.05, 300 epochs, 20 warm-up
# epochs, drop path S/M/L 0.1/0.2/0.4; top-1 S/M/L 82.3/82.8/83.4.
SEQUENCER = dict(
    batch=2048, lr=2e-3,
    common=dict(epochs=300, opt="adamw", weight_decay=0.05, warmup_epochs=20.0,
                warmup_lr=1e-6, smoothing=0.1, auto_augment="rand-m9-mstd0.5-inc1",
                mixup=0.8, cutmix=1.0, reprob=0.25, img_size=224, ema=False),
    models={"sequencer2d_s": dict(drop_path=0.1), "sequencer2d_m": dict(drop_path=0.2),
            "sequencer2d_l": dict(drop_path=0.4)},
    top1={"sequencer2d_s": 82.3, "sequencer2d_m": 82.8, "sequencer2d_l": 83.4},
)

# Vision-LSTM, arXiv 2406.04303, appendix, as released in NX-AI/vision-lstm
# src/vislstm/yamls/pretrain/vil/: lr 1e-3 x batch/1024 at batch 2048, wd 0.05, clip 1,
# 5 warm-up epochs, cosine to 1e-6, no label smoothing, no random erasing, Mixup 0.8 /
# CutMix 1.0; v2 at 192 px (T 800, S/B 400 epochs; drop path 0/0.05/0.2), then 224 px
# (T/S 20 epochs, B 5); top-1 from the README: 78.3/81.5/82.4 (v2), v1 T 77.3.
VIL = dict(
    batch=2048, lr=1e-3 * 2048 / 1024,
    common=dict(weight_decay=0.05, clip_grad=1.0, warmup_epochs=5.0, min_lr=1e-6,
                smoothing=0.0, reprob=0.0, mixup=0.8, cutmix=1.0, color_jitter=0.3,
                auto_augment="", ema=False),
    models={"vil2_tiny": dict(epochs=800, drop_path=0.0, img_size=192),
            "vil2_small": dict(epochs=400, drop_path=0.05, img_size=192),
            "vil2_base": dict(epochs=400, drop_path=0.2, img_size=192),
            "vil_tiny": dict(epochs=800, drop_path=0.0, img_size=224)},
    top1={"vil2_tiny": 78.3, "vil2_small": 81.5, "vil2_base": 82.4, "vil_tiny": 77.3},
    stages={"vil2_tiny": [(224, 20)], "vil2_small": [(224, 20)], "vil2_base": [(224, 5)],
            "vil_tiny": []},
)

PAPERS = {"deit": DEIT, "vit-augreg": AUGREG, "mixer": MIXER, "shiftvit": SHIFTVIT,
          "sequencer": SEQUENCER, "vil": VIL}


def test_every_preset_has_a_table_here_and_only_real_options() -> None:
    assert set(PAPERS) == set(PRESETS)
    for name, recipe in PRESETS.items():
        assert recipe.source and recipe.arxiv and recipe.setting, name
        for values in (recipe.options, *recipe.per_model.values()):
            assert set(values) - {"global_batch", "stages", "not_applied"} <= set(OPTION_NAMES)
        assert "batch_size" not in recipe.options  # the global batch is split at resolve


@pytest.mark.parametrize("name", list(PAPERS))
def test_preset_values_match_the_papers(name: str) -> None:
    table, recipe = PAPERS[name], PRESETS[name]
    for model, own in table["models"].items():
        cfg = resolved({"model": model, "recipe": name, "data": "mnist5k"})
        want = {**table["common"], **own}
        got = {k: getattr(cfg, k) for k in want}
        assert got == pytest.approx(want), (name, model)
        assert cfg.batch_size == table["batch"]  # one process: the whole global batch
        assert cfg.lr == pytest.approx(table["lr"], rel=1e-12)  # the paper's rate, exactly
        assert recipe.top1.get(model) == table["top1"].get(model)
        if "stages" in table:
            assert [(s.img_size, s.epochs) for s in recipes.stages(name, model)] == \
                table["stages"][model]


def test_vil_fine_tuning_stage_learning_rate_is_the_papers() -> None:
    (stage,) = recipes.stages("vil", "vil2_small")
    assert stage.lr_base * 1024 / 512 == pytest.approx(1e-5)  # lr 1e-5 at batch 1024


# ---- --print-config ---------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["--recipe", n] for n in PRESETS] + [
    ["--model", "vit_tiny_patch16_224"],
    ["--recipe", "sequencer", "--model", "sequencer2d_l", "--data", "cifar10"]])
def test_print_config_is_complete_and_touches_nothing(args: list[str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    import tokenmixers.data as data_module
    from tokenmixers.train import loop

    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("--print-config loaded data or started training")

    monkeypatch.setattr(data_module, "load_data", refuse)
    monkeypatch.setattr(loop, "train", refuse)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = main(["train", *args, "--output", str(tmp_path / "run"), "--print-config"])
    out = capsys.readouterr().out
    assert code == 0
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    printed = yaml.safe_load(out)
    assert list(printed) == OPTION_NAMES  # every option, in order, nothing else
    assert all(printed[k] is not None for k in ("epochs", "batch_size", "lr", "lr_base",
                                                  "img_size", "drop_path", "scale"))
    if "--recipe" in args:
        name = args[args.index("--recipe") + 1]
        recipe = PRESETS[name]
        assert printed["recipe"] == name
        assert f"# source: {recipe.source}" in out
        assert "# learning rate:" in out
        for item in recipes.not_applied(name, printed["model"]):
            assert f"# NOT APPLIED: {item}" in out
    else:
        assert printed["recipe"] is None and "# recipe: none" in out


def test_print_config_shows_the_vil_resolution_schedule_as_not_applied(
        capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--recipe", "vil", "--model", "vil2_base", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "# NOT APPLIED: the resolution schedule 400 epochs at 192 px (this run), then 5 " \
           "epochs at 224 px" in out
    assert yaml.safe_load(out)["img_size"] == 192


# ---- precedence -------------------------------------------------------------------------------
def test_explicit_options_win_over_the_preset_which_wins_over_the_dataset_recipe() -> None:
    cfg = resolved({"model": "sequencer2d_l", "recipe": "sequencer", "data": "mnist5k",
                    "drop_path": 0.05, "epochs": 3, "batch_size": 8, "lr_base": 1e-3,
                    "auto_augment": "rand-m5-n1", "hflip": 0.0})
    assert (cfg.drop_path, cfg.epochs, cfg.batch_size, cfg.lr_base, cfg.auto_augment,
            cfg.hflip) == (0.05, 3, 8, 1e-3, "rand-m5-n1", 0.0)
    assert cfg.lr == pytest.approx(1e-3 * 8 / 512)
    # options the flags left alone are the preset's, not the dataset recipe's ('small')
    assert (cfg.warmup_epochs, cfg.mixup, cfg.reprob, cfg.scale) == (20.0, 0.8, 0.25,
                                                                     (0.08, 1.0))
    # an explicit value equal to TrainConfig's default still wins (AugReg's wd is 0.1)
    assert resolved({"model": "vit_tiny_patch16_224", "recipe": "vit-augreg",
                     "weight_decay": 0.05}).weight_decay == 0.05
    # "none" for an augmentation turns it off, rather than falling to the dataset recipe
    off = resolved({"model": "vit_tiny_patch16_224", "recipe": "deit", "data": "cifar10",
                    "auto_augment": "none", "color_jitter": "none"})
    assert (off.auto_augment, off.color_jitter) == ("", 0.0)
    # without a recipe, the dataset recipe as before
    plain = resolved({"model": "sequencer2d_l", "data": "mnist5k"})
    assert (plain.recipe, plain.epochs, plain.mixup) == (None, 15, 0.0)


def test_flags_and_yaml_override_the_preset_on_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("recipe: deit\nsmoothing: 0.0\nepochs: 9\n")
    assert main(["train", "--config", str(config), "--model", "vit_small_patch16_224",
                 "--epochs", "4", "--drop-path", "0.3", "--clip-grad", "2", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["recipe"], printed["smoothing"], printed["epochs"], printed["drop_path"],
            printed["clip_grad"], printed["mixup"]) == ("deit", 0.0, 4, 0.3, 2.0, 0.8)


def test_drop_path_is_chosen_by_zoo_model_name() -> None:
    for model, rate in (("sequencer2d_s", 0.1), ("sequencer2d_m", 0.2), ("sequencer2d_l", 0.4)):
        assert recipes.recipe_options("sequencer", model)["drop_path"] == rate
        assert resolved({"model": model, "recipe": "sequencer"}).drop_path == rate
    assert recipes.recipe_options("shiftvit", "shiftvit_base")["drop_path"] == 0.6
    assert recipes.recipe_options("vil", "vil2_small")["drop_path"] == 0.05
    # a model without a row of its own gets the preset's value, and --print-config says so
    assert recipes.recipe_options("sequencer", "sequencer2d_s_add")["drop_path"] == 0.1
    lines = recipes.describe("sequencer", "sequencer2d_s_add", batch_size=2048, accum_steps=1,
                             world_size=1, lr=2e-3)
    assert any("has no row of its own" in line for line in lines)


def test_global_batch_is_split_over_processes_and_accumulation() -> None:
    one = resolved({"model": "vit_small_patch16_224", "recipe": "deit"})
    four = resolved({"model": "vit_small_patch16_224", "recipe": "deit", "accum_steps": 2}, 4)
    assert (one.batch_size, four.batch_size) == (1024, 128)
    assert one.lr == four.lr == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match=r"global batch of 1024 images does not split evenly "
                                          r"over 3 process\(es\).*--batch-size"):
        resolved({"model": "vit_small_patch16_224", "recipe": "deit"}, 3)


def test_using_a_preset_warns_about_what_is_not_applied() -> None:
    with pytest.warns(RecipeWarning) as caught:
        resolve(build_config({"model": "vil2_tiny", "recipe": "vil"}))
    texts = [str(w.message) for w in caught]
    assert any("NOT APPLIED: the resolution schedule 800 epochs at 192 px" in t and
               "20 epochs at 224 px" in t for t in texts)
    assert any("3-Augment" in t for t in texts)


def test_recipe_is_part_of_a_runs_identity(tmp_path: Path) -> None:
    cfg = resolved({"model": "vit_small_patch16_224", "recipe": "deit"})
    assert run_identity(cfg)["recipe"] == "deit"
    # a run folder's config.yaml read back resolves to the same options (resume path)
    from tokenmixers.train.config import save_yaml

    save_yaml(cfg, tmp_path / "config.yaml")
    again = build_config(read_yaml(tmp_path / "config.yaml"))
    assert run_identity(again) == run_identity(cfg)


# ---- errors -----------------------------------------------------------------------------------
def test_unknown_recipe_is_refused_with_suggestions(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match=r"--recipe deitt: no such preset \(did you mean "
                                          r"deit\?\); expected one of deit, vit-augreg"):
        build_config({"model": "vit_small_patch16_224", "recipe": "deitt"})
    assert main(["train", "--model", "vit_small_patch16_224", "--recipe", "squencer",
                 "--print-config"]) == 2
    assert "did you mean sequencer?" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--recipe viil: expected own, none or a preset"):
        planned_configs(CompareConfig(budget="paper", recipe="viil"))


# ---- compare --budget paper --------------------------------------------------------------------
def test_compare_paper_budget_plans_each_familys_own_preset() -> None:
    plans = planned_configs(CompareConfig(budget="paper"))
    assert {k: c.recipe for k, c in plans.items()} == FAMILY_RECIPES
    assert plans["sequencer"].drop_path == 0.1 and plans["sequencer"].lr == pytest.approx(2e-3)
    assert plans["vil"].epochs == 800 and plans["vil"].img_size == 224  # vil_tiny: ViL v1
    shared = planned_configs(CompareConfig(budget="paper", recipe="deit"))
    assert {c.recipe for c in shared.values()} == {"deit"}
    assert {(c.epochs, c.lr, c.batch_size) for c in shared.values()} == {(300, 1e-3, 1024)}
    small = planned_configs(CompareConfig(budget="small"))
    assert {c.recipe for c in small.values()} == {None}
    none = planned_configs(CompareConfig(budget="paper", recipe="none"))
    assert {c.recipe for c in none.values()} == {None}
    # a shared skeleton's mixers have no paper of their own
    iso = CompareConfig(budget="paper", skeleton="isotropic", mixers=("pool",))
    assert [planned_configs(iso)[e.key].recipe for e in entries(iso)] == [None]


def test_compare_takes_recipe_on_the_command_line() -> None:
    from tokenmixers.cli import build_parser

    args = build_parser().parse_args(["compare", "--budget", "paper", "--recipe", "deit"])
    assert args.recipe == "deit"
    assert build_parser().parse_args(["compare"]).recipe is None


def test_report_says_which_recipe_and_that_a_shared_one_is_fair() -> None:
    own = recipe_paragraph({"recipe_mode": "own", "recipes": {"vit": "deit", "vil": "vil"}})
    assert own is not None and "vit: deit" in own and "fair comparison" in own
    shared = recipe_paragraph({"recipe_mode": "deit", "recipes": {}})
    assert shared is not None and "deit preset" in shared and "fair" in shared
    assert recipe_paragraph({}) is None


# ---- one tiny run -------------------------------------------------------------------------------
def test_a_tiny_run_with_a_preset_saves_the_preset_values(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = main(["train", *TINY_MIXER, "--recipe", "deit", "--data", "mnist5k",
                 "--img-size", "28", "--epochs", "1", "--batch-size", "32",
                 "--limit-train", "64", "--limit-val", "32", "--auto-augment", "none",
                 "--output", str(run), "--progress", "none"])
    assert code == 0
    saved = read_yaml(run / "config.yaml")
    assert (saved["recipe"], saved["epochs"], saved["batch_size"], saved["color_jitter"],
            saved["ema"], saved["warmup_epochs"], saved["reprob"]) == \
        ("deit", 1, 32, 0.3, True, 5.0, 0.25)
    assert saved["lr"] == pytest.approx(5e-4 * 32 / 512)
