"""``tokenmixers train``: learning on mnist5k, exact resume (after an epoch and after Ctrl-C
mid-epoch), non-finite losses, run folders, configuration, every recipe option, atomic
checkpoints."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tokenmixers.cli import main
from tokenmixers.train.checkpoint import (
    STATE,
    WEIGHTS,
    find_checkpoint,
    load_state,
    save_checkpoint,
)
from tokenmixers.train.config import build_config, parse_literal, parse_model_kwargs
from tokenmixers.train.progress import CLOCK_FIELDS, Progress

TINY = ["--model", "mixer_s16_224", "--model-kwargs", "patch_size=4", "embed_dim=32",
        "num_blocks=1"]
QUIET = ["--progress", "none"]
# A short run that exercises every stateful part: EMA, Mixup/CutMix, RandAugment, random
# erasing, drop path, warm-up + cosine; 6 steps per epoch.
RESUMABLE = [*TINY, "--data", "mnist5k", "--limit-train", "192", "--limit-val", "64",
             "--batch-size", "32", "--epochs", "2", "--lr", "2e-3", "--warmup-epochs", "0.5",
             "--ema", "--ema-decay", "0.9", "--mixup", "0.8", "--cutmix", "1.0",
             "--auto-augment", "rand-m9-mstd0.5-inc1", "--reprob", "0.25",
             "--drop-path", "0.1", *QUIET]


pytestmark = pytest.mark.usefixtures("one_thread")


def weights(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / name / WEIGHTS))


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("full") / "run"
    assert main(["train", *RESUMABLE, "--output", str(run)]) == 0
    return run


# ---- learning ----------------------------------------------------------------------------
def test_learns_mnist5k(tmp_path: Path) -> None:
    # The first epoch of the README's 15-epoch run: a 0.32M-parameter Mixer, patch 4.
    run = tmp_path / "run"
    code = main(["train", "--model", "mixer_s16_224", "--model-kwargs", "patch_size=4",
                 "embed_dim=96", "num_blocks=4", "--data", "mnist5k", "--epochs", "15",
                 "--batch-size", "64", "--lr", "2e-3", "--warmup-epochs", "1",
                 "--stop-after", "1", "--output", str(run), *QUIET])
    assert code == 0
    m = metrics(run)
    assert [r["epoch"] for r in m] == [1]
    # Chance is 10%; 62 steps get far above it (62.2% here).
    assert m[0]["top1"] > 50.0, m
    assert m[0]["val_loss"] < 1.5 < m[0]["train_loss"]
    for key in ("train_loss", "top1", "top5", "lr", "img_per_sec", "elapsed"):
        assert key in m[0]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model_kwargs"] == {"patch_size": 4, "embed_dim": 96, "num_blocks": 4}
    assert cfg["img_size"] == 28 and cfg["batch_size"] == 64
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    # The best checkpoint rebuilds as a model on its own, with the data's channels/classes.
    from tokenmixers import load_model

    model = load_model(run / "best" / WEIGHTS)
    assert model.patch_embed.in_chans == 1 and model.num_classes == 10


# ---- resuming ----------------------------------------------------------------------------
def test_stop_after_an_epoch_then_resume_is_exact(uninterrupted: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", *RESUMABLE, "--output", str(run), "--stop-after", "1"]) == 0
    assert load_state(run / "last")["epoch"] == 1
    assert len(metrics(run)) == 1
    assert main(["train", "--resume", str(run), *QUIET]) == 0
    assert max_diff(weights(run), weights(uninterrupted)) <= 1e-6
    ema_a = load_state(run / "last")["ema"]
    ema_b = load_state(uninterrupted / "last")["ema"]
    assert max_diff(ema_a, ema_b) <= 1e-6
    assert [r["top1"] for r in metrics(run)] == [r["top1"] for r in metrics(uninterrupted)]


def test_ctrl_c_mid_epoch_saves_and_resume_is_exact(
    uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    original = Progress.step

    def step_then_ctrl_c(self: Progress, values: dict) -> None:
        original(self, values)
        if self.prefix.startswith("epoch 2/") and self.done == 2:
            signal.raise_signal(signal.SIGINT)  # as a terminal's Ctrl-C would

    monkeypatch.setattr(Progress, "step", step_then_ctrl_c)
    assert main(["train", *RESUMABLE, "--output", str(run)]) == 130
    state = load_state(run / "last")
    assert (state["epoch"], state["update_in_epoch"], state["global_step"]) == (1, 2, 8)
    monkeypatch.setattr(Progress, "step", original)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    assert main(["train", "--resume", str(run), *QUIET]) == 0
    assert load_state(run / "last")["global_step"] == 12
    assert max_diff(weights(run), weights(uninterrupted)) <= 1e-6
    # The resumed epoch's record covers the whole epoch, as the uninterrupted one's does.
    clock = CLOCK_FIELDS
    assert [{k: v for k, v in r.items() if k not in clock} for r in metrics(run)] == \
        [{k: v for k, v in r.items() if k not in clock} for r in metrics(uninterrupted)]


def test_resume_refuses_changed_options_and_missing_runs(uninterrupted: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--resume", str(uninterrupted), "--lr", "0.1"]) == 2
    assert "lr=0.1" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "none")]) == 2
    assert "no run there" in capsys.readouterr().err


def test_refuses_a_folder_holding_another_run(uninterrupted: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    for name in ("config.yaml", "last"):
        src = uninterrupted / name
        if src.is_dir():
            import shutil

            shutil.copytree(src, run / name)
        else:
            (run / name).write_text(src.read_text())
    args = ["train", *TINY, "--limit-train", "64", "--limit-val", "32", "--batch-size", "32",
            "--epochs", "1", "--output", str(run), *QUIET]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already holds a run of mixer_s16_224" in err and "--overwrite" in err
    assert main([*args, "--overwrite"]) == 0
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files go
    assert len(metrics(run)) == 1


def test_non_finite_loss_names_the_step_and_keeps_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    args = ["train", *TINY, "--limit-train", "96", "--limit-val", "32", "--batch-size", "32",
            "--epochs", "2", "--output", str(run), *QUIET]
    calls = {"n": 0}
    original = torch.nn.CrossEntropyLoss.forward

    def nan_at_step_5(self: torch.nn.Module, logits: torch.Tensor, target: torch.Tensor):
        calls["n"] += 1
        loss = original(self, logits, target)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", nan_at_step_5)
    before = None
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "loss is nan at epoch 2, step 2/3 (global step 5)" in err
    assert "last good checkpoint" in err
    state = load_state(run / "last")
    assert state["epoch"] == 1 and state["global_step"] == 3
    before = weights(run)
    assert all(torch.isfinite(v).all() for v in before.values())


# ---- configuration -----------------------------------------------------------------------
def test_literals_and_model_kwargs() -> None:
    assert parse_literal("1e-3") == 1e-3
    assert parse_literal("(0.5, 4.0)") == (0.5, 4.0)
    assert parse_literal("[1, 2]") == [1, 2]
    assert parse_literal("true") is True and parse_literal("None") is None
    assert parse_literal("avg") == "avg"
    assert parse_model_kwargs(["patch-size=4", "mlp_ratio=(0.5, 2)"]) == {
        "patch_size": 4, "mlp_ratio": (0.5, 2)}
    with pytest.raises(ValueError, match="key=value"):
        parse_model_kwargs(["patch_size"])


def test_every_option_is_settable_from_yaml(tmp_path: Path) -> None:
    from tokenmixers.train.config import TrainConfig

    full = {**TrainConfig(model="vit_tiny_patch16_224").to_dict(), "epochs": 3,
            "scale": [0.5, 1.0], "model_kwargs": {"depth": 2}}
    cfg = build_config(full)
    assert cfg.scale == (0.5, 1.0) and cfg.model_kwargs == {"depth": 2}
    with pytest.raises(ValueError, match="did you mean batch_size"):
        build_config({"model": "x", "batch_sise": 3})


def test_config_file_cli_precedence_and_errors(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": "mixer_s16_224", "model_kwargs": {"patch_size": 4, "embed_dim": 32,
                                                   "num_blocks": 1},
        "data": "mnist5k", "epochs": 1, "batch-size": 64, "limit_train": 64,
        "limit_val": 32, "lr": 0.01, "progress": "none"}))
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--batch-size", "32", "--output",
                 str(run)]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["batch_size"] == 32 and saved["lr"] == 0.01 and saved["epochs"] == 1
    assert saved["warmup_epochs"] == 1.0 and saved["hflip"] == 0.0  # the mnist recipe
    # The saved config is itself a valid --config.
    assert main(["train", "--config", str(run / "config.yaml"), "--output",
                 str(tmp_path / "again")]) == 0
    assert max_diff(weights(run), weights(tmp_path / "again")) == 0.0

    bad = [("--model", "mixer_s16"), ("--model-kwargs", "patch_sise=4")]
    for flag, value in bad:
        assert main(["train", "--config", str(config), flag, value, "--output",
                     str(tmp_path / "x")]) == 2
        assert "did you mean" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--model-kwargs", "in_chans=3",
                 "--output", str(tmp_path / "y")]) == 2
    assert "conflicts with in_chans=1" in capsys.readouterr().err
    (tmp_path / "typo.yaml").write_text("modle: vit\n")
    assert main(["train", "--config", str(tmp_path / "typo.yaml"), "--output", "z"]) == 2
    assert "did you mean model" in capsys.readouterr().err


def test_no_weight_decay_on_norms_biases_pos_embed_and_class_token(tmp_path: Path) -> None:
    from tokenmixers.train.distributed import DistInfo
    from tokenmixers.train.loop import _Trainer

    trainer = _Trainer(
        {"model": "vit_tiny_patch16_224", "output": str(tmp_path / "run"),
         "model_kwargs": {"patch_size": 7, "embed_dim": 16, "depth": 1, "num_heads": 2,
                          "class_token": True}, "limit_train": 64, "batch_size": 32},
        DistInfo(), resume=None, overwrite=False)
    trainer._setup()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    no_decay = {names[id(p)] for g in trainer.optimizer.param_groups
                if g["weight_decay"] == 0.0 for p in g["params"]}
    decay = {names[id(p)] for g in trainer.optimizer.param_groups
             if g["weight_decay"] > 0 for p in g["params"]}
    assert {"pos_embed", "cls_token", "head.bias", "norm.weight"} <= no_decay
    assert {"head.weight", "patch_embed.proj.weight"} <= decay
    assert all(not n.endswith(".bias") and "norm" not in n for n in decay)
    assert trainer.cfg.drop_path == 0.0 and trainer.model.blocks[0].drop_path is not None


# ---- every option, real datasets ---------------------------------------------------------
def test_all_recipe_options_on_fake_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    from test_data import make_fake_cifar

    make_fake_cifar(tmp_path / "cifar", monkeypatch, per_batch=16)
    run = tmp_path / "run"
    # CIFAR's recipe: RandAugment, Mixup/CutMix, random erasing, drop path; plus EMA,
    # bf16 autocast on CPU, grad checkpointing, accumulation and clipping.
    assert main(["train", *TINY, "--data", "cifar10", "--data-dir", str(tmp_path / "cifar"),
                 "--img-size", "32", "--batch-size", "8", "--accum-steps", "2",
                 "--limit-train", "32", "--epochs", "1", "--ema", "--amp", "bf16",
                 "--grad-checkpointing", "--clip-grad", "1.0", "--progress", "plain",
                 "--log-interval", "1", "--output", str(run)]) == 0
    err = capsys.readouterr().err
    assert "cifar10: 32 train / 16 val images, 3 channel(s), 10 classes" in err
    assert "epoch 1/1 step 2/2 loss=" in err and "img/s=" in err and "eta=" in err
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["auto_augment"] == "rand-m9-mstd0.5-inc1" and cfg["mixup"] == 0.8
    assert cfg["reprob"] == 0.25 and cfg["drop_path"] == 0.1
    m = metrics(run)[0]
    assert "ema_top1" in m and m["train_top1"] is None  # no accuracy against mixed labels
    state = load_state(run / "last")
    assert state["ema"] is not None and state["global_step"] == 2
    assert max_diff(weights(run), state["ema"]) > 0  # EMA weights are their own

    fp16 = tmp_path / "fp16"
    assert main(["train", *TINY, "--data", "cifar10", "--data-dir", str(tmp_path / "cifar"),
                 "--batch-size", "8", "--limit-train", "16", "--epochs", "1", "--amp", "fp16",
                 "--mixup", "0", "--cutmix", "0", "--output", str(fp16), *QUIET]) == 0
    assert load_state(fp16 / "last")["scaler"]["scale"] > 0


def test_trains_on_an_image_folder_with_a_corrupt_file(tmp_path: Path) -> None:
    from test_data import write_images

    write_images(tmp_path / "imgs" / "train", {"a": 12, "b": 12}, size=16)
    write_images(tmp_path / "imgs" / "val", {"a": 4, "b": 4}, size=16)
    (tmp_path / "imgs" / "train" / "b" / "truncated.png").write_bytes(
        (tmp_path / "imgs" / "train" / "b" / "0.png").read_bytes()[:60])
    run = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match="truncated.png"):
        code = main(["train", *TINY, "--data", f"imagefolder:{tmp_path / 'imgs'}",
                     "--img-size", "16", "--batch-size", "8", "--epochs", "1",
                     "--max-bad-images", "0.05", "--output", str(run), *QUIET])
    assert code == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["data"].startswith("imagefolder:")
    assert metrics(run)[0]["bad_images"] == 1  # counted
    from tokenmixers import load_model

    assert load_model(run / "last" / WEIGHTS).num_classes == 2


def test_progress_bar_on_a_terminal_plain_lines_otherwise() -> None:
    import io

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    bar = Tty()
    p = Progress("auto", stream=bar)
    p.start("epoch 1/1", 3)
    for _ in range(3):
        p.step({"loss": 1.0, "lr": 1e-3})
    p.close()
    assert p.mode == "bar" and "3/3" in bar.getvalue() and "loss=1.0000" in bar.getvalue()
    plain = io.StringIO()
    p = Progress("auto", interval=2, stream=plain)
    p.start("epoch 1/1", 3)
    for _ in range(3):
        p.step({"loss": 1.0})
    assert plain.getvalue().count("\n") == 2 and "\r" not in plain.getvalue()


# ---- atomic checkpoints --------------------------------------------------------------------
def _tiny_model():
    from tokenmixers import create_model

    return create_model("mixer_s16_224", img_size=8, patch_size=4, in_chans=1, embed_dim=8,
                        num_blocks=1, num_classes=2)


def test_checkpoint_interrupted_inside_the_write_keeps_the_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _tiny_model()
    save_checkpoint(tmp_path, "last", model, {"epoch": 1})
    good = load_file(str(tmp_path / "last" / WEIGHTS))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def dies_halfway(obj: object, f) -> None:
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the run is killed while the state file is half written

    monkeypatch.setattr("tokenmixers.train.checkpoint.torch.save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, "last", model, {"epoch": 2})
    folder = find_checkpoint(tmp_path, "last")
    assert folder == tmp_path / "last" and load_state(folder)["epoch"] == 1
    assert max_diff(load_file(str(folder / WEIGHTS)), good) == 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no temporary left


def test_checkpoint_killed_between_the_renames_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    model = _tiny_model()
    save_checkpoint(tmp_path, "last", model, {"epoch": 1})
    real_rename = os.rename
    calls = {"n": 0}

    def second_rename_dies(src: str, dst: str) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("killed")
        real_rename(src, dst)

    monkeypatch.setattr("tokenmixers.train.checkpoint.os.rename", second_rename_dies)
    with pytest.raises(OSError, match="killed"):
        save_checkpoint(tmp_path, "last", model, {"epoch": 2})
    monkeypatch.setattr("tokenmixers.train.checkpoint.os.rename", real_rename)
    assert not (tmp_path / "last").exists()
    folder = find_checkpoint(tmp_path, "last")
    assert folder is not None and folder.name.startswith(".last.old-")
    assert load_state(folder)["epoch"] == 1 and (folder / STATE).is_file()
    save_checkpoint(tmp_path, "last", model, {"epoch": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    assert load_state(find_checkpoint(tmp_path, "last"))["epoch"] == 3


def test_unknown_flags_get_suggestions(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "mixer_s16_224", "--batch-sise", "3"])
    assert exit_info.value.code == 2
    assert "did you mean --batch-size?" in capsys.readouterr().err


def test_ctrl_c_in_a_real_process_exits_cleanly(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenmixers", "train", *TINY, "--batch-size", "32",
         "--epochs", "50", "--threads", "1", "--progress", "plain", "--log-interval", "5",
         "--output", str(run)],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if " step " in line:  # training has started
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    assert "Traceback" not in rest
    assert "interrupted at epoch 1" in rest and f"--resume {run}" in rest
    state = load_state(run / "last")
    assert state["epoch"] == 0 and 0 < state["update_in_epoch"] < 125


def test_digits_with_worker_processes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", "--model", "mixer_s16_224", "--model-kwargs", "patch_size=4",
                 "embed_dim=16", "num_blocks=1", "--data", "digits", "--epochs", "1",
                 "--limit-train", "256", "--workers", "1", "--output", str(run), *QUIET]) == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["img_size"] == 8 and cfg["batch_size"] == 64  # the data's size, its recipe
    assert metrics(run)[0]["top5"] > 0
