"""The control mixers (identity, random, pool, global_filter) against their equations, written
out here with plain loops, rolls and products rather than the mixers' own helpers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from tokenmixers.mixers import MIXERS, create_mixer

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ("identity", "random", "pool", "global_filter")
ISO = {"img_size": 32, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_classes": 10}
HIER = {"img_size": 32, "patch_size": 4, "embed_dims": (16, 32), "depths": (1, 1),
        "num_classes": 10}


def _tokens(b: int, grid: tuple[int, int], c: int, prefix: int = 0) -> torch.Tensor:
    return torch.randn(b, prefix + grid[0] * grid[1], c)


# -- all four ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_registered_with_its_facts(name: str) -> None:
    cls = MIXERS[name]
    assert cls.label and cls.macs_formula
    assert cls.prefix_tokens == "passthrough"
    expected = {"random": "fixed", "global_filter": "resample"}.get(name, "any")
    assert cls.resolution == expected


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("prefix", [0, 1])
def test_create_shape_and_gradients(name: str, prefix: int) -> None:
    grid = (4, 5)
    mixer = create_mixer(name, 8, grid=grid, num_prefix_tokens=prefix)
    x = _tokens(2, grid, 8, prefix).requires_grad_()
    out = mixer(x, grid)
    assert out.shape == x.shape
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    params = list(mixer.parameters())
    if name == "global_filter":
        assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    else:
        assert params == []


@pytest.mark.parametrize("skeleton", ["isotropic", "hierarchical"])
@pytest.mark.parametrize("name", NAMES)
def test_runs_in_both_generic_skeletons(name: str, skeleton: str) -> None:
    # Imported here so that the mixers' own tests run even while the skeletons are mid-edit.
    from tokenmixers.families.generic import build_hierarchical, build_isotropic

    if skeleton == "isotropic":
        model = build_isotropic(mixer=name, **ISO)
    else:
        model = build_hierarchical(mixer=name, **HIER)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# -- identity ----------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", [0, 1])
def test_identity_leaves_tokens_as_they_are(prefix: int) -> None:
    mixer = create_mixer("identity", 6, grid=(3, 4))
    x = _tokens(2, (3, 4), 6, prefix)
    assert torch.equal(mixer(x, (3, 4)), x)
    assert sum(p.numel() for p in mixer.parameters()) == 0
    assert mixer.macs((3, 4), prefix) == 0


# -- random ------------------------------------------------------------------------------------
def test_random_is_a_frozen_row_stochastic_matrix_on_the_grid() -> None:
    grid, c = (3, 4), 5
    n = grid[0] * grid[1]
    mixer = create_mixer("random", c, grid=grid)
    m = mixer.mixing_matrix
    assert m.shape == (n, n)
    assert (m > 0).all()
    torch.testing.assert_close(m.sum(dim=-1), torch.ones(n))
    assert not m.requires_grad
    assert "mixing_matrix" in mixer.state_dict()
    assert list(mixer.parameters()) == []

    x = _tokens(2, grid, c, prefix=1)
    out = mixer(x, grid)
    assert torch.equal(out[:, :1], x[:, :1])
    expected = torch.einsum("nm,bmc->bnc", m, x[:, 1:])
    torch.testing.assert_close(out[:, 1:], expected)


def test_random_state_dict_reloads_the_same_model() -> None:
    grid = (3, 3)
    a = create_mixer("random", 4, grid=grid)
    b = create_mixer("random", 4, grid=grid)
    x = _tokens(2, grid, 4)
    assert not torch.equal(a(x, grid), b(x, grid))  # two draws differ...
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x, grid), b(x, grid))  # ...until the matrix is loaded


def test_random_refuses_another_grid() -> None:
    mixer = create_mixer("random", 4, grid=(3, 4))
    with pytest.raises(ValueError, match="3x4") as err:
        mixer(_tokens(1, (4, 4), 4), (4, 4))
    assert "4x4" in str(err.value)


def test_random_macs_match_the_operator_counter() -> None:
    grid, c = (4, 5), 6
    mixer = create_mixer("random", c, grid=grid)
    n = grid[0] * grid[1]
    assert mixer.macs(grid, 1) == n * n * c
    with FlopCounterMode(display=False) as counter:
        mixer(_tokens(1, grid, c, prefix=1), grid)
    assert counter.get_total_flops() == 2 * mixer.macs(grid, 1)


# -- pool --------------------------------------------------------------------------------------
def _pool_reference(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over the in-grid tokens of the k x k window centred on each token, minus the token:
    ``[B, H, W, C] -> [B, H, W, C]`` with explicit loops."""
    _, h, w, _ = x.shape
    r = k // 2
    out = torch.zeros_like(x)
    for i in range(h):
        for j in range(w):
            total, count = torch.zeros_like(x[:, 0, 0]), 0
            for di in range(-r, r + 1):
                for dj in range(-r, r + 1):
                    if 0 <= i + di < h and 0 <= j + dj < w:
                        total = total + x[:, i + di, j + dj]
                        count += 1
            out[:, i, j] = total / count - x[:, i, j]
    return out


