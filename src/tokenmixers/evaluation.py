"""The evaluation loop: top-1/top-5/loss of a model over a loader.

It lives apart from :mod:`tokenmixers.evaluate` (checkpoint loading, several input sizes,
prediction) because the trainer needs it too, and ``evaluate`` needs the trainer's checkpoint
helpers: with the loop here, ``train`` and ``evaluate`` both import this module and neither
imports the other's package back.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from tokenmixers.precision import autocast

__all__ = ["NonFiniteOutputError", "evaluate"]


class NonFiniteOutputError(RuntimeError):
    """A model gave NaN or infinite logits: its numbers mean nothing, so none are reported."""


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, device: torch.device, amp: str = "none",
             reduce: Any = None, per_image: bool = False) -> dict[str, Any]:
    """Mean cross-entropy, top-1 and top-5 (%) over ``loader``, and ``nonfinite``: how many
    images got NaN or infinite logits (their loss is then NaN too; the caller decides what
    that means). ``reduce`` sums a list of numbers over processes (sharded validation).
    ``per_image``: also ``correct``, 1 or 0 per image in the loader's order (top-1 hit), for
    paired tests between models on the same images."""
    was_training = model.training
    model.eval()
    loss_sum = top1 = top5 = count = nonfinite = 0.0
    correct: list[int] = []
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        nonfinite += (~torch.isfinite(logits).all(dim=1)).sum().item()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        k = min(5, logits.shape[1])
        pred = logits.topk(k, dim=1).indices
        hit = pred.eq(y[:, None])
        top1 += hit[:, 0].sum().item()
        if per_image:
            correct += hit[:, 0].int().tolist()
        top5 += hit.any(dim=1).sum().item()
        count += y.numel()
    model.train(was_training)
    if reduce is not None:
        loss_sum, top1, top5, count, nonfinite = reduce([loss_sum, top1, top5, count,
                                                         nonfinite])
    if count == 0:
        raise ValueError("the validation set is empty")
    out: dict[str, Any] = {"loss": loss_sum / count, "top1": 100.0 * top1 / count,
                           "top5": 100.0 * top5 / count, "count": int(count),
                           "nonfinite": int(nonfinite)}
    if per_image:
        out["correct"] = correct
    return out
