"""The training loop behind ``tokenmixers train``: DeiT-style recipe from timm's factories,
resumable checkpoints, Ctrl-C handling and multi-process (DDP) training."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from tokenmixers._faults import fault_point
from tokenmixers._files import plain
from tokenmixers.data import (
    AugmentConfig,
    DataBundle,
    Transformed,
    eval_transform,
    fixed_subset,
    is_streamed,
    load_data,
    train_transform,
    training_views,
)
from tokenmixers.evaluation import evaluate
from tokenmixers.precision import autocast
from tokenmixers.train import distributed as D
from tokenmixers.train.checkpoint import (
    copy_checkpoint,
    find_checkpoint,
    load_state,
    remove_leftovers,
    repair_run,
    rng_state,
    save_checkpoint,
    seed_all,
    set_rng_state,
)
from tokenmixers.train.config import (
    RUNTIME_KEYS,
    ConfigError,
    TrainConfig,
    build_config,
    parse_model_kwargs,
    read_yaml,
    resolve,
    run_identity,
    save_yaml,
)
from tokenmixers.train.progress import Progress, RunLog
from tokenmixers.train.runlock import RunLock, RunLockedError
from tokenmixers.train.sampler import ResumableSampler

#: What a run writes into its folder (and what ``--overwrite`` removes).
RUN_FILES = ("config.yaml", "metrics.jsonl", "last", "best", "tensorboard")
#: Runtime options that apply to the invocation that gives them, not to later resumes.
ONE_SHOT_KEYS = ("stop_after",)


class NonFiniteLossError(RuntimeError):
    """The loss, the validation loss or the weights became NaN or infinite; the message names
    the step and the last checkpoint with finite weights and validation."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions); the previous is intact."""


class RunExistsError(ValueError):
    """The output folder already holds a run."""


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    global_step: int
    best_top1: float | None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    stopped: bool = False  # --stop-after ended this invocation early


# ---- configuration and run folder ---------------------------------------------------------
def _resume_config(options: dict[str, Any], run_dir: Path) -> TrainConfig:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"--resume {run_dir}: no run there (no config.yaml); start one with --output")
    saved = read_yaml(path)
    given = dict(options)
    if "model_kwargs" in given:
        given["model_kwargs"] = parse_model_kwargs(given["model_kwargs"])
    changed = [k for k, v in given.items()
               if k not in RUNTIME_KEYS and plain(v) != plain(saved.get(k))]
    if changed:
        details = ", ".join(f"{k}={given[k]!r} (run has {saved.get(k)!r})" for k in changed)
        raise ConfigError(
            f"--resume continues the run in {run_dir} exactly, so its options cannot change: "
            f"{details}. Only {', '.join(sorted(RUNTIME_KEYS))} may; start a new run with "
            "--output for a different configuration")
    merged = {**saved, **{k: v for k, v in given.items() if k in RUNTIME_KEYS}}
    for key in ONE_SHOT_KEYS:  # said for one invocation, never carried into the next
        merged[key] = given.get(key)
    merged["output"] = str(run_dir)
    return build_config(merged)


def prepare_config(options: dict[str, Any], *, resume: str | None, world_size: int
                   ) -> tuple[TrainConfig, Path]:
    if resume:
        run_dir = Path(resume).expanduser()
        _need_folder(run_dir, "--resume")
        return _resume_config(options, run_dir), run_dir
    cfg = resolve(build_config(options), world_size)
    if not cfg.output:
        raise ConfigError("no run folder: pass --output RUN_DIR (or --resume RUN_DIR)")
    run_dir = Path(cfg.output).expanduser()
    _need_folder(run_dir, "--output")
    return cfg, run_dir


def _need_folder(run_dir: Path, flag: str) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(
            f"{flag} {run_dir}: that is a file, and a run needs a folder (a new one, or one "
            f"holding a run); choose another path")


def check_run_dir(run_dir: Path, cfg: TrainConfig, *, overwrite: bool,
                  clear: bool = True) -> None:
    """Refuse a folder holding another run unless ``overwrite``; then (``clear``) remove our
    files from it. The trainer checks first and clears only once the new run's data and model
    have been built, so an ``--overwrite`` whose new run cannot start loses nothing."""
    present = [n for n in RUN_FILES if (run_dir / n).exists()]
    if not present or (overwrite and not clear):
        return
    if not overwrite:
        what = "a run"
        config = run_dir / "config.yaml"
        if config.is_file():
            try:
                old = read_yaml(config)
                same = run_identity(old) == run_identity(cfg)
                what = (f"a run of {old.get('model')} on {old.get('data')}"
                        f"{' with the same options' if same else ' with different options'}")
            except (ValueError, OSError):
                pass
        raise RunExistsError(
            f"{run_dir} already holds {what} ({', '.join(present)}); pass --resume {run_dir} "
            "to continue it, --overwrite to replace it, or choose another --output")
    clear_run_dir(run_dir)


def clear_run_dir(run_dir: Path) -> None:
    """Remove what a run writes (``--overwrite``), leftovers of interrupted saves included."""
    for name in RUN_FILES:
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    remove_leftovers(run_dir)


