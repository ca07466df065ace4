"""``tokenmixers compare``: one model per token mixer, trained with the same recipe,
epochs and data and several seeds each, evaluated on the test split at the training
resolution and below and above it, benchmarked apart from training, and written up as
``report.md`` / ``report.html`` with plots.

Skeletons (``--skeleton``):

- ``native``: the five paper families (``--models``), each in its own paper skeleton (ViT
  and Mixer and ViL isotropic, ShiftViT and Sequencer2D hierarchical), sized to a common
  parameter budget;
- ``isotropic`` / ``hierarchical``: every registered mixer (``--mixers``, default all: the
  paper mixers and the controls — no mixing, frozen random mixing, pooling, a global
  filter — and any mixer of your own) in the *same* skeleton with the same widths, depths
  and channel MLPs (``tokenmixers.families.generic``), so only the token mixer differs.

What makes the comparison one to trust:

- seeds (``--seeds``): mean ± std, a 95% t-interval, and paired tests between models on the
  same test images (:mod:`tokenmixers.stats`), marked in the table;
- a validation split held out of the training set (``--holdout``) for the curves, the
  "still improving" flags and tuning (``--tune lr``: the same trials for every model); the
  test split is loaded only after tuning and read once per run, with the final weights;
- the budget stated per row: epochs, training MACs, wall time, read from the runs;
- a data-size sweep (``--train-fraction``) on nested, stratified subsets, with the same
  optimizer updates at every size;
- ``--resume`` refuses changed options (naming them) and adds only missing runs; an
  existing ``--out`` is refused without ``--resume`` or ``--overwrite``;
- throughput measured after training, in fresh processes, with a warning when the machine
  was busy.

Budgets (``--budget``): ``small`` keeps every model around 0.2-0.5 M parameters and trains
:data:`SMALL_EPOCHS` epochs x :data:`SEEDS` seeds unless told otherwise, so the whole run
fits in about ten minutes on a 2-core CPU; ``paper`` uses the paper models, each trained
with its own paper's recipe preset (:data:`tokenmixers.train.recipes.FAMILY_RECIPES`).
``--recipe NAME`` trains every model with one preset instead (``--recipe deit``: the fair
choice, since then only the architecture differs), ``--recipe none`` with the data's recipe.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenmixers._files import atomic_path, plain
from tokenmixers.mixers.base import MIXERS, get_mixer
from tokenmixers.precision import AMP_CHOICES, check_amp
from tokenmixers.report import PLOT_FILES
from tokenmixers.text import did_you_mean, split_list

if TYPE_CHECKING:
    from torch.utils.data import Dataset

__all__ = ["FAMILIES", "CompareConfig", "Entry", "compare", "entries", "entry_recipe",
           "family_model", "planned_configs", "recipe_mode", "seeds", "sweep_epochs",
           "tuning_grid"]


@dataclass(frozen=True)
class FamilyChoice:
    """One family in the comparison: its mixer and its native models per budget."""

    label: str
    mixer: str
    #: budget -> (zoo name, overrides) in the family's own skeleton
    native: dict[str, tuple[str, dict[str, Any]]]


FAMILIES: dict[str, FamilyChoice] = {
    "vit": FamilyChoice("ViT", "attention", {
        "small": ("vit_tiny_patch16_224",
                  {"patch_size": 4, "embed_dim": 96, "depth": 3, "num_heads": 3}),
        "paper": ("vit_small_patch16_224", {}),
    }),
    "mixer": FamilyChoice("MLP-Mixer", "token_mlp", {
        "small": ("mixer_s16_224", {"patch_size": 4, "embed_dim": 96, "num_blocks": 4}),
        "paper": ("mixer_s16_224", {}),
    }),
    "shiftvit": FamilyChoice("ShiftViT", "shift", {
        "small": ("shiftvit_tiny_light",
                  {"patch_size": 2, "embed_dim": 48, "depths": (2, 4), "drop_path_rate": 0.0}),
        "paper": ("shiftvit_tiny_light", {}),
    }),
    "sequencer": FamilyChoice("Sequencer2D", "lstm2d", {
        "small": ("sequencer2d_s",
                  {"layers": (2, 2), "patch_sizes": (2, 2), "embed_dims": (48, 96),
                   "hidden_sizes": (12, 24), "mlp_ratios": (3.0, 3.0)}),
        "paper": ("sequencer2d_s", {}),
    }),
    "vil": FamilyChoice("Vision-LSTM", "mlstm", {
        "small": ("vil_tiny", {"patch_size": 4, "dim": 96, "depth": 4}),
        "paper": ("vil_tiny", {}),
    }),
}

#: Default epochs of the small budget (the paper budget uses each model's recipe preset).
SMALL_EPOCHS = 5
#: Default seeds (training runs per model) per budget: two is the least that shows a spread.
SEEDS = {"small": 2, "paper": 3}

#: The shared skeletons of the controlled experiment, per budget.
SKELETONS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "isotropic": {
        "small": ("isotropic", {"patch_size": 4, "embed_dim": 80, "depth": 4}),
        "paper": ("isotropic", {"patch_size": 16, "embed_dim": 384, "depth": 12}),
    },
    "hierarchical": {
        "small": ("hierarchical", {"patch_size": 2, "embed_dims": (48, 96), "depths": (2, 2)}),
        "paper": ("hierarchical",
                  {"patch_size": 4, "embed_dims": (96, 192, 384, 768), "depths": (2, 2, 6, 2)}),
    },
}


def family_model(family: str, skeleton: str, budget: str) -> tuple[str, dict[str, Any]]:
    """(zoo name, overrides) of ``family``'s model in ``skeleton`` at ``budget``."""
    choice = FAMILIES[family]
    if skeleton == "native":
        name, over = choice.native[budget]
        return name, dict(over)
    return mixer_model(choice.mixer, skeleton, budget)


