"""Pathfinder images (Linsley et al. 2018; the Long Range Arena's "Pathfinder" and "Path-X"):
two marked dots, joined or not by one dashed contour among distractor contours; the label
says whether they are joined. A clean-room generator written from the algorithm description
in ``shared/research/pathfinder.md`` (section numbers below refer to it), vectorised over
images with numpy, deterministic under a seed, and cached to disk.

What it keeps from the LRA generator (§3-§10): the per-size parameter table (§10.2), the
three difficulty levels and their contour lengths (§10.1), snakes of dashes of length ``L``
and thickness ``t`` with a gap of ``2m`` bent at each pivot (§5.2), turns weighted by
``cos²(min(cΔ, π/2))`` (at most 90°/c per step), clearance ``2m`` between contours, the first
target snake seeded in the central box ``[2s, W-2s-1]`` and the second ``s`` away from it
(§6.2), a fair-coin label and markers on the tips (§7), distractor snakes of ``⌊N/3⌋``
dashes, each tried 5 times and silently dropped if it does not fit (§8), background 0 and
per-image max normalisation to 255 (§9).

What it fixes, on purpose, because the document marks them as artefacts of the original
code rather than the task (§11, §13 "a clean-room team has to decide"):

- seed orientations are uniform (no "quadrant quirk", §4, §11.2);
- no one-paddle lag between snakes (§6.4, §11.4): every contour, the gaps between its
  dashes included, keeps at least ``2m - 0.36`` px from every other contour (and from its
  own non-adjacent links), so a negative image's markers are never joined by touching
  targets (the original lets 28% of 32-px hard pairs share pixels);
- targets and distractors have the same contrast (no 32-px intensity inversion, §11.6);
- coordinates are continuous (no per-step ceiling jitter, §1) and the anti-aliasing is an
  exact box filter (pixel-square coverage of the stroke) instead of a Lanczos resize, so
  there are no ringing halos (§3);
- growth is a search, not blind rejection, so that 32-px hard takes milliseconds per image
  instead of the original's ~300 discarded pairs (§11.1, §12): each step draws 16 candidate
  turns (12 from the cos² law, 4 uniform over the allowed turns, a way out when only a sharp
  turn fits), drops those that leave the frame or lead into a wall the snake cannot turn
  away from (a precomputed viability table), and tests the first 8 of the rest for
  clearance (the original: up to 3 draws from a free-space-weighted ring, §5.2); a target
  pair that meets a dead end takes back its newest links (depth-first) rather than being
  thrown away whole (§6.3), and a chunk grows 10% spare pairs and keeps the first that
  finish. Conditioned on success the shapes follow nearly the same law; the search favours
  pairs that are quick to grow slightly (e.g. fewer tight spirals).

The number of distractors uses the LRA docstrings' formula literally, ``n_d = K // N_d`` per
level (§10.2 reading (b)); the document cannot decide between (a) and (b) (§13), and (b) is
the documented one. Single-paddle distractors are off, as in LRA (§8, inferred there).
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from tokenmixers._files import atomic_path

#: Bump when the images a seed gives change: cached files carry it in their names.
GENERATOR_VERSION = 2  # 2: chunks of 2^20 pixels (1: 2^24), generated in parallel

#: Difficulty -> contour length N (dashes per target snake), §10.1. ``inter`` is LRA's task
#: name for the intermediate level.
LEVELS = {"easy": 6, "intermediate": 9, "hard": 14}
ALIASES = {"inter": "intermediate", "baseline": "easy"}
#: LRA's "Pathfinder" is pathfinder32 hard and "Path-X" pathfinder128 hard (§10.1).
DEFAULT_LEVEL = "hard"
CLASSES = ["disconnected", "connected"]
#: Default (train, test) sizes per image size; ``n=`` and ``test=`` override them.
DEFAULT_COUNTS = {32: (10_000, 2_000), 64: (5_000, 1_000), 128: (2_000, 500), 256: (1_000, 250)}
#: The fixed seeds of the two splits (different, so the test images are new draws).
TRAIN_SEED, TEST_SEED = 0, 1
#: Distractor snakes: attempts per snake (1 + max_distractor_contour_retrial = 5, §8).
DISTRACTOR_ATTEMPTS = 5
#: Candidate directions (and seed positions) drawn per step; the first that fits is taken.
CANDIDATES = 16
#: Of those, drawn uniformly over the allowed turns rather than from the cos² law.
FALLBACKS = 4
#: Candidates that pass the cheap tests (frame, viability) and get the clearance test.
TRIES = 8
#: Target pairs: after a failure, take back 1 + (failures since the last new best) //
#: POP_EVERY links.
POP_EVERY = 3
#: Spare target pairs grown per chunk, as a fraction of its images (see ``_Chunk.targets``).
SPARE = 0.1
#: Target pairs: links taken back (depth-first) before the pair is thrown away and regrown.
BACKTRACKS = 200
#: Pixels per chunk of images generated together (bounds memory; fixes the RNG streams).
CHUNK_PIXELS = 1 << 20
#: The supersampling of the optional path masks (see :func:`generate`).
MASK_SCALE = 4


@dataclass(frozen=True)
class SizeParams:
    """The LRA generator's effective parameters for one image size (§10.2)."""

    size: int  # window H = W
    padding: int  # P: a frame no stroke may come within m of
    seed_distance: float  # s
    paddle_length: float  # L
    paddle_thickness: float  # t
    margins: tuple[int, ...]  # m, drawn per image
    marker_radius: float  # r_m
    continuity: float  # c: the largest turn per step is 90°/c
    contrast: float  # dash intensity factor k (the target paddles' factor, §10.2)
    distractor_constant: int  # K in n_d = K // N_d

    def distractor_length(self, contour_length: int) -> int:
        return contour_length // 3

    def num_distractors(self, contour_length: int) -> int:
        # §10.2 reading (b): from each level's own N_d (the docstrings' formula read literally).
        return self.distractor_constant // self.distractor_length(contour_length)


