"""The training configuration: every option of ``tokenmixers train``, the DeiT-style recipe
scaled to the dataset, YAML files and ``--model-kwargs key=value`` parsing."""

from __future__ import annotations

import ast
import collections.abc
import dataclasses
import functools
import inspect
import math
import re
import types
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tokenmixers._files import atomic_path, plain
from tokenmixers.data import DataSpec, parse_data
from tokenmixers.precision import AMP_CHOICES
from tokenmixers.text import did_you_mean
from tokenmixers.train.errors import ConfigError

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
    #: hf: data's image and label columns, "IMAGE,LABEL" (None: detected)
    data_columns: str | None = None
    data_dir: str = "data"
    download: bool = False
    val_split: float | None = None
    img_size: int | None = None
    initial_checkpoint: str | None = None
    #: a paper's training recipe (tokenmixers.train.recipes.PRESETS): fills every option not
    #: given, before the dataset's recipe
    recipe: str | None = None
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
    #: validate on this fraction of the training set, held out (stratified, fixed), instead
    #: of the test split, which the run then never reads
    holdout: float | None = None
    #: train on this stratified, nested fraction of the (remaining) training set
    train_fraction: float | None = None
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
    """``["patch_size=4", "mlp_ratio=(0.5, 2)"]`` -> ``{"patch_size": 4, ...}``. A value is a
    Python literal, else YAML, else a plain word (``backend=chunkwise``); one that starts a
    literal and does not finish it (``patch_size=(4,``) is refused, naming the pair."""
    if items is None:
        return {}
    if isinstance(items, dict):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--model-kwargs {item}: expected key=value pairs, got no '='; write e.g. "
                "--model-kwargs patch_size=4 embed_dim=64 (tokenmixers list names the models; "
                "their arguments are the reference implementation's)")
        key = key.strip().replace("-", "_")
        out[key] = _parse_kwarg_value(key, value.strip())
    return out


#: Characters that start or end a Python literal: a value holding one that does not parse is
#: a mistyped literal, not a plain word.
_LITERAL_CHARS = set("()[]{}'\"")


def _parse_kwarg_value(key: str, text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError) as err:
        syntax = err if isinstance(err, SyntaxError) else None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        loaded = text
    if not isinstance(loaded, str) or loaded != text:
        return loaded  # YAML's own literal: [1, 2], {a: 1}, true, null
    if syntax is not None and _LITERAL_CHARS & set(text):
        raise ConfigError(
            f"--model-kwargs {key}={text}: {text!r} is not a valid Python literal "
            f"({syntax.msg}); expected KEY=VALUE with VALUE a number, True/False/None, a "
            "quoted string, a tuple such as (4, 4) or a plain word; write e.g. patch_size=4 or "
            "'mlp_ratio=(0.5, 4.0)' (quoted whole, for the shell)")
    return text


# ---- --model-kwargs against the model's own arguments -------------------------------------
def _show(value: Any) -> str:
    """A value as the command line spells it: words bare, everything else as a literal."""
    return value if isinstance(value, str) else repr(value)


def _shell_pair(key: str, value: Any) -> str:
    """``key=value`` as one shell word (quoted when it holds spaces or brackets)."""
    text = f"{key}={_show(tuple(value) if isinstance(value, list) else value)}"
    return f"'{text}'" if re.search(r"[\s()\[\]{}'\"*?]", text) else text


def _type_of_default(default: Any) -> Any:
    """The type a builder argument takes, from its default (where it has no annotation)."""
    if isinstance(default, (bool, int, float, str, dict)):
        return type(default)
    if isinstance(default, (tuple, list)) and default:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in default):
            return collections.abc.Sequence[int]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in default):
            return collections.abc.Sequence[float]
    return Any


def _matches(tp: Any, value: Any) -> bool | None:
    """Whether ``value`` fits the annotation ``tp`` (an int fits a float, a list a tuple);
    ``None`` where the annotation says too little to tell."""
    if tp is Any:
        return None
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        results = [_matches(a, value) for a in args]
        if True in results:
            return True
        return None if None in results else False
    if origin in (tuple, list, collections.abc.Sequence) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return False
            pairs = list(zip(args, value))
        else:
            pairs = [(args[0] if args else Any, v) for v in value]
        results = [_matches(t, v) for t, v in pairs]
        if False in results:
            return False
        return True if all(results) else None
    if origin in (dict, collections.abc.Mapping) or tp is dict:
        return isinstance(value, dict)
    return None


