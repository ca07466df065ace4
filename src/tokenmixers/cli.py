"""``tokenmixers <command>``: the command-line interface."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from tokenmixers.plugins import load_plugins
from tokenmixers.precision import AMP_CHOICES
from tokenmixers.text import close_matches, format_table, split_list
from tokenmixers.version import __version__


def cmd_list(args: argparse.Namespace) -> int:
    from tokenmixers.zoo import get_spec, list_models

    rows = []
    for name in list_models(args.pattern):
        spec = get_spec(name)
        p = spec.paper
        if p is None:  # a generic skeleton: no paper, any mixer
            mixer = spec.config["mixer"]
            rows.append([name, spec.family, "-", "-", "-", f"any mixer (default {mixer})"])
            continue
        rows.append([
            name, spec.family, f"{p.params / 1e6:.2f}M",
            f"{p.gmacs:.1f}" if p.gmacs is not None else "-",
            f"{p.top1:.1f}" if p.top1 is not None else "-",
            f"arXiv {p.arxiv}",
        ])
    print(format_table(rows, ["model", "family", "params", "GMACs", "top-1", "paper"], "llrrrl"))
    return 0


def cmd_mixers(args: argparse.Namespace) -> int:
    from tokenmixers.catalog import mixers_markdown, mixers_table

    print(mixers_markdown() if args.markdown else mixers_table())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Build every registered model, run a 2-image batch through it, print a table."""
    from tokenmixers.zoo import create_model, list_models

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
    header = ["model", "family", "parameters", "input", "output", "build+run"]
    print(format_table(rows, header, "llrllr"))
    return 0


def _int_list(text: str) -> list[int]:
    try:
        return split_list(text, int, what="size")
    except ValueError:
        # argparse shows an ArgumentTypeError's message as is (a ValueError only as
        # "invalid _int_list value"), so the hint is worded for the command line here.
        raise argparse.ArgumentTypeError(f"expected sizes like 160,224,288, got {text!r}") from None


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "null", "off") else float(text)


def _optional_str(text: str) -> str | None:
    return None if text.lower() in ("none", "null", "off", "") else text


