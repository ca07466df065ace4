"""The training configuration: every option of ``tokenmixers train``, the DeiT-style recipe
scaled to the dataset, YAML files and ``--model-kwargs key=value`` parsing."""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tokenmixers._files import atomic_path, plain
from tokenmixers.data import DataSpec, parse_data
from tokenmixers.precision import AMP_CHOICES
from tokenmixers.text import did_you_mean

#: DeiT's recipe (arXiv 2012.12877) scaled to the dataset. ``lr_base`` is the learning rate
#: for a global batch of 512 (lr = lr_base * global batch / 512, DeiT's rule).
RECIPES: dict[str, dict[str, Any]] = {
    # 4,000 28x28 digits: short, light crops, no flips (a flipped 2 is not a 2), no mixing.
    "small": dict(epochs=15, batch_size=64, lr_base=1.6e-2, warmup_epochs=1.0, drop_path=0.0,
                  scale=(0.85, 1.0), ratio=(0.9, 1.1), hflip=0.0, color_jitter=None,
                  auto_augment=None, reprob=0.0, mixup=0.0, cutmix=0.0, min_lr=1e-5),
    "cifar": dict(epochs=100, batch_size=128, lr_base=1e-3, warmup_epochs=5.0, drop_path=0.1,
                  scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, color_jitter=0.4,
                  auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8, cutmix=1.0,
                  min_lr=1e-5),
    "imagenet": dict(epochs=300, batch_size=128, lr_base=5e-4, warmup_epochs=5.0, drop_path=0.1,
                     scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, color_jitter=0.4,
                     auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8, cutmix=1.0,
                     min_lr=1e-5),
}

@dataclass
class TrainConfig:
    """Every ``tokenmixers train`` option (``--foo-bar`` on the command line is ``foo_bar``
    here and in YAML). ``None`` means "the recipe's value for this dataset"."""

    # what
    model: str = ""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "mnist5k"
    data_dir: str = "data"
    download: bool = False
    val_split: float | None = None
    img_size: int | None = None
    initial_checkpoint: str | None = None
    output: str = ""
    # schedule and optimiser
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    lr_base: float | None = None
    min_lr: float | None = None
    warmup_epochs: float | None = None
    warmup_lr: float = 1e-6
    sched: str = "cosine"
    opt: str = "adamw"
    opt_eps: float = 1e-8
    momentum: float = 0.9
    weight_decay: float = 0.05
    smoothing: float = 0.1
    clip_grad: float | None = None
    accum_steps: int = 1
    # regularisation and augmentation
    drop: float = 0.0
    drop_path: float | None = None
    scale: tuple[float, float] | None = None
    ratio: tuple[float, float] | None = None
    hflip: float | None = None
    color_jitter: float | None = None
    auto_augment: str | None = None
    reprob: float | None = None
    mixup: float | None = None
    cutmix: float | None = None
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    no_aug: bool = False
    ema: bool = False
    ema_decay: float = 0.9998
    # machinery
    amp: str = "none"
    compile: bool = False
    grad_checkpointing: bool = False
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    workers: int = 0
    threads: int = 0
    limit_train: int | None = None
    limit_val: int | None = None
    max_bad_images: float = 0.01
    # per invocation (not part of a run's identity; may change on --resume)
    stop_after: int | None = None
    log_interval: int = 50
    progress: str = "auto"
    nproc: int = 1

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tuples become lists) for YAML and comparisons."""
        return plain(dataclasses.asdict(self))

    @property
    def data_spec(self) -> DataSpec:
        return parse_data(self.data)


#: Options that only affect one invocation; everything else defines the run.
RUNTIME_KEYS = frozenset({"stop_after", "log_interval", "progress", "nproc", "workers",
                          "output", "device", "download", "data_dir", "threads"})
OPTION_NAMES = [f.name for f in fields(TrainConfig)]
_TUPLE_KEYS = {"scale", "ratio"}


class ConfigError(ValueError):
    """A bad option name or value."""


def parse_literal(text: str) -> Any:
    """A command-line value as a Python literal (``(0.5, 4.0)``, ``1e-3``, ``True``), else
    as YAML (``[1, 2]``, ``true``, ``null``), else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_model_kwargs(items: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """``["patch_size=4", "mlp_ratio=(0.5, 2)"]`` -> ``{"patch_size": 4, ...}``."""
    if items is None:
        return {}
    if isinstance(items, dict):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--model-kwargs takes key=value pairs, got {item!r}")
        out[key.strip().replace("-", "_")] = parse_literal(value.strip())
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of option: value, not {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def check_names(options: dict[str, Any], where: str) -> None:
    for key in options:
        if key not in OPTION_NAMES:
            hint = did_you_mean(key, OPTION_NAMES, cutoff=0.5)
            raise ConfigError(f"unknown option {key!r} in {where}{hint}")


def build_config(options: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from option names -> values (YAML or command line), checked."""
    check_names(options, "the configuration")
    opts = dict(options)
    opts["model_kwargs"] = parse_model_kwargs(opts.get("model_kwargs"))
    for key in _TUPLE_KEYS:
        if opts.get(key) is not None:
            value = opts[key]
            if isinstance(value, str):
                value = parse_literal(value)
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise ConfigError(f"{key} takes two numbers (min, max), got {opts[key]!r}")
            opts[key] = (float(value[0]), float(value[1]))
    cfg = TrainConfig(**opts)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    if not cfg.model:
        raise ConfigError("no model: pass --model NAME (tokenmixers list shows them)")
    cfg.data_spec  # noqa: B018 (raises for an unknown dataset)
    if cfg.amp not in AMP_CHOICES:
        raise ConfigError(f"--amp takes one of {', '.join(AMP_CHOICES)}, got {cfg.amp!r}")
    if cfg.progress not in ("auto", "bar", "plain", "none"):
        raise ConfigError(f"--progress takes auto, bar, plain or none, got {cfg.progress!r}")
    for key in ("batch_size", "accum_steps", "nproc", "log_interval"):
        if getattr(cfg, key) is not None and int(getattr(cfg, key)) < 1:
            raise ConfigError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    if cfg.epochs is not None and cfg.epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {cfg.epochs}")
    if cfg.val_split is not None and not 0 < cfg.val_split < 1:
        raise ConfigError(f"--val-split takes a fraction between 0 and 1, got {cfg.val_split}")


def resolve(cfg: TrainConfig, world_size: int = 1) -> TrainConfig:
    """Fill every ``None`` from the dataset's recipe; ``lr`` from ``lr_base``."""
    spec = cfg.data_spec
    recipe = RECIPES[spec.kind]
    values = {k: (recipe[k] if getattr(cfg, k) is None and k in recipe else getattr(cfg, k))
              for k in OPTION_NAMES}
    if values["img_size"] is None:
        values["img_size"] = spec.native_size
    if values["lr"] is None:
        global_batch = values["batch_size"] * cfg.accum_steps * world_size
        values["lr"] = values["lr_base"] * global_batch / 512
    out = TrainConfig(**values)
    validate(out)
    return out


def save_yaml(cfg: TrainConfig, path: Path) -> None:
    """Write the configuration as YAML, atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def run_identity(cfg: TrainConfig | dict[str, Any]) -> dict[str, Any]:
    """The options that define a run (what must match to call it the same run)."""
    d = cfg.to_dict() if isinstance(cfg, TrainConfig) else dict(cfg)
    return {k: v for k, v in d.items() if k not in RUNTIME_KEYS}