def mixer_model(mixer: str, skeleton: str, budget: str) -> tuple[str, dict[str, Any]]:
    """(zoo name, overrides) of ``mixer`` in the shared ``skeleton`` at ``budget``."""
    name, over = SKELETONS[skeleton][budget]
    return name, {**over, "mixer": mixer}


@dataclass(frozen=True)
class Entry:
    """One model of the comparison."""

    #: the run folder's name and the record's ``family`` key
    key: str
    label: str
    mixer: str
    model: str
    overrides: dict[str, Any]


#: Tunable options (``--tune``) and their default grids; ``lr`` multiplies the recipe's
#: learning rate, the others are absolute values.
TUNABLE: dict[str, tuple[float, ...]] = {
    "lr": (0.5, 1.0, 2.0),
    "weight_decay": (0.01, 0.05, 0.1),
    "drop_path": (0.0, 0.1),
}

#: Options of a comparison that may change on ``--resume``: they add or drop whole runs
#: (models, seeds, training fractions) or touch no result (printing, threads, the
#: throughput benchmark, which is measured again when its options change).
RESUME_FREE = frozenset({"models", "mixers", "variants", "seeds", "train_fractions",
                         "progress", "threads", "resume", "overwrite", "out", "bench",
                         "bench_sizes", "bench_batch_size"})

#: What a comparison writes at the top of its folder (``--overwrite`` removes these and the
#: run folders).
COMPARE_FILES = ("compare_config.json", "report.md", "report.html")


@dataclass
class CompareConfig:
    data: str = "mnist5k"
    #: paper families (``--skeleton native``; with a shared skeleton, their mixers)
    models: tuple[str, ...] | None = None
    #: registered mixers, in a shared skeleton (default: all of them)
    mixers: tuple[str, ...] | None = None
    #: named models compared as given, instead of ``models``/``mixers`` (the ablation study):
    #: each ``{"key", "label", "mixer", "model", "overrides"}``, an :class:`Entry`'s fields
    variants: tuple[dict[str, Any], ...] = ()
    budget: str = "small"
    skeleton: str = "native"
    epochs: int | None = None
    #: training runs per model, with seeds ``seed``, ``seed + 1``, ... (``None``: the budget's)
    seeds: int | None = None
    img_size: int | None = None
    eval_sizes: tuple[int, ...] | None = None
    bench_sizes: tuple[int, ...] | None = None
    batch_size: int | None = None
    bench_batch_size: int | None = None
    seed: int = 0
    #: share of the training set held out for validation (tuning, curves, "still improving")
    holdout: float = 0.1
    #: the data-size sweep: train on these nested, stratified shares of the training set
    train_fractions: tuple[float, ...] = (1.0,)
    #: options tuned per model on the held-out validation split (names in :data:`TUNABLE`)
    tune: tuple[str, ...] = ()
    #: grids overriding :data:`TUNABLE`'s (``lr`` in absolute values here)
    tune_grid: dict[str, tuple[float, ...]] = field(default_factory=dict)
    out: str = ""
    data_dir: str = "data"
    download: bool = False
    limit_train: int | None = None
    limit_val: int | None = None
    threads: int = 0
    amp: str = "none"
    progress: str = "auto"
    resume: bool = False
    overwrite: bool = False
    bench: bool = True
    #: training recipe preset: a name from tokenmixers.train.recipes.PRESETS for every model,
    #: "own" for each paper family's own, "none" for the data's recipe; None: the budget's
    #: default (paper budget, native skeleton: "own"; otherwise "none")
    recipe: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _bad(option: str, value: Any, expected: str, fix: str) -> ValueError:
    return ValueError(f"{option} {value}: expected {expected}; {fix}")


def recipe_mode(cfg: CompareConfig) -> str:
    """``own``, ``none`` or a preset's name: what ``cfg.recipe`` means for this budget."""
    if cfg.recipe is not None:
        return cfg.recipe
    return "own" if cfg.budget == "paper" and cfg.skeleton == "native" else "none"


def entry_recipe(cfg: CompareConfig, entry: Entry) -> str | None:
    """The recipe preset ``entry``'s runs train with (``None``: the data's recipe)."""
    from tokenmixers.train.recipes import FAMILY_RECIPES

    mode = recipe_mode(cfg)
    if mode == "none":
        return None
    if mode == "own":
        return FAMILY_RECIPES.get(entry.key)  # a mixer in a shared skeleton has no paper's
    return mode