# ---- model and data -----------------------------------------------------------------------
def model_overrides(cfg: TrainConfig, bundle: DataBundle) -> dict[str, Any]:
    """``--model-kwargs`` plus what the data decides (channels, classes, size) and the
    recipe's dropout / drop path, for the model's own argument names."""
    from tokenmixers.zoo import model_arguments

    accepted = model_arguments(cfg.model)
    over = dict(cfg.model_kwargs)
    fixed = {"in_chans": bundle.in_chans, "num_classes": bundle.num_classes,
             "img_size": cfg.img_size}
    for key, value in fixed.items():
        if key in over and plain(over[key]) not in (value, [value, value]):
            raise ConfigError(
                f"--model-kwargs {key}={over[key]} conflicts with {key}={value}, which "
                f"{'--img-size' if key == 'img_size' else 'the data'} decides; drop it")
        over[key] = value
    for key, value, flag in (("drop_path_rate", cfg.drop_path, "--drop-path"),
                             ("drop_rate", cfg.drop, "--drop")):
        if key in over:
            continue
        if key in accepted:
            over[key] = value
        elif value:
            raise ConfigError(f"{cfg.model} takes no {key}; leave {flag} at 0")
    return over


def _bad_images(bundle: DataBundle) -> int:
    """Unreadable files skipped so far by this process's image folders."""
    seen: dict[int, int] = {}
    for ds in (bundle.train, bundle.val):
        inner = getattr(ds, "dataset", ds)  # a Subset of one folder
        if hasattr(inner, "bad_files"):
            seen[id(inner)] = len(inner.bad_files)
    return sum(seen.values())


class StopRequest:
    """SIGINT/SIGTERM set a flag the loop checks between steps (a second Ctrl-C aborts)."""

    def __init__(self, log: Any) -> None:
        self.flag = threading.Event()
        self.log = log
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag.is_set():
            raise KeyboardInterrupt
        self.flag.set()
        self.log(f"{signal.Signals(signum).name}: saving a checkpoint after this step "
                 "(press Ctrl-C again to abort without saving)")

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _checkpoint_metadata(cfg: TrainConfig, bundle: DataBundle, epoch: int) -> dict[str, str]:
    return {"data": cfg.data, "classes": json.dumps(bundle.classes),
            "mean": json.dumps(list(bundle.mean)), "std": json.dumps(list(bundle.std)),
            "crop_pct": str(bundle.crop_pct), "epoch": str(epoch)}


# ---- the run ------------------------------------------------------------------------------
def train(options: dict[str, Any], *, resume: str | None = None, overwrite: bool = False
          ) -> TrainResult:
    """Run (or resume) a training run described by ``options`` (TrainConfig names)."""
    info = D.setup(str(options.get("device", "auto")))
    try:
        return _Trainer(options, info, resume=resume, overwrite=overwrite).run()
    finally:
        D.teardown()


