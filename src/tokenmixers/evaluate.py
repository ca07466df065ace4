"""Evaluation and prediction: top-1/top-5/loss over a loader, at several input sizes, and
top-k classes for image files. Used by ``tokenmixers train``, ``eval`` and ``predict``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tokenmixers.backbones import Backbone


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``--amp bf16|fp16`` (a no-op for ``none``)."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, device: torch.device, amp: str = "none",
             reduce: Any = None) -> dict[str, float]:
    """Mean cross-entropy, top-1 and top-5 (%) over ``loader``. ``reduce`` sums a list of
    numbers over processes (for sharded validation sets)."""
    was_training = model.training
    model.eval()
    loss_sum = top1 = top5 = count = 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        k = min(5, logits.shape[1])
        pred = logits.topk(k, dim=1).indices
        hit = pred.eq(y[:, None])
        top1 += hit[:, 0].sum().item()
        top5 += hit.any(dim=1).sum().item()
        count += y.numel()
    model.train(was_training)
    if reduce is not None:
        loss_sum, top1, top5, count = reduce([loss_sum, top1, top5, count])
    if count == 0:
        raise ValueError("the validation set is empty")
    return {"loss": loss_sum / count, "top1": 100.0 * top1 / count,
            "top5": 100.0 * top5 / count, "count": int(count)}


# ---- checkpoints for eval / predict -------------------------------------------------------
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
    from tokenmixers.train.checkpoint import WEIGHTS, find_checkpoint

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
