"""``tokenmixers compare``: one model per token-mixer family, trained with the same recipe,
seed and epochs on the same data, evaluated at the training resolution and below and
above it, benchmarked, and written up as ``report.md`` / ``report.html`` with plots.

Skeletons (``--skeleton``):

- ``native``: each family in its own paper skeleton (ViT and Mixer and ViL isotropic,
  ShiftViT and Sequencer2D hierarchical), sized to a common parameter budget;
- ``isotropic`` / ``hierarchical``: every mixer in the *same* skeleton with the same
  widths, depths and channel MLPs (``tokenmixers.families.generic``), so only the token
  mixer differs.

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

if TYPE_CHECKING:
    from torch.utils.data import Dataset

__all__ = ["FAMILIES", "CompareConfig", "compare", "family_model"]


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
    name, over = SKELETONS[skeleton][budget]
    return name, {**over, "mixer": choice.mixer}


@dataclass
class CompareConfig:
    data: str = "mnist5k"
    models: tuple[str, ...] = tuple(FAMILIES)
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
    import difflib

    for fam in cfg.models:
        if fam not in FAMILIES:
            close = difflib.get_close_matches(fam, FAMILIES, n=2)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown family {fam!r}{hint} (choose from {', '.join(FAMILIES)})")
    if cfg.budget not in ("small", "paper"):
        raise ValueError(f"--budget takes small or paper, got {cfg.budget!r}")
    if cfg.skeleton not in ("native", *SKELETONS):
        raise ValueError(
            f"--skeleton takes native, isotropic or hierarchical, got {cfg.skeleton!r}"
        )


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


def run_family(
    cfg: CompareConfig, family: str, out: Path, val: Dataset | None = None
) -> dict[str, Any]:
    """Train, evaluate and benchmark one family; returns its record (also saved).
    ``val``: the evaluation set (``cfg.data``'s, limited to ``cfg.limit_val``), loaded here
    if not given."""
    from tokenmixers.evaluate import eval_resolutions, load_checkpoint_model
    from tokenmixers.train.checkpoint import WEIGHTS, find_checkpoint
    from tokenmixers.train.loop import train

    name, overrides = family_model(family, cfg.skeleton, cfg.budget)
    run_dir = out / family
    options: dict[str, Any] = {
        "model": name, "model_kwargs": overrides, "data": cfg.data, "output": str(run_dir),
        "seed": cfg.seed, "data_dir": cfg.data_dir, "download": cfg.download,
        "progress": cfg.progress, "amp": cfg.amp, "threads": cfg.threads,
        **{k: v for k, v in (("epochs", _epochs(cfg)), ("img_size", cfg.img_size),
                             ("batch_size", cfg.batch_size), ("limit_train", cfg.limit_train),
                             ("limit_val", cfg.limit_val)) if v is not None},
        **cfg.extra,
    }
    _log(f"== {FAMILIES[family].label}: {name} {overrides}")
    t0 = time.perf_counter()
    result = train(options, overwrite=True)
    train_time = time.perf_counter() - t0
    last = find_checkpoint(run_dir, "last")
    if last is None:
        raise RuntimeError(f"training {family} left no checkpoint in {run_dir}")
    # The final weights, not the best epoch: choosing by test accuracy would flatter.
    loaded = load_checkpoint_model(last / WEIGHTS)
    model = loaded.model
    train_size = model.img_size[0]
    eval_sizes, bench_sizes = default_sizes(train_size, cfg.budget)
    eval_sizes = cfg.eval_sizes or eval_sizes
    bench_sizes = cfg.bench_sizes or bench_sizes

    val = _val_set(cfg) if val is None else val
    evals = eval_resolutions(loaded, val, sorted(set(eval_sizes)))
    for row in evals:
        if "error" in row:
            _log(f"   cannot evaluate at {row['img_size']}px: {row['error'].splitlines()[0]}")

    from tokenmixers.flops import count_macs

    record: dict[str, Any] = {
        "family": family, "label": FAMILIES[family].label, "mixer": FAMILIES[family].mixer,
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
                32 if cfg.budget == "small" else 8), modes=("infer",),
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
    val = None  # loaded once, for every family that runs
    for family in cfg.models:
        saved = out / family / "compare.json"
        if cfg.resume and saved.exists():
            progress(f"== {FAMILIES[family].label}: done before, kept ({saved})")
            records.append(json.loads(saved.read_text()))
            continue
        val = _val_set(cfg) if val is None else val
        records.append(run_family(cfg, family, out, val))
    write_report(records, out, title=_title(cfg))
    return out


def _title(cfg: CompareConfig) -> str:
    skeleton = {"native": "each in its own skeleton",
                "isotropic": "all in one isotropic skeleton",
                "hierarchical": "all in one hierarchical skeleton"}[cfg.skeleton]
    return f"Token mixers on {cfg.data}: {skeleton}, {cfg.budget} budget"


def _parse_sizes(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    return tuple(int(t) for t in text.split(",") if t.strip())


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="train, evaluate and benchmark one model per token mixer; write a report",
        description=(__doc__ or "").split("\n\n")[0],
    )
    p.add_argument("--data", default="mnist5k", help="mnist5k (default), digits, cifar10, ...")
    p.add_argument("--models", default=",".join(FAMILIES),
                   help=f"families, comma-separated (default: {','.join(FAMILIES)})")
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
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--progress", choices=("auto", "bar", "plain", "none"), default="auto")
    p.add_argument("--resume", action="store_true",
                   help="keep the families already finished in --out")
    p.add_argument("--no-bench", action="store_true", help="skip the throughput benchmark")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args: Any) -> int:
    from tokenmixers.report import summary_table

    cfg = CompareConfig(
        data=args.data, models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        budget=args.budget, skeleton=args.skeleton, epochs=args.epochs, img_size=args.img_size,
        eval_sizes=_parse_sizes(args.eval_sizes), bench_sizes=_parse_sizes(args.bench_sizes),
        batch_size=args.batch_size, bench_batch_size=args.bench_batch_size, seed=args.seed,
        out=args.out, data_dir=args.data_dir, download=args.download,
        limit_train=args.limit_train, limit_val=args.limit_val, threads=args.threads,
        amp=args.amp, progress=args.progress, resume=args.resume, bench=not args.no_bench,
    )
    out = compare(cfg)
    records = [json.loads((out / f / "compare.json").read_text()) for f in cfg.models]
    print(summary_table(records))
    print(f"\nreport: {out / 'report.md'} and {out / 'report.html'}")
    return 0