def _check(cfg: CompareConfig) -> None:
    if cfg.budget not in ("small", "paper"):
        raise ValueError(f"--budget takes small or paper, got {cfg.budget!r}")
    if cfg.recipe not in (None, "own", "none"):
        from tokenmixers.train.recipes import PRESETS

        if cfg.recipe not in PRESETS:
            raise _bad("--recipe", cfg.recipe, f"own, none or a preset: {', '.join(PRESETS)}"
                       f"{did_you_mean(cfg.recipe, [*PRESETS, 'own', 'none'])}",
                       "e.g. --recipe deit (one recipe for every model: the fair comparison)")
    if cfg.skeleton not in ("native", *SKELETONS):
        raise ValueError(
            f"--skeleton takes native, isotropic or hierarchical, got {cfg.skeleton!r}"
        )
    check_amp(cfg.amp)
    for fam in cfg.models or ():
        if fam not in FAMILIES:
            raise ValueError(
                f"unknown family {fam!r} in --models{did_you_mean(fam, FAMILIES, n=2)} "
                f"(choose from {', '.join(FAMILIES)}; a token mixer in a shared skeleton is "
                "--skeleton isotropic --mixers NAME)"
            )
    if cfg.variants and (cfg.models or cfg.mixers is not None):
        raise ValueError("variants name their models themselves: give no --models or --mixers "
                         "with them")
    if cfg.mixers is not None:
        if cfg.skeleton == "native":
            raise ValueError(
                "--mixers compares mixers in one shared skeleton: add --skeleton isotropic or "
                "--skeleton hierarchical (with --skeleton native, --models picks paper "
                f"families: {', '.join(FAMILIES)})"
            )
        if cfg.models:
            raise ValueError("give either --models (paper families) or --mixers, not both")
    keys = [e.key for e in entries(cfg)]  # an unknown mixer fails here, with suggestions
    if not keys:
        raise ValueError("nothing to compare: --models/--mixers is empty")
    if len(set(keys)) != len(keys):
        raise ValueError(f"a model is named twice in {keys}")
    if cfg.epochs is not None and (not isinstance(cfg.epochs, int) or cfg.epochs < 1):
        raise _bad("--epochs", cfg.epochs, "a whole number >= 1",
                   f"leave it out for {SMALL_EPOCHS} (small budget) or the recipe's (paper)")
    if cfg.seeds is not None and (not isinstance(cfg.seeds, int) or cfg.seeds < 1):
        raise _bad("--seeds", cfg.seeds, "a whole number >= 1 (training runs per model)",
                   f"e.g. --seeds {SEEDS['small']}, the small budget's default (2 or more give "
                   "a spread and an interval)")
    if not 0.0 < cfg.holdout < 1.0:
        raise _bad("--holdout", cfg.holdout, "a fraction in (0, 1) of the training set held "
                   "out for validation", "e.g. --holdout 0.1, the default")
    if not cfg.train_fractions:
        raise _bad("--train-fraction", "''", "one or more fractions in (0, 1]",
                   "e.g. --train-fraction 0.1,0.25,0.5,1.0, or leave it out for 1.0")
    for f in cfg.train_fractions:
        if not 0.0 < f <= 1.0:
            raise _bad("--train-fraction", ",".join(f"{v:g}" for v in cfg.train_fractions),
                       f"fractions in (0, 1] of the training set; {f:g} is not",
                       "e.g. --train-fraction 0.1,0.25,0.5,1.0")
    if len(set(cfg.train_fractions)) != len(cfg.train_fractions):
        raise _bad("--train-fraction", ",".join(f"{v:g}" for v in cfg.train_fractions),
                   "each fraction once", "drop the repeated one")
    for name in cfg.tune:
        if name not in TUNABLE:
            raise _bad("--tune", ",".join(cfg.tune), f"names from {', '.join(TUNABLE)}; "
                       f"{name!r} is not one{did_you_mean(name, TUNABLE)}", "e.g. --tune lr")
    for name, grid in cfg.tune_grid.items():
        flag = f"--{name.replace('_', '-')}-grid"
        if name not in cfg.tune:
            raise ValueError(f"{flag} gives a grid for {name}, which is not tuned; add "
                             f"--tune {','.join((*cfg.tune, name))}, or drop {flag}")
        low = 0.0
        if not grid or any(not (v > low if name == "lr" else v >= low) for v in grid):
            raise _bad(flag, ",".join(f"{v:g}" for v in grid),
                       "one or more values, each " + ("> 0" if name == "lr" else ">= 0"),
                       "e.g. " + (f"{flag} 1e-3,2e-3,4e-3" if name == "lr" else
                                  f"{flag} {','.join(f'{v:g}' for v in TUNABLE[name])}"))


def entries(cfg: CompareConfig) -> list[Entry]:
    """The models ``cfg`` compares, in order."""
    if cfg.variants:
        return [Entry(v["key"], v["label"], v["mixer"], v["model"], dict(v["overrides"]))
                for v in cfg.variants]
    if cfg.skeleton == "native" or cfg.models:
        out = []
        for fam in cfg.models or tuple(FAMILIES):
            choice = FAMILIES[fam]
            name, over = family_model(fam, cfg.skeleton, cfg.budget)
            out.append(Entry(fam, choice.label, choice.mixer, name, over))
        return out
    mixers = cfg.mixers if cfg.mixers is not None else tuple(MIXERS)
    return [Entry(m, get_mixer(m).label, m, *mixer_model(m, cfg.skeleton, cfg.budget))
            for m in mixers]


def _epochs(cfg: CompareConfig) -> int | None:
    if cfg.epochs is not None:
        return cfg.epochs
    return SMALL_EPOCHS if cfg.budget == "small" else None


def seeds(cfg: CompareConfig) -> list[int]:
    """The training seeds: ``cfg.seed`` and the next ones."""
    n = cfg.seeds if cfg.seeds is not None else SEEDS[cfg.budget]
    return [cfg.seed + i for i in range(n)]


