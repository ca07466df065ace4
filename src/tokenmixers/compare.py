"""``tokenmixers compare``: one model per token mixer, trained with the same recipe, seed
and epochs on the same data, evaluated at the training resolution and below and above it,
benchmarked (in the precision it trained in), and written up as ``report.md`` /
``report.html`` with plots.

Skeletons (``--skeleton``):

- ``native``: the five paper families (``--models``), each in its own paper skeleton (ViT
  and Mixer and ViL isotropic, ShiftViT and Sequencer2D hierarchical), sized to a common
  parameter budget;
- ``isotropic`` / ``hierarchical``: every registered mixer (``--mixers``, default all: the
  paper mixers and the controls — no mixing, frozen random mixing, pooling, a global
  filter — and any mixer of your own) in the *same* skeleton with the same widths, depths
  and channel MLPs (``tokenmixers.families.generic``), so only the token mixer differs.

Budgets (``--budget``): ``small`` keeps every model around 0.2-0.5 M parameters and trains
:data:`SMALL_EPOCHS` epochs unless told otherwise, so the whole run fits in about ten
minutes on a 2-core CPU; ``paper`` uses the paper models and the data's full recipe.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenmixers._files import atomic_path
from tokenmixers.mixers.base import MIXERS, get_mixer
from tokenmixers.precision import AMP_CHOICES, check_amp
from tokenmixers.text import did_you_mean, split_list

if TYPE_CHECKING:
    from torch.utils.data import Dataset

__all__ = ["FAMILIES", "CompareConfig", "Entry", "compare", "entries", "family_model"]


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

#: Default epochs of the small budget (the paper budget uses the data's recipe).
SMALL_EPOCHS = 5

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


@dataclass
class CompareConfig:
    data: str = "mnist5k"
    #: paper families (``--skeleton native``; with a shared skeleton, their mixers)
    models: tuple[str, ...] | None = None
    #: registered mixers, in a shared skeleton (default: all of them)
    mixers: tuple[str, ...] | None = None
    budget: str = "small"
    skeleton: str = "native"
    epochs: int | None = None
    img_size: int | None = None
    eval_sizes: tuple[int, ...] | None = None
    bench_sizes: tuple[int, ...] | None = None
    batch_size: int | None = None
    bench_batch_size: int | None = None
    seed: int = 0
    out: str = ""
    data_dir: str = "data"
    download: bool = False
    limit_train: int | None = None
    limit_val: int | None = None
    threads: int = 0
    amp: str = "none"
    progress: str = "auto"
    resume: bool = False
    bench: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def _check(cfg: CompareConfig) -> None:
    if cfg.budget not in ("small", "paper"):
        raise ValueError(f"--budget takes small or paper, got {cfg.budget!r}")
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


def entries(cfg: CompareConfig) -> list[Entry]:
    """The models ``cfg`` compares, in order."""
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


def run_entry(
    cfg: CompareConfig, entry: Entry, out: Path, val: Dataset | None = None
) -> dict[str, Any]:
    """Train, evaluate and benchmark one model; returns its record (also saved).
    ``val``: the evaluation set (``cfg.data``'s, limited to ``cfg.limit_val``), loaded here
    if not given."""
    from tokenmixers.evaluate import eval_resolutions, load_checkpoint_model
    from tokenmixers.train.checkpoint import WEIGHTS, find_checkpoint
    from tokenmixers.train.loop import train

    name, overrides = entry.model, dict(entry.overrides)
    run_dir = out / entry.key
    options: dict[str, Any] = {
        "model": name, "model_kwargs": overrides, "data": cfg.data, "output": str(run_dir),
        "seed": cfg.seed, "data_dir": cfg.data_dir, "download": cfg.download,
        "progress": cfg.progress, "amp": cfg.amp, "threads": cfg.threads,
        **{k: v for k, v in (("epochs", _epochs(cfg)), ("img_size", cfg.img_size),
                             ("batch_size", cfg.batch_size), ("limit_train", cfg.limit_train),
                             ("limit_val", cfg.limit_val)) if v is not None},
        **cfg.extra,
    }
    _log(f"== {entry.label}: {name} {overrides}")
    t0 = time.perf_counter()
    result = train(options, overwrite=True)
    train_time = time.perf_counter() - t0
    last = find_checkpoint(run_dir, "last")
    if last is None:
        raise RuntimeError(f"training {entry.key} left no checkpoint in {run_dir}")
    # The final weights, not the best epoch: choosing by test accuracy would flatter.
    loaded = load_checkpoint_model(last / WEIGHTS)
    model = loaded.model
    train_size = model.img_size[0]
    eval_sizes, bench_sizes = default_sizes(train_size, cfg.budget)
    eval_sizes = cfg.eval_sizes or eval_sizes
    bench_sizes = cfg.bench_sizes or bench_sizes

    val = _val_set(cfg) if val is None else val
    evals = eval_resolutions(loaded, val, sorted(set(eval_sizes)), amp=cfg.amp)
    for row in evals:
        if "error" in row:
            _log(f"   cannot evaluate at {row['img_size']}px: {row['error'].splitlines()[0]}")

    from tokenmixers.flops import count_macs

    record: dict[str, Any] = {
        "family": entry.key, "label": entry.label, "mixer": entry.mixer,
        "skeleton": cfg.skeleton,
        "model": name, "overrides": overrides, "model_config": model.model_config,
        "params": sum(p.numel() for p in model.parameters()),
        "macs": count_macs(model).total, "train_size": train_size,
        "train_time_s": train_time, "epochs": result.epochs_done,
        "final_top1": result.metrics[-1]["top1"] if result.metrics else None,
        "eval": evals, "curves": _metrics(run_dir), "bench": [],
    }
    if cfg.bench:
        from tokenmixers.bench import bench

        config = dict(model.model_config)
        record["bench"] = bench(
            [name], sorted(set(bench_sizes)), batch_size=cfg.bench_batch_size or (
                32 if cfg.budget == "small" else 8), modes=("infer",), amp=cfg.amp,
            threads=cfg.threads or None, model_kwargs=config, repeats=5, warmup=2,
        )
    with atomic_path(run_dir / "compare.json") as tmp:  # --resume trusts what it finds
        tmp.write_text(json.dumps(record, indent=1, default=str))
    return record


def _val_set(cfg: CompareConfig) -> Dataset:
    from tokenmixers.data import fixed_subset, load_data

    bundle = load_data(cfg.data, data_dir=cfg.data_dir, download=cfg.download, seed=cfg.seed)
    return fixed_subset(bundle.val, cfg.limit_val)


def compare(cfg: CompareConfig, *, progress: Callable[[str], None] = _log) -> Path:
    """Run the comparison; returns the output folder holding the report."""
    from tokenmixers.report import write_report

    _check(cfg)
    out = Path(cfg.out or f"runs/compare-{cfg.data.split(':')[0]}-{cfg.skeleton}-{cfg.budget}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_config.json").write_text(json.dumps(asdict(cfg), indent=1, default=str))
    records = []
    val = None  # loaded once, for every model that runs
    for entry in entries(cfg):
        saved = out / entry.key / "compare.json"
        if cfg.resume and saved.exists():
            progress(f"== {entry.label}: done before, kept ({saved})")
            records.append(json.loads(saved.read_text()))
            continue
        val = _val_set(cfg) if val is None else val
        records.append(run_entry(cfg, entry, out, val))
    write_report(records, out, title=_title(cfg))
    return out


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
    p.add_argument("--data", default="mnist5k", help="mnist5k (default), digits, cifar10, ...")
    p.add_argument("--models", default=None,
                   help=f"paper families, comma-separated (default with --skeleton native: "
                        f"{','.join(FAMILIES)})")
    p.add_argument("--mixers", default=None,
                   help="registered token mixers, comma-separated, in the shared skeleton of "
                        "--skeleton isotropic|hierarchical (default: all registered; "
                        "`tokenmixers mixers` lists them)")
    p.add_argument("--budget", choices=("small", "paper"), default="small")
    p.add_argument("--skeleton", choices=("native", *SKELETONS), default="native")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"default: {SMALL_EPOCHS} for --budget small, the data's recipe for paper")
    p.add_argument("--img-size", type=int, default=None, help="training size (default: data's)")
    p.add_argument("--eval-sizes", default=None, help="e.g. 20,28,36 (default: around train)")
    p.add_argument("--bench-sizes", default=None, help="e.g. 28,56,112 (default: x1, x2, x4)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--bench-batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
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
                   help="keep the families already finished in --out")
    p.add_argument("--no-bench", action="store_true", help="skip the throughput benchmark")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args: Any) -> int:
    from tokenmixers.report import summary_table

    def names(text: str | None) -> tuple[str, ...] | None:
        return None if text is None else tuple(split_list(text))

    cfg = CompareConfig(
        data=args.data, models=names(args.models), mixers=names(args.mixers),
        budget=args.budget, skeleton=args.skeleton, epochs=args.epochs, img_size=args.img_size,
        eval_sizes=_parse_sizes(args.eval_sizes, "--eval-sizes"),
        bench_sizes=_parse_sizes(args.bench_sizes, "--bench-sizes"),
        batch_size=args.batch_size, bench_batch_size=args.bench_batch_size, seed=args.seed,
        out=args.out, data_dir=args.data_dir, download=args.download,
        limit_train=args.limit_train, limit_val=args.limit_val, threads=args.threads,
        amp=args.amp, progress=args.progress, resume=args.resume, bench=not args.no_bench,
    )
    out = compare(cfg)
    records = [json.loads((out / e.key / "compare.json").read_text()) for e in entries(cfg)]
    print(summary_table(records))
    print(f"\nreport: {out / 'report.md'} and {out / 'report.html'}")
    return 0
