"""ViL's mLSTM layer ("Vision-LSTM: xLSTM as Generic Vision Backbone", arXiv 2406.04303),
fused for speed, and the maps and norm it is made of.

What the layer computes is written out as the paper's equations in
:func:`tokenmixers.mixers.mlstm.reference.mlstm_layer_reference` (``tests/test_mlstm_layer.py``
pins the two to each other); :class:`MLSTMMixer` computes the same with fewer, larger
products: the gates, which read ``cat(q, k, v)``, are folded with the block-diagonal q, k, v
maps and with ``proj_up`` into composite weights, so the gates come from ``x_c`` and ``x``
directly and q, k, v are computed once each, for the cell only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tokenmixers.layers import UnitOffsetLayerNorm, is_fx_proxy
from tokenmixers.mixers.base import TokenMixer, Topology, fx_leaf_call, register_mixer
from tokenmixers.mixers.mlstm.cell import (
    DEFAULT_CHUNK_SIZE,
    TRAVERSALS,
    check_backend,
    chunk_length,
    mlstm,
)

# One call node where torch.fx traces (fx.wrap patches the calling module's names).
torch.fx.wrap("fx_leaf_call")

__all__ = [
    "BlockDiagonalLinear",
    "HeadNorm",
    "MLSTMMixer",
    "block_diagonal_heads",
    "set_mlstm_backend",
]


# ---------------------------------------------------------------------------------------
# Norms and maps of the layer
# ---------------------------------------------------------------------------------------
class HeadNorm(UnitOffsetLayerNorm):
    """Normalise each head's channels per token (no per-head affine), then scale by
    ``1 + γ`` (and add a bias), γ of length ``NH·d`` over the heads in order. On heads-first
    ``[B, NH, S, d]``, which it keeps (no transposing copy): ``.transpose(1, 2)`` of the
    result, flattened, is the tokens-first ``[B, S, NH·d]``."""

    def __init__(
        self, dim: int, *, num_heads: int | None = None, eps: float = 1e-5, bias: bool = False
    ) -> None:
        super().__init__(dim, eps=eps, bias=bias)
        if num_heads is not None and dim % num_heads:
            raise ValueError(f"HeadNorm: dim {dim} is not divisible by num_heads {num_heads}")
        #: Known heads keep the shapes constants when traced (TorchScript ONNX, dynamic batch).
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nh = self.num_heads or x.shape[1]
        d = self.dim // nh
        # (An all-ones weight: PyTorch's CPU layer_norm is ~2x faster with one than without.)
        x = F.layer_norm(x, (d,), x.new_ones(d), None, self.eps) * (1 + self.weight).view(nh, 1, d)
        return x + self.bias.view(nh, 1, d) if self.bias is not None else x


class BlockDiagonalLinear(nn.Module):
    """``y_g = W[g] @ x_g`` on consecutive groups of ``block_size`` channels; ``weight`` is
    ``[C / block_size, out, in]``. ``[..., C] -> [..., C]``."""

    def __init__(self, dim: int, *, block_size: int = 4, bias: bool = False) -> None:
        super().__init__()
        if dim % block_size:
            raise ValueError(f"dim {dim} is not divisible by the block size {block_size}")
        self.block_size = block_size
        self.weight = nn.Parameter(torch.empty(dim // block_size, block_size, block_size))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        nn.init.normal_(self.weight, std=(2 / (5 * dim)) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """As a grouped 1x1 convolution over the tokens of a channels-last image: the
        tokens stay where they are (no regrouping copies) and oneDNN/cuDNN run one small
        product per group, several times faster on CPU than batched 4x4 (or merged 16x16)
        matrix products."""
        tokens = x if x.dim() == 3 else x.reshape(1, -1, x.shape[-1])
        image = tokens.transpose(1, 2).unsqueeze(2)
        num_blocks, size = self.weight.shape[:2]
        weight = self.weight.reshape(num_blocks * size, size, 1, 1)
        y = F.conv2d(image, weight, self.bias, groups=num_blocks)  # [N, C, 1, S]
        return y.squeeze(2).transpose(1, 2).reshape(x.shape)


def block_diagonal_heads(
    x: torch.Tensor, num_heads: int, *maps: BlockDiagonalLinear
) -> list[torch.Tensor]:
    """Block-diagonal maps of ``[B, S, C]``, each result viewed heads-first,
    ``[B, NH, S, C / NH]``, over its tokens-first memory (no copy)."""
    b, s, _ = x.shape
    return [m(x).view(b, s, num_heads, -1).transpose(1, 2) for m in maps]


def _block_diagonal_dense(weight: torch.Tensor, m: BlockDiagonalLinear) -> torch.Tensor:
    """``weight @ blockdiag(m)`` for a dense ``weight`` ``[out, C]``: the composite map."""
    num_groups, out = m.weight.shape[:2]
    w = weight.reshape(-1, num_groups, out)
    return torch.einsum("jgo,goi->jgi", w, m.weight).reshape(weight.shape[0], -1)


# ---------------------------------------------------------------------------------------
# The ViL layer
# ---------------------------------------------------------------------------------------
@register_mixer("mlstm")
class MLSTMMixer(TokenMixer):
    """ViL's mLSTM layer: ``[B, N, C] -> [B, N, C]`` for N = prefix tokens + h·w.

    ``proj_up`` to 2E channels split into ``x_m`` and ``z``; per scan order, the tokens are
    put in that order, ``x_c = SiLU(conv(x_m))`` (v1: causal depthwise Conv1d over the
    processed sequence; v2: depthwise Conv2d on the processed sequence reshaped to its grid),
    ``q, k`` from ``x_c`` and ``v`` from ``x_m`` by block-diagonal maps, the gates from
    ``cat(q, k, v)``, the cell, a per-head norm and ``+ skip ⊙ x_c``; the orders' results are
    put back and averaged, gated by ``SiLU(z)`` and projected down by ``proj_down``.

    ``traversals``: the scan orders (:data:`TRAVERSALS`); ViL alternates ``("row",)`` and
    ``("row_reversed",)`` between blocks. ``cls_position``: where a prefix (class) token sits
    in the scanned sequence (``first`` or ``middle`` of the grid tokens), so that a
    reversed scan reaches a first-placed class token last, as in the authors' code.

    The equations, unfused: :func:`~tokenmixers.mixers.mlstm.reference.mlstm_layer_reference`.
    Here the gates are folded into composite weights (:meth:`_gate_maps`), the conv and the
    block-diagonal maps run as channels-last grouped convolutions, and the per-head norm is
    the cell's epilogue (applied chunk by chunk while the chunk is in cache).
    """

    label = "mLSTM (Vision-LSTM)"
    macs_formula = ("3·N·C·E (up, down; E = 2C) + per scan order N·E·(k + 3b + 6·NH) + "
                    "NH·cell (parallel 2·N²·d; chunkwise about 2·N·L·d + states)")
    prefix_tokens = "mixed"
    # The up-projection (E = 2D) is its channel MLP: ViL's blocks have no other.
    topology = Topology(mlp=False)

    @classmethod
    def defaults(cls, dim: int, index: int) -> dict[str, Any]:
        # ViL alternates the scan direction: even blocks from the top-left, odd ones from
        # the bottom-right, so that every token sees the whole image within two blocks.
        return {"traversals": ("row_reversed",) if index % 2 else ("row",)}

    def __init__(
        self,
        dim: int,
        *,
        expansion: int = 2,
        num_heads: int = 4,
        qkv_block_size: int = 4,
        conv: str = "causal1d",
        conv_kernel_size: int | None = None,
        bias: bool = False,
        norm_bias: bool = False,
        traversals: Sequence[str] = ("row",),
        cls_position: str = "first",
        backend: str = "auto",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        super().__init__()
        inner = expansion * dim
        if inner % num_heads:
            raise ValueError(f"inner width {inner} is not divisible by num_heads {num_heads}")
        if conv not in ("causal1d", "2d"):
            raise ValueError(f"conv must be 'causal1d' or '2d', got {conv!r}")
        bad = [t for t in traversals if t not in TRAVERSALS]
        if bad or not traversals:
            raise ValueError(f"unknown traversals {bad or traversals}; choose from {TRAVERSALS}")
        if cls_position not in ("first", "middle"):
            raise ValueError(f"cls_position must be 'first' or 'middle', got {cls_position!r}")
        self.inner = inner
        self.num_heads = num_heads
        self.traversals = tuple(traversals)
        self.cls_position = cls_position
        self.conv_kind = conv
        self.chunk_size = chunk_size
        self.backend = backend  # validated by the property setter

        self.proj_up = nn.Linear(dim, 2 * inner, bias=bias)
        if conv == "causal1d":
            ks = conv_kernel_size or 4
            self.conv = nn.Conv1d(inner, inner, ks, groups=inner)
        else:
            ks = conv_kernel_size or 3
            if ks % 2 == 0:
                raise ValueError(f"the 2d convolution needs an odd kernel size, got {ks}")
            self.conv = nn.Conv2d(inner, inner, ks, padding=ks // 2, groups=inner)
        self.q_proj = BlockDiagonalLinear(inner, block_size=qkv_block_size, bias=bias)
        self.k_proj = BlockDiagonalLinear(inner, block_size=qkv_block_size, bias=bias)
        self.v_proj = BlockDiagonalLinear(inner, block_size=qkv_block_size, bias=bias)
        self.igate = nn.Linear(3 * inner, num_heads)
        self.fgate = nn.Linear(3 * inner, num_heads)
        self.outnorm = HeadNorm(inner, num_heads=num_heads, bias=norm_bias)
        self.skip = nn.Parameter(torch.ones(inner))
        self.proj_down = nn.Linear(inner, dim, bias=bias)
        self._orders: dict[
            tuple[int, int, int, str, str], tuple[tuple[int, ...], tuple[int, ...]] | None
        ] = {}
        self.reset_parameters()

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = check_backend(value)

    def reset_parameters(self) -> None:
        """The authors' init (D = model width, from ``proj_up``'s input)."""
        dim = self.proj_up.in_features
        small = (2 / (5 * dim)) ** 0.5
        for lin in (self.proj_up, self.q_proj, self.k_proj, self.v_proj):
            nn.init.normal_(lin.weight, std=small)
        nn.init.normal_(self.proj_down.weight, std=2 / dim**0.5)
        for mod in (self.proj_up, self.q_proj, self.k_proj, self.v_proj, self.proj_down):
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
        # Forget gates open (σ(3..6) ≈ 0.95..0.998) with a spread of memory lengths per head.
        nn.init.zeros_(self.fgate.weight)
        with torch.no_grad():
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, self.num_heads))
        nn.init.zeros_(self.igate.weight)
        nn.init.normal_(self.igate.bias, std=0.1)
        nn.init.zeros_(self.outnorm.weight)
        if self.outnorm.bias is not None:
            nn.init.zeros_(self.outnorm.bias)
        nn.init.ones_(self.skip)

    # -- scan orders -----------------------------------------------------------------------
    def _order(
        self, grid: tuple[int, int], prefix: int, traversal: str, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Indices putting the tokens in scan order and the inverse permutation putting them
        back (None: already in order)."""
        key = (grid[0], grid[1], prefix, traversal, self.cls_position)
        if key not in self._orders:
            # Cached as Python ints, not tensors: worked out in plain Python, the order is
            # a constant to torch.export/ONNX (no data-dependent check of a traced tensor),
            # and no tensor made under inference_mode or tracing is kept for later calls.
            self._orders[key] = self._build_order(grid, prefix, traversal)
        orders = self._orders[key]
        if orders is None:
            return None
        return (torch.tensor(orders[0], device=device), torch.tensor(orders[1], device=device))

    def _build_order(
        self, grid: tuple[int, int], prefix: int, traversal: str
    ) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """The scan order's indices and their inverse, or None for the identity order."""
        h, w = grid
        if traversal.startswith("col"):
            grid_idx = [prefix + r * w + c for c in range(w) for r in range(h)]
        else:
            grid_idx = [prefix + i for i in range(h * w)]
        at = 0 if self.cls_position == "first" else h * w // 2
        idx = grid_idx[:at] + list(range(prefix)) + grid_idx[at:]
        if traversal.endswith("reversed"):
            idx.reverse()
        if idx == list(range(len(idx))):
            return None
        inverse = [0] * len(idx)
        for position, token in enumerate(idx):
            inverse[token] = position
        return tuple(idx), tuple(inverse)

    def _conv(
        self, x: torch.Tensor, grid: tuple[int, int], prefix_at: int, prefix: int
    ) -> torch.Tensor:
        """Depthwise convolution over ``[B, S, E]`` tokens in scan order."""
        if self.conv_kind == "causal1d":
            # As a 1xS image in channels-last layout, i.e. [B, S, E] as it is: no transposing
            # copies; zeros padded at both ends and the last K−1 outputs dropped (causal).
            s, ks = x.shape[1], self.conv.kernel_size[0]
            image = x.transpose(1, 2).unsqueeze(2)
            y = F.conv2d(image, self.conv.weight.unsqueeze(2), self.conv.bias,
                         padding=(0, ks - 1), groups=self.conv.groups)
            return y[..., :s].squeeze(2).transpose(1, 2)
        b, _, e = x.shape
        pre = x[:, prefix_at : prefix_at + prefix]
        tokens = torch.cat([x[:, :prefix_at], x[:, prefix_at + prefix :]], 1) if prefix else x
        y = self.conv(tokens.transpose(1, 2).reshape(b, e, *grid)).flatten(2).transpose(1, 2)
        if not prefix:
            return y
        # A class token is a 1x1 grid of its own: only the kernel's centre tap reaches it.
        kh, kw = self.conv.kernel_size
        pre = pre * self.conv.weight[:, 0, kh // 2, kw // 2] + self.conv.bias
        return torch.cat([y[:, :prefix_at], pre, y[:, prefix_at:]], 1)

    def _gate_maps(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The gates see ``cat(q, k, v)``; through the composite maps ``gate ∘ blockdiag``
        that is one ``[2·NH, E]`` map of ``x_c``, one of ``x_m`` and a bias."""
        w = torch.cat([self.igate.weight, self.fgate.weight]).split(self.inner, dim=1)
        bias = torch.cat([self.igate.bias, self.fgate.bias])
        for lin, part in ((self.q_proj, w[0]), (self.k_proj, w[1]), (self.v_proj, w[2])):
            if lin.bias is not None:
                bias = bias + part @ lin.bias
        w_c = _block_diagonal_dense(w[0], self.q_proj) + _block_diagonal_dense(w[1], self.k_proj)
        return w_c, _block_diagonal_dense(w[2], self.v_proj), bias

    def _scan(
        self, x_m: torch.Tensor, gates_m: torch.Tensor, w_c: torch.Tensor,
        grid: tuple[int, int], prefix_at: int, prefix: int,
    ) -> torch.Tensor:
        """``[B, S, E]`` in scan order (and the gates' ``x_m`` part, ``[B, S, 2·NH]``) ->
        ``norm(h̃) + skip ⊙ x_c``, same order."""
        b, s, _ = x_m.shape
        x_c = F.silu(self._conv(x_m, grid, prefix_at, prefix))
        q, k = block_diagonal_heads(x_c, self.num_heads, self.q_proj, self.k_proj)
        (v,) = block_diagonal_heads(x_m, self.num_heads, self.v_proj)
        gates = F.linear(x_c, w_c) + gates_m
        ig, fg = gates.transpose(1, 2).split(self.num_heads, dim=1)  # [B, NH, S] each
        h = mlstm(q, k, v, ig, fg, backend=self.backend, chunk_size=self.chunk_size,
                  epilogue=self.outnorm)
        # Tokens-first [B, S, E]: a view for the chunkwise form, a fresh copy otherwise.
        out = h.transpose(1, 2).reshape(b, s, -1)
        return out.addcmul_(self.skip, x_c)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``[B, N, D] -> [B, N, D]``, N = prefix tokens + ``grid[0]·grid[1]``."""
        if is_fx_proxy(x):
            return fx_leaf_call(self, x, grid)  # scan orders, chunks: Python loops
        n = x.shape[1]
        prefix = n - grid[0] * grid[1]
        if prefix < 0:
            raise ValueError(f"{n} tokens do not hold a {grid[0]}x{grid[1]} grid")
        e = self.inner
        w_c, w_m, gate_bias = self._gate_maps()
        # proj_up as two products: x_m on its own (contiguous, as the conv and the v map
        # want it), and z together with the gates' x_m part, folded in as the composite
        # map w_m ∘ proj_up's x_m half (gate(x_m) = (w_m W_m) x + w_m b_m + bias).
        weight_m, weight_z = self.proj_up.weight.split(e)
        bias_m, bias_z = (None, None) if self.proj_up.bias is None else self.proj_up.bias.split(e)
        if bias_m is not None:
            gate_bias = gate_bias + w_m @ bias_m
        weight_zg = torch.cat([weight_z, w_m @ weight_m])
        # One scan order: put the tokens in it before proj_up and back after proj_down, as
        # the authors do (D channels moved twice instead of E channels); several: reorder
        # x_m (and its gate part) per order and put each order's result back.
        outer = None
        if len(self.traversals) == 1:
            outer = self._order(grid, prefix, self.traversals[0], x.device)
            x = x if outer is None else x[:, outer[0]]
        x_m = F.linear(x, weight_m, bias_m)
        z, gates_m = F.linear(x, weight_zg).split(e, dim=-1)  # biases added to the parts:
        z = z if bias_z is None else z + bias_z  # (addmm would first copy a bias to all)
        gates_m = gates_m + gate_bias
        out = None
        for traversal in self.traversals:
            order = (
                None if len(self.traversals) == 1
                else self._order(grid, prefix, traversal, x.device)
            )
            if order is None:
                seq, seq_gates = x_m, gates_m
            else:
                seq, seq_gates = x_m[:, order[0]], gates_m[:, order[0]]
            scan_grid = grid if traversal.startswith("row") else (grid[1], grid[0])
            at = 0 if self.cls_position == "first" else grid[0] * grid[1] // 2
            if traversal.endswith("reversed"):
                at = n - at - prefix
            h = self._scan(seq, seq_gates, w_c, scan_grid, at, prefix)
            if order is not None:
                h = h[:, order[1]]  # back to grid order (a gather: exports everywhere)
            out = h if out is None else out + h
        assert out is not None
        if len(self.traversals) > 1:
            out = out / len(self.traversals)
        y = self.proj_down(out * F.silu(z))
        if outer is not None:
            y = y[:, outer[1]]
        return y

    def macs(self, grid: tuple[int, int], num_prefix_tokens: int = 0) -> int:
        """Multiply-accumulates per image of the layer as defined, with the cell in the form
        its backend runs (``auto`` resolved for this sequence length).

        Per token: ``proj_up`` D·2E and ``proj_down`` E·D; per token and scan order: the
        depthwise conv E·k, the block-diagonal q, k, v maps 3·E·b and the gates 2·3E·NH.
        The cell, per head and scan order, with d = E/NH: ``parallel`` 2·S²·d (QKᵀ and the
        weighted sum over every pair, as that form computes them); ``chunkwise`` with C
        chunks of L tokens 2·C·L²·d inside chunks, plus, when C > 1, 2·C·L·d·(d+1) to write
        and read the ``[d, d+1]`` states (numerator and normaliser) and C²·d·(d+1) to
        combine them (the differentiable all-chunks schedule; the inference one carries the
        state instead of combining, and its short last chunk saves the padding: less than one
        token per chunk); ``recurrent`` 2·S·d·(d+1) (state update and read-out)."""
        s = num_prefix_tokens + grid[0] * grid[1]
        dim, e, nh = self.proj_up.in_features, self.inner, self.num_heads
        d = e // nh
        per_token = dim * 2 * e + e * dim
        per_scan_token = (
            e * self.conv.weight[0].numel() + 3 * e * self.q_proj.block_size + 2 * 3 * e * nh
        )
        backend = self.backend
        if backend == "auto":
            backend = "chunkwise" if s > self.chunk_size else "parallel"
        if backend == "recurrent":
            cell = 2 * s * d * (d + 1)
        elif backend in ("chunkwise", "kernels"):
            size = chunk_length(s, self.chunk_size)
            chunks = math.ceil(s / size)
            cell = 2 * chunks * size * size * d
            if chunks > 1:
                cell += 2 * chunks * size * d * (d + 1) + chunks * chunks * d * (d + 1)
        else:
            cell = 2 * s * s * d
        return s * per_token + len(self.traversals) * (s * per_scan_token + nh * cell)

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, conv={self.conv_kind}, traversals={self.traversals}, "
            f"backend={self.backend!r}"
        )


def set_mlstm_backend(model: nn.Module, backend: str, *, chunk_size: int | None = None) -> int:
    """Switch every mLSTM layer in ``model`` to ``backend`` (and ``chunk_size``); returns
    how many layers were switched."""
    check_backend(backend)
    count = 0
    for module in model.modules():
        if isinstance(module, MLSTMMixer):
            module.backend = backend
            if chunk_size is not None:
                module.chunk_size = chunk_size
            count += 1
    return count
