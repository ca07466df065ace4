"""The mLSTM cell (xLSTM, arXiv 2405.04517) in interchangeable forms.

Every form maps ``q, k, v`` ``[B, NH, S, d]`` and the gate pre-activations ``igate`` (ĩ),
``fgate`` (f̃) ``[B, NH, S]`` to ``h̃`` ``[B, NH, S, d]``. Per head, with head dim d::

    C_t = σ(f̃_t) C_{t-1} + exp(ĩ_t) v_t k_tᵀ/√d       n_t = σ(f̃_t) n_{t-1} + exp(ĩ_t) k_t/√d
    h̃_t = C_t q_t / max(|n_tᵀ q_t|, 1)

computed in the stabilised form of the authors' code: with F_t = Σ_{r≤t} log σ(f̃_r),
log D_ts = F_t − F_s + ĩ_s (s ≤ t) and m_t = max_s log D_ts,

    C̃_ts = (q_t·k_s/√d) exp(log D_ts − m_t)
    h̃_t  = Σ_s C̃_ts v_s / (max(|Σ_s C̃_ts|, exp(−m_t)) + 1e-6)

:func:`mlstm_parallel` is these two lines as written. Backends (all give the same values
and gradients; ``tests/test_mlstm.py`` pins them to each other):

* ``parallel``: the formula above, materialising ``[B, NH, S, S]`` tensors (quadratic).
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

import contextlib
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "BACKENDS",
    "DEFAULT_CHUNK_SIZE",
    "EPS",
    "TRAVERSALS",
    "Epilogue",
    "check_backend",
    "chunk_length",
    "mlstm",
    "mlstm_chunkwise",
    "mlstm_kernels",
    "mlstm_parallel",
    "mlstm_recurrent",
]

BACKENDS = ("auto", "parallel", "chunkwise", "recurrent", "kernels")
#: Scan orders of the grid: row-major from the top-left (``row``) or bottom-right
#: (``row_reversed``), column-major from the top-left (``col``) or bottom-right.
TRAVERSALS = ("row", "row_reversed", "col", "col_reversed")
DEFAULT_CHUNK_SIZE = 64
EPS = 1e-6
#: A per-token map of the cell's output, ``[B, NH, n, d] -> [B, NH, n, d]``.
Epilogue = Callable[[torch.Tensor], torch.Tensor]


def check_backend(backend: str, *, what: str = "mLSTM backend") -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else a ``ValueError`` naming it and
    the choices (``what`` names the option in that message)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown {what} {backend!r}; choose from {', '.join(BACKENDS)}")
    return backend


def _causal_mask(n: int, device: torch.device, *, strict: bool = False) -> torch.Tensor:
    """``[n, n]`` bool, True on and below the diagonal (strictly below if ``strict``)."""
    i = torch.arange(n, device=device)
    return i[:, None] > i[None, :] if strict else i[:, None] >= i[None, :]


# ---------------------------------------------------------------------------------------
# The specification forms: parallel (the stabilised equations) and recurrent (step by step)
# ---------------------------------------------------------------------------------------
def mlstm_parallel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
    fgate: torch.Tensor, *, eps: float = EPS,
) -> torch.Tensor:
    """The stabilised quadratic form, ``[B, NH, S, d]`` (gates ``[B, NH, S]``) ->
    ``[B, NH, S, d]``, line by line the equations of the module docstring::

        F_t      = Σ_{r≤t} log σ(f̃_r)
        log D_ts = F_t − F_s + ĩ_s   for s ≤ t (−∞ above the diagonal)
        m_t      = max_s log D_ts
        C̃_ts     = (q_t·k_s/√d) exp(log D_ts − m_t)
        h̃_t      = Σ_s C̃_ts v_s / (max(|Σ_s C̃_ts|, exp(−m_t)) + eps)
    """
    s, d = q.shape[-2:]
    cum_log_f = F.logsigmoid(fgate).cumsum(-1)  # F_t: [B, NH, S]
    log_d = cum_log_f[..., :, None] - cum_log_f[..., None, :] + igate[..., None, :]
    log_d = log_d.masked_fill(~_causal_mask(s, q.device), float("-inf"))  # [B, NH, S, S]
    m = log_d.amax(-1, keepdim=True)  # [B, NH, S, 1]
    c = (q @ k.transpose(-2, -1)) * (d**-0.5) * torch.exp(log_d - m)  # C̃
    normaliser = torch.maximum(c.sum(-1, keepdim=True).abs(), torch.exp(-m)) + eps
    return (c / normaliser) @ v


def mlstm_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
    fgate: torch.Tensor, *, eps: float = EPS,
) -> torch.Tensor:
    """Step by step, ``[B, NH, S, d] -> [B, NH, S, d]``, with the state scaled by
    exp(−m_t) so that it never overflows (m_t the running maximum of the log weights)."""
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


# ---------------------------------------------------------------------------------------
# The chunkwise form: parallel inside chunks, a recurrent state between them
# ---------------------------------------------------------------------------------------
def chunk_length(s: int, chunk_size: int) -> int:
    """A chunk length of at most ``chunk_size`` for ``s`` tokens: a divisor of ``s`` no
    shorter than half of it if there is one (no padding; a square grid's side often is
    one), else equal chunks with less than one token of padding each."""
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
    """The gates ``[B, NH, S]`` in chunks of ``size`` tokens (see :class:`_ChunkLogs`)."""
    s = igate.shape[-1]
    num_chunks = math.ceil(s / size)
    if num_chunks * size > s:  # padding at the end reaches no real output (causality)
        igate, fgate = (F.pad(t, (0, num_chunks * size - s)) for t in (igate, fgate))
    shape = (*igate.shape[:-1], num_chunks, size)
    cum = F.logsigmoid(fgate).reshape(shape).cumsum(-1)
    rest = igate.reshape(shape) - cum
    # max over s ≤ t of cum_t + rest_s. A running maximum over the chunk as a masked max
    # over [L, L] pairs (the intra-chunk attention's size anyway): exactly cummax's
    # values, but in operators every exporter has (ONNX has no cummax).
    upper = ~_causal_mask(size, igate.device)
    m_intra = cum + rest[..., None, :].masked_fill(upper, float("-inf")).amax(-1)
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
    """Linear in S, ``[B, NH, S, d] -> [B, NH, S, d]``: parallel attention inside chunks
    of at most ``chunk_size`` tokens (:func:`chunk_length`), a ``[d, d]`` matrix state and
    a ``[d]`` normaliser state between them. The stabiliser is the running maximum of the
    log weights, which the chunk boundaries carry exactly, so even the 1e-6 epsilon is the
    parallel form's.

    Two schedules of the same arithmetic. On the CPU without autograd, chunk by chunk
    (:func:`_chunkwise_scan`): one state carried in place, each chunk's working set small
    enough to stay in cache, ~1.3x faster at 784 tokens and 2.6x at 196 (ViL-T's cell).
    Otherwise all chunks at once (:func:`_chunkwise_batched`): a few large differentiable
    products, and on a GPU a few large kernels rather than ~20 small ones per chunk.
    ``epilogue``: a per-token map of the output, applied per chunk by the first."""
    size = chunk_length(q.shape[-2], chunk_size)
    inputs = (q, k, v, igate, fgate)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    # Traced (torch.export, ONNX, torch.compile): the all-chunks form, one graph of a few
    # large products rather than a loop unrolled over the chunks with in-place updates.
    tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()
    if q.device.type == "cpu" and not needs_grad and not tracing:
        return _chunkwise_scan(*inputs, size=size, eps=eps, epilogue=epilogue)
    h = _chunkwise_batched(*inputs, size=size, eps=eps)
    return h if epilogue is None else epilogue(h)


def _values_and_ones(v: torch.Tensor, length: int) -> torch.Tensor:
    """``[v | 1]``: ``[B, NH, S, d] -> [B, NH, length, d + 1]``, the rows past S all zero
    (padding), so that one product gives a numerator and its normaliser."""
    b, nh, s, d = v.shape
    v_aug = v.new_empty(b, nh, length, d + 1)
    v_aug[:, :, :s, :d] = v
    v_aug[:, :, :s, d] = 1.0
    v_aug[:, :, s:] = 0.0
    return v_aug


def _incoming_states(
    k: torch.Tensor, v_aug: torch.Tensor, logs: _ChunkLogs, log_scale: float
) -> torch.Tensor:
    """The state ``[C | n]ᵀ`` entering each chunk, ``[B, NH, C, d+1, d]``, stabilised by
    ``logs.prev_m`` (chunk 0's is empty). ``k`` ``[B, NH, C, L, d]``, ``v_aug``
    ``[B, NH, C, L, d+1]``."""
    b, nh, num_chunks, _, d = k.shape
    # Chunk c's own contribution to later states, [C_c | n_c]ᵀ: [B, NH, C, d+1, d] (stored
    # transposed: the faster product on CPU), stabilised by g_c.
    kw = k * torch.exp(logs.cum[..., -1:] + logs.rest - logs.g[..., None] + log_scale)[..., None]
    chunk_state = v_aug.transpose(-2, -1) @ kw
    # The state entering chunk a: one [C, C] product over the chunks c < a.
    first = torch.zeros_like(logs.prev_m, dtype=torch.bool)
    first[..., 0] = True
    w = torch.exp(logs.log_w - logs.prev_m.masked_fill(first, 0.0)[..., None])  # row 0: 0
    return (w @ chunk_state.flatten(-2)).view(b, nh, num_chunks, d + 1, d)


def _chunkwise_batched(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
    fgate: torch.Tensor, *, size: int, eps: float = EPS,
) -> torch.Tensor:
    """All chunks at once (differentiable), ``[B, NH, S, d] -> [B, NH, S, d]``. The
    sequence is cut into equal chunks of ``size``, the last padded at the end if needed.
    The denominator rides along with the numerator: ``v`` gets a column of ones and each
    state ``[C | n]`` one more column, so one product per chunk gives both. Every chunk
    reads a state (chunk 0's is empty, with weight 0), so no tensor is sliced by chunk."""
    b, nh, s, d = q.shape
    logs = _chunk_logs(igate, fgate, size)
    cum, rest, m = logs.cum, logs.rest, logs.m
    num_chunks = cum.shape[-2]
    padded = num_chunks * size
    if padded > s:
        q, k = (F.pad(t, (0, 0, 0, padded - s)) for t in (q, k))
    shape = (b, nh, num_chunks, size)
    q, k = (t.reshape(*shape, d).contiguous() for t in (q, k))
    v_aug = _values_and_ones(v, padded).view(*shape, d + 1)
    # 1/√d is applied to every q·k term through the log weights (exp(log w + log_scale)).
    log_scale = -0.5 * math.log(d)
    prev_state = _incoming_states(k, v_aug, logs, log_scale)

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


class _ScanWeights(NamedTuple):
    """The per-token weights of :func:`_chunkwise_scan`, ``[B·NH, C, L]`` unless noted."""

    rest: torch.Tensor  # ĩ_s − cum_s, as in _ChunkLogs
    row: torch.Tensor  # cum_t − m_t − log √d: the intra-chunk weight is exp(row_t + rest_s)
    read: torch.Tensor  # weight of the incoming state at t
    floor: torch.Tensor  # exp(−m_t), the normaliser's lower bound
    write: torch.Tensor  # [B·NH, C−1, L]: weight of token s in the state after its chunk
    decay: torch.Tensor  # [B·NH, C−1]: weight of the old state in the state after chunk a


def _scan_weights(logs: _ChunkLogs, d: int) -> _ScanWeights:
    """The chunk logs turned into the weights the chunk-by-chunk schedule multiplies by."""
    cum, rest, m, prev_m = (t.flatten(0, 1) for t in (logs.cum, logs.rest, logs.m, logs.prev_m))
    log_scale = -0.5 * math.log(d)
    row = cum - m + log_scale
    read = torch.exp(cum + prev_m[..., None] - m)
    floor = torch.exp(-m)
    # The state after chunk a is kept stabilised by prev_m[a + 1] (m at a's end):
    # state_{a+1} = exp(F_a + prev_m[a] − prev_m[a+1]) state_a + Σ_s exp(F_a + rest_s −
    # prev_m[a+1]) k_s v_sᵀ/√d, with F_a the chunk's total log forget gate.
    end = cum[..., -1]
    next_m = prev_m[:, 1:]
    write = torch.exp(end[:, :-1, None] + rest[:, :-1] - next_m[..., None] + log_scale)
    decay = torch.exp(end[:, :-1] + prev_m[:, :-1] - next_m)  # 0 after chunk 0
    return _ScanWeights(rest, row, read, floor, write, decay)


def _chunkwise_scan(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
    fgate: torch.Tensor, *, size: int, eps: float = EPS, epilogue: Epilogue | None = None,
) -> torch.Tensor:
    """Chunk by chunk with the state updated in place (no autograd), ``[B, NH, S, d] ->
    [B, NH, S, d]``: per chunk, intra-chunk attention, the read of the incoming state, the
    normalisation, the epilogue, then the state update. Only the gates are padded; the
    last chunk may be shorter. q, k, v may be in any layout (a chunk of tokens-first
    ``[B, S, NH, d]`` memory is gathered in cache); the result is over tokens-first memory
    (``.transpose(1, 2)`` of it is contiguous), the layout the layer continues in."""
    b, nh, s, d = q.shape
    w = _scan_weights(_chunk_logs(igate, fgate, size), d)
    upper = ~_causal_mask(size, q.device)
    h = q.new_empty(b, s, nh, d).transpose(1, 2)
    state = norm = None  # Σ w k vᵀ [B·NH, d, d] and Σ w k [B·NH, d]
    for a in range(w.row.shape[1]):
        t0, t1 = a * size, min(s, (a + 1) * size)
        n = t1 - t0
        qa, ka, va = (t[:, :, t0:t1].reshape(b * nh, n, d) for t in (q, k, v))
        weight = w.row[:, a, :n, None] + w.rest[:, a, None, :n]
        weight = weight.masked_fill_(upper[:n, :n], float("-inf")).exp_()
        scores = torch.bmm(qa, ka.transpose(1, 2)).mul_(weight)
        den = scores.sum(-1)
        if state is None:
            num = torch.bmm(scores, va)
        else:
            num = torch.bmm(qa, state).mul_(w.read[:, a, :n, None]).baddbmm_(scores, va)
            den.addcmul_(w.read[:, a, :n], torch.bmm(qa, norm[..., None]).squeeze(-1))
        scale = torch.maximum(den.abs_(), w.floor[:, a, :n]).add_(eps).reciprocal_()
        out = num.mul_(scale[..., None]).view(b, nh, n, d)
        h[:, :, t0:t1] = out if epilogue is None else epilogue(out)
        if a + 1 < w.row.shape[1]:
            kw = ka * w.write[:, a, :n, None]
            if state is None:
                state, norm = torch.bmm(kw.transpose(1, 2), va), kw.sum(1)
            else:
                state.mul_(w.decay[:, a, None, None]).baddbmm_(kw.transpose(1, 2), va)
                norm.mul_(w.decay[:, a, None]).add_(kw.sum(1))
    return h


# ---------------------------------------------------------------------------------------
# An external form, and the dispatcher
# ---------------------------------------------------------------------------------------
def mlstm_kernels(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
    fgate: torch.Tensor, *, chunk_size: int = DEFAULT_CHUNK_SIZE, eps: float = EPS,
) -> torch.Tensor:
    """The ``mlstm-kernels`` package's chunkwise Triton kernel (GPU), ``[B, NH, S, d] ->
    [B, NH, S, d]``. Not a dependency, and not exercised by this project's CPU test suite:
    the package applies its own stabilisation, so expect agreement with the other forms to
    float tolerance only."""
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
    """The mLSTM cell with the chosen backend: ``[B, NH, S, d]`` (gates ``[B, NH, S]``) ->
    ``[B, NH, S, d]``, inputs in any memory layout. ``epilogue``: a per-token map of the
    output (such as ViL's per-head norm), which the chunkwise form applies chunk by chunk
    while the chunk is still in cache and the others apply to the whole output."""
    if check_backend(backend) == "auto":
        backend = "chunkwise" if q.shape[-2] > chunk_size else "parallel"
    device_type, dtype = q.device.type, q.dtype
    # (a device without autocast, such as "meta", has none to be enabled)
    autocast = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(
        device_type)
    if autocast or dtype in (torch.float16, torch.bfloat16):
        # The cell runs in float32 in half precision (autocast or a .half() model): its
        # weights are exponentials of running sums of log gates, and under autocast its
        # forms would mix half-precision products with float32 exponentials (``baddbmm_``
        # refuses mixed dtypes). Under autocast the result stays float32 (the layer's next
        # products go back to half precision); a half model gets its own dtype back.
        off = (torch.autocast(device_type, enabled=False) if autocast
               else contextlib.nullcontext())
        with off:
            q, k, v, igate, fgate = (t.float() for t in (q, k, v, igate, fgate))
            h = _run_cell(q, k, v, igate, fgate, backend, chunk_size, epilogue)
        return h if autocast else h.to(dtype)
    return _run_cell(q, k, v, igate, fgate, backend, chunk_size, epilogue)


def _run_cell(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
    fgate: torch.Tensor, backend: str, chunk_size: int, epilogue: Epilogue | None,
) -> torch.Tensor:
    if backend == "chunkwise":
        return mlstm_chunkwise(q, k, v, igate, fgate, chunk_size=chunk_size, epilogue=epilogue)
    if backend == "parallel":
        h = mlstm_parallel(q, k, v, igate, fgate)
    elif backend == "recurrent":
        h = mlstm_recurrent(q, k, v, igate, fgate)
    else:  # "kernels"
        h = mlstm_kernels(q, k, v, igate, fgate, chunk_size=chunk_size)
    return h if epilogue is None else epilogue(h)