class _Trainer:
    def __init__(self, options: dict[str, Any], info: D.DistInfo, *, resume: str | None,
                 overwrite: bool) -> None:
        self.info = info
        try:
            self.cfg, self.run_dir = prepare_config(options, resume=resume,
                                                    world_size=info.world_size)
        except FileNotFoundError as err:
            if not info.enabled:
                raise
            # Every process of a resumed run reads the run folder (config.yaml, last/).
            raise FileNotFoundError(
                f"{err} [process {info.rank} of {info.world_size}, on host "
                f"{socket.gethostname()}: a resumed run reads its folder on every node, so "
                "keep run folders on a filesystem all nodes share (or copy it to the same "
                "path on each node)]") from err
        self.resuming = resume is not None
        self.overwrite = overwrite
        self.lock: RunLock | None = None
        self.made_run_dir = False
        self.history: list[dict[str, Any]] = []
        self.epoch_sums: list[float] = [0.0, 0.0, 0.0]
        self.has_history = not self.resuming  # a checkpoint from an older version has none
        self.progress = Progress(self.cfg.progress, self.cfg.log_interval, enabled=info.is_main)

    def log(self, message: str) -> None:
        self.progress.log(message)

    def warn(self, message: str) -> None:
        self.progress.warn(message)

    # -- set-up ---------------------------------------------------------------------------
    def _setup(self) -> None:
        """Everything a run needs, in an order that matters: the seed comes before the data
        and the model (their random draws), and a resumed run's state is loaded before DDP
        wraps the model, so a resumed run repeats the uninterrupted one bit for bit."""
        self._claim_run_dir()
        self._setup_process()
        self._load_bundle()
        self._setup_datasets()
        self._setup_model()
        self._setup_optimizer()
        self._setup_scaler_and_ema()
        self._setup_loss()
        self._write_config()
        self._setup_counters()
        self._wrap_model()

    def _claim_run_dir(self) -> None:
        """Lock the run folder against other writers; a new run refuses a folder holding
        another one (unless --overwrite, which clears it later, in _write_config); a resumed
        one is first repaired to one consistent epoch if a crash left it between two."""
        if not self.info.is_main:
            return
        self.made_run_dir = not self.run_dir.exists()
        self.lock = RunLock(self.run_dir, self.warn)
        self.lock.acquire()
        if self.resuming:
            for line in repair_run(self.run_dir):
                self.warn(f"repaired {self.run_dir}: {line}")
        else:
            check_run_dir(self.run_dir, self.cfg, overwrite=self.overwrite, clear=False)

    def _setup_process(self) -> None:
        """Torch threads, deterministic algorithms and the run's seed."""
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        seed_all(cfg.seed)

    def _load_bundle(self) -> None:
        """The raw dataset, into ``self.bundle``."""
        cfg, info = self.cfg, self.info

        def load(download: bool) -> DataBundle:
            return load_data(cfg.data, data_dir=cfg.data_dir, download=download,
                             val_split=cfg.val_split, seed=cfg.seed,
                             max_bad_fraction=cfg.max_bad_images, columns=cfg.data_columns)

        # With --download the main process fetches first; the others read what it wrote.
        if info.is_main:
            bundle = load(cfg.download)
        D.barrier(info)
        if not info.is_main:
            bundle = load(False)
        self.bundle = bundle

    def _setup_datasets(self) -> None:
        """The augmented train set and its sampler, and this process's validation loader."""
        cfg, info, bundle = self.cfg, self.info, self.bundle
        aug = AugmentConfig(scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip,
                            color_jitter=cfg.color_jitter, auto_augment=cfg.auto_augment,
                            reprob=cfg.reprob, no_aug=cfg.no_aug)
        self.saved_workers: int | None = None
        if is_streamed(bundle.train):
            self._setup_streams(aug)
            return
        # With holdout the validation images come out of the training set and the test
        # split is never read (compare tunes and watches convergence on them).
        train, held_out, _ = training_views(fixed_subset(bundle.train, cfg.limit_train),
                                            holdout=cfg.holdout,
                                            train_fraction=cfg.train_fraction)
        self.train_set = Transformed(
            train, train_transform(cfg.img_size, bundle.in_chans, bundle.mean, bundle.std, aug))
        val = fixed_subset(held_out if held_out is not None else bundle.val, cfg.limit_val)
        n_val = len(val)  # type: ignore[arg-type]
        self.n_val = n_val
        # Each process evaluates every world_size-th image; counts are summed, so no image
        # is counted twice.
        shard = Subset(val, list(range(info.rank, n_val, info.world_size)))
        self.val_loader = DataLoader(
            Transformed(shard, eval_transform(cfg.img_size, bundle.in_chans, bundle.mean,
                                              bundle.std, crop_pct=bundle.crop_pct)),
            batch_size=cfg.batch_size, num_workers=cfg.workers,
            generator=torch.Generator().manual_seed(0),
            pin_memory=info.device.type == "cuda")
        self.sampler = ResumableSampler(self.train_set, num_replicas=info.world_size,
                                        rank=info.rank, seed=cfg.seed)
        self.updates_per_epoch = self.sampler.per_epoch // cfg.batch_size // cfg.accum_steps
        self.n_train = len(self.train_set)
        if self.updates_per_epoch == 0:
            raise ConfigError(
                f"{len(self.train_set)} training images are too few for a batch of "
                f"{cfg.batch_size} x {cfg.accum_steps} accumulation steps x "
                f"{info.world_size} processes; lower --batch-size")

    def _setup_streams(self, aug: AugmentConfig) -> None:
        """A wds: shard set: this process's part of every epoch (tokenmixers.data.wds's plan:
        the same number of whole batches on every process) and its validation part."""
        import numpy as np

        from tokenmixers.data.wds import WdsEval, WdsPlan, WdsTrain

        cfg, info, bundle = self.cfg, self.info, self.bundle
        from tokenmixers.data.hf import HfStreamSource, stream_setup

        if isinstance(bundle.train, HfStreamSource):  # hf-stream: the same interface as wds
            try:
                self.train_set, self.val_loader, self.n_val = stream_setup(cfg, info, bundle, (
                    train_transform(cfg.img_size, bundle.in_chans, bundle.mean, bundle.std,
                                    aug),
                    eval_transform(cfg.img_size, bundle.in_chans, bundle.mean, bundle.std,
                                   crop_pct=bundle.crop_pct)), self.warn)
            except ValueError as err:
                raise ConfigError(str(err)) from None
            self.n_train, self.sampler = bundle.train.total, None
            self.updates_per_epoch = self.train_set.steps
            return
        if cfg.holdout or cfg.train_fraction:
            raise ConfigError(
                f"{'holdout' if cfg.holdout else 'train_fraction'}: not available for a "
                f"streamed {cfg.data} (it needs every label up front); write the split as "
                "its own shards, or use hf: or imagefolder: data")
        shards = bundle.train.shards
        subset = None
        if cfg.limit_train and cfg.limit_train < len(shards):
            subset = np.sort(np.random.default_rng(0).permutation(len(shards))[
                :cfg.limit_train])  # the images fixed_subset would take
        plan = WdsPlan(shards, seed=cfg.seed, batch_size=cfg.batch_size,
                       batches_per_step=cfg.accum_steps, world_size=info.world_size,
                       subset=subset)
        self.train_set = WdsTrain(
            plan, train_transform(cfg.img_size, bundle.in_chans, bundle.mean, bundle.std, aug),
            rank=info.rank)
        self.n_train = plan.total
        self.updates_per_epoch = plan.steps
        if self.updates_per_epoch == 0:
            raise ConfigError(
                f"{plan.total} training images are too few for a batch of {cfg.batch_size} x "
                f"{cfg.accum_steps} accumulation steps x {info.world_size} processes; lower "
                "--batch-size")
        if plan.left_out:
            self.warn(f"{cfg.data}: {info.world_size} process(es) x {plan.per_rank} images (the "
                      f"same whole number of batches each); {plan.left_out} of {plan.total} "
                      "images are left out of each epoch (other ones each epoch: the shard "
                      "order is reshuffled)")
        val_shards = bundle.val.shards
        n_all = len(val_shards)
        positions = np.arange(n_all)
        if cfg.limit_val and cfg.limit_val < n_all:
            positions = np.sort(np.random.default_rng(0).permutation(n_all)[:cfg.limit_val])
        self.n_val = len(positions)
        self.val_loader = DataLoader(
            WdsEval(val_shards, eval_transform(cfg.img_size, bundle.in_chans, bundle.mean,
                                               bundle.std, crop_pct=bundle.crop_pct),
                    rank=info.rank, world_size=info.world_size, positions=positions),
            batch_size=cfg.batch_size, num_workers=cfg.workers,
            pin_memory=info.device.type == "cuda")
        self.sampler = None

    def _setup_model(self) -> None:
        """The zoo model for this data, from --initial-checkpoint if given, on the device."""
        from tokenmixers.zoo import create_model

        cfg = self.cfg
        model = create_model(cfg.model, **model_overrides(cfg, self.bundle))
        if cfg.initial_checkpoint:
            from tokenmixers.weights import load_weights

            load_weights(model, cfg.initial_checkpoint)
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        model.to(self.info.device)
        self.model = model

    def _setup_optimizer(self) -> None:
        """The optimizer and the per-update learning-rate schedule, from timm's factories."""
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2

        cfg = self.cfg
        opt_kwargs: dict[str, Any] = {}
        if cfg.opt.lower() in ("sgd", "momentum", "nesterov"):
            opt_kwargs["momentum"] = cfg.momentum
        elif "adam" in cfg.opt.lower():
            opt_kwargs["eps"] = cfg.opt_eps
        # filter_bias_and_bn: no weight decay on 1-d parameters (norms, biases) nor on the
        # names model.no_weight_decay() lists (position embeddings, class tokens).
        self.optimizer = create_optimizer_v2(self.model, opt=cfg.opt, lr=cfg.lr,
                                             weight_decay=cfg.weight_decay,
                                             filter_bias_and_bn=True, **opt_kwargs)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=cfg.sched, num_epochs=cfg.epochs,
            warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr,
            step_on_epochs=False, updates_per_epoch=self.updates_per_epoch)

    def _setup_scaler_and_ema(self) -> None:
        """The fp16 gradient scaler and the weights' EMA, each only when asked for."""
        cfg = self.cfg
        self.scaler = torch.amp.GradScaler(self.info.device.type) if cfg.amp == "fp16" else None
        self.ema = None
        if cfg.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay)

    def _setup_loss(self) -> None:
        """Mixup/CutMix when enabled, and the loss that fits its soft targets (or not)."""
        cfg = self.cfg
        mix = (cfg.mixup or 0) > 0 or (cfg.cutmix or 0) > 0
        self.mixup = None
        if mix:
            from timm.data import Mixup

            if cfg.batch_size % 2:
                raise ConfigError("Mixup/CutMix needs an even --batch-size")
            self.mixup = Mixup(mixup_alpha=cfg.mixup or 0.0, cutmix_alpha=cfg.cutmix or 0.0,
                               prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob,
                               label_smoothing=cfg.smoothing,
                               num_classes=self.bundle.num_classes)
            from timm.loss import SoftTargetCrossEntropy

            self.criterion: nn.Module = SoftTargetCrossEntropy()
        else:
            self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)

    def _write_config(self) -> None:
        """The run folder and its config.yaml (a new run only)."""
        # Called once the data and the model are known to work, so a bad option leaves no
        # half-made run folder behind.
        if self.info.is_main and not self.resuming:
            if self.overwrite:
                clear_run_dir(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_yaml(self.cfg, self.run_dir / "config.yaml")
            self.made_run_dir = False  # it holds a run now, whatever happens next
        D.barrier(self.info)

    def _setup_counters(self) -> None:
        """Epoch/step counters and the best score: fresh, or the last checkpoint's on resume."""
        self.epoch = 0
        self.update_in_epoch = 0
        self.global_step = 0
        self.best_top1: float | None = None
        self.best_epoch = 0
        self.elapsed_before = 0.0
        if self.resuming:
            self._load_last()

    def _wrap_model(self) -> None:
        """DDP (multi-process) and torch.compile around the model for training and eval."""
        cfg, info, model = self.cfg, self.info, self.model
        forward: nn.Module = model
        self.ddp = None
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(
                model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
            forward = self.ddp
        self.forward = torch.compile(forward) if cfg.compile else forward
        self.eval_model = torch.compile(model) if cfg.compile else model

    def _load_last(self) -> None:
        from tokenmixers.weights import load_weights

        folder = find_checkpoint(self.run_dir, "last")
        if folder is None:
            raise FileNotFoundError(
                f"--resume {self.run_dir}: the run has no checkpoint yet (it stopped before "
                "finishing an epoch or a Ctrl-C save); start it again with --overwrite")
        state = load_state(folder)
        load_weights(self.model, folder / "model.safetensors", source="tokenmixers")
        self.optimizer.load_state_dict(state["optimizer"])
        saved_world = int(state.get("world_size", 1))
        if saved_world == self.info.world_size:
            # On another world size the saved schedule counts the old updates per epoch
            # (timm's t_initial, warmup_t); the one just made counts this run's.
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.epoch = int(state["epoch"])
        self.update_in_epoch = int(state["update_in_epoch"])
        self.global_step = int(state["global_step"])
        self.best_top1 = state.get("best_top1")
        self.best_epoch = int(state.get("best_epoch", 0))
        self.elapsed_before = float(state.get("elapsed", 0.0))
        if state.get("data_workers") is not None:
            self.saved_workers = int(state["data_workers"])
        if state.get("history") is not None:
            self.history = [dict(r) for r in state["history"]]
            self.has_history = True
        saved_step = self.update_in_epoch
        if saved_world != self.info.world_size:
            # Another world size: --batch-size is per process, so the global batch changes;
            # the lr stays the run's (config.yaml), and the schedule follows the epochs.
            # Mid-epoch, the epoch continues after the images already trained on (the
            # sampler's order does not depend on the world size), rounded down to a step.
            per = self.cfg.batch_size * self.cfg.accum_steps
            done = self.update_in_epoch * per * saved_world
            self.update_in_epoch = min(done // (per * self.info.world_size),
                                       self.updates_per_epoch)
            repeated = done - self.update_in_epoch * per * self.info.world_size
            where = (f"; epoch {self.epoch + 1} continues after its first {done} images "
                     f"(step {saved_step} of {saved_world} processes = step "
                     f"{self.update_in_epoch} of {self.info.world_size}"
                     + (f"; {repeated} of them are trained on again" if repeated else "")
                     + ")" if done else "")
            self.warn(f"warning: the run used {saved_world} process(es) (global batch "
                      f"{per * saved_world}) and resumes on {self.info.world_size} (global batch "
                      f"{per * self.info.world_size}) at the same lr {self.cfg.lr:.3g} (not "
                      f"rescaled); the lr schedule follows the epochs, with "
                      f"{self.updates_per_epoch} steps per epoch now{where}. Launch it on "
                      f"{saved_world} processes in all (--nproc {saved_world}, or torchrun's "
                      "nodes x processes per node) to continue it exactly")
        threads = state.get("threads")
        if threads and threads != torch.get_num_threads():
            self.warn(f"warning: the run used {threads} torch threads and resumes with "
                      f"{torch.get_num_threads()}; sums may round differently from the "
                      f"uninterrupted run (pass --threads {threads} to continue it exactly)")
        rngs = state.get("rng") or []
        if self.update_in_epoch and rngs:
            if len(rngs) != self.info.world_size:
                self.warn(f"warning: the run was saved from {len(rngs)} processes and resumes "
                          f"on {self.info.world_size}; the rest of this epoch will not repeat "
                          "the uninterrupted run exactly")
            set_rng_state(rngs[self.info.rank % len(rngs)])
        sums = state.get("epoch_sums")
        if self.update_in_epoch and sums and len(sums) == self.info.world_size:
            self.epoch_sums = [float(v) for v in sums[self.info.rank]]
        elif self.update_in_epoch and sums:
            # The epoch's sums are summed over the processes at its end: the first process
            # carries all of the saved ones.
            self.epoch_sums = ([float(sum(col)) for col in zip(*sums)] if self.info.is_main
                               else [0.0, 0.0, 0.0])
        self.scheduler.step_update(
            num_updates=self.epoch * self.updates_per_epoch + self.update_in_epoch)
        self.log(f"resuming {self.run_dir} from {folder.name}: epoch {self.epoch + 1}, step "
                 f"{self.update_in_epoch}/{self.updates_per_epoch} (global step "
                 f"{self.global_step})")

    # -- checkpoints --------------------------------------------------------------------------
    def _save(self, names: tuple[str, ...]) -> None:
        """All processes call this (RNG states are gathered); the main one writes ``last/``
        and copies it to the other names (``best/``). Weights that are not finite are never
        saved."""
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise NonFiniteLossError(
                f"the weights are not finite after global step {self.global_step} (epoch "
                f"{self.epoch + 1}); they are not saved; stopped: {self._kept()}. Try a lower "
                "--lr or --clip-grad 1.0")
        rngs = D.gather_objects(rng_state(), self.info)
        sums = D.gather_objects(self.epoch_sums, self.info)
        if self.info.is_main:
            state = {
                "epoch": self.epoch, "update_in_epoch": self.update_in_epoch,
                "global_step": self.global_step, "best_top1": self.best_top1,
                "best_epoch": self.best_epoch, "world_size": self.info.world_size,
                "threads": torch.get_num_threads(),
                "elapsed": self.elapsed_before + time.perf_counter() - self.t_start,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "rng": rngs,
                "epoch_sums": sums if self.update_in_epoch else None,
                "data_workers": self.cfg.workers,  # how a streamed epoch was split
                "history": self.history if self.has_history else None,
            }
            meta = _checkpoint_metadata(self.cfg, self.bundle, self.epoch)
            name, *copies = names
            try:
                first = save_checkpoint(self.run_dir, name, self.model, state, metadata=meta)
                for name in copies:
                    fault_point(f"epoch:{names[0]}", self.epoch)
                    copy_checkpoint(self.run_dir, first, name, self.epoch)
            except OSError as err:
                raise CheckpointWriteError(
                    f"could not write the checkpoint {self.run_dir / name}: "
                    f"{err.strerror or err} (errno {err.errno}, {err.filename or 'a file'}). "
                    f"{self._kept(capital=True)}; fix the cause (e.g. free disk space) and "
                    f"continue with: tokenmixers train --resume {self.run_dir}") from err
        D.barrier(self.info)

    def _kept(self, capital: bool = False) -> str:
        """What survives a stop: the last checkpoint (finite weights and validation)."""
        last = find_checkpoint(self.run_dir, "last")
        if last is None:
            text = "no checkpoint was written yet (start again with --overwrite)"
        else:
            try:
                state = load_state(last)
                where = f"epoch {state['epoch']}"
                if state.get("update_in_epoch"):
                    where += f" + {state['update_in_epoch']} steps"
            except ValueError:
                where = "unreadable state"
            text = (f"the last good checkpoint, {last} ({where}), is kept; continue from it "
                    f"with: tokenmixers train --resume {self.run_dir}")
        return text[0].upper() + text[1:] if capital else text

    # -- the loop -------------------------------------------------------------------------------
    def _batches(self, epoch: int, skip_updates: int) -> Iterator[tuple[torch.Tensor,
                                                                        torch.Tensor]]:
        cfg = self.cfg
        if self.sampler is None:  # a stream (wds:): its plan splits it among the workers
            if skip_updates and self.saved_workers not in (None, cfg.workers) and not (
                    getattr(self.train_set, "order_ignores_workers", False)):  # hf-stream
                self.log(f"{cfg.data}: the run was saved with --workers {self.saved_workers} "
                         f"and resumes with {cfg.workers}: the images of this epoch not yet "
                         "trained on are split among the new workers (each still once, in "
                         "another order)")
            self.train_set.set_epoch(epoch, workers=cfg.workers,
                                     consumed=skip_updates * cfg.accum_steps,
                                     saved_workers=self.saved_workers)
            return iter(DataLoader(
                self.train_set, batch_size=cfg.batch_size, num_workers=cfg.workers,
                pin_memory=self.info.device.type == "cuda",
                generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)))
        self.sampler.set_epoch(epoch, skip=skip_updates * cfg.accum_steps * cfg.batch_size)
        loader = DataLoader(
            self.train_set, batch_size=cfg.batch_size, sampler=self.sampler,
            num_workers=cfg.workers, drop_last=True,
            pin_memory=self.info.device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        return iter(loader)

    def _step(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], epoch: int,
              update: int) -> tuple[float, float, int]:
        """One optimizer update over ``accum_steps`` micro-batches -> (loss sum, correct,
        images)."""
        cfg, info = self.cfg, self.info
        loss_sum = correct = 0.0
        images = 0
        for micro in range(cfg.accum_steps):
            t_wait = time.perf_counter()
            x, y = next(batches)
            self.data_wait += time.perf_counter() - t_wait
            x = x.to(info.device, non_blocking=True)
            y = y.to(info.device, non_blocking=True)
            target = y
            if self.mixup is not None:
                x, target = self.mixup(x, y)
            last = micro == cfg.accum_steps - 1
            sync = (self.ddp.no_sync() if self.ddp is not None and not last
                    else contextlib.nullcontext())
            with sync:
                with autocast(info.device, cfg.amp):
                    logits = self.forward(x)
                    loss = self.criterion(logits, target)
                bad = float(not torch.isfinite(loss.detach()).item())
                if info.enabled:
                    bad = D.all_reduce_sum([bad], info)[0]
                if bad:
                    self._non_finite(loss, epoch, update)
                scaled = loss / cfg.accum_steps
                if self.scaler is not None:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            loss_sum += loss.item() * y.numel()
            if self.mixup is None:
                correct += (logits.detach().argmax(-1) == y).sum().item()
            images += y.numel()
        params = self.model.parameters()
        if self.scaler is not None:
            if cfg.clip_grad:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        # The schedule's position in this world size's steps (= global_step unless a resume
        # changed the world size; global_step counts the updates actually made).
        self.scheduler.step_update(num_updates=epoch * self.updates_per_epoch + update + 1)
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)
        return loss_sum, correct, images

    def _non_finite(self, loss: torch.Tensor, epoch: int, update: int) -> None:
        raise NonFiniteLossError(
            f"the loss is {loss.item()} at epoch {epoch + 1}, step {update + 1}/"
            f"{self.updates_per_epoch} (global step {self.global_step + 1}); stopped: "
            f"{self._kept()}. Try a lower --lr, --clip-grad 1.0, or --amp bf16 instead of fp16")

    def run(self) -> TrainResult:
        try:
            return self._run()
        except Exception as err:
            if self.info.enabled and isinstance(err, RuntimeError) and not isinstance(
                    err, (NonFiniteLossError, CheckpointWriteError, RunLockedError)):
                raise RuntimeError(
                    f"{err}\n(in a run of {self.info.world_size} processes this usually means "
                    f"another process of it stopped; its messages say why. {self._kept(True)} "
                    f"--nproc {self.info.world_size}, once the cause is fixed)") from err
            raise
        finally:
            if self.lock is not None:
                self.lock.release()
            if self.made_run_dir and self.run_dir.is_dir() and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()  # the run never started: leave no empty folder behind

    def _run(self) -> TrainResult:
        self.t_start = time.perf_counter()
        self._setup()
        cfg, info = self.cfg, self.info
        runlog = None
        if info.is_main:
            runlog = RunLog(
                self.run_dir, history=self.history if self.resuming and self.has_history
                else None, keep_epochs=self.epoch if self.resuming else None,
                purge_step=self.global_step + 1 if self.resuming else None)
            if runlog.restored:
                self.warn(f"restored the record of epoch(s) {runlog.restored} in metrics.jsonl "
                          "and TensorBoard from the checkpoint (an earlier run stopped before "
                          "writing them)")
            params = sum(p.numel() for p in self.model.parameters())
            self.log(
                f"{cfg.model}: {params / 1e6:.3f}M parameters | {cfg.data}: "
                f"{self.n_train} train / {self.n_val} val images, "
                f"{self.bundle.in_chans} channel(s), {self.bundle.num_classes} classes, "
                f"{cfg.img_size}px | {cfg.epochs} epochs x {self.updates_per_epoch} steps, "
                f"global batch {cfg.batch_size * cfg.accum_steps * info.world_size}, "
                f"lr {cfg.lr:.3g} | {info.world_size} process(es) on {info.device.type} | "
                f"run folder {self.run_dir}")
        result = TrainResult(self.run_dir, self.epoch, self.global_step, self.best_top1)
        if self.epoch >= cfg.epochs:
            self.log(f"{self.run_dir} has finished all {cfg.epochs} epochs already (best top-1 "
                     f"{self.best_top1:.2f}% after epoch {self.best_epoch})")
        first_epoch = self.epoch
        try:
            with StopRequest(self.log) as stop:
                while self.epoch < cfg.epochs:
                    record = self._epoch(stop, runlog)
                    if record is None:  # interrupted and saved
                        result.interrupted = True
                        break
                    result.metrics.append(record)
                    requested = float(stop.flag.is_set())
                    if info.enabled:
                        requested = D.all_reduce_sum([requested], info)[0]
                    if requested and self.epoch < cfg.epochs:
                        result.interrupted = True
                        self.log(f"interrupted after epoch {self.epoch}; saved "
                                 f"{self.run_dir / 'last'}. Continue with: tokenmixers train "
                                 f"--resume {self.run_dir}")
                        break
                    if cfg.stop_after and self.epoch - first_epoch >= cfg.stop_after \
                            and self.epoch < cfg.epochs:
                        result.stopped = True
                        self.log(f"stopped after {cfg.stop_after} epoch(s) (--stop-after); "
                                 f"continue with: tokenmixers train --resume {self.run_dir}")
                        break
        finally:
            self.progress.close()
            if runlog is not None:
                runlog.close()
        result.epochs_done = self.epoch
        result.global_step = self.global_step
        result.best_top1 = self.best_top1
        return result

    def _epoch(self, stop: StopRequest, runlog: RunLog | None) -> dict[str, Any] | None:
        cfg, info = self.cfg, self.info
        epoch, start = self.epoch, self.update_in_epoch
        if start == 0:
            # Every epoch starts from generators seeded by (seed, epoch, rank): the data order
            # and augmentations of epoch e do not depend on how the run got there.
            seed_all(cfg.seed * 1_000_003 + epoch * 1009 + info.rank)
        batches = self._batches(epoch, start)
        self.model.train()
        # This process's sums over the epoch so far (a mid-epoch checkpoint carries them, so
        # a resumed epoch's record covers the whole epoch, as an uninterrupted one does).
        if start == 0:
            self.epoch_sums = [0.0, 0.0, 0]
        loss_sum, correct, images = self.epoch_sums
        images_before = images
        t0 = time.perf_counter()
        # Time blocked in next(batches) (self.data_wait, summed by _step), over the epoch and
        # over each log interval: the fraction of the step time spent waiting for data.
        self.data_wait = 0.0
        window_t0, window_wait = t0, 0.0
        self.progress.start(f"epoch {epoch + 1}/{cfg.epochs}", self.updates_per_epoch, start)
        for update in range(start, self.updates_per_epoch):
            ls, c, n = self._step(batches, epoch, update)
            fault_point("step", epoch + 1)
            loss_sum, correct, images = loss_sum + ls, correct + c, images + n
            self.epoch_sums = [loss_sum, correct, images]
            self.update_in_epoch = update + 1
            lr = self.optimizer.param_groups[0]["lr"]
            now = time.perf_counter()
            rate = (images - images_before) * info.world_size / max(now - t0, 1e-9)
            wait = (self.data_wait - window_wait) / max(now - window_t0, 1e-9)
            self.progress.step({"loss": loss_sum / images,
                                "acc": 100 * correct / images if self.mixup is None else None,
                                "lr": lr, "img/s": rate, "data_wait": wait})
            if runlog is not None and self.global_step % cfg.log_interval == 0:
                runlog.scalars({"loss": ls / n, "lr": lr, "data_wait": wait}, self.global_step,
                               prefix="train/")
            if (update + 1) % cfg.log_interval == 0:
                window_t0, window_wait = now, self.data_wait
            requested = float(stop.flag.is_set())
            if info.enabled:
                requested = D.all_reduce_sum([requested], info)[0]
            if requested and self.update_in_epoch < self.updates_per_epoch:
                self.progress.close()
                self._save(("last",))
                self.log(f"interrupted at epoch {epoch + 1}, step {self.update_in_epoch}/"
                         f"{self.updates_per_epoch}; saved {self.run_dir / 'last'}. Continue "
                         f"with: tokenmixers train --resume {self.run_dir}")
                return None
        self.progress.close()
        train_time = time.perf_counter() - t0
        # The slowest process's wait is the one that holds up the others.
        data_wait = self.data_wait / max(train_time, 1e-9)
        if info.enabled:
            data_wait = max(D.gather_objects(data_wait, info))  # type: ignore[type-var]
        loss_sum, correct, images = D.all_reduce_sum([loss_sum, correct, images], info)

        def reduce(values: list[float]) -> list[float]:
            return D.all_reduce_sum(values, info)

        val = evaluate(self.eval_model, self.val_loader, device=info.device, amp=cfg.amp,
                       reduce=reduce)
        record: dict[str, Any] = {
            "epoch": epoch + 1, "step": self.global_step,
            "train_loss": loss_sum / max(images, 1),
            "train_top1": 100 * correct / images if self.mixup is None and images else None,
            "val_loss": val["loss"], "top1": val["top1"], "top5": val["top5"],
        }
        if self.ema is not None:
            ema_val = evaluate(self.ema.module, self.val_loader, device=info.device,
                               amp=cfg.amp, reduce=reduce)
            record.update(ema_loss=ema_val["loss"], ema_top1=ema_val["top1"],
                          ema_top5=ema_val["top5"])
        record.update(
            lr=self.optimizer.param_groups[0]["lr"],
            img_per_sec=images / max(train_time, 1e-9) if start == 0 else None,
            epoch_time=train_time,
            data_wait=data_wait,
            elapsed=self.elapsed_before + time.perf_counter() - self.t_start,
        )
        bad = _bad_images(self.bundle)
        if bad:
            record["bad_images"] = bad
            self.warn(f"skipped {bad} unreadable image(s) so far (the first was named above)")
        losses = {"validation loss": val["loss"], "EMA validation loss": record.get("ema_loss")}
        bad_losses = [f"{k} is {v}" for k, v in losses.items()
                      if v is not None and not math.isfinite(v)]
        if val["nonfinite"] and not bad_losses:  # inf logits can still give a finite loss
            bad_losses.append(f"validation outputs are not finite for {val['nonfinite']} "
                              "images")
        if bad_losses:
            # Its outputs overflowed: an epoch like that is neither saved nor called good.
            raise NonFiniteLossError(
                f"the {' and the '.join(bad_losses)} after epoch {epoch + 1} (the model's "
                f"outputs are not finite; top-1 {val['top1']:.2f}%), so this epoch is not "
                f"saved; stopped: {self._kept()}. Try a lower --lr (this run has "
                f"{cfg.lr:g}) or --clip-grad 1.0")
        # The epoch commits in this order: last/ (whose trainer state holds every epoch's
        # record, this one's included), best/ (a copy of last/), TensorBoard, metrics.jsonl.
        # A crash anywhere leaves last/ at this epoch or the previous one; a resume restores
        # the rest from it (checkpoint.repair_run, RunLog(history=...)).
        self.history.append(record)
        self.epoch, self.update_in_epoch = epoch + 1, 0
        is_best = self.best_top1 is None or val["top1"] > self.best_top1
        if is_best:
            self.best_top1, self.best_epoch = val["top1"], epoch + 1
        self._save(("last", "best") if is_best else ("last",))
        fault_point("epoch:saved", self.epoch)
        if runlog is not None:
            runlog.epoch(record)
        ema = f" ema_top1={record['ema_top1']:.2f}" if self.ema is not None else ""
        self.log(f"epoch {epoch + 1}/{cfg.epochs}: train_loss={record['train_loss']:.4f} "
                 f"val_loss={val['loss']:.4f} top1={val['top1']:.2f} top5={val['top5']:.2f}"
                 f"{ema} lr={record['lr']:.3g} {train_time:.1f}s "
                 f"data_wait={data_wait:.0%}"
                 f"{' (best)' if is_best else ''}")
        return record