S = argparse.SUPPRESS
BOOL = argparse.BooleanOptionalAction
#: ``tokenmixers train`` options: flag -> argparse keywords. Every one is also a YAML key
#: (``--batch-size`` is ``batch_size``); unset options fall back to --config, then to the
#: recipe for the dataset.
TRAIN_OPTIONS: dict[str, dict[str, Any]] = {
    "--model": dict(help="zoo model name (tokenmixers list)"),
    "--model-kwargs": dict(nargs="+", metavar="KEY=VALUE",
                           help="create_model overrides, values as Python/YAML literals, e.g. "
                                "patch_size=4 embed_dim=64 'mlp_ratio=(0.5, 2)'"),
    "--data": dict(help="mnist5k (default), digits, cifar10, cifar100, imagefolder:PATH, "
                        "pathfinder32[:easy|intermediate|hard] (also 64, 128, 256; generated), "
                        "hf:NAME_OR_PATH[:SPLIT] (Hugging Face datasets; hf-stream:... to "
                        "stream them) or wds:SHARDS "
                        "(WebDataset shards; tokenmixers data convert writes them)"),
    "--data-columns": dict(metavar="IMAGE,LABEL",
                           help="hf: data's image and label columns (default: the Image and "
                                "ClassLabel features, else image/img and label/labels)"),
    "--data-dir": dict(help="where cifar10/cifar100 live or download to (default: data)"),
    "--download": dict(action=BOOL, help="download cifar10/cifar100 if missing"),
    "--val-split": dict(type=float, help="imagefolder without val/: hold out this fraction"),
    "--img-size": dict(type=int, help="input size (default: the data's own)"),
    "--initial-checkpoint": dict(help="start from these weights (same model and classes)"),
    "--recipe": dict(metavar="PRESET",
                     help="a paper's ImageNet recipe for every option not given: deit, "
                          "vit-augreg, mixer, shiftvit, sequencer or vil (see --print-config)"),
    "--output": dict(help="run folder (config, metrics, checkpoints, TensorBoard events)"),
    "--epochs": dict(type=int),
    "--batch-size": dict(type=int, help="per process (default: 64 for digit data, else 128)"),
    "--lr": dict(type=float, help="default: lr-base x global batch / 512"),
    "--lr-base": dict(type=float),
    "--min-lr": dict(type=float),
    "--warmup-epochs": dict(type=float),
    "--warmup-lr": dict(type=float),
    "--sched": dict(help="timm scheduler name (default cosine)"),
    "--opt": dict(help="timm optimizer name (default adamw)"),
    "--opt-eps": dict(type=float),
    "--momentum": dict(type=float),
    "--weight-decay": dict(type=float),
    "--smoothing": dict(type=float, help="label smoothing (default 0.1)"),
    "--clip-grad": dict(type=_optional_float, help="clip the gradient norm to this"),
    "--accum-steps": dict(type=int, help="gradient accumulation steps"),
    "--drop": dict(type=float, help="dropout before the head"),
    "--drop-path": dict(type=float, help="stochastic depth rate"),
    "--scale": dict(type=float, nargs=2, metavar=("MIN", "MAX"), help="random-resized-crop area"),
    "--ratio": dict(type=float, nargs=2, metavar=("MIN", "MAX"), help="random-resized-crop "
                                                                      "aspect ratio"),
    "--hflip": dict(type=float, help="horizontal flip probability"),
    "--color-jitter": dict(type=_optional_float),
    "--auto-augment": dict(type=_optional_str, help="e.g. rand-m9-mstd0.5-inc1 (RandAugment)"),
    "--reprob": dict(type=float, help="random erasing probability"),
    "--mixup": dict(type=float, help="Mixup alpha (0: off)"),
    "--cutmix": dict(type=float, help="CutMix alpha (0: off)"),
    "--mixup-prob": dict(type=float),
    "--mixup-switch-prob": dict(type=float),
    "--no-aug": dict(action="store_true", help="no train-time augmentation at all"),
    "--ema": dict(action=BOOL, help="keep an EMA of the weights (timm ModelEmaV3)"),
    "--ema-decay": dict(type=float),
    "--amp": dict(choices=AMP_CHOICES, help="mixed precision"),
    "--compile": dict(action=BOOL, help="torch.compile the model"),
    "--grad-checkpointing": dict(action=BOOL),
    "--seed": dict(type=int),
    "--deterministic": dict(action=BOOL, help="torch.use_deterministic_algorithms"),
    "--device": dict(help="auto (default), cpu, cuda"),
    "--workers": dict(type=int, help="data-loading processes (default 0)"),
    "--threads": dict(type=int, help="torch threads per process (0: PyTorch's default; 1 is "
                                     "often faster on a busy machine)"),
    "--limit-train": dict(type=int, help="train on this many images (a fixed subset)"),
    "--limit-val": dict(type=int, help="validate on this many images (a fixed subset)"),
    "--max-bad-images": dict(type=float, help="fraction of unreadable images tolerated"),
    "--stop-after": dict(type=int, help="stop (resumably) after this many epochs"),
    "--log-interval": dict(type=int),
    "--progress": dict(choices=["auto", "bar", "plain", "none"],
                       help="bar (a terminal), plain lines, or none (warnings still print)"),
    "--nproc": dict(type=int, help="processes on this machine (via torch.distributed.run)"),
}


def _train_options(args: argparse.Namespace) -> dict[str, Any]:
    from tokenmixers.train.config import read_yaml

    given = {k: v for k, v in vars(args).items() if k.replace("_", "-") in
             {f[2:] for f in TRAIN_OPTIONS}}
    options = read_yaml(args.config) if args.config else {}
    options.update(given)
    return options