def default_sizes(train_size: int, budget: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Evaluation sizes (below, at and above the training size, on a grid of 4 pixels so
    patch-4 and stride-4 models take them) and benchmark sizes (x1, x2, x4)."""
    if budget == "paper":
        return (160, 224, 288), (224, 448)
    step = max(4, (train_size // 4) // 4 * 4)
    return (train_size - step, train_size, train_size + step), (
        train_size, 2 * train_size, 4 * train_size)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- runs -----------------------------------------------------------------------------------
def run_name(seed: int, fraction: float = 1.0) -> str:
    """A run's folder under its model's: ``seed0``, or ``frac0.25/seed0`` in a sweep."""
    return f"seed{seed}" if fraction == 1.0 else f"frac{fraction:g}/seed{seed}"


def _train_options(cfg: CompareConfig, entry: Entry, run_dir: Path, *, seed: int,
                   fraction: float = 1.0, epochs: int | None = None,
                   hparams: dict[str, float] | None = None) -> dict[str, Any]:
    """What ``train`` gets for one run: the comparison's options, the run's seed, the
    held-out validation split (never the test split) and the training fraction."""
    epochs = epochs if epochs is not None else _epochs(cfg)
    recipe = entry_recipe(cfg, entry)
    return {
        **({"recipe": recipe} if recipe is not None else {}),
        "model": entry.model, "model_kwargs": dict(entry.overrides), "data": cfg.data,
        "output": str(run_dir), "seed": seed, "data_dir": cfg.data_dir,
        "download": cfg.download, "progress": cfg.progress, "amp": cfg.amp,
        "threads": cfg.threads, "holdout": cfg.holdout,
        **({"train_fraction": fraction} if fraction < 1.0 else {}),
        **{k: v for k, v in (("epochs", epochs), ("img_size", cfg.img_size),
                             ("batch_size", cfg.batch_size), ("limit_train", cfg.limit_train))
           if v is not None},
        **cfg.extra, **(hparams or {}),
    }


def _train(options: dict[str, Any], run_dir: Path) -> tuple[Any, float]:
    """Train (continuing an interrupted run of the same options exactly); -> (result, s)."""
    from tokenmixers.train.checkpoint import find_checkpoint
    from tokenmixers.train.loop import train

    t0 = time.perf_counter()
    if (run_dir / "config.yaml").exists() and find_checkpoint(run_dir, "last") is not None:
        try:
            result = train(options, resume=str(run_dir))
            return result, time.perf_counter() - t0
        except ValueError:  # another configuration: this comparison's own leftover
            pass
    result = train(options, overwrite=True)
    return result, time.perf_counter() - t0


def _run_facts(run_dir: Path) -> dict[str, Any]:
    """What the run folder's own config.yaml says it did (the report states these)."""
    from tokenmixers.train.config import read_yaml

    conf = read_yaml(run_dir / "config.yaml")
    keys = ("seed", "epochs", "batch_size", "lr", "weight_decay", "drop_path", "holdout",
            "train_fraction", "img_size", "limit_train")
    return {k: conf.get(k) for k in keys}


def final_weights(run_dir: Path) -> Any:
    from tokenmixers.evaluate import load_checkpoint_model
    from tokenmixers.train.checkpoint import WEIGHTS, find_checkpoint

    last = find_checkpoint(run_dir, "last")
    if last is None:
        raise RuntimeError(f"training left no checkpoint in {run_dir}")
    # The final weights, not the best epoch: choosing by accuracy would flatter.
    return load_checkpoint_model(last / WEIGHTS)


def _base_record(cfg: CompareConfig, entry: Entry, run_dir: Path, out: Path,
                 options: dict[str, Any], train_time: float, model: Any) -> dict[str, Any]:
    from tokenmixers.flops import count_macs

    facts = _run_facts(run_dir)
    curves = _metrics(run_dir)
    macs = count_macs(model).total
    steps = curves[-1]["step"] if curves else 0
    images = steps * int(facts["batch_size"] or 0)
    return {
        "family": entry.key, "label": entry.label, "mixer": entry.mixer,
        "skeleton": cfg.skeleton, "model": entry.model, "overrides": entry.overrides,
        "model_config": model.model_config, "params": sum(p.numel() for p in
                                                          model.parameters()),
        "macs": macs, "train_size": model.img_size[0], "run_dir": str(run_dir.relative_to(out)),
        "options": plain({k: v for k, v in options.items() if k not in RUN_ONLY}),
        **facts, "epochs_done": curves[-1]["epoch"] if curves else 0, "steps": steps,
        "train_images_seen": images,
        # a training step costs about 3 forward passes (forward, and twice that backward)
        "train_macs": 3 * macs * images, "train_time_s": train_time, "curves": curves,
        "val_top1": curves[-1]["top1"] if curves else None,
    }


#: Options of a run that do not change its result (not compared on --resume).
RUN_ONLY = frozenset({"output", "progress", "threads", "data_dir", "download"})


def run_entry(cfg: CompareConfig, entry: Entry, out: Path, test: Dataset, *, seed: int,
              fraction: float = 1.0, epochs: int | None = None,
              hparams: dict[str, float] | None = None,
              train_images: int | None = None) -> dict[str, Any]:
    """Train one model with one seed (validating on the held-out split), then evaluate its
    final weights on the test set at each evaluation size; returns its record (also saved
    as ``compare.json`` in the run folder)."""
    from tokenmixers.evaluate import eval_resolutions

    run_dir = out / entry.key / run_name(seed, fraction)
    options = _train_options(cfg, entry, run_dir, seed=seed, fraction=fraction,
                             epochs=epochs, hparams=hparams)
    _log(f"== {entry.label}: {entry.model}, seed {seed}"
         f"{f', {fraction:g} of the training set' if fraction < 1 else ''}"
         f"{''.join(f', {k} {v:g}' for k, v in (hparams or {}).items())}")
    _, train_time = _train(options, run_dir)
    loaded = final_weights(run_dir)
    record = _base_record(cfg, entry, run_dir, out, options, train_time, loaded.model)
    eval_sizes = cfg.eval_sizes or default_sizes(record["train_size"], cfg.budget)[0]
    evals = eval_resolutions(loaded, test, sorted(set(eval_sizes)), amp=cfg.amp,
                             per_image=True)
    for row in evals:
        if "error" in row:
            _log(f"   cannot evaluate at {row['img_size']}px: {row['error'].splitlines()[0]}")
        else:  # one character per test image: paired tests read these
            row["correct"] = "".join("1" if c else "0" for c in row["correct"])
    record.update(train_fraction=fraction, train_images=train_images, eval=evals,
                  hparams=hparams or {})
    with atomic_path(run_dir / "compare.json") as tmp:  # --resume trusts what it finds
        tmp.write_text(json.dumps(record, indent=1, default=str))
    return record


def _kept(path: Path, options: dict[str, Any]) -> dict[str, Any] | None:
    """The record a finished run left, if it ran with exactly these options."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    want = plain({k: v for k, v in options.items() if k not in RUN_ONLY})
    if record.get("options") != want:
        changed = sorted(k for k in set(want) | set(record.get("options", {}))
                         if want.get(k) != record.get("options", {}).get(k))
        raise ValueError(
            f"--resume: {path.parent} was trained with other options ({', '.join(changed)}) "
            "than this comparison would use; pass --overwrite to train it again, or choose "
            "another --out")
    return record


# ---- tuning ----------------------------------------------------------------------------------
def tuning_grid(cfg: CompareConfig, entry: Entry) -> list[dict[str, float]]:
    """The trials of one model: every combination of the tuned options' grids, the same
    number for every model (``lr``'s default grid is the recipe's rate x 0.5, 1, 2)."""
    import itertools

    axes = []
    for name in cfg.tune:
        grid = cfg.tune_grid.get(name)
        if grid is None:
            grid = TUNABLE[name]
            if name == "lr":
                base = _recipe_lr(cfg, entry)
                grid = tuple(float(f"{base * m:.3g}") for m in grid)
        axes.append([(name, float(v)) for v in grid])
    return [dict(combo) for combo in itertools.product(*axes)]


def _recipe(cfg: CompareConfig, entry: Entry) -> Any:
    """The resolved training configuration ``entry``'s runs get (the recipe's values for
    what the comparison leaves open)."""
    from tokenmixers.train.config import build_config, resolve

    return resolve(build_config(_train_options(cfg, entry, Path("unused"), seed=cfg.seed)))


def planned_configs(cfg: CompareConfig) -> dict[str, Any]:
    """Each model's resolved training configuration (seed ``cfg.seed``), without training:
    entry key -> :class:`~tokenmixers.train.config.TrainConfig`."""
    import warnings

    _check(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a preset's "not applied" parts: the runs warn
        return {entry.key: _recipe(cfg, entry) for entry in entries(cfg)}


def _recipe_lr(cfg: CompareConfig, entry: Entry) -> float:
    return float(_recipe(cfg, entry).lr)


def trial_name(hparams: dict[str, float]) -> str:
    return "_".join(f"{k}{v:g}" for k, v in hparams.items())


#: Trials train with their own seed, so the seeds reported are never the ones tuned on.
TUNE_SEED_OFFSET = 1000


def tune_entry(cfg: CompareConfig, entry: Entry, out: Path) -> dict[str, Any]:
    """Train every trial of ``entry`` on the training set minus the held-out split and pick
    the one with the best final validation top-1 (the test split is not loaded yet)."""
    trials = []
    seed = cfg.seed + TUNE_SEED_OFFSET
    for hp in tuning_grid(cfg, entry):
        run_dir = out / entry.key / "tune" / trial_name(hp)
        options = _train_options(cfg, entry, run_dir, seed=seed, hparams=hp)
        kept = _kept(run_dir / "trial.json", options)
        if kept is None:
            from tokenmixers.train.loop import NonFiniteLossError

            _log(f"== tuning {entry.label}: {trial_name(hp)} (seed {seed})")
            t0 = time.perf_counter()
            error = None
            try:
                _train(options, run_dir)
            except NonFiniteLossError as err:  # a learning rate too high: a failed trial
                error = str(err).split(";")[0]
                _log(f"   diverged: {error}")
            curves = _metrics(run_dir)
            kept = {"hparams": hp, "options": plain({k: v for k, v in options.items()
                                                     if k not in RUN_ONLY}),
                    "val_top1": None if error else curves[-1]["top1"],
                    "curve": [c["top1"] for c in curves], "error": error,
                    "train_time_s": time.perf_counter() - t0,
                    "run_dir": str(run_dir.relative_to(out)), "seed": seed}
            with atomic_path(run_dir / "trial.json") as tmp:
                tmp.write_text(json.dumps(kept, indent=1))
        trials.append(kept)
    done = [i for i, t in enumerate(trials) if t["val_top1"] is not None]
    if not done:
        raise RuntimeError(f"every tuning trial of {entry.label} diverged; try a lower grid "
                           f"(e.g. --lr-grid with smaller values)")
    best = max(done, key=lambda i: trials[i]["val_top1"])  # the first of ties
    return {"trials": trials, "chosen": trials[best]["hparams"], "seed": seed}


# ---- the output folder ---------------------------------------------------------------------
def _prepare_out(cfg: CompareConfig, out: Path) -> None:
    """Refuse to write into a folder holding something unless --resume (same options) or
    --overwrite; like ``train``, nothing is deleted that was not asked for."""
    stored = out / "compare_config.json"
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: that is a file; a comparison needs a folder")
    if cfg.resume and cfg.overwrite:
        raise ValueError("--resume keeps the runs in --out and --overwrite deletes them: "
                         "give one of them")
    if cfg.resume and not present:
        return  # nothing to continue yet: start it (so `make demo` can always pass --resume)
    if cfg.resume:
        if not stored.is_file():
            raise ValueError(
                f"--resume {out}: no comparison there (no compare_config.json); leave out "
                "--resume to start one")
        changed = _changed(json.loads(stored.read_text()), plain(asdict(cfg)))
        if changed:
            raise ValueError(
                f"--resume continues the comparison in {out}, whose runs used other options: "
                f"{'; '.join(changed)}. Only {', '.join(sorted(RESUME_FREE - {'resume', 'out'}))}"
                f" may change on --resume. Pass --overwrite to redo it with the new options, "
                f"or choose another --out")
        return
    if not present:
        return
    if not cfg.overwrite:
        what = "a comparison" if stored.is_file() else "other files"
        raise ValueError(
            f"--out {out} already holds {what} ({', '.join(present[:6])}"
            f"{', ...' if len(present) > 6 else ''}); pass --resume to continue it, "
            f"--overwrite to replace it, or choose another --out")
    old = json.loads(stored.read_text()) if stored.is_file() else {}
    keys = {e.key for e in entries(cfg)}
    if old:
        try:
            keys |= {e.key for e in entries(_config_from(old))}
        except (TypeError, ValueError):
            pass
    for name in (*COMPARE_FILES, *PLOT_FILES):
        if (out / name).is_file():
            (out / name).unlink()
    for key in keys:
        if (out / key).is_dir():
            shutil.rmtree(out / key)


def _config_from(stored: dict[str, Any]) -> CompareConfig:
    known = {f for f in CompareConfig.__dataclass_fields__}
    return CompareConfig(**{k: v for k, v in stored.items() if k in known})


def _changed(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(stored) | set(now)):
        if key in RESUME_FREE:
            continue
        if stored.get(key, "<not recorded>") != now.get(key, "<not recorded>"):
            flag = "--" + key.replace("_", "-")
            out.append(f"{flag} was {_show(stored.get(key, '<not recorded>'))}, now "
                       f"{_show(now.get(key, '<not recorded>'))}")
    return out


def _show(value: Any) -> str:
    if value is None:
        return "the default"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "''"
    return str(value)


# ---- the comparison --------------------------------------------------------------------------
def _test_set(cfg: CompareConfig) -> Dataset:
    """The test split (limited to ``cfg.limit_val``): loaded once tuning is over."""
    from tokenmixers.data import fixed_subset, load_data

    bundle = load_data(cfg.data, data_dir=cfg.data_dir, download=cfg.download, seed=cfg.seed)
    return fixed_subset(bundle.val, cfg.limit_val)


def _train_counts(cfg: CompareConfig) -> dict[float, int]:
    """Training images per fraction (after the held-out split; 1.0 always included), from
    the training set's labels alone."""
    from tokenmixers.data import fixed_subset, load_data, training_views

    bundle = load_data(cfg.data, data_dir=cfg.data_dir, download=cfg.download, seed=cfg.seed)
    train = fixed_subset(bundle.train, cfg.limit_train)
    return {f: len(training_views(train, holdout=cfg.holdout, train_fraction=f)[0])
            for f in {*cfg.train_fractions, 1.0}}