_NAMES = {bool: ("a bool (True or False)", "bools"), int: ("an int", "ints"),
          float: ("a float", "floats"), str: ("a string", "strings"),
          type(None): ("None", "Nones")}


def _describe(tp: Any) -> str:
    if tp in _NAMES:
        return _NAMES[tp][0]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        ordered = sorted(args, key=lambda a: a is type(None))  # None last
        return " or ".join(_describe(a) for a in ordered)
    if origin in (tuple, list, collections.abc.Sequence) or tp in (tuple, list):
        item = args[0] if args else Any
        return f"a tuple of {_NAMES[item][1]}" if item in _NAMES else "a tuple"
    if origin in (dict, collections.abc.Mapping) or tp is dict:
        return "a dict"
    return str(tp)


def _convert(tp: Any, value: Any) -> tuple[bool, Any]:
    """``value`` turned into what ``tp`` takes, where that is obvious (4.5 -> 4, [32] -> 32):
    ``(True, converted)`` or ``(False, None)``."""
    if _matches(tp, value):
        return True, value
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return _convert(tp, value[0])
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is not type(None):
                ok, converted = _convert(arg, value)
                if ok:
                    return True, converted
        return False, None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int and number and math.isfinite(value):
        return True, round(value)
    if tp is bool and number and value in (0, 1):
        return True, bool(value)
    return False, None


def _builder(model: str) -> tuple[Callable[..., Any], dict[str, Any], str]:
    """The model's builder function (unwrapped), its configuration and its reference."""
    from tokenmixers.families import FAMILIES
    from tokenmixers.zoo import get_spec

    spec = get_spec(model)
    family = FAMILIES[spec.family]
    build = family.build
    while isinstance(build, functools.partial):
        build = build.func
    return build, spec.config, family.reference


