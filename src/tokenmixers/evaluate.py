"""Checkpoints for ``tokenmixers eval`` and ``predict``: load a saved model, measure
top-1/top-5/loss at several input sizes, and give the top-k classes of image files.

The evaluation loop itself is :func:`tokenmixers.evaluation.evaluate` (re-exported here),
shared with the trainer; this module depends on ``tokenmixers.train`` (for its checkpoint
layout), never the other way round."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from torch.utils.data import DataLoader, Dataset

from tokenmixers._files import plain
from tokenmixers.backbones import Backbone
from tokenmixers.evaluation import NonFiniteOutputError, evaluate
from tokenmixers.train.checkpoint import WEIGHTS, find_checkpoint

__all__ = ["LoadedModel", "RunMismatchError", "eval_resolutions", "evaluate",
           "load_checkpoint_model", "predict_files", "read_image", "weights_file"]

#: A run folder's options, beside its best/ and last/ checkpoints.
RUN_CONFIG = "config.yaml"


class RunMismatchError(ValueError):
    """A run folder whose weights were saved from another model than its config.yaml
    trains (the folder mixes two runs)."""


@dataclass
class LoadedModel:
    model: Backbone
    path: Path
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    data: str | None


def weights_file(checkpoint: str | Path) -> Path:
    """A run folder (its best, else last checkpoint), a checkpoint folder, or a file."""
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path} (pass a run folder or a .safetensors "
                                "file)")
    if path.is_dir():
        if (path / WEIGHTS).is_file():
            return path / WEIGHTS
        for name in ("best", "last"):
            found = find_checkpoint(path, name)
            if found is not None:
                return found / WEIGHTS
        raise FileNotFoundError(f"{path} holds no checkpoint (no best/ or last/ with "
                                f"{WEIGHTS}); has its run finished an epoch?")
    return path


def _run_config(checkpoint: Path) -> Path | None:
    """The config.yaml of the run ``checkpoint`` names: a run folder's own, or the run's
    around a checkpoint folder (``RUN/best``); None for a weights file."""
    if not checkpoint.is_dir():
        return None
    run = checkpoint.parent if (checkpoint / WEIGHTS).is_file() else checkpoint
    config = run / RUN_CONFIG
    return config if config.is_file() else None


def _with(kwargs: dict[str, Any]) -> str:
    return (" with " + ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))
            if kwargs else "")


def check_run_weights(config: Path, weights: Path, meta: dict[str, str]) -> None:
    """Refuse weights whose metadata (``model_name``, ``model_config``) names another model,
    or other ``model_kwargs``, than the run's ``config`` trains: they came from another
    run, and evaluating them would silently measure that run's model."""
    from tokenmixers.train.config import parse_model_kwargs, read_yaml

    saved_name = meta.get("model_name")
    if not saved_name:
        return
    try:
        options = read_yaml(config)
        kwargs = parse_model_kwargs(options.get("model_kwargs"))
        saved_config = json.loads(meta.get("model_config") or "{}")
    except (ValueError, OSError) as err:
        warnings.warn(f"could not read {config} to check that {weights} belongs to its run "
                      f"({err}); evaluating the weights as their metadata describes them",
                      RuntimeWarning, stacklevel=3)
        return
    name = options.get("model")
    if not name:
        return
    differ = sorted(k for k, v in kwargs.items()
                    if k in saved_config and plain(v) != plain(saved_config[k]))
    if name == saved_name and not differ:
        return
    ours = {k: kwargs[k] for k in differ}
    theirs = {k: saved_config[k] for k in differ}
    raise RunMismatchError(
        f"the weights in {weights} are a {saved_name}{_with(theirs)} but {config} trains "
        f"{name}{_with(ours)}; the folder mixes two runs: evaluate the weights file directly "
        f"with --checkpoint {weights} (its metadata rebuilds its own model), or retrain "
        f"{name} into a fresh --output"
    )


def load_checkpoint_model(checkpoint: str | Path) -> LoadedModel:
    """Rebuild the model saved at ``checkpoint`` with its class names and normalisation.

    For a run folder (or a checkpoint folder inside one) the weights must be of the model
    the run's config.yaml trains, else :class:`RunMismatchError`; a weights file is taken
    as its metadata describes it."""
    from tokenmixers.hub import load_model

    path = weights_file(checkpoint)
    meta: dict[str, str] = {}
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
        except (SafetensorError, OSError):
            meta = {}  # load_model below says what is wrong with the file
    config = _run_config(Path(checkpoint).expanduser())
    if config is not None:
        check_run_weights(config, path, meta)
    model = load_model(path).eval()
    cfg = model.pretrained_cfg
    classes = json.loads(meta["classes"]) if "classes" in meta else [
        str(i) for i in range(model.num_classes)]
    mean = tuple(json.loads(meta["mean"])) if "mean" in meta else tuple(cfg["mean"])
    std = tuple(json.loads(meta["std"])) if "std" in meta else tuple(cfg["std"])
    crop_pct = float(meta.get("crop_pct", 1.0))
    return LoadedModel(model, path, classes, mean, std, crop_pct, meta.get("data"))