#: §10.2, "LRA parameter table (effective values)".
PARAMS = {
    32: SizeParams(32, 1, 7, 2, 0.5, (1,), 1.5, 1.0, 1.5, 20),
    64: SizeParams(64, 1, 12, 5, 1.0, (1,), 2.5, 1.8, 0.8, 22),
    128: SizeParams(128, 1, 20, 5, 1.5, (2, 3), 3.0, 1.8, 0.9, 35),
    256: SizeParams(256, 22, 27, 5, 2.0, (3,), 5.0, 1.8, 1.0, 30),
}
SIZES = tuple(PARAMS)


def level_of(difficulty: str) -> str:
    """The canonical level name of ``difficulty`` (``inter`` -> ``intermediate``); a
    :class:`ValueError` naming the choices for anything else."""
    name = ALIASES.get(difficulty.strip().lower(), difficulty.strip().lower())
    if name not in LEVELS:
        raise ValueError(
            f"unknown Pathfinder difficulty {difficulty!r}: choose from "
            f"{', '.join(LEVELS)} (contour lengths {', '.join(map(str, LEVELS.values()))} "
            f"dashes; 'inter' also names intermediate), e.g. pathfinder32:{DEFAULT_LEVEL}")
    return name


@dataclass
class PathfinderImages:
    """Generated images and their labels; with ``details``, also the geometry.

    ``images``: uint8 ``[n, H, W]``; ``labels``: int64 ``[n]`` (1 = connected).
    ``markers``: float ``[n, 2, 2]``, the two marker centres as (row, col) in pixels (pixel
    centres are at integers). ``path_mask``: bool ``[n, H*s, W*s]`` with ``s`` =
    ``mask_scale``: the centre lines of the two target contours from tip to tip, gaps
    included, drawn ``s`` times finer than the image (contours keep ``2m`` pixels apart,
    which an image-resolution mask cannot separate under 8-connectivity).
    ``origins``/``terminals``: ``[n, 2, 2]``, the first and last tips of target snakes 1 and 2.
    ``distractors``: ``[n]``, distractor snakes placed. ``margins``: ``[n]``, m per image.
    ``paths``: ``[n, 2, N + 1, 2]``, each target contour's centre line as a polyline: its
    origin tip, the pivots between its dashes, its terminal tip.
    """

    images: np.ndarray
    labels: np.ndarray
    markers: np.ndarray | None = None
    path_mask: np.ndarray | None = None
    mask_scale: int = MASK_SCALE
    origins: np.ndarray | None = None
    terminals: np.ndarray | None = None
    distractors: np.ndarray | None = None
    margins: np.ndarray | None = None
    paths: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)


# ---- geometry helpers ---------------------------------------------------------------------
def _unit(theta: np.ndarray) -> np.ndarray:
    """(dy, dx) of orientation ``theta``: 0 points right, +90° down (§1)."""
    return np.stack([np.sin(theta), np.cos(theta)], axis=-1)


def _point_segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from points ``p`` to segments ``a-b`` (broadcast over leading axes; the last
    axis is (y, x))."""
    return np.sqrt(_point_segment_sq(p, a, b))


def _point_segment_sq(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared :func:`_point_segment_distance`."""
    aby, abx = b[..., 0] - a[..., 0], b[..., 1] - a[..., 1]
    apy, apx = p[..., 0] - a[..., 0], p[..., 1] - a[..., 1]
    h = (apy * aby + apx * abx) / np.maximum(aby * aby + abx * abx, 1e-12)
    np.clip(h, 0.0, 1.0, out=h)
    dy, dx = apy - h * aby, apx - h * abx
    return dy * dy + dx * dx


def _angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The orientation of ``a -> b`` (inverse of :func:`_unit`)."""
    return np.arctan2(b[..., 0] - a[..., 0], b[..., 1] - a[..., 1])


def _turn_table(continuity: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-CDF table of the turn Δ with density ∝ cos²(cΔ) on |cΔ| < π/2 (§5.2 step 3)."""
    x = np.linspace(-math.pi / 2, math.pi / 2, 2049)
    cdf = (x + math.pi / 2 + np.sin(2 * x) / 2) / math.pi  # ∫cos² normalised to [0, 1]
    return cdf, x / continuity


def _window(a: np.ndarray, b: np.ndarray, pad: float, size: int) -> tuple[np.ndarray, ...]:
    """Pixel rows ``[n, size, 1]`` and columns ``[n, 1, size]`` of a square window holding
    the segment ``a-b`` grown by ``pad``."""
    lo = np.floor(np.minimum(a, b) - pad).astype(np.int64)
    off = np.arange(size)
    return lo[:, 0, None, None] + off[None, :, None], lo[:, 1, None, None] + off[None, None, :]


