"""Export a model to ONNX or to a ``torch.export`` program (``.pt2``) and check the file.

:func:`export_model` writes the file atomically, runs it once (onnxruntime, or
``torch.export.load``) on a random batch and returns the largest absolute difference from
the eager model. ONNX uses the dynamo exporter (``torch.onnx.export(..., dynamo=True)``);
``onnx``, ``onnxscript`` and ``onnxruntime`` are optional (``pip install tokenmixers[export]``)
and imported only here, when asked for.

``torch.jit.script`` is not supported (the backbones take Python-valued grids, keyword-only
options and registries TorchScript cannot type); use ``torch.export`` or this module instead
(``torch.jit.trace`` works too, at the traced size, but PyTorch deprecates it).
"""

from __future__ import annotations

import importlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["FORMATS", "ExportResult", "export_model", "require_onnx"]

FORMATS = ("onnx", "pt2")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote and how closely the file matches the eager model."""

    path: Path
    format: str
    input_shape: tuple[int, ...]
    max_abs_diff: float


def require_onnx() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or an ``ImportError`` that says what to install."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(
            f"--format onnx needs the packages {', '.join(missing)}, which are not installed: "
            "pip install 'tokenmixers[export]' (or use --format pt2, which needs torch only)"
        )
    return importlib.import_module("onnx"), importlib.import_module("onnxruntime")


def _move_into_place(folder: Path, path: Path) -> None:
    """Move ``folder/path.name`` to ``path``, and first the files beside it (the ONNX
    exporter's external weights, ``NAME.data``, which the file names relative to itself):
    the file appears whole, with its data already there, or not at all."""
    main = folder / path.name
    if not main.is_file():
        raise OSError(f"the exporter wrote no {main.name} in {folder}")
    for extra in folder.iterdir():
        if extra != main:
            os.replace(extra, path.parent / extra.name)
    os.replace(main, path)


def export_model(
    model: nn.Module,
    output: str | Path,
    *,
    format: str = "onnx",
    img_size: int | tuple[int, int] | None = None,
    batch_size: int = 2,
    dynamic_batch: bool = False,
    dynamo: bool = True,
    opset_version: int | None = None,
    optimize: bool = True,
) -> ExportResult:
    """Export ``model`` (put in eval mode) to ``output`` and run the file once.

    ``format``: ``onnx`` or ``pt2``; ``img_size``: the input size (default: the model's
    ``pretrained_cfg`` input size, else its ``img_size``); ``dynamic_batch``: the batch
    dimension is symbolic in the file. ``dynamo=False`` uses the TorchScript-based ONNX
    exporter; ``optimize``: the dynamo exporter's graph optimisation (slower to export, a
    smaller graph). Returns the path, the input shape and the largest absolute difference of
    the file's output from the eager model's on a random batch (a second batch size is
    compared too where the batch is dynamic)."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if format == "onnx":
        _, ort = require_onnx()
    model = model.eval()  # (the caller's model: left in eval mode)
    shape = _input_shape(model, img_size, batch_size)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).to(device)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written in a hidden folder beside the target, then moved: never a half-written file.
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as folder:
        tmp = Path(folder) / path.name
        if format == "pt2":
            dims = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
            program = torch.export.export(model, (x,), dynamic_shapes=dims)
            torch.export.save(program, tmp)
        else:
            _export_onnx(model, x, tmp, dynamic_batch=dynamic_batch, dynamo=dynamo,
                         opset_version=opset_version, optimize=optimize)
        _move_into_place(Path(folder), path)
    batches = [x]
    if dynamic_batch:
        batches.append(torch.randn(batch_size + 1, *shape[1:], generator=generator).to(device))
    diff = 0.0
    if format == "pt2":
        loaded = torch.export.load(path).module()
        with torch.no_grad():
            for xb in batches:
                diff = max(diff, (loaded(xb) - model(xb)).abs().max().item())
    else:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        with torch.no_grad():
            for xb in batches:
                (out,) = session.run(None, {name: xb.cpu().numpy()})
                diff = max(diff, (torch.from_numpy(out) - model(xb).cpu()).abs().max().item())
    return ExportResult(path, format, tuple(shape), diff)


def _input_shape(
    model: nn.Module, img_size: int | tuple[int, int] | None, batch_size: int
) -> tuple[int, int, int, int]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" in cfg:
        c, h, w = cfg["input_size"]
    else:
        c = getattr(getattr(model, "patch_embed", None), "in_chans", 3)
        h, w = getattr(model, "img_size", (224, 224))
    if img_size is not None:
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    return (batch_size, int(c), int(h), int(w))


def _export_onnx(
    model: nn.Module, x: torch.Tensor, path: Path, *, dynamic_batch: bool, dynamo: bool,
    opset_version: int | None, optimize: bool = True,
) -> None:
    import warnings

    kwargs: dict[str, Any] = {"input_names": ["images"], "output_names": ["logits"]}
    if opset_version is not None:
        kwargs["opset_version"] = opset_version
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dims = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
            torch.onnx.export(model, (x,), str(path), dynamo=True, dynamic_shapes=dims,
                              optimize=optimize, verbose=False, **kwargs)
        else:
            axes = {"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
            torch.onnx.export(model, (x,), str(path), dynamo=False, dynamic_axes=axes, **kwargs)