@pytest.mark.parametrize("pool_size", [3, 5])
@pytest.mark.parametrize("grid", [(4, 5), (2, 3)])
def test_pool_is_the_mean_of_in_grid_neighbours_minus_the_token(
    pool_size: int, grid: tuple[int, int]
) -> None:
    c = 3
    mixer = create_mixer("pool", c, grid=grid, pool_size=pool_size)
    x = _tokens(2, grid, c, prefix=1)
    out = mixer(x, grid)
    assert torch.equal(out[:, :1], x[:, :1])
    expected = _pool_reference(x[:, 1:].reshape(2, *grid, c), pool_size)
    torch.testing.assert_close(out[:, 1:].reshape(2, *grid, c), expected)

    pairs = sum(
        1
        for i in range(grid[0]) for j in range(grid[1])
        for p in range(grid[0]) for q in range(grid[1])
        if abs(i - p) <= pool_size // 2 and abs(j - q) <= pool_size // 2
    )
    assert mixer.macs(grid, 1) == pairs * c


@pytest.mark.parametrize("pool_size", [2, 4, 0])
def test_pool_refuses_an_even_window(pool_size: int) -> None:
    with pytest.raises(ValueError, match="odd"):
        create_mixer("pool", 4, grid=(4, 4), pool_size=pool_size)


# -- global filter -----------------------------------------------------------------------------
def _circular_conv(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``y[i, j] = Σ_{m,n} k[m, n] · x[(i - m) mod h, (j - n) mod w]`` per channel:
    ``x [B, h, w, C]``, ``k [h, w, C]``. ``torch.roll`` by ``(m, n)`` is ``x[i - m, j - n]``."""
    h, w = k.shape[:2]
    y = torch.zeros_like(x)
    for m in range(h):
        for n in range(w):
            y = y + k[m, n] * torch.roll(x, shifts=(m, n), dims=(1, 2))
    return y


def _spatial_kernel(weight: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``k = irfft2(K, s=grid)`` (backward norm) of the filter ``[h, w//2+1, C, 2]``."""
    spectrum = torch.complex(weight[..., 0].double(), weight[..., 1].double())
    return torch.fft.irfft2(spectrum, s=grid, dim=(0, 1))


@pytest.mark.parametrize("grid", [(4, 6), (5, 7), (3, 3)])
def test_global_filter_is_a_circular_convolution(grid: tuple[int, int]) -> None:
    c = 4
    mixer = create_mixer("global_filter", c, grid=grid)
    h, w = grid
    assert mixer.complex_weight.shape == (h, w // 2 + 1, c, 2)
    assert sum(p.numel() for p in mixer.parameters()) == h * (w // 2 + 1) * c * 2
    with torch.no_grad():  # an O(1) filter, so the comparison is not dominated by a tiny kernel
        mixer.complex_weight.normal_()
    x = _tokens(2, grid, c, prefix=1)
    with torch.no_grad():
        out = mixer(x, grid)
    assert out.dtype == x.dtype
    assert torch.equal(out[:, :1], x[:, :1])
    expected = _circular_conv(x[:, 1:].reshape(2, h, w, c).double(),
                              _spatial_kernel(mixer.complex_weight, grid))
    torch.testing.assert_close(
        out[:, 1:].reshape(2, h, w, c).double(), expected, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("new_grid", [(6, 8), (5, 7), (3, 4)])
def test_global_filter_resamples_its_filter_bilinearly(new_grid: tuple[int, int]) -> None:
    c = 3
    mixer = create_mixer("global_filter", c, grid=(4, 6))

    def check() -> None:
        weight = mixer.complex_weight.detach()
        size = (new_grid[0], new_grid[1] // 2 + 1)
        # Real and imaginary parts resampled as images: [2, C, h, w//2+1] with align_corners.
        parts = weight.permute(3, 2, 0, 1)
        resampled = F.interpolate(parts, size=size, mode="bilinear", align_corners=True)
        expected_filter = resampled.permute(2, 3, 1, 0)
        x = _tokens(2, new_grid, c)
        with torch.no_grad():
            out = mixer(x, new_grid)
        assert out.shape == x.shape
        expected = _circular_conv(x.reshape(2, *new_grid, c).double(),
                                  _spatial_kernel(expected_filter, new_grid))
        torch.testing.assert_close(
            out.reshape(2, *new_grid, c).double(), expected, atol=1e-5, rtol=0
        )

    with torch.no_grad():
        mixer.complex_weight.normal_()
    check()
    with torch.no_grad():  # a changed parameter must be seen: nothing resampled is cached
        mixer.complex_weight.mul_(-2.0).add_(0.5)
    check()


def test_global_filter_macs_formula() -> None:
    grid, c = (4, 8), 8
    mixer = create_mixer("global_filter", c, grid=grid)
    n = 4 * 8
    fft = 1.25 * n * math.log2(n) * c  # per transform, all channels
    products = 4 * 4 * (8 // 2 + 1) * c
    assert mixer.macs(grid, 1) == round(2 * fft + products) == 3840
    assert isinstance(mixer.macs((5, 7), 0), int)


def test_global_filter_under_autocast_returns_the_input_dtype() -> None:
    grid = (4, 6)
    mixer = create_mixer("global_filter", 4, grid=grid)
    x = _tokens(2, grid, 4, prefix=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mixer(x, grid)
        out_bf16 = mixer(x.bfloat16(), grid)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out_bf16.dtype == torch.bfloat16 and out_bf16.shape == x.shape
    out_bf16.float().sum().backward()
    assert mixer.complex_weight.grad is not None