def sweep_epochs(epochs: int, full: int, part: int, batch: int) -> int:
    """Epochs on ``part`` images that give the same optimizer updates as ``epochs`` on
    ``full`` (at least ``epochs``): a data-size sweep compares data, not training steps."""
    per_full, per_part = max(full // batch, 1), max(part // batch, 1)
    return max(epochs, round(epochs * per_full / per_part))


def compare(cfg: CompareConfig, *, progress: Callable[[str], None] = _log) -> Path:
    """Run the comparison; returns the output folder holding the report."""
    from tokenmixers.report import write_report

    _check(cfg)
    out = Path(cfg.out or f"runs/compare-{cfg.data.split(':')[0]}-{cfg.skeleton}-{cfg.budget}")
    _prepare_out(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "compare_config.json") as tmp:
        tmp.write_text(json.dumps(plain(asdict(cfg)), indent=1))
    t0 = time.perf_counter()
    todo = entries(cfg)

    # 1. tuning, on the held-out validation split only
    tuning: dict[str, dict[str, Any]] = {}
    for entry in todo if cfg.tune else ():
        tuning[entry.key] = tune_entry(cfg, entry, out)
        progress(f"== {entry.label}: chose {trial_name(tuning[entry.key]['chosen'])}")

    # 2. the seeds (and the sweep), each evaluated on the test split, loaded only now
    test = _test_set(cfg)
    counts = _train_counts(cfg)
    full = counts[1.0]
    records = []
    for fraction in sorted(cfg.train_fractions, reverse=True):
        for entry in todo:
            hp = tuning.get(entry.key, {}).get("chosen")
            epochs = _epochs(cfg)
            if fraction < 1.0:
                recipe = _recipe(cfg, entry)
                epochs = sweep_epochs(int(recipe.epochs), full, counts[fraction],
                                      int(recipe.batch_size))
            for seed in seeds(cfg):
                run_dir = out / entry.key / run_name(seed, fraction)
                options = _train_options(cfg, entry, run_dir, seed=seed, fraction=fraction,
                                         epochs=epochs, hparams=hp)
                kept = _kept(run_dir / "compare.json", options) if cfg.resume else None
                if kept is not None:
                    progress(f"== {entry.label}, {run_name(seed, fraction)}: done before, kept")
                    records.append(kept)
                    continue
                records.append(run_entry(cfg, entry, out, test, seed=seed, fraction=fraction,
                                         epochs=epochs, hparams=hp,
                                         train_images=counts[fraction]))

    # 3. throughput, in fresh processes, once nothing else of ours runs
    benches = {e.key: _bench_entry(cfg, e, out, records) for e in todo} if cfg.bench else {}
    write_report(records, out, title=_title(cfg), tuning=tuning, benches=benches,
                 settings=_settings(cfg, time.perf_counter() - t0))
    return out


def _settings(cfg: CompareConfig, wall: float) -> dict[str, Any]:
    return {"data": cfg.data, "holdout": cfg.holdout, "seeds": seeds(cfg),
            "tune": list(cfg.tune), "wall_time_s": wall, "budget": cfg.budget,
            "skeleton": cfg.skeleton, "recipe_mode": recipe_mode(cfg),
            "recipes": {e.key: entry_recipe(cfg, e) for e in entries(cfg)}}


#: Throughput benchmark: timed batches and warm-up per size (the busy rules are the
#: report's, :data:`tokenmixers.report.BUSY_SPREAD` and ``BUSY_OTHER_CORES``).
BENCH_REPEATS = 7
BENCH_WARMUP = 2


class _OtherCpu:
    """CPU time that processes other than this one and its children used during the block,
    in cores (``cores``; ``None`` where ``/proc/stat`` is missing): the whole machine's busy
    time from ``/proc/stat`` minus our children's (``getrusage``)."""

    cores: float | None = None

    @staticmethod
    def _busy() -> float | None:
        import os

        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _ours() -> float:
        import resource

        use = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        return sum(u.ru_utime + u.ru_stime for u in use)

    def __enter__(self) -> _OtherCpu:
        self.t0, self.busy0, self.ours0 = time.perf_counter(), self._busy(), self._ours()
        return self

    def __exit__(self, *exc: object) -> None:
        busy = self._busy()
        wall = time.perf_counter() - self.t0
        if busy is None or self.busy0 is None or wall <= 0:
            return
        self.cores = max(0.0, (busy - self.busy0) - (self._ours() - self.ours0)) / wall


def _bench_entry(cfg: CompareConfig, entry: Entry, out: Path,
                 records: list[dict[str, Any]]) -> dict[str, Any]:
    """Inference throughput and memory of ``entry``'s model at each benchmark size, in a
    fresh process (``tokenmixers bench``'s), with the load average before and after."""
    import os

    from tokenmixers.bench import bench

    record = next(r for r in records if r["family"] == entry.key)
    train_size = record["train_size"]
    sizes = sorted(set(cfg.bench_sizes or default_sizes(train_size, cfg.budget)[1]))
    batch = cfg.bench_batch_size or (32 if cfg.budget == "small" else 8)
    settings = {"sizes": sizes, "batch_size": batch, "threads": cfg.threads,
                "repeats": BENCH_REPEATS,
                "model_config": plain(record["model_config"]), "amp": cfg.amp}
    path = out / entry.key / "bench.json"
    if cfg.resume and path.is_file():
        kept = json.loads(path.read_text())
        if kept.get("settings") == settings:
            return kept
    _log(f"== throughput of {entry.label} at {', '.join(map(str, sizes))} px")
    load_before = os.getloadavg()[0]
    with _OtherCpu() as others:
        rows = bench([entry.model], sizes, batch_size=batch, modes=("infer",), amp=cfg.amp,
                     threads=cfg.threads or None, model_kwargs=dict(record["model_config"]),
                     repeats=BENCH_REPEATS, warmup=BENCH_WARMUP)
    load_after = os.getloadavg()[0]
    result = {"settings": settings, "rows": rows, "load_before": load_before,
              "load_after": load_after, "other_cores": others.cores}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=1, default=str))
    return result


