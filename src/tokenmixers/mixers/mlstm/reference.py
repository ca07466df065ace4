"""ViL's mLSTM layer written as the paper's equations: the specification that the fused
:class:`~tokenmixers.mixers.mlstm.layer.MLSTMMixer` is tested against
(``tests/test_mlstm_layer.py``), on the parameters of an ``MLSTMMixer``.

For tokens ``x`` ``[B, N, D]`` (prefix tokens, then the h×w grid in row-major order), inner
width E, NH heads of d = E/NH channels and block size b::

    [x_m ‖ z] = proj_up(x)                                           [B, N, 2E]
    for each scan order o in layer.traversals:
        put the tokens in order o (prefix tokens at cls_position)     [B, S, E]
        x_c = SiLU(conv(x_m))            v1: causal depthwise Conv1d; v2: depthwise Conv2d
        q = W_q x_c,  k = W_k x_c,  v = W_v x_m      block-diagonal, W: [E/b, b, b]
        ĩ = W_i [q ‖ k ‖ v] + b_i,  f̃ = W_f [q ‖ k ‖ v] + b_f          [B, S, NH]
        h̃ = mlstm_parallel(q, k, v, ĩ, f̃)  per head                   [B, NH, S, d]
        h_o = LayerNorm_d(h̃) ⊙ (1 + γ) + β + skip ⊙ x_c              [B, S, E]
        put h_o back in grid order
    h = mean_o h_o
    y = proj_down(h ⊙ SiLU(z))                                       [B, N, D]

No folding and no precomputed composite weights: every product is a plain
``F.linear``/``einsum``/``matmul``/convolution, so that ``FlopCounterMode`` counts them
all (``MLSTMMixer.macs`` is checked against that count).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokenmixers.mixers.mlstm.cell import mlstm_parallel
from tokenmixers.mixers.mlstm.layer import BlockDiagonalLinear, MLSTMMixer

__all__ = ["mlstm_layer_reference"]


def mlstm_layer_reference(
    layer: MLSTMMixer, x: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """What ``layer(x, grid)`` computes, as the equations of the module docstring:
    ``[B, N, D] -> [B, N, D]`` with N = prefix tokens + ``grid[0]·grid[1]``. The cell is
    always the parallel form (every backend computes the same)."""
    prefix = x.shape[1] - grid[0] * grid[1]
    if prefix < 0:
        raise ValueError(f"{x.shape[1]} tokens do not hold a {grid[0]}x{grid[1]} grid")
    x_m, z = F.linear(x, layer.proj_up.weight, layer.proj_up.bias).split(layer.inner, dim=-1)
    outputs = []
    for traversal in layer.traversals:
        seq = _to_scan_order(x_m, grid, prefix, traversal, layer.cls_position)
        h = _scan(layer, seq, grid, prefix, traversal)
        outputs.append(_from_scan_order(h, grid, prefix, traversal, layer.cls_position))
    h = torch.stack(outputs).mean(0)
    return F.linear(h * F.silu(z), layer.proj_down.weight, layer.proj_down.bias)


def _scan(
    layer: MLSTMMixer, x_m: torch.Tensor, grid: tuple[int, int], prefix: int, traversal: str
) -> torch.Tensor:
    """One scan order: ``x_m`` ``[B, S, E]`` in that order -> ``h`` ``[B, S, E]``, same
    order."""
    nh = layer.num_heads
    x_c = F.silu(_conv(layer, x_m, grid, prefix, traversal))
    q = _block_diagonal(x_c, layer.q_proj)
    k = _block_diagonal(x_c, layer.k_proj)
    v = _block_diagonal(x_m, layer.v_proj)
    qkv = torch.cat([q, k, v], dim=-1)  # [B, S, 3E]
    i_tilde = F.linear(qkv, layer.igate.weight, layer.igate.bias)  # [B, S, NH]
    f_tilde = F.linear(qkv, layer.fgate.weight, layer.fgate.bias)

    def heads(t: torch.Tensor) -> torch.Tensor:  # [B, S, E] -> [B, NH, S, d]
        return t.unflatten(-1, (nh, -1)).transpose(1, 2)

    h_tilde = mlstm_parallel(heads(q), heads(k), heads(v), i_tilde.mT, f_tilde.mT)
    return _head_norm(layer, h_tilde) + layer.skip * x_c


def _head_norm(layer: MLSTMMixer, h_tilde: torch.Tensor) -> torch.Tensor:
    """``LayerNorm_d(h̃) ⊙ (1 + γ) + β``: each head's d channels normalised per token
    (no per-head affine), then the scale and bias over all E = NH·d channels.
    ``[B, NH, S, d] -> [B, S, E]``."""
    d = h_tilde.shape[-1]
    normed = F.layer_norm(h_tilde, (d,), eps=layer.outnorm.eps)
    h = normed.transpose(1, 2).flatten(2) * (1 + layer.outnorm.weight)
    return h if layer.outnorm.bias is None else h + layer.outnorm.bias


def _block_diagonal(x: torch.Tensor, m: BlockDiagonalLinear) -> torch.Tensor:
    """``y_g = W_g x_g (+ bias)`` on consecutive groups of b channels, ``W`` ``[C/b, b, b]``:
    ``[B, S, C] -> [B, S, C]``."""
    groups, _, block = m.weight.shape
    y = torch.einsum("bsgi,goi->bsgo", x.unflatten(-1, (groups, block)), m.weight)
    y = y.flatten(-2)
    return y if m.bias is None else y + m.bias


def _conv(
    layer: MLSTMMixer, x: torch.Tensor, grid: tuple[int, int], prefix: int, traversal: str
) -> torch.Tensor:
    """The depthwise convolution over ``[B, S, E]`` tokens in scan order -> ``[B, S, E]``.

    v1 (``causal1d``): a Conv1d over the sequence that sees only the current and earlier
    tokens: k − 1 zeros on the left, then a valid convolution. v2 (``2d``): a Conv2d with
    "same" zero padding on the grid tokens of the sequence laid out on the scan's grid
    (h×w for a row scan, w×h for a column scan); a prefix token is a 1×1 grid of its own,
    which only the kernel's centre tap reaches."""
    weight, bias = layer.conv.weight, layer.conv.bias
    channels = x.shape[-1]
    if layer.conv_kind == "causal1d":
        (size,) = layer.conv.kernel_size
        padded = F.pad(x.transpose(1, 2), (size - 1, 0))  # [B, E, k − 1 + S]
        return F.conv1d(padded, weight, bias, groups=channels).transpose(1, 2)
    at = _prefix_index(grid, layer.cls_position)
    if traversal.endswith("reversed"):  # the flip moves the prefix tokens too
        at = x.shape[1] - at - prefix
    pre = x[:, at : at + prefix]
    tokens = torch.cat([x[:, :at], x[:, at + prefix :]], dim=1)
    scan_grid = grid if traversal.startswith("row") else (grid[1], grid[0])
    image = tokens.transpose(1, 2).unflatten(-1, scan_grid)  # [B, E, h, w]
    kh, kw = layer.conv.kernel_size
    y = F.conv2d(image, weight, bias, padding=(kh // 2, kw // 2), groups=channels)
    y = y.flatten(2).transpose(1, 2)
    pre = pre * weight[:, 0, kh // 2, kw // 2]
    pre = pre if bias is None else pre + bias
    return torch.cat([y[:, :at], pre, y[:, at:]], dim=1)


# ---------------------------------------------------------------------------------------
# Scan orders: the grid tokens in row- or column-major order, forwards or backwards, with
# the prefix tokens before the first grid token or the middle one (``cls_position``)
# ---------------------------------------------------------------------------------------
def _prefix_index(grid: tuple[int, int], cls_position: str) -> int:
    """How many grid tokens precede the prefix tokens in scan order (before a reversed
    scan's flip)."""
    return 0 if cls_position == "first" else grid[0] * grid[1] // 2


def _to_scan_order(
    x: torch.Tensor, grid: tuple[int, int], prefix: int, traversal: str, cls_position: str
) -> torch.Tensor:
    """``[B, N, C]`` (prefix tokens, then the grid row-major) -> ``[B, N, C]`` in scan
    order."""
    tokens = x[:, prefix:].unflatten(1, grid)  # [B, h, w, C]
    if traversal.startswith("col"):
        tokens = tokens.transpose(1, 2)
    tokens = tokens.flatten(1, 2)
    at = _prefix_index(grid, cls_position)
    seq = torch.cat([tokens[:, :at], x[:, :prefix], tokens[:, at:]], dim=1)
    return seq.flip(1) if traversal.endswith("reversed") else seq


def _from_scan_order(
    seq: torch.Tensor, grid: tuple[int, int], prefix: int, traversal: str, cls_position: str
) -> torch.Tensor:
    """The inverse of :func:`_to_scan_order`: ``[B, N, C]`` in scan order -> prefix tokens,
    then the grid row-major."""
    if traversal.endswith("reversed"):
        seq = seq.flip(1)
    at = _prefix_index(grid, cls_position)
    tokens = torch.cat([seq[:, :at], seq[:, at + prefix :]], dim=1)
    if traversal.startswith("col"):
        tokens = tokens.unflatten(1, (grid[1], grid[0])).transpose(1, 2).flatten(1, 2)
    return torch.cat([seq[:, at : at + prefix], tokens], dim=1)