def _scatter(target: np.ndarray, idx: np.ndarray, ys: np.ndarray, xs: np.ndarray,
             values: np.ndarray, keep: np.ndarray) -> None:
    """``target[idx[i], ys, xs] = max(target, values)`` where ``keep`` (window pixels are
    distinct and each image appears once, so no write collides)."""
    h, w = target.shape[1:]
    ys_b, xs_b = np.broadcast_arrays(ys, xs)
    keep = keep & (ys_b >= 0) & (ys_b < h) & (xs_b >= 0) & (xs_b < w)
    i, r, c = np.nonzero(keep)
    if not len(i):
        return
    b, y, x = idx[i], ys_b[i, r, c], xs_b[i, r, c]
    if target.dtype == bool:
        target[b, y, x] = True
    else:
        target[b, y, x] = np.maximum(target[b, y, x], values[i, r, c])


@functools.lru_cache(maxsize=16)
def _viable_table(p: SizeParams, m: float) -> np.ndarray:
    """``[headings, H, W]`` bool: whether a snake whose newest pivot is at that pixel, heading
    that way, can keep growing forever inside the frame (ignoring other contours). Found by
    iterating "some allowed turn keeps the next dash inside and leads to a viable state" to a
    fixed point; the generator never draws a link into a non-viable state, so snakes are not
    led into walls they cannot turn away from (dead ends the original reaches and then
    discards together with the whole pair, §11.1)."""
    headings = 72 if p.size <= 64 else 36
    phi = np.arange(headings) * (2 * math.pi / headings)
    ys, xs = np.mgrid[0: p.size, 0: p.size].astype(np.float64)
    lo, hi = p.padding + m, p.size - 1 - p.padding - m
    step = max(1, round(headings * 0.95 / (4 * p.continuity) / 4))
    limit = int(headings * 0.95 / (4 * p.continuity))  # largest turn, in heading steps
    turns = np.arange(-limit, limit + 1, step)
    ell = p.paddle_length + 2 * m
    nxt, inside = [], []
    for t in turns:
        h2 = (np.arange(headings) + t) % headings
        u = np.stack([np.sin(phi[h2]), np.cos(phi[h2])], -1)[:, None, None]
        pivot = np.stack([ys, xs], -1)[None]
        ok = np.ones((headings, p.size, p.size), dtype=bool)
        for d in (m, p.paddle_length + m):
            e = pivot + d * u
            ok &= np.all((e >= lo) & (e <= hi), -1)
        far = np.rint(pivot + ell * u).astype(np.int64)
        inside.append(ok & np.all((far >= 0) & (far < p.size), -1))
        far = np.clip(far, 0, p.size - 1)
        nxt.append((np.broadcast_to(h2[:, None, None], ok.shape), far[..., 0], far[..., 1]))
    viable = np.ones((headings, p.size, p.size), dtype=bool)
    for _ in range(4 * p.size):
        new = np.zeros_like(viable)
        for ok, (h2, fy, fx) in zip(inside, nxt):
            new |= ok & viable[h2, fy, fx]
        if (new == viable).all():
            break
        viable = new
    return viable


