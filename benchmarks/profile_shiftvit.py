"""Where ShiftViT's time goes, ours against the authors' layout (``shiftvit_reference.py``):
the same weights, the same input, in one process.

Two tables per model and batch:

- **forward by part** (inference): the time spent in the stem, the norms, the MLPs, the
  patch merging, the head, and in the blocks outside their norm and MLP (the shift, the
  residual adds, the token layout), each part's own time (a part nested in another, such
  as a block's norm, is counted in its own row only), timed by forward hooks around each
  module with ``time.perf_counter``; medians over the repeats, in ms per call;
- **operators** (inference, then a training step): the self time of the aten operators
  that take most of either side (``torch.profiler``), so layout copies (``aten::copy_``,
  ``aten::clone``) and the norms' kernels show up by name.

The ratios in ``vs_reference.py`` are the timing claim (many alternated rounds); this is the
explanation. The profiler adds a few microseconds per operator to both sides alike.

    python benchmarks/profile_shiftvit.py [--models shiftvit_tiny_light,shiftvit_tiny]
        [--batches 8,1] [--repeats 5] [--threads 2] [--top 12]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from vil_scaling import cpu_name  # the sibling scripts (this folder is on sys.path)
from vs_reference import REFERENCES, build_pair, make_step, parse_batches, parse_list

#: part -> the module class names (ours, the reference's) whose forward it is
PARTS = {
    "stem": ("PatchEmbed",),
    "norm": ("GroupNorm1", "GroupNorm"),
    "mlp": ("Mlp", "ConvMlp"),
    "merge": ("Downsample", "PatchMerging"),
    "shift, adds, layout": ("Block", "ShiftBlock"),
    "head": ("Linear",),
}
ROWS = [*PARTS, "rest", "total"]


def _part_of(module: nn.Module, name: str) -> str | None:
    kind = type(module).__name__
    if kind == "Linear" and name.split(".")[-1] != "head":
        return None  # the MLP's own Linears are inside "mlp"
    return next((part for part, kinds in PARTS.items() if kind in kinds), None)


@contextlib.contextmanager
def timed_parts(model: nn.Module, totals: dict[str, float]) -> Iterator[None]:
    """Add each part's own forward seconds (its time less its labelled sub-parts') to
    ``totals``; the model's own time outside every part goes to ``rest``."""
    stack: list[list[Any]] = []  # [part, start, time in sub-parts]
    handles = []

    def pre(part: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            stack.append([part, time.perf_counter(), 0.0])
        return hook

    def post(module: nn.Module, args: Any, out: Any) -> None:
        part, t0, inner = stack.pop()
        took = time.perf_counter() - t0
        totals[part] += took - inner
        if stack:
            stack[-1][2] += took

    parts = [("rest", model)] + [(p, m) for n, m in model.named_modules()
                                 if (p := _part_of(m, n)) is not None]
    for part, module in parts:
        handles.append(module.register_forward_pre_hook(pre(part)))
        handles.append(module.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def parts_ms(model: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median ms per inference call of each part (and the total) over ``repeats`` calls."""
    model.eval()
    runs: dict[str, list[float]] = defaultdict(list)
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            totals: dict[str, float] = defaultdict(float)
            with timed_parts(model, totals):
                t0 = time.perf_counter()
                model(x)
                totals["total"] = time.perf_counter() - t0
            for k in ROWS:
                runs[k].append(totals.get(k, 0.0) * 1e3)
    return {k: statistics.median(v) for k, v in runs.items()}


def op_ms(step: Callable[[], None], repeats: int) -> dict[str, float]:
    """Self ms per call of every aten operator of ``step`` (profiled ``repeats`` times)."""
    step()
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            step()
    return {e.key: e.self_cpu_time_total / 1e3 / repeats for e in prof.key_averages()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="shiftvit_tiny_light,shiftvit_tiny")
    p.add_argument("--batches", default="8,1")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# profile_shiftvit.py, {datetime.date.today()}, torch {torch.__version__}, "
          f"{args.threads} threads, {cpu_name()}\n")
    models = parse_list(args.models, "--models",
                        tuple(m for m in REFERENCES if m.startswith("shiftvit")))
    for name in models:
        for batch in parse_batches(args.batches):
            ref, ours = build_pair(name)
            x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
            # alternated, so drift hits both sides alike
            a1, b1 = parts_ms(ref, x, args.repeats), parts_ms(ours, x, args.repeats)
            b2, a2 = parts_ms(ours, x, args.repeats), parts_ms(ref, x, args.repeats)
            pa = {k: (a1[k] + a2[k]) / 2 for k in ROWS}
            pb = {k: (b1[k] + b2[k]) / 2 for k in ROWS}
            print(f"## {name}, batch {batch}: inference forward by part (ms per call)\n")
            print("| part | reference | ours | ref/ours |\n|---|---:|---:|---:|")
            for k in ROWS:
                ratio = f"{pa[k] / pb[k]:.2f}" if pb[k] > 0.05 else "-"
                print(f"| {k} | {pa[k]:.1f} | {pb[k]:.1f} | {ratio} |")
            print()
            for mode in ("infer", "train"):
                ops = {side: op_ms(make_step(model, x, mode), args.repeats)
                       for side, model in (("reference", ref), ("ours", ours))}
                names = sorted(set(ops["reference"]) | set(ops["ours"]),
                               key=lambda k: -max(ops["reference"].get(k, 0.0),
                                                  ops["ours"].get(k, 0.0)))[:args.top]
                print(f"## {name}, batch {batch}, {mode}: operators by self time "
                      "(ms per call)\n")
                print("| operator | reference | ours |\n|---|---:|---:|")
                for k in names:
                    print(f"| {k} | {ops['reference'].get(k, 0.0):.1f} | "
                          f"{ops['ours'].get(k, 0.0):.1f} |")
                print(f"| all | {sum(ops['reference'].values()):.1f} | "
                      f"{sum(ops['ours'].values()):.1f} |\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
