"""What the studies share: the comparison they train through, its records, and the
command-line options every study takes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenmixers.compare import CompareConfig, entries, run_name, seeds
from tokenmixers.stats import Summary, summarize
from tokenmixers.text import split_list


def records(cfg: CompareConfig) -> dict[str, list[dict[str, Any]]]:
    """Each model's run records (``compare.json``, one per seed) of a finished comparison,
    by entry key, in the comparison's order."""
    out = Path(cfg.out)
    found: dict[str, list[dict[str, Any]]] = {}
    for entry in entries(cfg):
        found[entry.key] = [
            json.loads((out / entry.key / run_name(seed) / "compare.json").read_text())
            for seed in seeds(cfg)]
    return found


def eval_row(record: dict[str, Any], size: int) -> dict[str, Any] | None:
    """One run's test-split row at ``size`` (``top1``, ``correct``, or ``error`` where the
    model cannot take that size); None where the run was not evaluated at ``size``."""
    return next((row for row in record["eval"] if row["img_size"] == size), None)


def top1_at(record: dict[str, Any], size: int) -> float | None:
    """Test top-1 of one run at ``size``; None where the model cannot take that size."""
    row = eval_row(record, size)
    return None if row is None or "error" in row else float(row["top1"])


def refusal(record: dict[str, Any], size: int) -> str | None:
    """Why the model cannot take ``size`` (its own error's first sentence), or None."""
    row = eval_row(record, size)
    if row is None or "error" not in row:
        return None
    return str(row["error"]).splitlines()[0].split(". ")[0]


def summary_text(s: Summary | None, fmt: str = ".1f") -> str:
    """``mean [low, high]`` (95% t-interval over seeds), the mean alone for one seed."""
    if s is None:
        return "–"
    if s.low is None or s.high is None:
        return f"{s.mean:{fmt}}"
    return f"{s.mean:{fmt}} [{s.low:{fmt}}, {s.high:{fmt}}]"


def summarize_or_none(values: list[float | None]) -> Summary | None:
    kept = [v for v in values if v is not None]
    return summarize(kept) if len(kept) == len(values) and kept else None


def add_common_options(p: Any, *, default_mixers: str = "every registered mixer",
                       data: bool = True, mixers: bool = True) -> None:
    if data:
        p.add_argument("--data", default="mnist5k", help="dataset (default mnist5k)")
    if mixers:
        p.add_argument("--mixers", default=None,
                       help=f"comma-separated registered mixers (default: {default_mixers}; "
                            "tokenmixers mixers lists them)")
    p.add_argument("--seeds", type=int, default=None,
                   help="training runs per model (default: compare's, 2)")
    p.add_argument("--epochs", type=int, default=None, help="default: compare's small budget")
    p.add_argument("--budget", choices=["small", "paper"], default="small")
    p.add_argument("--limit-train", type=int, default=None, help="use only N training images")
    p.add_argument("--limit-val", type=int, default=None, help="use only N test images")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--download", action="store_true", help="download the dataset if missing")
    p.add_argument("--resume", action="store_true", help="keep finished training runs")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier study")
    p.add_argument("--progress", default="auto", choices=["auto", "bar", "plain", "none"])


def compare_config(args: Any, out: Path, **fixed: Any) -> CompareConfig:
    """The comparison a study trains through, from the common options, in ``out/compare``."""
    given = getattr(args, "mixers", None)
    mixers = None if given is None else tuple(split_list(given))
    options: dict[str, Any] = dict(
        data=getattr(args, "data", "mnist5k"), mixers=mixers, skeleton="isotropic",
        budget=args.budget,
        epochs=args.epochs, seeds=args.seeds, limit_train=args.limit_train,
        limit_val=args.limit_val, data_dir=args.data_dir, download=args.download,
        out=str(out / "compare"), resume=args.resume, overwrite=args.overwrite,
        progress=args.progress, bench=False)
    options.update(fixed)
    return CompareConfig(**options)


def run_study(args: Any, default_out: str, study: Callable[[Path], dict[str, Any]]) -> int:
    """A study command's tail: run ``study`` into ``--out`` (or ``default_out``) and say where
    its report is."""
    result = study(Path(args.out or default_out))
    print(f"report: {result['out'] / 'report.md'} and {result['out'] / 'report.html'}")
    return 0