#: The grid marks pixels within 2m + CLEARANCE of a committed link (see ``_Chunk``).
CLEARANCE = 0.6
class _Chunk:
    """The state of one chunk of images while their snakes grow."""

    def __init__(self, p: SizeParams, contour_length: int, n: int,
                 rng: np.random.Generator) -> None:
        self.p, self.n, self.rng = p, n, rng
        self.N = contour_length
        self.Nd = p.distractor_length(contour_length)
        self.nd = p.num_distractors(contour_length)
        self.m = rng.choice(np.asarray(p.margins, dtype=np.float64), size=n)
        self.ell = p.paddle_length + 2 * self.m  # pivot-to-pivot spacing
        #: the grid counts the committed links within 2m + 0.5 of each pixel centre; a link
        #: is tested at points 0.5 apart, each rounded to a pixel, so one that passes keeps
        #: at least 2m + 0.6 - √2/2 - 0.25 = 2m - 0.36 from every committed link (the
        #: document: strokes keep "about 2m" apart, §4)
        self.radius = 2 * self.m + CLEARANCE
        self.grid = np.zeros((n, p.size, p.size), dtype=np.int16)  # links per pixel
        slots = 2 * self.N + self.nd * self.Nd
        self.a = np.zeros((n, slots, 2))
        self.b = np.zeros((n, slots, 2))
        self.used = np.zeros((n, slots), dtype=bool)
        self.lo = p.padding + self.m  # dash ends stay within [lo, hi] (the frame, §4)
        self.hi = p.size - 1 - p.padding - self.m
        max_ell = p.paddle_length + 2 * max(p.margins)
        self.samples = np.linspace(0.0, 1.0, math.ceil(max_ell / 0.5) + 1)
        cdf, x = _turn_table(p.continuity)
        self.turn_limit = x[-1]  # 90°/c
        self.turn_inverse = np.interp(np.linspace(0, 1, 8193), cdf, x)  # quantile table
        self.viable = {float(mm): _viable_table(p, float(mm)) for mm in p.margins}
        self.stamp_size = math.ceil(max_ell + 2 * (2 * max(p.margins) + CLEARANCE) + 1) + 2

    # -- tests -----------------------------------------------------------------------------
    def _dash_inside(self, idx: np.ndarray, pivot: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Whether the dash of a link from ``pivot`` along ``u`` ([n, K, 2]) stays inside."""
        m = self.m[idx][:, None, None]
        lo, hi = self.lo[idx][:, None, None], self.hi[idx][:, None, None]
        ends = (pivot + m * u, pivot + (self.p.paddle_length + m) * u)
        return np.all([(e >= lo) & (e <= hi) for e in ends], axis=(0, -1))

    def _blocked(self, idx: np.ndarray, start: np.ndarray, end: np.ndarray,
                 grids: tuple[np.ndarray, ...], pending: tuple[np.ndarray, ...] = ()
                 ) -> np.ndarray:
        """Whether links ``start-end`` ([n, K, 2]) come near a committed link (``grids``) or
        within 2m of a pending one (``pending``: pairs of [n, 2] ends)."""
        pts = start[:, :, None] + self.samples[None, None, :, None] * (end - start)[:, :, None]
        cell = np.clip(np.rint(pts).astype(np.int64), 0, self.p.size - 1)
        rows = idx[:, None, None]
        hit = np.zeros(pts.shape[:2], dtype=bool)
        for g in grids:
            hit |= (g[rows, cell[..., 0], cell[..., 1]] > 0).any(-1)
        for a, b in pending:
            d2 = _point_segment_sq(pts, a[:, None, None], b[:, None, None])
            hit |= (d2 <= (2 * self.m[idx][:, None, None]) ** 2).any(-1)
        return hit

    def stamp(self, grid: np.ndarray, idx: np.ndarray, a: np.ndarray, b: np.ndarray,
              sign: int = 1) -> None:
        """Count (``sign`` 1) or uncount (-1) links ``a-b`` ([n, 2]) of images ``idx`` on the
        pixels within ``radius`` of them."""
        if not len(idx):
            return
        size, radius, window = self.p.size, self.radius[idx], self.stamp_size
        lo = np.floor(np.minimum(a, b) - radius[:, None] - 0.5).astype(np.int64)
        off = np.arange(window, dtype=np.float32)
        # pixel centres relative to a, in float32: [n, window, 1] and [n, 1, window]
        apy = (lo[:, 0] - a[:, 0]).astype(np.float32)[:, None, None] + off[None, :, None]
        apx = (lo[:, 1] - a[:, 1]).astype(np.float32)[:, None, None] + off[None, None, :]
        ab = (b - a).astype(np.float32)
        aby, abx = ab[:, 0, None, None], ab[:, 1, None, None]
        h = (apy * aby + apx * abx) * (1 / np.maximum(aby * aby + abx * abx, 1e-12))
        np.clip(h, 0, 1, out=h)
        dy, dx = apy - h * aby, apx - h * abx
        near = dy * dy + dx * dx <= (radius**2).astype(np.float32)[:, None, None]
        ys = lo[:, 0, None, None] + np.arange(window)[None, :, None]
        xs = lo[:, 1, None, None] + np.arange(window)[None, None, :]
        near &= (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
        flat = ((idx[:, None, None] * size + ys) * size + xs)[near]
        if len(np.unique(idx)) == len(idx):
            grid.reshape(-1)[flat] += sign  # one link per image: no index repeats
        else:  # several links of one image may cover a pixel: count them all
            cells, counts = np.unique(flat, return_counts=True)
            grid.reshape(-1)[cells] += (sign * counts).astype(grid.dtype)

    # -- growth ----------------------------------------------------------------------------
    def _choose(self, valid: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        k = valid.argmax(axis=1)
        rows = np.arange(len(k))
        return (valid[rows, k], *(x[rows, k] for x in arrays))

    def _can_continue(self, idx: np.ndarray, pivot: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """Whether a snake at ``pivot`` ([n, K, 2]) heading ``phi`` ([n, K]) can keep growing
        inside the frame (:func:`_viable_table`)."""
        cell = np.clip(np.rint(pivot).astype(np.int64), 0, self.p.size - 1)
        ok = np.zeros(phi.shape, dtype=bool)
        for mm, table in self.viable.items():
            h = np.rint(phi * (len(table) / (2 * math.pi))).astype(np.int64) % len(table)
            ok |= table[h, cell[..., 0], cell[..., 1]] & (self.m[idx] == mm)[:, None]
        return ok

    def extend(self, idx: np.ndarray, pivot: np.ndarray, theta: np.ndarray,
               grids: tuple[np.ndarray, ...], pending: tuple[np.ndarray, ...] = (),
               last: bool | np.ndarray = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One more link from ``pivot`` (§5.2): (fits [n], new far pivot, new direction).
        ``last``: it is the snake's last link (no look-ahead)."""
        u = self.rng.random((len(idx), CANDIDATES))
        turn = self.turn_inverse[(u * (len(self.turn_inverse) - 1)).astype(np.int64)]
        # the last few candidates are uniform over the allowed turns: a way out when only a
        # sharp turn fits, which the cos² weights (near 0 at 90°/c) would rarely offer
        turn[:, -FALLBACKS:] = self.rng.uniform(-1, 1, (len(idx), FALLBACKS)) * self.turn_limit
        phi = theta[:, None] + turn
        u = _unit(phi)
        start = np.broadcast_to(pivot[:, None], u.shape)
        end = start + self.ell[idx][:, None, None] * u
        valid = self._dash_inside(idx, start, u)
        valid &= self._can_continue(idx, end, phi) | np.asarray(last)[..., None]
        # the full clearance test on the first TRIES candidates that pass the cheap tests
        # (the original: up to 3 draws from the free-space-weighted ring, §5.2 step 5)
        order = np.argsort(~valid, axis=1, kind="stable")[:, :TRIES]
        rows = np.arange(len(idx))[:, None]
        valid, start, end, phi = valid[rows, order], start[rows, order], end[rows, order], \
            phi[rows, order]
        valid &= ~self._blocked(idx, start, end, grids, pending)
        ok, end1, phi1 = self._choose(valid, end, phi)
        return ok, end1, phi1

    def seed_link(self, idx: np.ndarray, tip: np.ndarray, theta: np.ndarray,
                  grids: tuple[np.ndarray, ...] = (), pending: tuple[np.ndarray, ...] = ()
                  ) -> tuple[np.ndarray, ...]:
        """A first link whose dash starts at ``tip`` ([n, K, 2]) along ``theta`` ([n, K]):
        (fits, tip, first pivot, far pivot, theta), each for the first candidate that fits."""
        u = _unit(theta)
        m = self.m[idx][:, None, None]
        start = tip - m * u
        end = start + self.ell[idx][:, None, None] * u
        valid = self._dash_inside(idx, start, u)
        if grids or pending:
            valid &= ~self._blocked(idx, start, end, grids, pending)
        return self._choose(valid, tip, start, end, theta)

    def record(self, idx: np.ndarray, slot: int | np.ndarray, a: np.ndarray,
               b: np.ndarray) -> None:
        self.a[idx, slot] = a
        self.b[idx, slot] = b
        self.used[idx, slot] = True

    def _angles(self, n: int) -> np.ndarray:
        return self.rng.uniform(-math.pi, math.pi, (n, CANDIDATES))

    # -- the two target snakes (§6) ---------------------------------------------------------
    def targets(self, needed: int) -> tuple[np.ndarray, np.ndarray]:
        """Grow the target pair of every image (§6): snake 1 seeded in the central box, snake
        2 ``s`` away, then one link each in turn. Images proceed independently: a link that
        does not fit removes the newest link(s) (of either snake), which are drawn again (a
        randomised depth-first search); after ``BACKTRACKS`` such steps the pair is thrown away and
        regrown, which is all the original does (§6.3; backtracking is ours, for speed).
        The chunk holds spare rows: once ``needed`` pairs are complete, the rest are
        abandoned and the chunk keeps the first ``needed`` complete rows (so a few slow pairs
        do not hold up all the others; it slightly favours pairs that are quick to grow).
        Returns the origin and terminal tips, ``[needed, 2, 2]`` (snake, (y, x))."""
        p, n, N = self.p, self.n, self.N
        pos = np.zeros(n, dtype=np.int64)  # links placed, in the order s1, s2, s1, s2, ...
        backtracks = np.zeros(n, dtype=np.int64)
        best = np.zeros(n, dtype=np.int64)  # the most links this pair has had
        stuck = np.zeros(n, dtype=np.int64)  # failures since it last beat that
        active = np.arange(n)
        iterations = restarts = 0
        while self.n - len(active) < needed:
            iterations += 1
            if iterations > 200_000:
                raise RuntimeError("Pathfinder: target contours keep failing to fit")
            P = pos[active]
            fit = np.zeros(len(active), dtype=bool)
            g = np.flatnonzero(P == 0)  # snake 1's seed, in the central box [2s, W-1-2s]
            if len(g):
                idx = active[g]
                box = (2 * p.seed_distance, p.size - 1 - 2 * p.seed_distance)
                tip = self.rng.uniform(*box, (len(idx), CANDIDATES, 2))
                fit[g], _, a, b, _ = self.seed_link(idx, tip, self._angles(len(idx)))
                self.a[idx, 0], self.b[idx, 0] = a, b
            g = np.flatnonzero(P == 1)  # snake 2's seed: s from snake 1's, clear of it
            if len(g):
                idx = active[g]
                a1, b1 = self.a[idx, 0], self.b[idx, 0]
                tip1 = a1 + self.m[idx][:, None] * _unit(_angle(a1, b1))
                tip = tip1[:, None] + p.seed_distance * _unit(self._angles(len(idx)))
                fit[g], _, a, b, _ = self.seed_link(idx, tip, self._angles(len(idx)),
                                                    pending=((a1, b1),))
                self.a[idx, N], self.b[idx, N] = a, b
            g = np.flatnonzero(P >= 2)  # one more link of snake P % 2
            if len(g):
                idx, Pg = active[g], P[g]
                snake, link = Pg % 2, Pg // 2
                own = snake * N + link - 1  # its newest link (pending: not in the grid)
                other = np.where(snake == 0, N + Pg // 2 - 1, (Pg + 1) // 2 - 1)
                a, b = self.a[idx, own], self.b[idx, own]
                pend = (self.a[idx, other], self.b[idx, other])
                ok, nb, _ = self.extend(idx, b, _angle(a, b), (self.grid,), (pend,),
                                        last=link == N - 1)
                fit[g] = ok
                self.stamp(self.grid, idx[ok], a[ok], b[ok])
                self.a[idx[ok], own[ok] + 1], self.b[idx[ok], own[ok] + 1] = b[ok], nb[ok]
            pos[active[fit]] += 1
            gain = active[fit][pos[active[fit]] > best[active[fit]]]
            best[gain], stuck[gain] = pos[gain], 0
            # a link that did not fit: take back the newest links (their predecessors,
            # stamped when they were drawn, are pending again), more of them the longer
            # this image has been stuck below its best
            bad = active[~fit]
            stuck[bad] += 1
            backtracks[bad] += 1
            depth = np.minimum(pos[bad], 1 + stuck[bad] // POP_EVERY)
            rows, slots = [], []
            while len(bad):
                q = pos[bad] - 1
                snake, link = q % 2, q // 2
                back = link >= 1
                rows.append(bad[back])
                slots.append((snake * N + link - 1)[back])
                pos[bad] -= 1
                depth -= 1
                bad, depth = bad[depth > 0], depth[depth > 0]
            if rows:
                r, sl = np.concatenate(rows), np.concatenate(slots)
                self.stamp(self.grid, r, self.a[r, sl], self.b[r, sl], -1)
            over = active[backtracks[active] > BACKTRACKS]
            if len(over):  # start this pair afresh
                restarts += len(over)
                self.grid[over] = 0
                pos[over] = best[over] = stuck[over] = backtracks[over] = 0
            done = active[pos[active] == 2 * N]
            for s in range(2):
                last = (s + 1) * N - 1
                self.stamp(self.grid, done, self.a[done, last], self.b[done, last])
            active = active[pos[active] < 2 * N]
        self._keep(np.flatnonzero(pos == 2 * N)[:needed])
        n = self.n
        self.used[:, : 2 * N] = True
        self.stats = {"pair_iterations": iterations, "pair_restarts": restarts}
        origins = np.zeros((n, 2, 2))
        terminals = np.zeros((n, 2, 2))
        for s in range(2):
            a, b = self.a[:, s * N], self.b[:, s * N]
            origins[:, s] = a + self.m[:, None] * _unit(_angle(a, b))
            a, b = self.a[:, (s + 1) * N - 1], self.b[:, (s + 1) * N - 1]
            terminals[:, s] = b - self.m[:, None] * _unit(_angle(a, b))
        return origins, terminals

    def _keep(self, rows: np.ndarray) -> None:
        """Drop every row but ``rows`` (in that order)."""
        for name in ("m", "ell", "radius", "grid", "a", "b", "used", "lo", "hi"):
            setattr(self, name, getattr(self, name)[rows])
        self.n = len(rows)

    # -- distractors (§8) -----------------------------------------------------------------
    def distractors(self) -> np.ndarray:
        """Add up to ``n_d`` distractor snakes per image; returns how many each placed."""
        n, N, Nd = self.n, self.N, self.Nd
        placed = np.zeros(n, dtype=np.int64)
        own = np.zeros_like(self.grid)  # the growing snake's committed links
        for d in range(self.nd):
            slot0 = 2 * N + d * Nd
            todo = np.arange(n)
            for _ in range(DISTRACTOR_ATTEMPTS):
                if not len(todo):
                    break
                idx = todo
                own[idx] = 0
                self.used[idx, slot0: slot0 + Nd] = False
                k = len(idx)
                lo, hi = self.lo[idx][:, None, None], self.hi[idx][:, None, None]
                tip = lo + (hi - lo) * self.rng.random((k, CANDIDATES, 2))
                ok, _, a, b, th = self.seed_link(idx, tip, self._angles(k), (self.grid,))
                idx, a, b, th = idx[ok], a[ok], b[ok], th[ok]
                self.record(idx, slot0, a, b)
                for step in range(1, Nd):
                    fit, nb, nth = self.extend(idx, b, th, (self.grid, own), last=step == Nd - 1)
                    idx, a, b, th, nb, nth = idx[fit], a[fit], b[fit], th[fit], nb[fit], nth[fit]
                    self.stamp(own, idx, a, b)
                    a, b, th = b, nb, nth
                    self.record(idx, slot0 + step, a, b)
                self.grid[idx] += own[idx]
                self.stamp(self.grid, idx, a, b)
                placed[idx] += 1
                done = np.zeros(n, dtype=bool)
                done[idx] = True
                todo = todo[~done[todo]]
            self.used[todo, slot0: slot0 + Nd] = False  # all attempts failed: dropped (§8)
        return placed


# ---- rendering (§3, §7, §9) -----------------------------------------------------------------
def _strip_cdf(x: np.ndarray, outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """CDF of a unit pixel square's projection onto a line's normal: a trapezoid with
    half-widths ``outer`` (support) and ``inner`` (plateau), area 1."""
    h = 1.0 / (outer + inner)
    ramp = np.maximum(outer - inner, 1e-9)
    left = h * np.clip(x + outer, 0, ramp) ** 2 / (2 * ramp)
    mid = h * np.clip(x + inner, 0, 2 * inner)
    right = h * (ramp**2 - np.clip(outer - x, 0, ramp) ** 2) / (2 * ramp)
    return np.where(x <= -inner, left, h * ramp / 2 + mid + np.where(x >= inner, right, 0))


def _draw_dashes(image: np.ndarray, idx: np.ndarray, a: np.ndarray, b: np.ndarray,
                 thickness: float, contrast: float, length: float) -> None:
    """Max-composite anti-aliased dashes ``a-b`` (flat caps) into ``image[idx]``: the exact
    coverage of each pixel square by the infinite stroke, times a box filter along it."""
    size = math.ceil(length + thickness) + 4
    ys, xs = _window(a, b, thickness / 2 + 1, size)
    ab = b - a
    seg_len = np.maximum(np.sqrt((ab * ab).sum(-1)), 1e-9)
    u = ab / seg_len[:, None]
    dy = ys - a[:, 0, None, None]
    dx = xs - a[:, 1, None, None]
    along = dy * u[:, 0, None, None] + dx * u[:, 1, None, None]
    across = np.abs(dx * u[:, 0, None, None] - dy * u[:, 1, None, None])
    cy, cx = np.abs(u[:, 0]), np.abs(u[:, 1])
    outer = ((cy + cx) / 2)[:, None, None]
    inner = (np.abs(cy - cx) / 2)[:, None, None]
    half = thickness / 2
    cover = _strip_cdf(across + half, outer, inner) - _strip_cdf(across - half, outer, inner)
    cover *= np.clip(np.minimum(along + 0.5, seg_len[:, None, None])
                     - np.maximum(along - 0.5, 0.0), 0.0, 1.0)
    _scatter(image, idx, ys, xs, (contrast * cover).astype(image.dtype), cover > 0)


def _draw_disks(image: np.ndarray, centres: np.ndarray, radius: float) -> None:
    """Max-composite anti-aliased disks (coverage ``clip(r + 0.5 - distance, 0, 1)``, peak 1)
    centred at ``centres`` ([n, 2]) into ``image`` ([n, H, W])."""
    size = 2 * math.ceil(radius) + 4
    ys, xs = _window(centres, centres, radius + 1.5, size)
    d = np.sqrt((ys - centres[:, 0, None, None]) ** 2 + (xs - centres[:, 1, None, None]) ** 2)
    cover = np.clip(radius + 0.5 - d, 0.0, 1.0)
    _scatter(image, np.arange(len(centres)), ys, xs, cover.astype(image.dtype), cover > 0)


def _draw_paths(mask: np.ndarray, pts: np.ndarray, scale: int) -> None:
    """Mark, in ``mask`` ([n, H*scale, W*scale]), the fine pixels within 0.75 fine pixel of
    the polylines ``pts`` ([n, k, 2], image coordinates): 4-connected along each line."""
    n = len(pts)
    fine = (pts + 0.5) * scale - 0.5  # fine-pixel coordinates (centres at integers)
    seg = fine[:, 1:] - fine[:, :-1]
    size = math.ceil(np.sqrt((seg * seg).sum(-1)).max()) + 5
    for j in range(pts.shape[1] - 1):
        a, b = fine[:, j], fine[:, j + 1]
        ys, xs = _window(a, b, 2, size)
        grid = np.stack(np.broadcast_arrays(ys, xs), axis=-1).astype(np.float64)
        d = _point_segment_distance(grid, a[:, None, None], b[:, None, None])
        _scatter(mask, np.arange(n), ys, xs, d, d <= 0.75)


def _generate_chunk(p: SizeParams, contour_length: int, n: int, rng: np.random.Generator,
                    details: bool) -> PathfinderImages:
    labels = (rng.random(n) < 0.5).astype(np.int64)  # a fair coin, drawn first (§7)
    chunk = _Chunk(p, contour_length, n + math.ceil(SPARE * n), rng)
    origins, terminals = chunk.targets(n)
    placed = chunk.distractors()
    # markers (§7): one on an origin tip of snake o, the other on the terminal tip of the
    # same snake (connected) or of the other one (disconnected)
    o = rng.integers(0, 2, n)
    rows = np.arange(n)
    other = np.where(labels == 1, o, 1 - o)
    markers = np.stack([origins[rows, o], terminals[rows, other]], axis=1)

    image = np.zeros((n, p.size, p.size), dtype=np.float32)
    m = chunk.m
    for slot in range(chunk.used.shape[1]):
        idx = np.flatnonzero(chunk.used[:, slot])
        if not len(idx):
            continue
        a, b = chunk.a[idx, slot], chunk.b[idx, slot]
        u = (b - a) / chunk.ell[idx][:, None]
        mm = m[idx][:, None]
        _draw_dashes(image, idx, a + mm * u, b - mm * u, p.paddle_thickness, p.contrast,
                     p.paddle_length)
    _draw_disks(image, markers[:, 0], p.marker_radius)
    _draw_disks(image, markers[:, 1], p.marker_radius)
    # per-image max normalisation to 0..255, as the original's save did (§9.3)
    peak = image.reshape(n, -1).max(axis=1)[:, None, None]
    images = np.floor(255.0 * image / np.maximum(peak, 1e-6) + 0.5).astype(np.uint8)
    out = PathfinderImages(images, labels)
    if details:
        N = contour_length
        out.markers, out.origins, out.terminals = markers, origins, terminals
        out.distractors, out.margins = placed, m.copy()
        mask = np.zeros((n, p.size * MASK_SCALE, p.size * MASK_SCALE), dtype=bool)
        paths = []
        for s in range(2):
            links_a = chunk.a[:, s * N: (s + 1) * N]
            pts = np.concatenate([origins[:, s, None], links_a[:, 1:], terminals[:, s, None]],
                                 axis=1)
            _draw_paths(mask, pts, MASK_SCALE)
            paths.append(pts)
        out.path_mask, out.paths = mask, np.stack(paths, axis=1)
        out.extra.update({k: np.asarray(v) for k, v in chunk.stats.items()})
    return out


def generate(size: int, difficulty: str = DEFAULT_LEVEL, count: int = 1000, seed: int = 0, *,
             details: bool = False, workers: int | None = None) -> PathfinderImages:
    """``count`` Pathfinder images of ``size`` px at ``difficulty`` (easy, intermediate,
    hard), a function of ``(size, difficulty, count, seed)`` alone (numpy ``Generator``s
    spawned from ``seed``, one per chunk of :data:`CHUNK_PIXELS` pixels). ``details`` adds
    the markers, target path masks and geometry (see :class:`PathfinderImages`). The chunks
    run in ``workers`` processes (default: one per CPU this process may use), which does not
    change the images."""
    if size not in PARAMS:
        raise ValueError(f"Pathfinder size {size}: choose from {', '.join(map(str, SIZES))}")
    if count < 1:
        raise ValueError(f"Pathfinder count {count}: expected a positive number of images")
    p = PARAMS[size]
    contour_length = LEVELS[level_of(difficulty)]
    per_chunk = max(16, CHUNK_PIXELS // (size * size))
    chunks = -(-count // per_chunk)
    seqs = np.random.SeedSequence([seed, size, contour_length]).spawn(chunks)
    jobs = [(p, contour_length, min(per_chunk, count - i * per_chunk), seq, details)
            for i, seq in enumerate(seqs)]
    workers = min(chunks, _cpus()) if workers is None else max(1, min(workers, chunks))
    if workers > 1 and not multiprocessing.current_process().daemon:
        # The chunks are independent (each its own spawned seed): the same images whatever
        # the number of workers. "spawn": safe beside torch's threads and in any caller.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            parts = list(pool.map(_chunk_job, jobs))
    else:
        parts = [_chunk_job(job) for job in jobs]
    return _concat(parts)


def _chunk_job(job: tuple) -> PathfinderImages:
    p, contour_length, n, seq, details = job
    return _generate_chunk(p, contour_length, n, np.random.default_rng(seq), details)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _concat(parts: list[PathfinderImages]) -> PathfinderImages:
    if len(parts) == 1:
        return parts[0]
    out = PathfinderImages(np.concatenate([x.images for x in parts]),
                           np.concatenate([x.labels for x in parts]))
    for name in ("markers", "path_mask", "origins", "terminals", "distractors", "margins",
                 "paths"):
        if getattr(parts[0], name) is not None:
            setattr(out, name, np.concatenate([getattr(x, name) for x in parts]))
    return out


# ---- the --data pathfinderSIZE[:LEVEL][:n=N][:test=N] datasets ------------------------------
@dataclass(frozen=True)
class PathfinderSpec:
    """A parsed ``--data pathfinder…`` value."""

    size: int
    level: str = DEFAULT_LEVEL
    train: int = 0
    test: int = 0

    @property
    def options(self) -> str:
        """The normalised text after ``pathfinderSIZE:`` (what :func:`parse_spec` reads)."""
        parts = [self.level]
        default_train, default_test = DEFAULT_COUNTS[self.size]
        if self.train != default_train:
            parts.append(f"n={self.train}")
        if self.test != default_test:
            parts.append(f"test={self.test}")
        return ":".join(parts)


USAGE = ("pathfinderSIZE[:LEVEL][:n=TRAIN][:test=TEST], e.g. pathfinder32, pathfinder32:hard, "
         "pathfinder64:easy:n=20000")


def parse_spec(name: str, options: str = "") -> PathfinderSpec:
    """``name`` (``pathfinder32``) and ``options`` (``hard:n=20000``) as a
    :class:`PathfinderSpec`; a :class:`ValueError` that names the choices otherwise."""
    digits = name[len("pathfinder"):]
    sizes = ", ".join(f"pathfinder{s}" for s in SIZES)
    if not digits.isdigit() or int(digits) not in PARAMS:
        raise ValueError(f"--data {name}: Pathfinder comes in sizes {sizes}; expected {USAGE}")
    size = int(digits)
    level = DEFAULT_LEVEL
    train, test = DEFAULT_COUNTS[size]
    for part in filter(None, options.split(":")):
        key, eq, value = part.partition("=")
        if not eq:
            try:
                level = level_of(part)
            except ValueError as err:
                raise ValueError(f"--data {name}:{options}: {err}") from None
            continue
        if key not in ("n", "test"):
            raise ValueError(f"--data {name}:{options}: unknown option {key!r}; the options "
                             f"are n=TRAIN and test=TEST (image counts); expected {USAGE}")
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"--data {name}:{options}: {key}={value} must be a positive "
                             f"whole number of images, e.g. {key}={DEFAULT_COUNTS[size][0]}")
        if key == "n":
            train = int(value)
        else:
            test = int(value)
    return PathfinderSpec(size, level, train, test)


#: How many splits this process has generated (not read from the cache); for tests.
generated_count = 0


def cache_path(data_dir: str | os.PathLike, size: int, level: str, count: int,
               seed: int) -> Path:
    """Where the images of one ``(size, level, count, seed)`` are cached."""
    name = f"pathfinder{size}_{level}_n{count}_seed{seed}_v{GENERATOR_VERSION}.npz"
    return Path(data_dir).expanduser() / "pathfinder" / name


def load_images(size: int, level: str, count: int, seed: int,
                data_dir: str | os.PathLike = "data") -> tuple[np.ndarray, np.ndarray]:
    """``(images [count, size, size] uint8, labels [count] int64)``: read from the cache
    (:func:`cache_path`) when it holds them, else generated and written there atomically (a
    temporary file renamed over the final name, so readers never see half a file)."""
    global generated_count
    level = level_of(level)
    path = cache_path(data_dir, size, level, count, seed)
    if path.is_file():
        try:
            with np.load(path) as f:
                images, labels = f["images"], f["labels"]
            if images.shape == (count, size, size) and labels.shape == (count,):
                return images, labels.astype(np.int64)
        except (OSError, ValueError, KeyError):
            pass  # unreadable or foreign: generate it again below
    out = generate(size, level, count, seed)
    generated_count += 1
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, images=out.images, labels=out.labels)
    return out.images, out.labels


def load_pathfinder(name: str, options: str = "", data_dir: str | os.PathLike = "data"
                    ) -> tuple[Dataset, Dataset]:
    """The train (seed :data:`TRAIN_SEED`) and test (seed :data:`TEST_SEED`) splits of
    ``--data name:options`` as in-memory grey datasets with ``targets``."""
    from tokenmixers.data.arrays import ArrayImageDataset

    spec = parse_spec(name, options)
    splits = []
    for count, seed in ((spec.train, TRAIN_SEED), (spec.test, TEST_SEED)):
        images, labels = load_images(spec.size, spec.level, count, seed, data_dir)
        splits.append(ArrayImageDataset(images, labels, list(CLASSES)))
    return splits[0], splits[1]
