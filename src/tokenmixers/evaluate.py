"""Checkpoints for ``tokenmixers eval`` and ``predict``: load a saved model, measure
top-1/top-5/loss at several input sizes, and give the top-k classes of image files.

The evaluation loop itself is :func:`tokenmixers.evaluation.evaluate` (re-exported here),
shared with the trainer; this module depends on ``tokenmixers.train`` (for its checkpoint
layout), never the other way round."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset

from tokenmixers.backbones import Backbone
from tokenmixers.evaluation import evaluate
from tokenmixers.train.checkpoint import WEIGHTS, find_checkpoint

__all__ = ["LoadedModel", "eval_resolutions", "evaluate", "load_checkpoint_model",
           "predict_files", "weights_file"]


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


def load_checkpoint_model(checkpoint: str | Path) -> LoadedModel:
    """Rebuild the model saved at ``checkpoint`` with its class names and normalisation."""
    from tokenmixers.weights import load_model

    path = weights_file(checkpoint)
    model = load_model(path).eval()
    meta: dict[str, str] = {}
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
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
) -> list[dict[str, Any]]:
    """One row per input size: top-1/top-5/loss, or ``error`` when the model cannot take it
    (a Mixer is built for one size)."""
    from tokenmixers.data import Transformed, eval_transform

    model = loaded.model.to(device)
    in_chans = model.patch_embed.in_chans
    rows = []
    for size in sizes:
        tf = eval_transform(size, in_chans, loaded.mean, loaded.std, crop_pct=loaded.crop_pct)
        loader = DataLoader(Transformed(dataset, tf), batch_size=batch_size,
                            num_workers=workers, generator=torch.Generator().manual_seed(0))
        try:
            result = evaluate(model, loader, device=device, amp=amp)
        except ValueError as err:
            rows.append({"img_size": size, "error": str(err)})
            continue
        rows.append({"img_size": size, **result})
    return rows


@torch.no_grad()
def predict_files(loaded: LoadedModel, files: Sequence[str | Path], *, topk: int = 5,
                  img_size: int | None = None) -> list[dict[str, Any]]:
    """Top-k classes and probabilities for each image file."""
    from tokenmixers.data import eval_transform

    model = loaded.model
    in_chans = model.patch_embed.in_chans
    size = img_size or model.img_size[0]
    tf = eval_transform(size, in_chans, loaded.mean, loaded.std, crop_pct=loaded.crop_pct)
    k = max(1, min(topk, model.num_classes))
    out = []
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"no image at {path}")
        try:
            with Image.open(path) as img:
                img = img.convert("L" if in_chans == 1 else "RGB")
        except (OSError, SyntaxError) as err:
            raise ValueError(f"could not read {path} as an image: {err}") from err
        probs = model(tf(img)[None]).softmax(dim=-1)[0]
        p, idx = probs.topk(k)
        out.append({"image": str(path), "top": [
            {"class": loaded.classes[i], "index": int(i), "prob": float(q)}
            for q, i in zip(p.tolist(), idx.tolist())
        ]})
    return out