def eval_resolutions(
    loaded: LoadedModel, dataset: Dataset, sizes: Sequence[int], *, batch_size: int = 256,
    workers: int = 0, device: torch.device = torch.device("cpu"), amp: str = "none",
    per_image: bool = False,
) -> list[dict[str, Any]]:
    """One row per input size: top-1/top-5/loss, or ``error`` when the model cannot take it
    (a Mixer is built for one size); ``per_image``: also ``correct`` per image, in order."""
    from tokenmixers.data import Transformed, eval_transform

    model = loaded.model.to(device)
    in_chans = model.patch_embed.in_chans
    rows = []
    for size in sizes:
        tf = eval_transform(size, in_chans, loaded.mean, loaded.std, crop_pct=loaded.crop_pct)
        loader = DataLoader(Transformed(dataset, tf), batch_size=batch_size,
                            num_workers=workers, generator=torch.Generator().manual_seed(0))
        try:
            result = evaluate(model, loader, device=device, amp=amp, per_image=per_image)
        except ValueError as err:
            rows.append({"img_size": size, "error": str(err)})
            continue
        if result["nonfinite"]:
            raise NonFiniteOutputError(
                f"{loaded.path}: the model's outputs are NaN or infinite for "
                f"{result['nonfinite']} of {result['count']} images at {size}px, so its "
                "accuracy means nothing; these weights are broken (e.g. saved by a run whose "
                "learning rate was too high): evaluate an earlier checkpoint, or retrain")
        rows.append({"img_size": size, **result})
    return rows


def read_image(path: str | Path, in_chans: int,
               report: Any | None = None) -> Image.Image:
    """The image at ``path`` as a model with ``in_chans`` channels sees it, converted like
    an image folder's (:func:`tokenmixers.data.folder.convert_image`: 16-bit scaled, alpha
    composited on white, ...); ``report(source_mode, target, path)`` hears what was done.
    A missing file is a FileNotFoundError, anything PIL cannot read a ValueError that names
    the file."""
    from tokenmixers.data.folder import convert_image, source_mode

    path = Path(path)
    target = "L" if in_chans == 1 else "RGB"
    if not path.is_file():
        raise FileNotFoundError(f"no image at {path}")
    try:
        with Image.open(path) as img:
            img.load()
            source = source_mode(img)
            out = convert_image(img, target)
    except Image.DecompressionBombError as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        pixels = f"{int(found.group(1)):,} pixels" if found else "its size"
        limit = Image.MAX_IMAGE_PIXELS
        most = f"{2 * limit:,} pixels" if limit else "its limit"
        raise ValueError(
            f"{path} is too large to read safely: {pixels}, more than PIL's limit of 2 x "
            f"Image.MAX_IMAGE_PIXELS = {most} (a decompression-bomb guard); "
            "downscale the image, or if you trust the file raise PIL.Image.MAX_IMAGE_PIXELS "
            "in Python before predicting"
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"could not read {path} as an image: {err}; pass an image file "
                         "PIL can open (PNG, JPEG, ...)") from err
    if report is not None:
        report(source, target, path)
    return out


@torch.no_grad()
def predict_files(loaded: LoadedModel, files: Sequence[str | Path], *, topk: int = 5,
                  img_size: int | None = None, device: torch.device | str = "cpu",
                  amp: str = "none") -> list[dict[str, Any]]:
    """Top-k classes and probabilities for each image file, read by :func:`read_image`
    (the image folder's conversions, each kind reported once), on ``device`` under ``amp``
    (``bf16`` works on CPU too; probabilities are computed in float32)."""
    from tokenmixers.data import eval_transform
    from tokenmixers.data.folder import ConversionReport
    from tokenmixers.precision import autocast

    device = torch.device(device)
    model = loaded.model.to(device)
    in_chans = model.patch_embed.in_chans
    size = img_size or model.img_size[0]
    tf = eval_transform(size, in_chans, loaded.mean, loaded.std, crop_pct=loaded.crop_pct)
    k = max(1, min(topk, model.num_classes))
    report = ConversionReport(f"predict ({model.model_name or 'model'} takes {in_chans} "
                              f"channel{'s' if in_chans > 1 else ''})")
    out = []
    for file in files:
        path = Path(file)
        img = read_image(path, in_chans, report)
        with autocast(device, amp):
            logits = model(tf(img)[None].to(device)).float()
        if not torch.isfinite(logits).all():
            raise NonFiniteOutputError(
                f"{loaded.path}: the model's outputs are NaN or infinite for {path}, so no "
                "prediction is given; these weights are broken (e.g. saved by a run whose "
                "learning rate was too high): use an earlier checkpoint, or retrain")
        probs = logits.softmax(dim=-1)[0]
        p, idx = probs.topk(k)
        out.append({"image": str(path), "top": [
            {"class": loaded.classes[i], "index": int(i), "prob": float(q)}
            for q, i in zip(p.tolist(), idx.tolist())
        ]})
    return out
