"""Effective receptive fields (Luo et al., NeurIPS 2016), as the Sequencer and RepLKNet
papers draw them: how much each input pixel moves the model's centre output.

For a batch of images ``x`` and a model's feature map ``F = f(x)`` (``[B, C, h, w]``, from
``forward_intermediates``: the output of a block for the isotropic skeleton, of a stage for
the hierarchical one), the map is

    ERF[u, v] = mean_b  sum_c | d (sum_k F[b, k, h//2, w//2]) / d x[b, c, u, v] |

the gradient of the centre position's output (summed over its channels) with respect to
the input pixels, its magnitude summed over the input channels and averaged over the
images. The numbers a map is summarised by (:func:`erf_stats`):

- ``area50`` / ``area90``: RepLKNet's *high-contribution area ratio* (Ding et al., CVPR
  2022, Sec. 5): the area of the smallest rectangle centred on the centre output's own
  pixels that holds 50% / 90% of the map's total, as a fraction of the image's area;
- ``radius``: the radius of gyration of the map about its centre of mass, in pixels
  (``sqrt(sum m·|p - p̄|² / sum m)``);
- ``reach``: how far the non-zero part of the map extends beyond the centre output's own
  pixels, in patches of the stem (up, down, left, right): exact facts for models whose
  receptive field is known in closed form (a shift reaches one patch per block, a 3x3 pool
  one patch per block in every direction, attention every patch in one block).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: A gradient at most this fraction of the map's largest counts as zero for ``reach`` (only
#: float rounding; the pixels a model cannot see get an exact zero).
SUPPORT_TOLERANCE = 1e-7
AREA_FRACTIONS = (0.5, 0.9)


@dataclass(frozen=True)
class ERF:
    """One model's effective receptive field and where it was measured."""

    map: torch.Tensor  # [H, W] float64, the mean |gradient| per pixel
    centre: tuple[int, int]  # the centre output position in the feature map
    reduction: int  # pixels per feature-map position (its stride)
    patch: int  # the stem's stride in pixels (the unit of ``reach``)
    index: int  # which block (isotropic) or stage (hierarchical) it was taken after

    @property
    def centre_box(self) -> tuple[int, int, int, int]:
        """The centre output's own pixels: ``(top, bottom, left, right)``, end exclusive."""
        (i, j), r = self.centre, self.reduction
        return i * r, (i + 1) * r, j * r, (j + 1) * r


def feature_units(model: nn.Module) -> int:
    """How many blocks (isotropic) or stages (hierarchical) ``forward_intermediates`` can
    stop after."""
    return len(model.feature_info)  # type: ignore[arg-type]


