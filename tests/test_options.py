"""Option values are checked up front, with messages that name the option, the value, what
is expected and the fix: ``--model-kwargs`` against the model's own arguments, image limits,
every numeric and choice option of ``train`` (before any data is loaded or folder written),
and ``bench``'s counts and its exit status when nothing (or not everything) was measured."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from tokenmixers import bench as bench_module
from tokenmixers.cli import build_parser, main
from tokenmixers.train import loop
from tokenmixers.train.config import (
    CHOICES,
    RULES,
    ConfigError,
    TrainConfig,
    build_config,
    parse_model_kwargs,
)

VIT = "vit_tiny_patch16_224"
TINY_MIXER = ["--model", "mixer_s16_224", "--model-kwargs", "patch_size=4", "embed_dim=32",
              "num_blocks=1"]


def config_error(options: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        build_config({"model": VIT, **options})
    return str(info.value)


# ---- 6: --model-kwargs --------------------------------------------------------------------
@pytest.mark.parametrize("item", ["patch_size=(4,", "embed_dim=[32", "mlp_ratio={4.0"])
def test_model_kwargs_syntax_errors_name_the_pair_and_the_form(item: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_model_kwargs([item])
    message = str(info.value)
    assert message.startswith(f"--model-kwargs {item}: ")
    assert "is not a valid Python literal" in message and "KEY=VALUE" in message
    assert "write e.g. patch_size=4" in message


@pytest.mark.parametrize("item, message", [
    ("patch_size=4.5", "--model-kwargs patch_size=4.5: patch_size of vit_tiny_patch16_224 takes "
                       "an int (default 16), got float 4.5; write patch_size=4"),
    ("patch_size=four", "--model-kwargs patch_size=four: patch_size of vit_tiny_patch16_224 "
                        "takes an int (default 16), got str 'four'; write an int, e.g. "
                        "patch_size=16"),
    ("embed_dim=[32]", "--model-kwargs embed_dim=[32]: embed_dim of vit_tiny_patch16_224 takes "
                       "an int (default 192), got list [32]; write embed_dim=32"),
    ("qkv_bias=1", "--model-kwargs qkv_bias=1: qkv_bias of vit_tiny_patch16_224 takes a bool "
                   "(True or False) (default True), got int 1; write qkv_bias=True"),
    ("img_size=(32, 'a')", "--model-kwargs img_size=(32, 'a'): img_size of vit_tiny_patch16_224 "
                           "takes an int or a tuple of ints"),
    ("global_pool=1", "global_pool of vit_tiny_patch16_224 takes a string (default token), "
                      "got int 1; write a string, e.g. global_pool=token"),
])
def test_model_kwargs_of_the_wrong_type_are_refused_at_config_time(item: str,
                                                                   message: str) -> None:
    assert message in config_error({"model_kwargs": [item]})


def test_model_kwargs_type_check_accepts_what_the_builders_take() -> None:
    cases = {
        VIT: ["mlp_ratio=4", "patch_size=4", "img_size=[28, 28]"],  # an int for a float
        "mixer_s16_224": ["mlp_ratio=(0.5, 2)", "patch_size=4"],  # ints in a float tuple
        "sequencer2d_s": ["layers=[1, 1, 1, 1]"],  # a list for a tuple
        "vil_tiny": ["backend=chunkwise", "patch_size=4", "depth=2"],  # a plain word
        "isotropic": ["mixer=pool", "patch_size=4", "mixer_kwargs={'pool_size': 3}"],
    }
    for model, items in cases.items():
        cfg = build_config({"model": model, "model_kwargs": items})
        assert set(cfg.model_kwargs) == {i.split("=")[0] for i in items}


def test_model_kwargs_the_model_refuses_name_the_option_and_the_key() -> None:
    message = config_error({"model_kwargs": ["num_heads=5", "patch_size=4"]})
    assert message == (
        "--model-kwargs num_heads=5 patch_size=4: vit_tiny_patch16_224 cannot be built with "
        "num_heads=5 at img_size 28 (ValueError: dim 192 is not divisible by num_heads 5); "
        "change num_heads, or drop it for the model's default")
    message = config_error({"model": "isotropic",
                            "model_kwargs": ["mixer_kwargs={'bogus': 1}", "patch_size=4"]})
    assert message.startswith("--model-kwargs mixer_kwargs={'bogus': 1} patch_size=4: isotropic "
                              "cannot be built with mixer_kwargs={'bogus': 1}")
    assert "does not take ['bogus']" in message and "change mixer_kwargs" in message
    message = config_error({"model_kwargs": ["patch_sise=4"]})
    assert message.startswith("--model-kwargs patch_sise=4: vit_tiny_patch16_224 does not take "
                              "'patch_sise' (did you mean patch_size")


def test_model_kwargs_are_tried_at_the_training_size_and_blamed_only_for_their_own_faults(
        ) -> None:
    message = config_error({"model": "mixer_s16_224", "model_kwargs": ["patch_size=5"]})
    assert message.startswith("--model-kwargs patch_size=5: mixer_s16_224 cannot be built with "
                              "these overrides at img_size 28 (ValueError: input height 28 "
                              "does not fit patches of 5 pixels")
    assert message.endswith("change these --model-kwargs or --img-size (the model is built "
                            "for 28 px)")
    # ViT-Ti's patch 16 does not fit 28 px with or without depth=2: not the override's fault,
    # so not refused here (the model build reports the size).
    assert build_config({"model": VIT, "model_kwargs": ["depth=2"]}).model_kwargs == {"depth": 2}
    # A size that fits the training size but not the default 224 is fine.
    build_config({"model": VIT, "model_kwargs": ["patch_size=3"], "img_size": 36})


def test_train_refuses_bad_model_kwargs_before_loading_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(loop, "load_data", _no_data, raising=False)
    run = tmp_path / "run"
    code = main(["train", "--model", VIT, "--model-kwargs", "patch_size=4.5", "--output",
                 str(run), "--progress", "none"])
    assert code == 2 and not run.exists()
    assert "--model-kwargs patch_size=4.5: patch_size of" in capsys.readouterr().err


# ---- 7: image limits ----------------------------------------------------------------------
@pytest.mark.parametrize("key, value", [("limit_train", -5), ("limit_train", 0),
                                        ("limit_val", -5), ("limit_val", 0)])
def test_limits_must_be_positive(key: str, value: int) -> None:
    assert config_error({key: value}) == (
        f"--{key.replace('_', '-')} {value}: expected a positive number of images; leave it "
        "out to use them all")


@pytest.mark.parametrize("value", ["-5", "0"])
def test_eval_limit_must_be_positive(value: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    # Refused before the checkpoint (here: none) is even read.
    assert main(["eval", "--checkpoint", str(tmp_path / "missing"), "--limit", value]) == 2
    assert (f"--limit {value}: expected a positive number of images; leave it out to use "
            "them all") in capsys.readouterr().err


# ---- 8: every numeric and choice option of train ------------------------------------------
BAD_VALUES: list[tuple[str, Any]] = [
    ("smoothing", 2), ("smoothing", 1.0), ("smoothing", -0.1), ("lr", 0), ("lr", -1e-3),
    ("lr", float("inf")), ("lr", float("nan")), ("lr_base", 0), ("min_lr", -1e-5),
    ("epochs", 0), ("epochs", 2.5), ("batch_size", 0), ("accum_steps", 0),
    ("warmup_epochs", -1), ("warmup_lr", -1e-6), ("weight_decay", -0.05), ("opt_eps", 0),
    ("momentum", 1.0), ("momentum", -0.1), ("drop", 1.0), ("drop", -0.1),
    ("drop_path", 1.0), ("drop_path", -0.1), ("mixup", -0.8), ("cutmix", -1),
    ("mixup_prob", 1.5), ("mixup_prob", -0.1), ("mixup_switch_prob", 2), ("reprob", 1.25),
    ("reprob", -0.25), ("hflip", 1.5), ("color_jitter", -0.4), ("ema_decay", 1.0),
    ("ema_decay", 0), ("scale", (1.0, 0.5)), ("scale", (0.0, 1.0)), ("scale", (0.5, 2.0)),
    ("ratio", (4 / 3, 3 / 4)), ("ratio", (0.0, 1.0)), ("img_size", 0), ("clip_grad", 0),
    ("clip_grad", -1.0), ("val_split", 0), ("val_split", 1), ("threads", -1),
    ("workers", -1), ("max_bad_images", 1.5), ("max_bad_images", -0.1), ("stop_after", 0),
    ("log_interval", 0), ("nproc", 0), ("limit_train", -5), ("limit_val", 0),
    ("seed", "x"), ("lr", "fast"), ("batch_size", True),
    ("sched", "plateau"), ("opt", "adamx"), ("amp", "fp8"), ("progress", "loud"),
]


def _spelled(key: str, value: Any) -> str:
    shown = " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return f"--{key.replace('_', '-')} {shown}:"


@pytest.mark.parametrize("key, value", BAD_VALUES, ids=[f"{k}={v}" for k, v in BAD_VALUES])
def test_every_rule_refuses_its_bad_values(key: str, value: Any) -> None:
    message = config_error({key: value})
    assert message.startswith(_spelled(key, value)), message
    assert "expected" in message
    # ... and says how to fix it: a valid example, or what leaving it out gives.
    assert re.search(r"; (e\.g\. --|leave it out)", message), message


def test_good_values_and_edges_pass() -> None:
    cfg = build_config({
        "model": VIT, "smoothing": 0.0, "mixup_prob": 1, "reprob": 0, "hflip": 1.0,
        "ema_decay": 0.5, "scale": [0.08, 1.0], "ratio": "(0.75, 1.33)", "threads": 0,
        "workers": 0, "clip_grad": "none", "lr": "1e-3", "max_bad_images": 0, "seed": -3,
        "opt": "lookahead_AdamW", "sched": "step", "warmup_epochs": 0, "val_split": 0.1})
    assert cfg.scale == (0.08, 1.0) and cfg.ratio == (0.75, 1.33)
    assert cfg.lr == 1e-3 and cfg.clip_grad is None  # YAML reads 1e-3 as a string


def test_bad_policy_and_odd_mixup_batch_are_refused_before_the_run() -> None:
    message = config_error({"auto_augment": "rand-q9"})
    assert message.startswith("--auto-augment rand-q9: timm cannot read this policy")
    assert "rand-m9-mstd0.5-inc1" in message
    message = config_error({"batch_size": 33, "mixup": 0.8})
    assert message.startswith("--batch-size 33: Mixup/CutMix (--mixup 0.8) needs an even batch")


def test_every_numeric_or_choice_option_has_a_rule() -> None:
    not_checked = {"model", "model_kwargs", "data", "data_dir", "download", "initial_checkpoint",
                   "output", "no_aug", "ema", "compile", "grad_checkpointing", "deterministic",
                   "device",  # strings and switches: checked elsewhere or free-form
                   "auto_augment",  # timm parses it: test_bad_policy_...
                   "data_columns"}  # two names: test_streaming_data checks them
    for f in fields(TrainConfig):
        assert f.name in RULES or f.name in CHOICES or f.name in not_checked, f.name
    numeric = {f.name for f in fields(TrainConfig) if re.search(r"\b(int|float)\b", str(f.type))}
    assert numeric <= set(RULES)


def _no_data(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the data was loaded before the options were checked")


def test_train_with_a_bad_value_fails_before_the_run_folder_exists(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(loop, "load_data", _no_data, raising=False)
    run = tmp_path / "run"
    code = main(["train", *TINY_MIXER, "--smoothing", "2", "--output", str(run),
                 "--progress", "none"])
    assert code == 2
    assert not run.exists()
    err = capsys.readouterr().err
    assert ("--smoothing 2.0: expected a number in [0, 1) (label smoothing); e.g. "
            "--smoothing 0.1, the default") in err


# ---- 14: bench ----------------------------------------------------------------------------
@pytest.fixture
def in_process_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    """Measure in this process, with a made-up matmul peak: the same records, no workers."""
    monkeypatch.setattr(bench_module, "_peak_in_subprocess", lambda *args: 100.0)
    monkeypatch.setattr(bench_module, "_measure_in_subprocess",
                        lambda jobs: [bench_module._measure_one(job) for job in jobs])


BENCH_MIXER = ["bench", "--model", "mixer_s16_224", "--model-kwargs", "img_size=32",
               "patch_size=8", "embed_dim=16", "num_blocks=1", "--mode", "infer",
               "--batch-size", "2", "--repeats", "1", "--warmup", "0"]


@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--batch-size", "-2"),
                                         ("--repeats", "0"), ("--warmup", "-1"),
                                         ("--threads", "-1"), ("--img-size", "0")])
def test_bench_refuses_counts_below_their_least(flag: str, value: str, in_process_bench: None,
                                                capsys: pytest.CaptureFixture) -> None:
    assert main([*BENCH_MIXER, flag, value]) == 2
    err = capsys.readouterr().err
    assert f"{flag} {value}: expected " in err and ("e.g. --" in err or "leave it out" in err)


def test_bench_exits_1_when_nothing_was_measured(in_process_bench: None,
                                                 capsys: pytest.CaptureFixture) -> None:
    assert main([*BENCH_MIXER, "--img-size", "64"]) == 1
    captured = capsys.readouterr()
    assert "nothing could be measured" in captured.err
    assert "[1] mixer_s16_224 at 64 px: infer not measured: ValueError: mixer_s16_224 takes " \
           "32x32 images only" in captured.err
    assert "img/s" not in captured.out  # no table of dashes


def test_bench_marks_sizes_it_could_not_measure(in_process_bench: None,
                                                capsys: pytest.CaptureFixture) -> None:
    assert main([*BENCH_MIXER, "--img-size", "32,64"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[1]: line for line in out.splitlines()
            if line.startswith("mixer_s16_224")}
    assert set(rows) == {"32", "64"}
    assert "[1]" in rows["64"] and "[1]" not in rows["32"]
    assert "\n[1] mixer_s16_224 at 64 px: infer not measured: ValueError: mixer_s16_224 " \
           "takes 32x32 images only" in out


def test_bench_help_gives_the_exit_status() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    text = " ".join(sub.choices["bench"].format_help().split())
    assert "0 when at least one model, size and mode was measured" in text
    assert "1 when nothing could be measured" in text
