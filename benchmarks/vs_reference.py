"""Every family against its reference, same math, same process: the time ratio
reference/ours of inference and of a training step at 224, batch 8 and batch 1, on the CPU.

References: timm for ViT-S/16, Mixer-S/16 and Sequencer2D-S; the authors' layout of
ShiftViT (``benchmarks/shiftvit_reference.py``: NCHW, slicing shift, 1x1-conv MLP); for
ViL the authors' form of the mLSTM cell (``backend="parallel"``, quadratic in the tokens)
against ours as shipped (``backend="auto"``). Each pair computes the same function with the
same weights (``--check`` prints the largest logit difference at batch 1).

Method. Each (model, batch) runs in a fresh subprocess (no allocator or thread-pool state
carried over from another model) that builds both, warms both up and times them
interleaved in ABBA order (ref ours, ours ref, ...), so drift on a shared, noisy machine
hits both alike and neither always runs second. A round's ratio is ref time / ours time
of that round; the table gives the median over the rounds and, in brackets, the smallest
and largest. Read >= 1.00 as "ours no slower". Inference: eval, ``torch.inference_mode``;
training: one SGD step on cross-entropy (forward, backward, update).

    python benchmarks/vs_reference.py [--models shiftvit_tiny,...] [--batches 8,1]
        [--rounds 7] [--threads 2] [--modes infer,train] [--check] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vil_scaling import cpu_name  # the sibling script (this folder is on sys.path)

#: model -> the reference it is timed against
REFERENCES = {
    "vit_small_patch16_224": "timm",
    "mixer_s16_224": "timm",
    "sequencer2d_s": "timm",
    "shiftvit_tiny_light": "authors' layout (NCHW)",
    "shiftvit_tiny": "authors' layout (NCHW)",
    "vil_tiny": "mLSTM parallel (authors' form)",
    "vil2_tiny": "mLSTM parallel (authors' form)",
}
MODES = ("infer", "train")


def build_pair(name: str, img_size: int = 224, perturb: bool = False) -> tuple[Any, Any]:
    """``(reference, ours)`` for ``name``, with the same weights (ours' copied over, or
    timm's into ours), on the CPU in train mode. ``perturb``: add noise to the weights
    before they are copied (a check cannot then pass on zero-initialised heads or identity
    norms)."""
    import torch

    import tokenmixers
    from shiftvit_reference import perturb_
    from tokenmixers.zoo import get_spec

    def noisy(model: Any) -> Any:
        return perturb_(model, scale=0.02) if perturb else model

    torch.manual_seed(0)
    family = get_spec(name).family
    size = {} if img_size == 224 else {"img_size": img_size}
    if REFERENCES.get(name) == "timm":
        import timm

        ref = noisy(timm.create_model(name, **size))
        ours = tokenmixers.create_model(name, **size)
        tokenmixers.load_weights(ours, ref.state_dict(), source="timm")
    elif family == "shiftvit":
        from shiftvit_reference import build_reference, load_from_ours

        ours = noisy(tokenmixers.create_model(name, **size))
        ref = load_from_ours(build_reference(name, **size), ours)
    elif family in ("vil", "vil2"):
        ours = noisy(tokenmixers.create_model(name, **size, backend="auto"))
        ref = tokenmixers.create_model(name, **size, backend="parallel")
        ref.load_state_dict(ours.state_dict())
    else:
        raise ValueError(f"no reference for {name!r}; models with one: {', '.join(REFERENCES)}")
    return ref, ours


def make_step(model: Any, x: Any, mode: str, autocast: Callable[[], Any] | None = None
              ) -> Callable[[], None]:
    """One inference (eval, inference mode) or one SGD training step of ``model`` on ``x``;
    ``autocast`` (a context-manager factory) wraps the forward and the loss."""
    import torch

    ctx = autocast or contextlib.nullcontext
    if mode == "infer":
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), ctx():
                model(x)

        return infer
    model.train()
    target = torch.randint(0, 1000, (x.shape[0],), device=x.device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def train() -> None:
        with ctx():
            loss = torch.nn.functional.cross_entropy(model(x).float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return train


def interleaved(
    a: Callable[[], None],
    b: Callable[[], None],
    rounds: int,
    *,
    budget: float | None = None,
    sync: Callable[[], None] | None = None,
) -> tuple[list[float], list[float]]:
    """Seconds per call of ``a`` and of ``b``, one pair per round, in ABBA order (A B, then
    B A, ...) after a warm-up of A B B A. At most ``rounds`` rounds; with ``budget``, no new
    round starts once that many seconds are spent (at least 2 rounds run). ``sync`` runs
    before and after each timed call (``torch.cuda.synchronize``)."""
    sync = sync or (lambda: None)
    for fn in (a, b, b, a):
        fn()
    sync()
    ta: list[float] = []
    tb: list[float] = []
    start = time.perf_counter()
    for r in range(rounds):
        if budget is not None and r >= 2 and time.perf_counter() - start > budget:
            break
        pairs = ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta))
        for fn, acc in pairs:
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            acc.append(time.perf_counter() - t0)
    return ta, tb


def summarize(t_ref: list[float], t_ours: list[float], batch: int) -> dict[str, Any]:
    """Per-round ratios ref/ours (median, min, max) and median img/s of each side."""
    ratios = [r / o for r, o in zip(t_ref, t_ours)]
    return {
        "rounds": len(ratios),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ref_img_s": batch / statistics.median(t_ref),
        "ours_img_s": batch / statistics.median(t_ours),
        "ref_s": t_ref,
        "ours_s": t_ours,
    }


def fmt_ratio(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "-"
    return f"{cell['ratio']:.2f} [{cell['ratio_min']:.2f}-{cell['ratio_max']:.2f}]"


def worker(name: str, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    ref, ours = build_pair(name, perturb=args.check)
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    result: dict[str, Any] = {"model": name, "reference": REFERENCES[name], "batch": batch}
    if args.check:
        ref.eval()
        ours.eval()
        with torch.inference_mode():
            a, b = ref(x[:1]), ours(x[:1])
        result["max_abs_diff"] = (a - b).abs().max().item()
        result["max_abs_logit"] = b.abs().max().item()
    for mode in args.modes:
        t_ref, t_ours = interleaved(
            make_step(ref, x, mode), make_step(ours, x, mode), args.rounds
        )
        result[mode] = summarize(t_ref, t_ours, batch)
    return result


def run_worker(script: str, name: str, batch: int, args: argparse.Namespace,
               *extra: str) -> dict[str, Any]:
    """``script --worker name,batch`` in a fresh process with this run's rounds, threads and
    modes (and ``extra`` options); the JSON its last output line holds."""
    cmd = [sys.executable, script, "--worker", f"{name},{batch}", "--rounds", str(args.rounds),
           "--threads", str(args.threads), "--modes", ",".join(args.modes), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{name} batch {batch} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cell(name: str, batch: int, args: argparse.Namespace, check: bool) -> dict[str, Any]:
    return run_worker(__file__, name, batch, args, *(["--check"] if check else []))


def table(results: list[dict[str, Any]], modes: list[str], check: bool) -> str:
    cols = ["model", "reference", "batch"] + [f"{m} ref/ours" for m in modes]
    cols += ["max abs diff (b=1) / max abs logit"] if check else []
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        cells = [r["model"], r["reference"], str(r["batch"])]
        cells += [fmt_ratio(r.get(m)) for m in modes]
        if check:
            cells.append(f"{r['max_abs_diff']:.1e} / {r['max_abs_logit']:.1f}"
                         if "max_abs_diff" in r else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_list(value: str, option: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if allowed is not None and v not in allowed]
    if not items or bad:
        raise SystemExit(
            f"{option} {value!r}: expected a comma-separated list of {', '.join(allowed or ())}"
            if allowed else f"{option} {value!r}: expected a comma-separated list"
        )
    return items


def add_timing_options(parser: argparse.ArgumentParser, *, models: str, batches: str) -> None:
    """The options every fresh-process ABBA benchmark here takes (``--worker`` is internal)."""
    parser.add_argument("--models", default=models)
    parser.add_argument("--batches", default=batches)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--modes", default="infer,train")
    parser.add_argument("--json", help="also write the results (all timings) to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)


def check_timing_options(args: argparse.Namespace) -> None:
    """``--modes`` as a list, and a clear exit for a bad ``--rounds`` or ``--batches``
    (``args.batches`` becomes the list of ints)."""
    args.modes = parse_list(args.modes, "--modes", MODES)
    if args.rounds < 1:
        raise SystemExit(f"--rounds {args.rounds}: expected a positive number of rounds")
    args.batches = parse_batches(args.batches)


def parse_batches(value: str) -> list[int]:
    """``--batches`` (``8,1``) as ints; a clear exit otherwise."""
    try:
        return [int(b) for b in parse_list(value, "--batches")]
    except ValueError:
        raise SystemExit(f"--batches {value!r}: expected batch sizes such as 8,1") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_options(parser, models=",".join(REFERENCES), batches="8,1")
    parser.add_argument("--check", action="store_true",
                        help="perturb the weights, then print the largest logit difference "
                             "ref vs ours at batch 1")
    args = parser.parse_args()
    check_timing_options(args)
    if args.worker:
        name, batch = args.worker.split(",")
        print(json.dumps(worker(name, int(batch), args)))
        return
    models = parse_list(args.models, "--models", tuple(REFERENCES))
    batches = args.batches

    import timm
    import torch

    header = (f"torch {torch.__version__}, timm {timm.__version__}, {cpu_name()}, "
              f"{os.cpu_count()} cores, {args.threads} threads, 224px, "
              f"{datetime.datetime.now().isoformat(timespec='minutes')}; ABBA, "
              f"{args.rounds} rounds; ratio = reference time / ours time (>= 1: ours no "
              f"slower), median [min-max] of the per-round ratios; load average "
              f"{os.getloadavg()[0]:.1f} at start")
    print(header, flush=True)
    results = []
    for name in models:
        for i, batch in enumerate(batches):
            r = run_cell(name, batch, args, check=args.check and i == 0)
            results.append(r)
            print(f"  {name} batch {batch}: "
                  + ", ".join(f"{m} {fmt_ratio(r[m])}" for m in args.modes), flush=True)
    print()
    print(table(results, args.modes, args.check))
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "results": results}, indent=1))


if __name__ == "__main__":
    main()
