"""ViL's mLSTM layer: the fused :class:`MLSTMMixer` is the layer written as the paper's
equations (:func:`mlstm_layer_reference`), in values and gradients, for every option and
backend; its closed-form MACs are what PyTorch's operator counter counts on the reference."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import tokenmixers.mixers.mlstm as package
from tokenmixers.mixers import create_mixer
from tokenmixers.mixers.mlstm import (
    BACKENDS,
    MLSTMMixer,
    check_backend,
    mlstm_layer_reference,
    set_mlstm_backend,
)

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = (3, 5)  # non-square: row and column scans lay the tokens out differently
TRAVERSALS = [("row",), ("row_reversed",), ("row", "row_reversed"),
              ("row", "row_reversed", "col", "col_reversed")]
# (prefix tokens, cls_position)
LAYOUTS = [(0, "first"), (1, "first"), (1, "middle")]
# (backend, chunk size): chunks of 4 cut 15 or 16 tokens into several chunks.
BACKENDS_UNDER_TEST = [("parallel", 64), ("chunkwise", 4), ("recurrent", 64)]


def randomised(layer: MLSTMMixer) -> MLSTMMixer:
    """``layer`` in float64 with random values where the init puts zeros or ones (norm
    scale and bias, skip, gate weights, biases), so that no term is trivially zero."""
    layer = layer.double()
    with torch.no_grad():
        for name, param in layer.named_parameters():
            if name.endswith("bias") and name != "fgate.bias":
                param.normal_(std=0.3)  # fgate.bias keeps its open forget gates
        layer.outnorm.weight.normal_(std=0.5)
        layer.skip.normal_(mean=1.0, std=0.5)
        layer.igate.weight.normal_(std=0.3)
        layer.fgate.weight.normal_(std=0.3)
    return layer


def assert_close_relative(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    scale = expected.abs().max().item()
    diff = (got - expected).abs().max().item()
    assert diff <= 1e-10 * scale, f"{what}: differs by {diff:.2e} of {scale:.2e}"


@pytest.mark.parametrize(("bias", "norm_bias"), [(True, False), (False, True)])
@pytest.mark.parametrize(("backend", "chunk_size"), BACKENDS_UNDER_TEST)
@pytest.mark.parametrize(("prefix", "cls_position"), LAYOUTS)
@pytest.mark.parametrize("traversals", TRAVERSALS, ids="+".join)
@pytest.mark.parametrize("conv", ["causal1d", "2d"])
def test_fused_layer_is_the_reference(
    conv: str, traversals: tuple[str, ...], prefix: int, cls_position: str, backend: str,
    chunk_size: int, bias: bool, norm_bias: bool,
) -> None:
    layer = randomised(MLSTMMixer(
        16, num_heads=2, conv=conv, bias=bias, norm_bias=norm_bias, traversals=traversals,
        cls_position=cls_position, backend=backend, chunk_size=chunk_size,
    ))
    x = torch.randn(2, prefix + GRID[0] * GRID[1], 16, dtype=torch.float64)
    upstream = torch.randn_like(x)

    def run(form):
        layer.zero_grad()
        leaf = x.clone().requires_grad_()
        out = form(leaf)
        (out * upstream).sum().backward()
        grads = {"x": leaf.grad, **{n: p.grad for n, p in layer.named_parameters()}}
        return out.detach(), grads

    expected, expected_grads = run(lambda t: mlstm_layer_reference(layer, t, GRID))
    with torch.no_grad():  # chunkwise: the chunk-by-chunk schedule
        assert_close_relative(layer(x, GRID), expected, "output without autograd")
    out, grads = run(lambda t: layer(t, GRID))  # chunkwise: all chunks at once
    assert_close_relative(out, expected, "output")
    for name, grad in grads.items():
        assert_close_relative(grad, expected_grads[name], f"d{name}")


def test_created_mixer_is_the_reference() -> None:
    # The registry's defaults (an odd block scans from the bottom-right) give the same layer.
    layer = create_mixer("mlstm", 16, grid=GRID, num_prefix_tokens=1, index=1)
    assert isinstance(layer, MLSTMMixer) and layer.traversals == ("row_reversed",)
    layer = randomised(layer)
    x = torch.randn(2, 1 + GRID[0] * GRID[1], 16, dtype=torch.float64)
    assert_close_relative(layer(x, GRID), mlstm_layer_reference(layer, x, GRID), "output")


@pytest.mark.parametrize("prefix", [0, 1])
@pytest.mark.parametrize("conv", ["causal1d", "2d"])
def test_macs_are_the_counted_products_of_the_reference(conv: str, prefix: int) -> None:
    grid = (6, 4)
    layer = MLSTMMixer(24, conv=conv, traversals=("row", "col_reversed"), backend="parallel")
    x = torch.randn(1, prefix + grid[0] * grid[1], 24)
    with FlopCounterMode(display=False) as counter:
        mlstm_layer_reference(layer, x, grid)
    counted = counter.get_total_flops() // 2
    # The formula charges every token a full conv kernel; in v2 a class token sees only the
    # kernel's centre tap, an elementwise product the counter does not count: one kernel of
    # E channels per prefix token and scan order. v1's causal conv covers the class token.
    kernel = layer.conv.weight[0].numel() if conv == "2d" else 0
    uncounted = len(layer.traversals) * prefix * layer.inner * kernel
    assert layer.macs(grid, prefix) == counted + uncounted


def test_one_backend_check_everywhere() -> None:
    assert check_backend("chunkwise") == "chunkwise"
    with pytest.raises(ValueError, match=r"unknown mLSTM backend 'fast'; choose from auto, "):
        check_backend("fast")
    with pytest.raises(ValueError, match=r"unknown backend 'fast'"):
        check_backend("fast", what="backend")
    layer = MLSTMMixer(16)
    for backend in BACKENDS:
        layer.backend = backend
    with pytest.raises(ValueError, match="unknown mLSTM backend 'fast'"):
        layer.backend = "fast"
    with pytest.raises(ValueError, match="unknown mLSTM backend 'fast'"):
        MLSTMMixer(16, backend="fast")
    with pytest.raises(ValueError, match="unknown mLSTM backend 'fast'"):
        set_mlstm_backend(layer, "fast")
    assert set_mlstm_backend(layer, "recurrent", chunk_size=8) == 1
    assert (layer.backend, layer.chunk_size) == ("recurrent", 8)


def test_package_exports_public_names_only() -> None:
    assert all(not name.startswith("_") for name in package.__all__)
    assert all(hasattr(package, name) for name in package.__all__)