def check_model_kwargs(model: str, kwargs: dict[str, Any], *, img_size: int | None = None,
                       ) -> None:
    """Refuse ``--model-kwargs`` that ``model`` cannot take, before anything is built or
    written: an unknown name, a value of the wrong type (against the builder's annotation,
    or its default's type where it has none), or a value the model's constructor refuses
    (tried on the meta device, so no memory is spent; ``img_size``: the size training will
    use, unless the overrides set one). Raises :class:`ConfigError` naming the pair."""
    if not kwargs:
        return
    from tokenmixers.text import close_matches
    from tokenmixers.zoo import model_arguments

    build, config, reference = _builder(model)
    accepted = model_arguments(model)
    for key, value in kwargs.items():
        if key not in accepted:
            close = close_matches(key, accepted, n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(
                f"--model-kwargs {key}={_show(value)}: {model} does not take {key!r}{hint}; "
                f"it takes (the {reference} names) {', '.join(accepted)}; fix the name or "
                "drop the pair")
    try:
        hints = typing.get_type_hints(build)
    except Exception:  # an annotation that does not evaluate: fall back to the defaults
        hints = {}
    params = inspect.signature(build).parameters
    for key, value in kwargs.items():
        default = config.get(key, params[key].default)
        known = default is not inspect.Parameter.empty
        tp = hints.get(key, _type_of_default(default) if known else Any)
        if _matches(tp, value) is not False:
            continue
        expected = _describe(tp)
        ok, converted = _convert(tp, value)
        if ok:
            fix = f"write {_shell_pair(key, converted)}"
        elif known and default is not None:
            fix = f"write {expected}, e.g. {_shell_pair(key, default)}"
        else:
            fix = f"write {expected}"
        default_text = f" (default {_show(default)})" if known else ""
        raise ConfigError(
            f"--model-kwargs {key}={_show(value)}: {key} of {model} takes {expected}"
            f"{default_text}, got {type(value).__name__} {value!r}; {fix}")
    _try_building(model, kwargs, img_size)


def _try_building(model: str, kwargs: dict[str, Any], img_size: int | None) -> None:
    """Build ``model`` with ``kwargs`` on the meta device. A TypeError or ValueError becomes
    a :class:`ConfigError` naming the pairs it is about, unless the model without the
    overrides fails the same way (then the size, not the overrides, is at fault, and the
    real build says so) or a real build succeeds (a builder may do what the meta device
    cannot)."""
    import torch

    from tokenmixers.zoo import create_model

    def build(device: str, over: dict[str, Any]) -> str | None:
        """The first line of the TypeError/ValueError the build raises, else None."""
        try:
            with torch.device(device):
                create_model(model, **over)
        except (TypeError, ValueError) as err:
            return f"{type(err).__name__}: {err}".splitlines()[0]
        return None

    sized = {"img_size": img_size} if img_size is not None and "img_size" not in kwargs else {}
    at = f" at img_size {img_size}" if sized else ""
    try:
        error = build("meta", {**kwargs, **sized})
        if error is None or build("meta", sized) == error:
            return
    except Exception:  # the meta device cannot run this builder: the real build decides
        return
    error = build("cpu", {**kwargs, **sized})
    if error is None:
        return

    def named_in_error(key: str) -> bool:  # the key, or a key of its dict (mixer_kwargs)
        value = kwargs[key]
        words = [key, *(map(str, value) if isinstance(value, dict) else ())]
        return any(re.search(rf"\b{re.escape(w)}\b", error) for w in words)

    pairs = " ".join(f"{k}={_show(v)}" for k, v in kwargs.items())
    named = [k for k in kwargs if named_in_error(k)]
    if named:
        them = "it" if len(named) == 1 else "them"
        fix = f"change {', '.join(named)}, or drop {them} for the model's default"
        what = ", ".join(f"{k}={_show(kwargs[k])}" for k in named)
    else:
        fix = "change these --model-kwargs" + (
            f" or --img-size (the model is built for {img_size} px)" if at else "")
        what = "these overrides"
    raise ConfigError(
        f"--model-kwargs {pairs}: {model} cannot be built with {what}{at} ({error}); {fix}")


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


# ---- every option's valid values, checked before anything is loaded or written ------------
@dataclass(frozen=True)
class Rule:
    """A numeric option's valid values: ``kind`` (int or float; an int fits a float) within
    ``low``..``high`` (``None``: unbounded; ``*_open``: the bound itself excluded). ``pair``:
    two such numbers, MIN <= MAX. ``what`` says what the number is, ``expected`` replaces
    the generated "a number in [0, 1)" and ``fix`` the generated "e.g. --flag default"."""

    kind: type
    low: float | None
    high: float | None
    low_open: bool = False
    high_open: bool = False
    what: str = ""
    expected: str = ""
    fix: str = ""
    pair: bool = False

    def accepts(self, value: Any) -> bool:
        values = value if self.pair else (value,)
        if self.pair and not (isinstance(value, (list, tuple)) and len(value) == 2):
            return False
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float) if self.kind is float
                                                     else int):
                return False
            if not math.isfinite(v):
                return False
            if self.low is not None and (v <= self.low if self.low_open else v < self.low):
                return False
            if self.high is not None and (v >= self.high if self.high_open else v > self.high):
                return False
        return not self.pair or values[0] <= values[1]

    def describe(self) -> str:
        if self.expected:
            return self.expected
        noun = "a whole number" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            span = (f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
            text = f"{noun} in {span}"
        elif self.low is not None:
            text = f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            text = f"{noun} {'<' if self.high_open else '<='} {self.high:g}"
        else:
            text = noun
        if self.pair:
            text = f"MIN MAX, two numbers{text[len(noun):]} with MIN <= MAX"
        return text


def _rule(kind: type, interval: str, what: str = "", *, expected: str = "", fix: str = "",
          pair: bool = False) -> Rule:
    """A :class:`Rule` from interval notation: ``"[0, 1)"``, ``"(0, inf)"``."""
    match = re.fullmatch(r"([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])", interval)
    if not match:
        raise ValueError(f"bad interval {interval!r}")
    lo, hi = match[2], match[3]
    return Rule(kind, None if lo == "-inf" else float(lo), None if hi == "inf" else float(hi),
                low_open=match[1] == "(", high_open=match[4] == ")", what=what,
                expected=expected, fix=fix, pair=pair)


_RECIPE = "leave it out for the recipe's value"
_ALL_IMAGES = "leave it out to use them all"
_IMAGES = "a positive number of images"

#: Every numeric option of :class:`TrainConfig` and its valid values. ``None`` is accepted
#: where the field's type allows it (the recipe's value, or "off").
RULES: dict[str, Rule] = {
    "val_split": _rule(float, "(0, 1)", "the fraction of an image folder held out",
                       fix="e.g. --val-split 0.1"),
    "img_size": _rule(int, "[1, inf)", "pixels", fix="leave it out for the data's own size"),
    "epochs": _rule(int, "[1, inf)", fix=_RECIPE),
    "batch_size": _rule(int, "[1, inf)", "images per process and step", fix=_RECIPE),
    "lr": _rule(float, "(0, inf)", "the peak learning rate",
                fix="leave it out for lr-base x global batch / 512"),
    "lr_base": _rule(float, "(0, inf)", "the learning rate for a batch of 512", fix=_RECIPE),
    "min_lr": _rule(float, "[0, inf)", fix=_RECIPE),
    "warmup_epochs": _rule(float, "[0, inf)", fix=_RECIPE),
    "warmup_lr": _rule(float, "[0, inf)"),
    "opt_eps": _rule(float, "(0, inf)"),
    "momentum": _rule(float, "[0, 1)", "SGD momentum"),
    "weight_decay": _rule(float, "[0, inf)"),
    "smoothing": _rule(float, "[0, 1)", "label smoothing"),
    "clip_grad": _rule(float, "(0, inf)", "the largest gradient norm",
                       fix="leave it out (or pass none) for no clipping"),
    "accum_steps": _rule(int, "[1, inf)", "batches per optimizer step"),
    "drop": _rule(float, "[0, 1)", "the dropout rate before the head"),
    "drop_path": _rule(float, "[0, 1)", "the stochastic depth rate", fix=_RECIPE),
    "scale": _rule(float, "(0, 1]", "the random-resized-crop area fraction", fix=_RECIPE,
                   pair=True),
    "ratio": _rule(float, "(0, inf)", "the random-resized-crop aspect ratio", fix=_RECIPE,
                   pair=True),
    "hflip": _rule(float, "[0, 1]", "a probability", fix=_RECIPE),
    "color_jitter": _rule(float, "[0, inf)", fix=_RECIPE),
    "reprob": _rule(float, "[0, 1]", "the random erasing probability", fix=_RECIPE),
    "mixup": _rule(float, "[0, inf)", "the Mixup alpha; 0: off", fix=_RECIPE),
    "cutmix": _rule(float, "[0, inf)", "the CutMix alpha; 0: off", fix=_RECIPE),
    "mixup_prob": _rule(float, "[0, 1]", "a probability"),
    "mixup_switch_prob": _rule(float, "[0, 1]", "a probability"),
    "ema_decay": _rule(float, "(0, 1)"),
    "seed": _rule(int, "(-inf, inf)"),
    "workers": _rule(int, "[0, inf)", "data-loading processes; 0: none"),
    "threads": _rule(int, "[0, inf)", "torch threads; 0: PyTorch's default"),
    "limit_train": _rule(int, "[1, inf)", expected=_IMAGES, fix=_ALL_IMAGES),
    "limit_val": _rule(int, "[1, inf)", expected=_IMAGES, fix=_ALL_IMAGES),
    "holdout": _rule(float, "(0, 1)", "the fraction of the training set held out for "
                     "validation", fix="e.g. holdout: 0.1, or leave it out to validate on the "
                     "test split"),
    "train_fraction": _rule(float, "(0, 1]", "the fraction of the training set trained on",
                            fix="e.g. train_fraction: 0.25, or leave it out to use it all"),
    "max_bad_images": _rule(float, "[0, 1]", "the fraction of unreadable images tolerated"),
    "stop_after": _rule(int, "[1, inf)", "epochs in this invocation",
                        fix="leave it out to train all --epochs"),
    "log_interval": _rule(int, "[1, inf)", "steps between log lines"),
    "nproc": _rule(int, "[1, inf)", "processes on this machine"),
}

#: timm's learning-rate schedules that step per update (``plateau`` steps per epoch only).
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "poly", "constant", "wsd", "rsqrt")


