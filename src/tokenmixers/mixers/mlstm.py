"""Vision-LSTM's mLSTM layer ("Vision-LSTM: xLSTM as Generic Vision Backbone", arXiv
2406.04303) and the mLSTM cell in three interchangeable forms.

The cell, per head, with gate pre-activations ĩ_t, f̃_t and head dim d::

    C_t = σ(f̃_t) C_{t-1} + exp(ĩ_t) v_t k_tᵀ/√d       n_t = σ(f̃_t) n_{t-1} + exp(ĩ_t) k_t/√d
    h̃_t = C_t q_t / max(|n_tᵀ q_t|, 1)

computed in the stabilised form of the authors' code: with F_t = Σ_{r≤t} log σ(f̃_r),
log D_ts = F_t − F_s + ĩ_s (s ≤ t) and m_t = max_s log D_ts,

    C̃_ts = (q_t·k_s/√d) exp(log D_ts − m_t)
    h̃_t  = Σ_s C̃_ts v_s / (max(|Σ_s C̃_ts|, exp(−m_t)) + 1e-6)

Backends (all give the same values and gradients; tests pin them to each other):

* ``parallel``: the formula above, materialising ``[B, heads, S, S]`` tensors (quadratic).
* ``chunkwise``: intra-chunk parallel attention plus an inter-chunk recurrent state,
  linear in S. The stabiliser is the running maximum m_t = max(log σ(f̃_t) + m_{t−1}, ĩ_t),
  which the chunk boundaries carry exactly, so even the 1e-6 epsilon is reproduced. On the
  CPU without autograd it runs chunk by chunk with the state updated in place (cache-
  friendly); otherwise all chunks at once (differentiable; few, large GPU kernels).
* ``recurrent``: one step per token (the oracle, and the form for streaming).
* ``auto``: ``chunkwise`` when the sequence is longer than one chunk (S > ``chunk_size``,
  64 by default), else ``parallel``. With one chunk the two do the same work; the cell
  alone with ViL-T's shapes (2 threads) is up to ~10% slower chunkwise at S = 65..96 and
  faster from 128 on (1.3x at 128, 2.9x at 196, 5x at 400, 18x at 784;
  ``docs/performance.md``).
* ``kernels``: the ``mlstm-kernels`` package (GPU Triton kernels), if it is installed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tokenmixers.mixers import register_mixer

BACKENDS = ("auto", "parallel", "chunkwise", "recurrent", "kernels")
#: Scan orders of the grid: row-major from the top-left (``row``) or bottom-right
#: (``row_reversed``), column-major from the top-left (``col``) or bottom-right.
TRAVERSALS = ("row", "row_reversed", "col", "col_reversed")
DEFAULT_CHUNK_SIZE = 64
EPS = 1e-6
#: A per-token map of the cell's output, ``[B, NH, n, d] -> [B, NH, n, d]``.
Epilogue = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------
# The cell: q, k, v [B, NH, S, d]; igate, fgate [B, NH, S] (pre-activations) -> [B, NH, S, d]
# ---------------------------------------------------------------------------------------
def _causal_mask(n: int, device: torch.device, *, strict: bool = False) -> torch.Tensor:
    """``[n, n]`` bool, True on and below the diagonal (strictly below if ``strict``)."""
    i = torch.arange(n, device=device)
    return i[:, None] > i[None, :] if strict else i[:, None] >= i[None, :]


def mlstm_parallel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
    fgate: torch.Tensor, *, eps: float = EPS,
) -> torch.Tensor:
    """The stabilised quadratic form (see the module docstring)."""
    s, d = q.shape[-2:]
    cum_log_f = F.logsigmoid(fgate).cumsum(-1)  # F_t
    log_d = cum_log_f[..., :, None] - cum_log_f[..., None, :] + igate[..., None, :]
    log_d = log_d.masked_fill(~_causal_mask(s, q.device), float("-inf"))
    m = log_d.amax(-1, keepdim=True)  # [B, NH, S, 1]
    c = (q @ k.transpose(-2, -1)) * (d**-0.5) * torch.exp(log_d - m)
    normaliser = torch.maximum(c.sum(-1, keepdim=True).abs(), torch.exp(-m)) + eps
    return (c / normaliser) @ v


def mlstm_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
    fgate: torch.Tensor, *, eps: float = EPS,
) -> torch.Tensor:
    """Step by step, with the state scaled by exp(−m_t) so it never overflows."""
    b, nh, s, d = q.shape
    k = k * d**-0.5
    log_f = F.logsigmoid(fgate)
    c = q.new_zeros(b, nh, d, d)  # Σ exp(.) k vᵀ : [d_k, d_v]
    n = q.new_zeros(b, nh, d)
    m = q.new_full((b, nh), float("-inf"))
    out = []
    for t in range(s):
        m_new = torch.maximum(log_f[..., t] + m, igate[..., t])
        decay = torch.exp(log_f[..., t] + m - m_new)
        write = torch.exp(igate[..., t] - m_new)
        kt = k[..., t, :]
        outer = kt[..., :, None] * v[..., t, None, :]
        c = decay[..., None, None] * c + write[..., None, None] * outer
        n = decay[..., None] * n + write[..., None] * kt
        qt = q[..., t, :]
        num = (qt[..., None, :] @ c).squeeze(-2)
        den = (n * qt).sum(-1)
        out.append(num / (torch.maximum(den.abs(), torch.exp(-m_new)) + eps)[..., None])
        m = m_new
    return torch.stack(out, dim=-2)


def _chunk_length(s: int, chunk_size: int) -> int:
    """A chunk length of at most ``chunk_size``: a divisor of ``s`` no shorter than half of
    it if there is one (no padding; a square grid's side often is one), else equal chunks
    with less than one token of padding each."""
    if s <= chunk_size:
        return s
    for size in range(chunk_size, (chunk_size + 1) // 2 - 1, -1):
        if s % size == 0:
            return size
    return math.ceil(s / math.ceil(s / chunk_size))


class _ChunkLogs(NamedTuple):
    """The log-space gate quantities of the chunkwise forms, ``[B, NH, C, L]`` unless noted,
    for the gates padded at the end to C chunks of L tokens."""

    cum: torch.Tensor  # F_t within a chunk: Σ log σ(f̃) from the chunk's start to t
    rest: torch.Tensor  # ĩ_s − cum_s: log D_ts = cum_t + rest_s inside a chunk (s ≤ t)
    m: torch.Tensor  # the stabiliser m_t (running maximum of log D_ts over all s ≤ t)
    g: torch.Tensor  # [B, NH, C]: chunk c's largest log weight at its own end
    log_w: torch.Tensor  # [B, NH, C, C]: log weight of chunk c's state entering chunk a > c
    prev_m: torch.Tensor  # [B, NH, C]: m at the end of chunk a − 1 (−inf for a = 0)


def _chunk_logs(igate: torch.Tensor, fgate: torch.Tensor, size: int) -> _ChunkLogs:
    s = igate.shape[-1]
    num_chunks = math.ceil(s / size)
    if num_chunks * size > s:  # padding at the end reaches no real output (causality)
        igate, fgate = (F.pad(t, (0, num_chunks * size - s)) for t in (igate, fgate))
    shape = (*igate.shape[:-1], num_chunks, size)
    cum = F.logsigmoid(fgate).reshape(shape).cumsum(-1)
    rest = igate.reshape(shape) - cum
    m_intra = cum + rest.cummax(-1).values  # max over s ≤ t of cum_t + rest_s
    # Chunk c's state, stabilised by its largest log weight g_c, enters chunk a with
    # weight exp(T_{a−1} − T_c + g_c), T the cumulative chunk-end F (T_{−1} = 0).
    g = cum[..., -1] + rest.amax(-1)
    total = cum[..., -1].cumsum(-1)
    before = F.pad(total[..., :-1], (1, 0))
    log_w = before[..., :, None] - total[..., None, :] + g[..., None, :]
    log_w = log_w.masked_fill(
        ~_causal_mask(num_chunks, igate.device, strict=True), float("-inf")
    )
    prev_m = log_w.amax(-1)
    m = torch.maximum(m_intra, cum + prev_m[..., None])
    return _ChunkLogs(cum, rest, m, g, log_w, prev_m)


def mlstm_chunkwise(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
    fgate: torch.Tensor, *, chunk_size: int = DEFAULT_CHUNK_SIZE, eps: float = EPS,
    epilogue: Epilogue | None = None,
) -> torch.Tensor:
    """Linear in S: parallel attention inside chunks of at most ``chunk_size`` tokens
    (:func:`_chunk_length`), a ``[d, d]`` matrix state and a ``[d]`` normaliser state
    between them. The stabiliser is the running maximum of the log weights, which the
    chunk boundaries carry exactly, so even the 1e-6 epsilon is the parallel form's.

    Two schedules of the same arithmetic. On the CPU without autograd, chunk by chunk
    (:func:`_chunkwise_scan`): one state carried in place, each chunk's working set small
    enough to stay in cache, ~1.3x faster at 784 tokens and 2.6x at 196 (ViL-T's cell).
    Otherwise all chunks at once (:func:`_chunkwise_batched`): a few large differentiable
    products, and on a GPU a few large kernels rather than ~20 small ones per chunk.
    ``epilogue``: a per-token map of the output, applied per chunk by the first."""
    size = _chunk_length(q.shape[-2], chunk_size)
    inputs = (q, k, v, igate, fgate)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    if q.device.type == "cpu" and not needs_grad:
        return _chunkwise_scan(*inputs, size=size, eps=eps, epilogue=epilogue)
    h = _chunkwise_batched(*inputs, size=size, eps=eps)
    return h if epilogue is None else epilogue(h)


def _chunkwise_batched(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
    fgate: torch.Tensor, *, size: int, eps: float = EPS,
) -> torch.Tensor:
    """All chunks at once (differentiable). The sequence is cut into equal chunks of
    ``size``, the last padded at the end if needed. The denominator rides along with the
    numerator: ``v`` gets a column of ones and each state ``[C | n]`` one more column, so one
    product per chunk gives both. Every chunk reads a state (chunk 0's is empty, with
    weight 0), so no tensor is sliced by chunk."""
    b, nh, s, d = q.shape
    logs = _chunk_logs(igate, fgate, size)
    cum, rest, m = logs.cum, logs.rest, logs.m
    num_chunks = cum.shape[-2]
    padded = num_chunks * size
    if padded > s:
        q, k = (F.pad(t, (0, 0, 0, padded - s)) for t in (q, k))
    shape = (b, nh, num_chunks, size)
    q, k = (t.reshape(*shape, d).contiguous() for t in (q, k))
    v_aug = q.new_empty(b, nh, padded, d + 1)  # [v | 1], padding rows all zero
    v_aug[:, :, :s, :d] = v
    v_aug[:, :, :s, d] = 1.0
    v_aug[:, :, s:] = 0.0
    v_aug = v_aug.view(*shape, d + 1)
    # 1/√d is applied to every q·k term through the log weights (exp(log w + log_scale)).
    log_scale = -0.5 * math.log(d)

    # Chunk c's own contribution to later states, [C_c | n_c]ᵀ: [B, NH, C, d+1, d] (stored
    # transposed: the faster product on CPU), stabilised by g_c.
    kw = k * torch.exp(cum[..., -1:] + rest - logs.g[..., None] + log_scale)[..., None]
    chunk_state = v_aug.transpose(-2, -1) @ kw
    # The state entering chunk a: one [C, C] product over the chunks c < a.
    first = torch.zeros_like(logs.prev_m, dtype=torch.bool)
    first[..., 0] = True
    w = torch.exp(logs.log_w - logs.prev_m.masked_fill(first, 0.0)[..., None])  # row 0: 0
    prev_state = (w @ chunk_state.flatten(-2)).view(b, nh, num_chunks, d + 1, d)

    # Intra-chunk weights exp(log D_ts − m_t) = exp((cum_t − m_t) + rest_s), s ≤ t.
    # (The in-place ops below act on fresh tensors whose old values no backward needs.)
    weight = (cum - m + log_scale)[..., :, None] + rest[..., None, :]
    weight = weight.masked_fill_(~_causal_mask(size, q.device), float("-inf")).exp_()
    scores = q @ k.transpose(-2, -1) * weight
    q_inter = q * torch.exp(cum + logs.prev_m[..., None] - m)[..., None]  # 0 in chunk 0
    prev_state = prev_state.flatten(0, 2).transpose(-2, -1)
    out = (scores @ v_aug).flatten(0, 2).baddbmm_(q_inter.flatten(0, 2), prev_state)
    out = out.view(*shape, d + 1)
    num, den = out[..., :d], out[..., d]
    h = num * (1 / (torch.maximum(den.abs(), torch.exp(-m)) + eps))[..., None]  # mul < div
    return h.reshape(b, nh, padded, d)[:, :, :s]


def _chunkwise_scan(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
    fgate: torch.Tensor, *, size: int, eps: float = EPS, epilogue: Epilogue | None = None,
) -> torch.Tensor:
    """Chunk by chunk with the state updated in place (no autograd): per chunk, intra-chunk
    attention, the read of the incoming state, the normalisation, the epilogue, then the
    state update. Only the gates are padded; the last chunk may be shorter. q, k, v may be
    in any layout (a chunk of tokens-first ``[B, S, NH, d]`` memory is gathered in cache);
    the result is ``[B, NH, S, d]`` over tokens-first memory (``.transpose(1, 2)`` of it
    is contiguous), the layout the layer continues in."""
    b, nh, s, d = q.shape
    logs = _chunk_logs(igate, fgate, size)
    cum, rest, m, prev_m = (t.flatten(0, 1) for t in (logs.cum, logs.rest, logs.m, logs.prev_m))
    num_chunks = cum.shape[1]
    log_scale = -0.5 * math.log(d)
    row = cum - m + log_scale  # intra weight exp(row_t + rest_s), s ≤ t
    read = torch.exp(cum + prev_m[..., None] - m)  # weight of the incoming state at t
    floor = torch.exp(-m)
    # The state after chunk a is kept stabilised by prev_m[a + 1] (m at a's end):
    # state_{a+1} = exp(F_a + prev_m[a] − prev_m[a+1]) state_a + Σ_s exp(F_a + rest_s −
    # prev_m[a+1]) k_s v_sᵀ/√d, with F_a the chunk's total log forget gate.
    end = cum[..., -1]
    next_m = prev_m[:, 1:]
    write = torch.exp(end[:, :-1, None] + rest[:, :-1] - next_m[..., None] + log_scale)
    decay = torch.exp(end[:, :-1] + prev_m[:, :-1] - next_m)  # 0 after chunk 0
    upper = ~_causal_mask(size, q.device)
    h = q.new_empty(b, s, nh, d).transpose(1, 2)
    state = norm = None  # Σ w k vᵀ [B·NH, d, d] and Σ w k [B·NH, d]
    for a in range(num_chunks):
        t0, t1 = a * size, min(s, (a + 1) * size)
        n = t1 - t0
        qa, ka, va = (t[:, :, t0:t1].reshape(b * nh, n, d) for t in (q, k, v))
        weight = row[:, a, :n, None] + rest[:, a, None, :n]
        weight = weight.masked_fill_(upper[:n, :n], float("-inf")).exp_()
        scores = torch.bmm(qa, ka.transpose(1, 2)).mul_(weight)
        den = scores.sum(-1)
        if state is None:
            num = torch.bmm(scores, va)
        else:
            num = torch.bmm(qa, state).mul_(read[:, a, :n, None]).baddbmm_(scores, va)
            den.addcmul_(read[:, a, :n], torch.bmm(qa, norm[..., None]).squeeze(-1))
        scale = torch.maximum(den.abs_(), floor[:, a, :n]).add_(eps).reciprocal_()
        out = num.mul_(scale[..., None]).view(b, nh, n, d)
        h[:, :, t0:t1] = out if epilogue is None else epilogue(out)
        if a + 1 < num_chunks:
            kw = ka * write[:, a, :n, None]
            if state is None:
                state, norm = torch.bmm(kw.transpose(1, 2), va), kw.sum(1)
            else:
                state.mul_(decay[:, a, None, None]).baddbmm_(kw.transpose(1, 2), va)
                norm.mul_(decay[:, a, None]).add_(kw.sum(1))
    return h


def mlstm_kernels(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
    fgate: torch.Tensor, *, chunk_size: int = DEFAULT_CHUNK_SIZE, eps: float = EPS,
) -> torch.Tensor:
    """The ``mlstm-kernels`` package's chunkwise Triton kernel (GPU). Not a dependency, and
    not exercised by this project's CPU test suite: the package applies its own
    stabilisation, so expect agreement with the other forms to float tolerance only."""
    try:
        from mlstm_kernels.torch import get_mlstm_kernel
    except ImportError as err:
        raise ImportError(
            "backend='kernels' needs the optional 'mlstm-kernels' package (GPU Triton kernels): "
            "pip install mlstm-kernels, or use backend='chunkwise' (pure PyTorch, linear in S)"
        ) from err
    kernel = get_mlstm_kernel("chunkwise--triton_limit_chunk")
    q, k, v, igate, fgate = (t.contiguous() for t in (q, k, v, igate, fgate))  # heads-first
    return kernel(q=q, k=k, v=v, i=igate, f=fgate, eps=eps, chunk_size=chunk_size)


def mlstm(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
    fgate: torch.Tensor, *, backend: str = "auto", chunk_size: int = DEFAULT_CHUNK_SIZE,
    epilogue: Epilogue | None = None,
) -> torch.Tensor:
    """The mLSTM cell with the chosen backend: ``[B, NH, S, d] -> [B, NH, S, d]``, inputs
    in any memory layout. ``epilogue``: a per-token map of the output (such as ViL's
    per-head norm), which the chunkwise form applies chunk by chunk while the chunk is
    still in cache and the others apply to the whole output."""
    if backend == "auto":
        backend = "chunkwise" if q.shape[-2] > chunk_size else "parallel"
    if backend == "chunkwise":
        return mlstm_chunkwise(q, k, v, igate, fgate, chunk_size=chunk_size, epilogue=epilogue)
    if backend == "parallel":
        h = mlstm_parallel(q, k, v, igate, fgate)
    elif backend == "recurrent":
        h = mlstm_recurrent(q, k, v, igate, fgate)
    elif backend == "kernels":
        h = mlstm_kernels(q, k, v, igate, fgate, chunk_size=chunk_size)
    else:
        raise ValueError(f"unknown mLSTM backend {backend!r}; choose from {BACKENDS}")
    return h if epilogue is None else epilogue(h)


# ---------------------------------------------------------------------------------------
# Norms and maps of the layer
# ---------------------------------------------------------------------------------------
class UnitOffsetLayerNorm(nn.Module):
    """LayerNorm whose scale is ``1 + γ`` (γ stored as ``weight``, initialised to 0), as in
    xLSTM/ViL: weight decay then pulls the scale towards 1, not 0. ``[..., C] -> [..., C]``."""

    def __init__(self, dim: int, *, eps: float = 1e-5, bias: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), 1 + self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, bias={self.bias is not None}"


class HeadNorm(UnitOffsetLayerNorm):
    """Normalise each head's channels per token (no per-head affine), then scale by
    ``1 + γ`` (and add a bias), γ of length ``NH·d`` over the heads in order. On heads-first
    ``[B, NH, S, d]``, which it keeps (no transposing copy): ``.transpose(1, 2)`` of the
    result, flattened, is the tokens-first ``[B, S, NH·d]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nh, d = x.shape[1], x.shape[-1]
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
class MLSTMMixer(nn.Module):
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
    """

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
        self.outnorm = HeadNorm(inner, bias=norm_bias)
        self.skip = nn.Parameter(torch.ones(inner))
        self.proj_down = nn.Linear(inner, dim, bias=bias)
        self._orders: dict[tuple[int, int, int, str, str], torch.Tensor | None] = {}
        self.reset_parameters()

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in BACKENDS:
            raise ValueError(f"unknown mLSTM backend {value!r}; choose from {BACKENDS}")
        self._backend = value

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
    def _order(self, grid: tuple[int, int], prefix: int, traversal: str) -> torch.Tensor | None:
        """Indices putting the tokens in scan order (None: already in order)."""
        key = (grid[0], grid[1], prefix, traversal, self.cls_position)
        if key not in self._orders:
            h, w = grid
            idx = torch.arange(h * w).view(h, w) + prefix
            if traversal.startswith("col"):
                idx = idx.t()
            idx = idx.flatten()
            at = 0 if self.cls_position == "first" else h * w // 2
            idx = torch.cat([idx[:at], torch.arange(prefix), idx[at:]])
            if traversal.endswith("reversed"):
                idx = idx.flip(0)
            identity = bool((idx == torch.arange(idx.numel())).all())
            self._orders[key] = None if identity else idx
        return self._orders[key]

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
            outer = self._order(grid, prefix, self.traversals[0])
            x = x if outer is None else x[:, outer.to(x.device)]
        x_m = F.linear(x, weight_m, bias_m)
        z, gates_m = F.linear(x, weight_zg).split(e, dim=-1)  # biases added to the parts:
        z = z if bias_z is None else z + bias_z  # (addmm would first copy a bias to all)
        gates_m = gates_m + gate_bias
        out = None
        for traversal in self.traversals:
            order = None if len(self.traversals) == 1 else self._order(grid, prefix, traversal)
            if order is None:
                seq, seq_gates = x_m, gates_m
            else:
                order = order.to(x.device)
                seq, seq_gates = x_m[:, order], gates_m[:, order]
            scan_grid = grid if traversal.startswith("row") else (grid[1], grid[0])
            at = 0 if self.cls_position == "first" else grid[0] * grid[1] // 2
            if traversal.endswith("reversed"):
                at = n - at - prefix
            h = self._scan(seq, seq_gates, w_c, scan_grid, at, prefix)
            if order is not None:
                h = torch.empty_like(h).index_copy_(1, order, h)
            out = h if out is None else out + h
        assert out is not None
        if len(self.traversals) > 1:
            out = out / len(self.traversals)
        y = self.proj_down(out * F.silu(z))
        if outer is not None:
            y = torch.empty_like(y).index_copy_(1, outer.to(x.device), y)
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
            size = _chunk_length(s, self.chunk_size)
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
    if backend not in BACKENDS:
        raise ValueError(f"unknown mLSTM backend {backend!r}; choose from {BACKENDS}")
    count = 0
    for module in model.modules():
        if isinstance(module, MLSTMMixer):
            module.backend = backend
            if chunk_size is not None:
                module.chunk_size = chunk_size
            count += 1
    return count
