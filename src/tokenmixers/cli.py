"""``tokenmixers <command>``: the command-line interface."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch


def _table(rows: list[list[str]], header: list[str], align: str) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        cells = [
            str(c).rjust(w) if a == "r" else str(c).ljust(w)
            for c, w, a in zip(row, widths, align)
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(r) for r in rows)])


def cmd_list(args: argparse.Namespace) -> int:
    from tokenmixers import get_spec, list_models

    rows = []
    for name in list_models(args.pattern):
        spec = get_spec(name)
        p = spec.paper
        rows.append([
            name, spec.family, f"{p.params / 1e6:.2f}M",
            f"{p.gmacs:.1f}" if p.gmacs is not None else "-",
            f"{p.top1:.1f}" if p.top1 is not None else "-",
            f"arXiv {p.arxiv}",
        ])
    print(_table(rows, ["model", "family", "params", "GMACs", "top-1", "paper"], "llrrrl"))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Build every registered model, run a 2-image batch through it, print a table."""
    from tokenmixers import create_model, list_models

    torch.manual_seed(0)
    torch.set_num_threads(args.threads) if args.threads else None
    names = list_models(args.pattern)
    rows = []
    for name in names:
        t0 = time.perf_counter()
        model = create_model(name).eval()
        c, h, w = model.pretrained_cfg["input_size"]
        x = torch.randn(args.batch_size, c, h, w)
        with torch.inference_mode():
            out = model(x)
        params = sum(p.numel() for p in model.parameters())
        rows.append([
            name, model.family, f"{params:,}", f"{c}x{h}x{w}", "x".join(map(str, out.shape)),
            f"{time.perf_counter() - t0:.1f}s",
        ])
        print(f"  {name}: ok", file=sys.stderr, flush=True)
        del model
    print(_table(rows, ["model", "family", "parameters", "input", "output", "build+run"], "llrllr"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tokenmixers import __version__

    parser = argparse.ArgumentParser(
        prog="tokenmixers",
        description="Vision backbones as one skeleton with different token mixers.",
    )
    parser.add_argument("--version", action="version", version=f"tokenmixers {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list the model zoo with the papers' facts")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name filter, e.g. 'vit*'")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "demo", help="build every model, run one forward pass, print a table"
    )
    p.add_argument("--pattern", default="*", help="only models matching this pattern")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"tokenmixers {args.command}: error: {err}", file=sys.stderr)
        return 2
