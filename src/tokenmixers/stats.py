"""Statistics for repeated runs: mean, standard deviation and a t-interval over seeds, a
paired bootstrap over test images and seeds for the difference between two models, Holm's
correction for many pairs, and the "still improving" test of a validation curve.

The paired test. Two models evaluated on the same N test images give, per seed, a 0/1 hit
per image: arrays ``a`` ``[S_a, N]`` and ``b`` ``[S_b, N]``. One bootstrap draw resamples
the *images* (with replacement, the same images for both models: that is the pairing) and,
independently per model, the *seeds* (with replacement); the statistic is the difference of
the two mean accuracies. So the interval holds both sources of noise a reader cares about:
which test images happened to be drawn, and which seeds. The two-sided p-value is twice the
smaller share of draws on either side of zero (with the usual +1 correction, so it is never
0). Seeds are not paired across models: seed 0 of one model shares nothing with seed 0 of
another beyond the data order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PairedTest", "Summary", "holm", "paired_bootstrap", "still_improving",
           "summarize"]

#: Bootstrap draws of :func:`paired_bootstrap` (p-values resolve down to about 1e-4).
DRAWS = 10_000


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof 1) and the 95% t-interval of the mean; with one
    value, ``std`` and the interval are ``None`` (one seed says nothing about the spread)."""

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """:class:`Summary` of ``values`` (one per seed); the interval is Student's t with
    n - 1 degrees of freedom, ``mean ± t * std / sqrt(n)``."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("summarize needs at least one value")
    mean = float(x.mean())
    if x.size < 2:
        return Summary(1, mean, None, None, None)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1)) * std / math.sqrt(x.size)
    return Summary(int(x.size), mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class PairedTest:
    """Accuracy of A minus accuracy of B (percentage points), its 95% bootstrap interval and
    the two-sided p-value."""

    diff: float
    low: float
    high: float
    p: float
    draws: int


def paired_bootstrap(a: np.ndarray | Sequence[Sequence[int]],
                     b: np.ndarray | Sequence[Sequence[int]], *, draws: int = DRAWS,
                     seed: int = 0) -> PairedTest:
    """Paired bootstrap over test images and seeds (see the module's docstring). ``a`` and
    ``b``: per-seed 0/1 hits ``[seeds, images]`` on the same images in the same order."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float32))
    b = np.atleast_2d(np.asarray(b, dtype=np.float32))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a paired test needs the same test images for both models; got "
                         f"{a.shape[1]} and {b.shape[1]} images")
    n = a.shape[1]
    if n == 0:
        raise ValueError("a paired test needs at least one test image")
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)
    diffs = []
    for start in range(0, draws, chunk):
        k = min(chunk, draws - start)
        abar = a[rng.integers(0, a.shape[0], (k, a.shape[0]))].mean(axis=1)  # [k, N]
        bbar = b[rng.integers(0, b.shape[0], (k, b.shape[0]))].mean(axis=1)
        images = rng.integers(0, n, (k, n))
        diffs.append(np.take_along_axis(abar - bbar, images, axis=1).mean(axis=1))
    d = 100.0 * np.concatenate(diffs)
    tail = min(int((d <= 0).sum()), int((d >= 0).sum()))
    p = min(1.0, 2.0 * (tail + 1) / (draws + 1))
    low, high = np.percentile(d, [2.5, 97.5])
    return PairedTest(float(100.0 * (a.mean() - b.mean())), float(low), float(high), p, draws)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of p-values for testing many pairs at once: compare the
    adjusted values with 0.05 to keep the chance of any false "significant" at 5%."""
    p = np.asarray(pvalues, dtype=float)
    m = p.size
    order = np.argsort(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


#: :func:`still_improving`'s rule: the least-squares slope of the validation top-1 over the
#: last WINDOW epochs, in percentage points per epoch, at or above THRESHOLD.
WINDOW = 3
THRESHOLD = 0.5


def still_improving(curve: Sequence[float], *, window: int = WINDOW,
                    threshold: float = THRESHOLD) -> tuple[bool, float | None]:
    """``(flag, slope)``: was the validation accuracy (%, one value per epoch) still rising
    when training stopped? ``slope`` is ``None`` with fewer than 2 epochs (then the flag is
    True: one epoch says nothing about convergence)."""
    y = np.asarray(curve, dtype=float)[-window:]
    if y.size < 2:
        return True, None
    slope = float(np.polyfit(np.arange(y.size), y, 1)[0])
    return slope >= threshold, slope
