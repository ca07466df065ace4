"""Fixed-seed stratified train/validation splits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def stratified_split(
    labels: Sequence[int] | np.ndarray, val: float | int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)`` with every class split in the same proportion.

    ``val`` is a fraction (a float, ``0 < val < 1``) or a number of validation samples (an
    int). Each class
    gives ``round(share * class size)`` samples to validation (the last class absorbs the
    rounding so the total is exact for a count); the order inside each part is ascending.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if n == 0:
        raise ValueError("cannot split an empty dataset")
    share = val / n if isinstance(val, (int, np.integer)) else float(val)
    if not 0.0 < share < 1.0:
        raise ValueError(f"validation share must lie between 0 and 1 (exclusive), got {val}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    target = round(share * n)
    val_idx: list[np.ndarray] = []
    taken = 0
    for i, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = target - taken if i == len(classes) - 1 else round(share * len(idx))
        k = max(0, min(k, len(idx)))
        val_idx.append(idx[:k])
        taken += k
    val_sorted = np.sort(np.concatenate(val_idx))
    train = np.setdiff1d(np.arange(n), val_sorted, assume_unique=True)
    return train, val_sorted


def nested_stratified_subset(
    labels: Sequence[int] | np.ndarray, fraction: float, seed: int = 0
) -> np.ndarray:
    """Indices of a stratified ``fraction`` of ``labels``, ascending, *nested*: for one
    ``seed``, the subset of a smaller fraction is contained in that of every larger one.

    Each class is shuffled once by ``seed`` (the same shuffle whatever the fraction) and gives
    its first ``max(1, round(fraction * class size))`` images, so every class keeps its
    share and a data-size sweep adds images without swapping any. The subset depends on the
    labels, the fraction and ``seed`` only: the same for every model and training seed.
    """
    labels = np.asarray(labels)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the fraction must lie in (0, 1], got {fraction}")
    if fraction == 1.0:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    parts = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        parts.append(idx[:max(1, round(fraction * len(idx)))])
    return np.sort(np.concatenate(parts))
