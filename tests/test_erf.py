"""Effective receptive fields on models whose receptive field is known in closed form, and
the summary numbers on constructed maps."""

from __future__ import annotations

import math

import pytest
import torch

import tokenmixers
from tokenmixers.erf import ERF, area_ratio, erf_map, erf_stats, radius_of_gyration, reach

#: 32 px in 4 px patches: an 8x8 grid whose centre output is token (4, 4).
ISO = {"img_size": 32, "patch_size": 4, "embed_dim": 16, "num_classes": 10}
GRID = 8


def patch_support(erf: ERF) -> torch.Tensor:
    """[8, 8] bool: which input patches move the centre output at all."""
    m = erf.map.reshape(GRID, 4, GRID, 4).sum((1, 3))
    return m > 1e-7 * float(m.max())


def offsets() -> tuple[torch.Tensor, torch.Tensor]:
    """Each patch's offset (rows, columns) from the centre patch (4, 4)."""
    r = torch.arange(GRID)[:, None] - GRID // 2
    c = torch.arange(GRID)[None, :] - GRID // 2
    return r.expand(GRID, GRID), c.expand(GRID, GRID)


def erf_of(mixer: str, depth: int, **kwargs: object) -> ERF:
    torch.manual_seed(depth)
    model = tokenmixers.create_model("isotropic", mixer=mixer, depth=depth, **ISO, **kwargs)
    return erf_map(model, torch.randn(3, 3, 32, 32))


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_shift_blocks_reach_exactly_depth_patches(depth: int) -> None:
    """A shift moves channel groups by one token along one axis; the channel MLP then mixes
    the groups. d blocks: exactly the patches within d steps along the axes (|dy| + |dx| <=
    d), so d patches in each direction and not the diagonal corner (d, d)."""
    erf = erf_of("shift", depth)
    assert reach(erf) == {"up": depth, "down": depth, "left": depth, "right": depth}
    dy, dx = offsets()
    assert torch.equal(patch_support(erf), dy.abs() + dx.abs() <= depth)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_pooling_grows_one_patch_per_block(depth: int) -> None:
    """PoolFormer's 3x3 average pool (minus the token): a square that grows by one patch on
    every side per block (|dy|, |dx| <= d), corners included."""
    erf = erf_of("pool", depth)
    assert reach(erf) == {"up": depth, "down": depth, "left": depth, "right": depth}
    dy, dx = offsets()
    assert torch.equal(patch_support(erf), torch.maximum(dy.abs(), dx.abs()) <= depth)


def test_one_attention_block_reaches_every_patch() -> None:
    erf = erf_of("attention", 1)
    assert bool(patch_support(erf).all())
    assert reach(erf) == {"up": 4, "down": 3, "left": 4, "right": 3}


def test_no_mixing_stays_in_its_own_patch() -> None:
    erf = erf_of("identity", 3)
    dy, dx = offsets()
    assert torch.equal(patch_support(erf), (dy == 0) & (dx == 0))
    assert erf_stats(erf).area90 == pytest.approx(1 / GRID**2)


def test_bilstm2d_reaches_its_row_and_column_in_one_block() -> None:
    """Sequencer's BiLSTM2D: the vertical and horizontal LSTMs see the whole column and row
    (the cross of the Sequencer paper's ERF figure), nothing off it in one block."""
    erf = erf_of("lstm2d", 1)
    dy, dx = offsets()
    assert torch.equal(patch_support(erf), (dy == 0) | (dx == 0))


def test_hierarchical_stage_and_its_stride() -> None:
    torch.manual_seed(0)
    model = tokenmixers.create_model("hierarchical", mixer="pool", img_size=64, patch_size=4,
                                     embed_dims=(8, 16), depths=(1, 1), num_classes=3).train()
    erf = erf_map(model, torch.randn(2, 3, 64, 64), index=-1)
    assert erf.index == 1 and erf.reduction == 8 and erf.centre == (4, 4) and erf.patch == 4
    assert model.training  # left as it was
    # stage 0: one 3x3 pool on 4 px patches reaches 1 patch; stage 1 (after a 2x2
    # downsample, 8 px positions) adds one position, 2 patches: 3 patches in all.
    first = erf_map(model, torch.randn(2, 3, 64, 64), index=0)
    assert reach(first) == {"up": 1, "down": 1, "left": 1, "right": 1}
    assert reach(erf) == {"up": 3, "down": 3, "left": 3, "right": 3}
    with pytest.raises(ValueError, match="out of range for a model with 2"):
        erf_map(model, torch.randn(1, 3, 64, 64), index=2)


def _constructed(m: torch.Tensor, centre: tuple[int, int] = (4, 4)) -> ERF:
    return ERF(m.double(), centre, 4, 4, 0)


def test_area_ratio_and_radius_on_constructed_maps() -> None:
    # all the mass on the centre output's own 4x4 pixels: the smallest rectangle is them
    m = torch.zeros(32, 32)
    m[16:20, 16:20] = 1
    erf = _constructed(m)
    assert area_ratio(erf, 0.5) == area_ratio(erf, 0.9) == 16 / 1024
    assert radius_of_gyration(erf) == pytest.approx(math.sqrt(2 * (16 - 1) / 12))
    # uniform: the centred rectangle that holds a fraction holds that fraction of the area
    # (up to the one-pixel growth steps), and the radius is sqrt(2 (n^2 - 1) / 12)
    erf = _constructed(torch.ones(32, 32))
    assert 0.5 <= area_ratio(erf, 0.5) <= 0.5 + 2 * 34 / 1024
    assert 0.9 <= area_ratio(erf, 0.9) <= 0.9 + 2 * 34 / 1024
    assert radius_of_gyration(erf) == pytest.approx(math.sqrt(2 * (32**2 - 1) / 12))
    stats = erf_stats(erf)
    assert stats.radius_fraction == pytest.approx(stats.radius / 32)
    assert reach(erf) == {"up": 4, "down": 3, "left": 4, "right": 3}