def erf_map(model: nn.Module, images: torch.Tensor, *, index: int = -1,
            batch_size: int = 16) -> ERF:
    """The effective receptive field of ``model``'s centre output after block/stage
    ``index`` (negative: from the end), averaged over ``images`` ``[N, C, H, W]``.

    The model runs in eval mode (dropout and drop path off) and is left as it was."""
    units = feature_units(model)
    index = index + units if index < 0 else index
    if not 0 <= index < units:
        raise ValueError(f"index {index} is out of range for a model with {units} feature "
                         f"units (blocks or stages); pass 0..{units - 1} or -1 for the last")
    was_training = model.training
    model.eval()
    total: torch.Tensor | None = None
    centre = (0, 0)
    reduction = 1
    try:
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].detach().clone().requires_grad_(True)
            (fmap,) = model.forward_intermediates(  # type: ignore[operator]
                x, indices=[index], stop_early=True, intermediates_only=True)
            h, w = fmap.shape[-2:]
            centre = (h // 2, w // 2)
            reduction = x.shape[-1] // w
            fmap[:, :, centre[0], centre[1]].sum().backward()
            assert x.grad is not None
            part = x.grad.detach().abs().sum(1).sum(0).double()
            total = part if total is None else total + part
    finally:
        model.train(was_training)
    assert total is not None
    patch = _stem_patch(model)
    return ERF(total / images.shape[0], centre, reduction, patch, index)


def _stem_patch(model: nn.Module) -> int:
    """The stem's stride in pixels (its patch size, unless patches overlap)."""
    stride = model.patch_embed.stride  # type: ignore[union-attr]
    return int(stride[0] if isinstance(stride, Sequence) else stride)


def area_ratio(erf: ERF, fraction: float) -> float:
    """RepLKNet's high-contribution area ratio: the smallest rectangle centred on the centre
    output's pixels (grown one pixel on every side at a time, clipped to the image) that
    holds ``fraction`` of the total, over the image's area."""
    m = erf.map
    total = float(m.sum())
    if total <= 0:
        return float("nan")
    top, bottom, left, right = erf.centre_box
    height, width = m.shape
    # The sum inside every centred rectangle from a 2-D cumulative sum.
    cum = torch.zeros(height + 1, width + 1, dtype=torch.float64)
    cum[1:, 1:] = m.cumsum(0).cumsum(1)
    for grow in range(max(height, width) + 1):
        t, b = max(top - grow, 0), min(bottom + grow, height)
        le, ri = max(left - grow, 0), min(right + grow, width)
        inside = float(cum[b, ri] - cum[t, ri] - cum[b, le] + cum[t, le])
        if inside >= fraction * total * (1 - 1e-12):
            return (b - t) * (ri - le) / (height * width)
    return 1.0


def radius_of_gyration(erf: ERF) -> float:
    """``sqrt(sum m·|p - p̄|² / sum m)`` in pixels, about the map's centre of mass."""
    m = erf.map
    total = float(m.sum())
    if total <= 0:
        return float("nan")
    rows = torch.arange(m.shape[0], dtype=torch.float64)[:, None]
    cols = torch.arange(m.shape[1], dtype=torch.float64)[None, :]
    cy, cx = float((m * rows).sum()) / total, float((m * cols).sum()) / total
    return math.sqrt(float((m * ((rows - cy) ** 2 + (cols - cx) ** 2)).sum()) / total)


def reach(erf: ERF) -> dict[str, float]:
    """How far the non-zero gradient extends beyond the centre output's own pixels, in stem
    patches: ``{"up", "down", "left", "right"}`` (0 when it stays inside them)."""
    m = erf.map
    support = m > SUPPORT_TOLERANCE * float(m.max())
    rows = torch.nonzero(support.any(1)).flatten()
    cols = torch.nonzero(support.any(0)).flatten()
    if rows.numel() == 0:
        return {"up": 0.0, "down": 0.0, "left": 0.0, "right": 0.0}
    top, bottom, left, right = erf.centre_box
    p = erf.patch
    return {
        "up": max(top - int(rows.min()), 0) / p,
        "down": max(int(rows.max()) + 1 - bottom, 0) / p,
        "left": max(left - int(cols.min()), 0) / p,
        "right": max(int(cols.max()) + 1 - right, 0) / p,
    }


@dataclass(frozen=True)
class ERFStats:
    area50: float
    area90: float
    radius: float  # pixels
    radius_fraction: float  # radius over the image's side (the mean of height and width)
    reach: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def erf_stats(erf: ERF) -> ERFStats:
    """The numbers :mod:`tokenmixers.erf` summarises a map by (see the module's docstring)."""
    radius = radius_of_gyration(erf)
    side = (erf.map.shape[0] + erf.map.shape[1]) / 2
    return ERFStats(area_ratio(erf, 0.5), area_ratio(erf, 0.9), radius, radius / side,
                    reach(erf))


def plot_erfs(erfs: Iterable[tuple[str, ERF]], path: str | Path, *, title: str = "") -> Path:
    """One heat map per model, side by side (log scale, each normalised to its maximum, as
    in the RepLKNet figures), with its 50%-area ratio in the panel's title; written to
    ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = list(erfs)
    cols = min(len(items), 4)
    rows = math.ceil(len(items) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, erf) in zip(axes.flat, items):
        m = erf.map / max(float(erf.map.max()), 1e-30)
        ax.imshow(torch.log10(m + 1e-4).numpy(), cmap="viridis", vmin=-4, vmax=0)
        stats = erf_stats(erf)
        ax.set_title(f"{name}\n50%: {stats.area50:.1%} of the area", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