def _optimizers() -> tuple[str, ...]:
    from timm.optim import list_optimizers

    return tuple(list_optimizers())


#: Options with a fixed set of values: option -> (its values, the part of a value looked up
#: among them: timm reads ``lookahead_adamw`` as adamw, case-insensitively).
CHOICES: dict[str, tuple[Callable[[], tuple[str, ...]], Callable[[str], str]]] = {
    "amp": (lambda: AMP_CHOICES, str),
    "progress": (lambda: ("auto", "bar", "plain", "none"), str),
    "sched": (lambda: SCHEDULERS, str),
    "opt": (_optimizers, lambda v: v.lower().split("_")[-1]),
    "recipe": (lambda: _presets(), str),
}


def _presets() -> tuple[str, ...]:
    from tokenmixers.train.recipes import PRESETS

    return tuple(PRESETS)


def flag(key: str) -> str:
    """An option's command-line spelling: ``batch_size`` -> ``--batch-size``."""
    return "--" + key.replace("_", "-")


def _show_option(key: str, value: Any) -> str:
    if isinstance(value, (list, tuple)) and RULES.get(key, Rule(int, None, None)).pair:
        return f"{flag(key)} {' '.join(_show(v) for v in value)}"
    return f"{flag(key)} {_show(value)}"


_FIELD_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}
_OPTIONAL = {f.name for f in fields(TrainConfig) if "None" in str(f.type)}