def cmd_train(args: argparse.Namespace) -> int:
    from tokenmixers.train import train
    from tokenmixers.train.distributed import launch, launched_by_torchrun

    options = _train_options(args)
    nproc = int(options.get("nproc", 1) or 1)
    if args.print_config:
        from tokenmixers.train.config import config_text

        print(config_text(options, world_size=nproc))
        return 0
    if nproc > 1 and not launched_by_torchrun():
        return launch(nproc, args.argv)
    result = train(options, resume=args.resume, overwrite=args.overwrite)
    if result.interrupted:
        return 130
    return 0


def _print_json_or_table(rows: list[dict[str, Any]], json_path: str | None,
                         table: str) -> None:
    if json_path == "-":
        print(json.dumps(rows, indent=2))
        return
    print(table)
    if json_path:
        from pathlib import Path

        Path(json_path).write_text(json.dumps(rows, indent=2) + "\n")


def cmd_eval(args: argparse.Namespace) -> int:
    from tokenmixers.data import fixed_subset, load_data
    from tokenmixers.evaluate import eval_resolutions, load_checkpoint_model
    from tokenmixers.train.distributed import pick_device

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit}: expected a positive number of images; leave "
                         "it out to use them all")
    loaded = load_checkpoint_model(args.checkpoint)
    model = loaded.model
    data = args.data or loaded.data
    if not data:
        raise ValueError(f"{loaded.path} does not record its dataset; pass --data")
    bundle = load_data(data, data_dir=args.data_dir, download=args.download,
                       val_split=args.val_split)
    in_chans = model.patch_embed.in_chans
    if bundle.num_classes != model.num_classes:
        raise ValueError(
            f"{loaded.path} classifies {model.num_classes} classes but {data} has "
            f"{bundle.num_classes}; evaluate it on the data it was trained on")
    if bundle.in_chans != in_chans:
        raise ValueError(f"{loaded.path} takes {in_chans}-channel images but {data} has "
                         f"{bundle.in_chans}")
    val = fixed_subset(bundle.val, args.limit)
    sizes = args.img_size or [model.img_size[0]]
    rows = eval_resolutions(loaded, val, sizes, batch_size=args.batch_size,
                            workers=args.workers, device=pick_device(args.device), amp=args.amp)
    for row in rows:
        row.update(model=model.model_name, checkpoint=str(loaded.path), data=data)
    table = format_table(
        [[str(r["img_size"]), f"{r['top1']:.2f}", f"{r['top5']:.2f}", f"{r['loss']:.4f}",
          str(r["count"])] if "error" not in r else
         [str(r["img_size"]), "-", "-", "-", "cannot run: " + r["error"].split(". ")[0]]
         for r in rows],
        ["img_size", "top-1", "top-5", "loss", "images"], "rrrrl")
    _print_json_or_table(rows, args.json, f"{model.model_name} ({loaded.path}) on {data}\n"
                         + table)
    return 0 if any("error" not in r for r in rows) else 1