def _title(cfg: CompareConfig) -> str:
    skeleton = {"native": "each in its own skeleton",
                "isotropic": "all in one isotropic skeleton",
                "hierarchical": "all in one hierarchical skeleton"}[cfg.skeleton]
    return f"Token mixers on {cfg.data}: {skeleton}, {cfg.budget} budget"


def _parse_sizes(text: str | None, what: str) -> tuple[int, ...] | None:
    return tuple(split_list(text, int, what=what)) or None


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="train, evaluate and benchmark one model per token mixer; write a report",
        description=(__doc__ or "").split("\n\n")[0],
    )
    p.add_argument("--data", default="mnist5k", help="mnist5k (default), digits, cifar10, "
                   "pathfinder32:hard, imagefolder:PATH, hf:..., wds:... (as train's)")
    p.add_argument("--models", default=None,
                   help=f"paper families, comma-separated (default with --skeleton native: "
                        f"{','.join(FAMILIES)})")
    p.add_argument("--mixers", default=None,
                   help="registered token mixers, comma-separated, in the shared skeleton of "
                        "--skeleton isotropic|hierarchical (default: all registered; "
                        "`tokenmixers mixers` lists them)")
    p.add_argument("--budget", choices=("small", "paper"), default="small")
    p.add_argument("--skeleton", choices=("native", *SKELETONS), default="native")
    p.add_argument("--recipe", default=None, metavar="PRESET|own|none",
                   help="training recipe: a paper preset for every model (e.g. deit: one "
                        "shared recipe, the fair comparison), own (each paper family its "
                        "own preset; the default of --budget paper) or none (the data's "
                        "recipe; the default otherwise)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"default: {SMALL_EPOCHS} for --budget small, the data's recipe for paper")
    p.add_argument("--seeds", type=int, default=None,
                   help=f"training runs per model, seeds --seed, --seed + 1, ... (default: "
                        f"{SEEDS['small']} for --budget small, {SEEDS['paper']} for paper)")
    p.add_argument("--holdout", type=float, default=0.1,
                   help="share of the training set held out for validation: tuning, training "
                        "curves, 'still improving' (default 0.1; the test split is only "
                        "used for the final numbers)")
    p.add_argument("--train-fraction", default="1.0",
                   help="data-size sweep: comma-separated shares of the training set, e.g. "
                        "0.1,0.25,0.5,1.0 (nested, stratified, the same for every model and "
                        "seed; smaller shares train for more epochs, so every point gets the "
                        "same optimizer updates)")
    p.add_argument("--tune", default="",
                   help=f"tune these per model on the validation split, the same number of "
                        f"trials each: {', '.join(TUNABLE)} (e.g. --tune lr)")
    for name, grid in TUNABLE.items():
        p.add_argument(f"--{name.replace('_', '-')}-grid", default=None,
                       help=f"values tried by --tune {name} (default: "
                            f"{'the recipe lr x ' if name == 'lr' else ''}"
                            f"{','.join(f'{v:g}' for v in grid)})")
    p.add_argument("--img-size", type=int, default=None, help="training size (default: data's)")
    p.add_argument("--eval-sizes", default=None, help="e.g. 20,28,36 (default: around train)")
    p.add_argument("--bench-sizes", default=None, help="e.g. 28,56,112 (default: x1, x2, x4)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--bench-batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="the first training seed")
    p.add_argument("--out", default="", help="output folder (default: runs/compare-...)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--download", action="store_true")
    p.add_argument("--limit-train", type=int, default=None, help="use only N training images")
    p.add_argument("--limit-val", type=int, default=None, help="use only N test images")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--amp", choices=AMP_CHOICES, default="none",
                   help="mixed precision for training, evaluation and the benchmark")
    p.add_argument("--progress", choices=("auto", "bar", "plain", "none"), default="auto")
    p.add_argument("--resume", action="store_true",
                   help="keep the runs already finished in --out (refused if options that "
                        "change results differ; more models, seeds or fractions are fine)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the comparison in --out")
    p.add_argument("--no-bench", action="store_true", help="skip the throughput benchmark")
    p.set_defaults(func=_cmd_compare)


def _floats(text: str | None, option: str) -> tuple[float, ...]:
    try:
        return tuple(split_list(text, float, what=option))
    except ValueError:
        raise ValueError(f"{option} {text}: expected comma-separated numbers, e.g. {option} "
                         "0.1,0.25,0.5,1.0") from None


def _cmd_compare(args: Any) -> int:
    def names(text: str | None) -> tuple[str, ...] | None:
        return None if text is None else tuple(split_list(text))

    grids = {name: _floats(getattr(args, f"{name}_grid"), f"--{name.replace('_', '-')}-grid")
             for name in TUNABLE if getattr(args, f"{name}_grid") is not None}
    cfg = CompareConfig(
        data=args.data, models=names(args.models), mixers=names(args.mixers),
        budget=args.budget, skeleton=args.skeleton, epochs=args.epochs, seeds=args.seeds,
        img_size=args.img_size, eval_sizes=_parse_sizes(args.eval_sizes, "--eval-sizes"),
        bench_sizes=_parse_sizes(args.bench_sizes, "--bench-sizes"),
        batch_size=args.batch_size, bench_batch_size=args.bench_batch_size, seed=args.seed,
        holdout=args.holdout,
        train_fractions=_floats(args.train_fraction, "--train-fraction"),
        tune=tuple(split_list(args.tune)), tune_grid=grids,
        out=args.out, data_dir=args.data_dir, download=args.download,
        limit_train=args.limit_train, limit_val=args.limit_val, threads=args.threads,
        amp=args.amp, progress=args.progress, resume=args.resume, overwrite=args.overwrite,
        bench=not args.no_bench, recipe=args.recipe,
    )
    out = compare(cfg)
    print((out / "summary.txt").read_text())
    print(f"\nreport: {out / 'report.md'} and {out / 'report.html'}")
    return 0