def _coerce(key: str, value: Any) -> Any:
    """A YAML or command-line value as the number(s) its rule expects, where it reads as
    one (YAML reads ``1e-3`` as a string); anything else is left for :func:`validate`."""
    if (isinstance(value, str) and key in _OPTIONAL
            and value.strip().lower() in ("none", "null", "off", "")):
        return None  # as the command line reads it (--clip-grad none)
    rule = RULES.get(key)
    if rule is None or value is None:
        return value
    if isinstance(value, str):
        value = parse_literal(value)
    if rule.pair and isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return (float(value[0]), float(value[1]))
    return value


def check_option(key: str, value: Any) -> None:
    """Raise :class:`ConfigError` if ``value`` is not valid for option ``key``."""
    if value is None and key in _OPTIONAL:
        return
    if key in RULES:
        rule = RULES[key]
        if rule.accepts(value):
            return
        what = f" ({rule.what})" if rule.what else ""
        default = _FIELD_DEFAULTS.get(key)
        fix = rule.fix or f"e.g. {_show_option(key, default)}, the default"
        raise ConfigError(f"{_show_option(key, value)}: expected {rule.describe()}{what}; {fix}")
    if key in CHOICES:
        values, lookup = CHOICES[key]
        choices = values()
        if isinstance(value, str) and lookup(value) in choices:
            return
        from tokenmixers.text import close_matches

        close = close_matches(str(value), choices, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        listed = (", ".join(choices) if len(choices) <= 12 else
                  f"timm's {len(choices)} optimizers (timm.optim.list_optimizers())")
        raise ConfigError(f"{_show_option(key, value)}: expected one of {listed}{hint}; e.g. "
                          f"{_show_option(key, _FIELD_DEFAULTS[key])}, the default")


def _check_auto_augment(policy: str | None) -> None:
    """A RandAugment/AugMix/AutoAugment policy timm can read (timm parses it only when the
    train transform is made, after the data is loaded)."""
    if not policy:
        return
    from timm.data import create_transform

    try:
        create_transform(32, is_training=True, auto_augment=policy)
    except (AssertionError, ValueError, KeyError, IndexError) as err:
        reason = f" ({err})" if str(err) else ""
        raise ConfigError(
            f"--auto-augment {policy}: timm cannot read this policy{reason}; expected e.g. "
            "rand-m9-mstd0.5-inc1 (RandAugment), augmix-m5-w4-d2 (AugMix) or original "
            "(AutoAugment); pass none for no policy, or leave it out for the recipe's") from None


def _check_data_columns(columns: str | None, data: str) -> None:
    """``--data-columns IMAGE,LABEL``: two names, for ``hf:`` data only."""
    if columns is None:
        return
    parts = [c.strip() for c in str(columns).split(",")]
    if not isinstance(columns, str) or len(parts) != 2 or not all(parts):
        raise ConfigError(f"--data-columns {columns}: expected IMAGE,LABEL, two column names, "
                          "e.g. --data-columns image,label; leave it out to detect them")
    if not data.startswith(("hf:", "hf-stream:")):
        raise ConfigError(f"--data-columns {columns}: applies to --data hf:... and "
                          f"hf-stream:... only (this run "
                          f"has --data {data}); leave it out")


def build_config(options: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from option names -> values (YAML or command line), checked:
    every option's value and ``--model-kwargs`` against the model, before anything is loaded
    or written."""
    check_names(options, "the configuration")
    opts = {key: _coerce(key, value) for key, value in options.items()}
    if opts.get("recipe") is not None:  # the paper's values for every option not given
        from tokenmixers.train.recipes import OFF, recipe_options

        # "none" given for an augmentation turns it off (the dataset recipe would refill None)
        off = {k: OFF[k] for k, v in opts.items() if v is None and k in OFF}
        opts = {**recipe_options(opts["recipe"], opts.get("model") or ""), **opts, **off}
    opts["model_kwargs"] = parse_model_kwargs(opts.get("model_kwargs"))
    cfg = TrainConfig(**opts)
    validate(cfg)
    check_model_kwargs(cfg.model, cfg.model_kwargs,
                       img_size=cfg.img_size or cfg.data_spec.native_size)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Check every option's value (:data:`RULES`, :data:`CHOICES`) and how they combine."""
    if not cfg.model:
        raise ConfigError("no model: pass --model NAME (tokenmixers list shows them)")
    cfg.data_spec  # noqa: B018 (raises for an unknown dataset)
    _check_data_columns(cfg.data_columns, cfg.data)
    for key in OPTION_NAMES:
        check_option(key, getattr(cfg, key))
    _check_auto_augment(cfg.auto_augment)
    mix = (cfg.mixup or 0) > 0 or (cfg.cutmix or 0) > 0
    if mix and cfg.batch_size is not None and cfg.batch_size % 2:
        given = ", ".join(f"--{k} {v}" for k, v in (("mixup", cfg.mixup),
                                                      ("cutmix", cfg.cutmix)) if v)
        raise ConfigError(
            f"--batch-size {cfg.batch_size}: Mixup/CutMix ({given}) needs an even batch; use "
            f"--batch-size {cfg.batch_size + 1}, or --mixup 0 --cutmix 0")


def resolve(cfg: TrainConfig, world_size: int = 1) -> TrainConfig:
    """Fill every ``None`` from the dataset's recipe; ``lr`` from ``lr_base``. With
    ``--recipe`` (whose values :func:`build_config` already put under the options given),
    the paper's global batch is split over ``world_size`` processes and accumulation steps,
    and what the trainer cannot apply of the paper's recipe is warned about."""
    spec = cfg.data_spec
    recipe = RECIPES[spec.kind]
    values = {k: (recipe[k] if getattr(cfg, k) is None and k in recipe else getattr(cfg, k))
              for k in OPTION_NAMES}
    if cfg.recipe is not None:
        from tokenmixers.train import recipes

        if cfg.batch_size is None:
            values["batch_size"] = recipes.per_process_batch(cfg.recipe, cfg.model,
                                                             cfg.accum_steps, world_size)
        recipes.warn_not_applied(cfg.recipe, cfg.model)
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


def config_text(options: dict[str, Any], *, world_size: int = 1) -> str:
    """``train --print-config``: every option as the run would use it, as YAML, headed by
    comments saying where the values come from; nothing is loaded or written. Without
    ``--model``, a preset's values are shown for its :attr:`Recipe.default_model`."""
    import os

    import yaml

    from tokenmixers.train.recipes import PRESETS, describe, get_recipe

    options = dict(options)
    notes = []
    if options.get("recipe") and not options.get("model"):
        options["model"] = get_recipe(str(options["recipe"])).default_model
        notes.append(f"no --model given: the values shown are {options['model']}'s")
    world_size = int(os.environ.get("WORLD_SIZE", world_size) or 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the "not applied" list is printed below instead
        cfg = resolve(build_config(options), world_size)
    kind = cfg.data_spec.kind
    if cfg.recipe:
        notes += describe(cfg.recipe, cfg.model, batch_size=int(cfg.batch_size or 0),
                          accum_steps=cfg.accum_steps, world_size=world_size,
                          lr=float(cfg.lr or 0.0))
        notes.append(f"options the preset leaves open come from the dataset's recipe "
                     f"'{kind}'; options given explicitly win over both")
    else:
        notes.append(f"recipe: none -- options not given come from the dataset's recipe "
                     f"'{kind}' ({', '.join(sorted(RECIPES[kind]))}); --recipe NAME "
                     f"uses a paper's ({', '.join(PRESETS)})")
    header = [f"# {line}" for line in ["tokenmixers train: the resolved options (nothing "
                                        "was loaded or written)", *notes]]
    return "\n".join(header) + "\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip()