def cmd_predict(args: argparse.Namespace) -> int:
    from tokenmixers.evaluate import load_checkpoint_model, predict_files
    from tokenmixers.train.distributed import pick_device

    loaded = load_checkpoint_model(args.checkpoint)
    results = predict_files(loaded, args.images, topk=args.topk, img_size=args.img_size,
                            device=pick_device(args.device), amp=args.amp)
    lines = []
    for r in results:
        tops = ", ".join(f"{t['class']} ({t['prob']:.3f})" for t in r["top"])
        lines.append(f"{r['image']}: {tops}")
    _print_json_or_table(results, args.json, "\n".join(lines))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a zoo model or a trained run to ONNX / a torch.export program and check it."""
    from tokenmixers.export import export_model

    if (args.model is None) == (args.checkpoint is None):
        raise ValueError("tokenmixers export needs exactly one of --model NAME or "
                         "--checkpoint RUN (a run folder or weights file)")
    if args.checkpoint is not None:
        if args.model_kwargs:
            raise ValueError("--model-kwargs applies to --model only: a checkpoint is rebuilt "
                             "as it was trained")
        from tokenmixers.evaluate import load_checkpoint_model

        model = load_checkpoint_model(args.checkpoint).model
    else:
        from tokenmixers.train.config import check_model_kwargs, parse_model_kwargs
        from tokenmixers.zoo import create_model, get_spec

        get_spec(args.model)  # unknown names fail now, with suggestions
        kwargs = parse_model_kwargs(args.model_kwargs)
        if args.img_size is not None:  # a zoo model is built for the size it is exported at
            kwargs.setdefault("img_size", args.img_size)
        check_model_kwargs(args.model, kwargs)
        model = create_model(args.model, **kwargs)
    name = model.model_name or args.model or "model"
    output = args.output or f"{name}.{args.format}"
    result = export_model(model, output, format=args.format, img_size=args.img_size,
                          dynamic_batch=args.dynamic_batch, dynamo=not args.torchscript,
                          optimize=not args.no_optimize)
    shape = "x".join(map(str, result.input_shape))
    print(f"wrote {result.path} ({args.format}, input {shape}"
          f"{', dynamic batch' if args.dynamic_batch else ''})")
    print(f"max abs difference from eager: {result.max_abs_diff:.3g}")
    if args.check and not result.max_abs_diff <= args.tolerance:
        print(f"check failed: {result.max_abs_diff:.3g} exceeds --tolerance {args.tolerance:g}",
              file=sys.stderr)
        return 1
    return 0


#: Modules under tokenmixers that add a command of the same name (``add_parser(sub)``).
PLUGIN_COMMANDS = ("bench", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenmixers",
        description="Vision backbones as one skeleton with different token mixers.",
    )
    parser.add_argument("--version", action="version", version=f"tokenmixers {__version__}")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py|MODULE",
                        help="import this first (repeatable): a file or module that registers "
                             "a token mixer of your own, e.g. --plugin my_mixer.py compare "
                             "--skeleton isotropic --mixers mine")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list the model zoo with the papers' facts")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name filter, e.g. 'vit*'")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("mixers", help="list the registered token mixers with their facts")
    p.add_argument("--markdown", action="store_true", help="as a Markdown table (the README's)")
    p.set_defaults(func=cmd_mixers)

    p = sub.add_parser(
        "demo", help="build every model, run one forward pass, print a table"
    )
    p.add_argument("--pattern", default="*", help="only models matching this pattern")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "train", help="train a model (DeiT-style recipe scaled to the data; resumable)",
        description="Train a zoo model. Options not given fall back to --config, then to the "
                    "recipe for the dataset; the resolved configuration is saved in the run "
                    "folder. Multi-process: torchrun --nproc_per_node=N -m tokenmixers train "
                    "..., or --nproc N.")
    p.add_argument("--config", metavar="YAML", help="options from a YAML file (keys as in "
                   "config.yaml of a run: batch_size, model_kwargs, ...)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run already in --output")
    p.add_argument("--print-config", action="store_true",
                   help="print every option as the run would use it (YAML, with the "
                        "recipe's sources) and exit, loading and writing nothing")
    for flag, kwargs in TRAIN_OPTIONS.items():
        p.add_argument(flag, default=S, **kwargs)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="top-1/top-5/loss of a checkpoint, at one or more sizes")
    p.add_argument("--checkpoint", required=True, metavar="RUN_OR_FILE",
                   help="a run folder (its best checkpoint) or a .safetensors file")
    p.add_argument("--data", help="dataset (default: the one the checkpoint was trained on)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--download", action="store_true")
    p.add_argument("--val-split", type=float)
    p.add_argument("--img-size", type=_int_list, metavar="SIZES",
                   help="comma-separated input sizes, e.g. 160,224,288 (default: the model's)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=AMP_CHOICES, default="none")
    p.add_argument("--limit", type=int, help="evaluate N validation images only (the same "
                   "fixed subset as train --limit-val N)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-': "
                   "print JSON instead of the table)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k classes of image files")
    p.add_argument("--checkpoint", required=True, metavar="RUN_OR_FILE")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--img-size", type=int, help="input size (default: the model's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=AMP_CHOICES, default="none",
                   help="mixed precision (bf16 runs on CPU too)")
    p.add_argument("--json", metavar="PATH", help="also write JSON ('-': print JSON only)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export to ONNX or a torch.export program (.pt2) and "
                       "check the file against the eager model")
    p.add_argument("--model", help="a zoo model name (random weights unless the run's)")
    p.add_argument("--checkpoint", metavar="RUN", help="a run folder or weights file")
    p.add_argument("--format", choices=["onnx", "pt2"], default="onnx")
    p.add_argument("--img-size", type=int, help="input size (default: the model's; a --model "
                   "is built for it)")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="a symbolic batch dimension in the file")
    p.add_argument("--check", action="store_true",
                   help="exit 1 if the file's output differs from eager by more than "
                        "--tolerance")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest absolute difference --check accepts (default 1e-4)")
    p.add_argument("--torchscript", action="store_true",
                   help="ONNX through the TorchScript exporter instead of dynamo")
    p.add_argument("--no-optimize", action="store_true",
                   help="skip the dynamo ONNX exporter's graph optimisation (about 2x faster "
                        "to export, a larger graph)")
    p.add_argument("--output", "-o", metavar="FILE", help="default: MODEL.FORMAT")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="create_model overrides, e.g. backend=chunkwise img_size=64")
    p.set_defaults(func=cmd_export)

    # Streaming data: `data convert` (image folder -> WebDataset shards) and `bench-data`.
    from tokenmixers.data import bench as data_bench
    from tokenmixers.data import convert as data_convert

    data_convert.add_parser(sub)
    data_bench.add_parser(sub)

    # The papers' questions: `erf` (effective receptive fields) and `inspect` (ViT Fig. 7).
    from tokenmixers import analysis, studies

    analysis.add_parsers(sub)
    studies.add_parser(sub)

    # Commands that live in their own modules register themselves through add_parser(sub).
    import importlib

    for name in PLUGIN_COMMANDS:
        if name in sub.choices:
            continue
        try:
            module = importlib.import_module(f"tokenmixers.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"tokenmixers.{name}":
                raise
            continue
        if hasattr(module, "add_parser"):
            module.add_parser(sub)
    return parser


def _unknown_arguments(parser: argparse.ArgumentParser, command: str,
                       unknown: list[str]) -> None:
    """argparse's "unrecognized arguments" error, with the closest option names."""
    known = [*TRAIN_OPTIONS, "--config", "--resume", "--overwrite"] if command == "train" else []
    hints = []
    for arg in unknown:
        flag = arg.split("=", 1)[0]
        close = close_matches(flag, known, n=3, cutoff=0.6) if flag[:2] == "--" else []
        hints.append(f"{arg}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    parser.error(f"{command}: unrecognized arguments: {'; '.join(hints)}")


@contextlib.contextmanager
def _warnings_as_lines(command: str) -> Iterator[None]:
    """tokenmixers' own warnings (an image folder's modes, a run folder's config) as one
    line each, ``tokenmixers COMMAND: warning: ...``, not Python's file:line form; other
    libraries' warnings keep theirs. Only the format changes, so whoever records warnings
    (``warnings.catch_warnings``, pytest) still gets them."""
    default = warnings.formatwarning
    package = str(Path(__file__).parent)

    def format_line(message: Warning | str, category: type[Warning], filename: str,
                    lineno: int, line: str | None = None) -> str:
        if category.__module__.split(".")[0] == "tokenmixers" or filename.startswith(package):
            return f"tokenmixers {command}: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = format_line
    try:
        yield
    finally:
        warnings.formatwarning = default


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _unknown_arguments(parser, args.command, unknown)
    args.argv = argv
    try:
        load_plugins(args.plugin)
        with _warnings_as_lines(args.command):
            return args.func(args)
    except (ValueError, TypeError, OSError, ImportError) as err:
        print(f"tokenmixers {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a non-finite loss, a failed distributed run
        print(f"tokenmixers {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # a second Ctrl-C, or a signal before training starts
        code = getattr(err, "exit_code", 130)
        how = "stopped by SIGTERM" if code == 143 else "aborted"
        print(f"tokenmixers {args.command}: {how}", file=sys.stderr)
        return code
