"""Vision Mamba's bidirectional Mamba layer ("Vision Mamba: Efficient Visual Representation
Learning with Bidirectional State Space Model", arXiv 2401.09417; the authors' code
hustvl/Vim, ``bimamba_type="v2"``), in plain PyTorch: no ``mamba_ssm`` or
``causal_conv1d`` build, on every device.

Per direction (the backward one runs on the flipped sequence with its own conv, projections,
A and D, and is flipped back), with E the width, D_i = 2E, N the state size::

    [x ‖ z] = in_proj(u)                                   (shared by both directions)
    v = SiLU(causal depthwise conv1d(x))                   (kernel K, bias, left zero padding)
    (δ̃, B, C) = x_proj(v);  Δ = softplus(dt_proj(δ̃))      (δ̃ ∈ R^R, B, C ∈ R^N)
    A = -exp(A_log) ∈ R^{D_i×N}
    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t v_t) ⊗ B_t            (the selective scan)
    y_t = h_t C_t + D ⊙ v_t;   o = y ⊙ SiLU(z)
    out = out_proj((o_fwd + flip(o_bwd)) / 2)

The selective scan has three forms, equal up to rounding (``scan``):

- ``reference``: the recurrence above written out step by step (autograd through the loop);
  readable, and the form the closed-form MAC count is checked against;
- ``recurrent``: the same recurrence as one fused multiply-add per step on time-major,
  contiguous states, with a hand-written backward (a reverse scan) that recomputes the
  states instead of storing them, as the authors' CUDA kernel does. Linear in the sequence
  length in time and memory; the fastest form on a CPU, where the per-step state is small
  enough to stay in cache;
- ``chunked``: the sequence cut into chunks; within a chunk, a log-depth (Hillis-Steele)
  scan of the pairs (decay, input) for all chunks at once, whose decays are products of
  numbers in (0, 1] (no exponent of a difference, so nothing overflows in float32 or when
  the input is bfloat16); between chunks, the states carried one chunk at a time. Few,
  large operations: the form for GPUs.

``auto`` picks ``recurrent`` on a CPU and ``chunked`` elsewhere. The scan always runs in
float32 (float64 for a float64 input: a float64 model never down-casts), under autocast too.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tokenmixers.layers import is_fx_proxy
from tokenmixers.mixers.base import TokenMixer, Topology, fx_leaf_call, register_mixer

# One call node where torch.fx traces (fx.wrap patches the calling module's names).
torch.fx.wrap("fx_leaf_call")

__all__ = [
    "SCANS",
    "BiMambaMixer",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_recurrent",
    "selective_scan_reference",
]

SCANS = ("auto", "reference", "recurrent", "chunked")
CLS_POSITIONS = ("middle", "first")
DEFAULT_SCAN_CHUNK = 32


# ---------------------------------------------------------------------------------------
# The selective scan: u, delta [B, L, D]; A [D, N]; B, C [B, L, N]; D [D] -> y [B, L, D]
# ---------------------------------------------------------------------------------------
def selective_scan_reference(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor,
) -> torch.Tensor:
    """``h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) ⊗ B_t``, ``y_t = h_t C_t + D ⊙ u_t``, one
    step at a time (the equations as written)."""
    decay = torch.exp(delta.unsqueeze(-1) * _steps_A(A))  # [B, L, D, N]
    drive = (delta * u).unsqueeze(-1) * B.unsqueeze(2)  # [B, L, D, N]
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[-1])
    ys = []
    for t in range(u.shape[1]):
        h = decay[:, t] * h + drive[:, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, t]))
    return torch.stack(ys, dim=1) + u * _steps_D(D)


def _steps_A(A: torch.Tensor) -> torch.Tensor:
    """``A``, per row ``[B, D, N]`` or shared ``[D, N]``, to broadcast over ``[B, L, D, N]``."""
    return A.unsqueeze(1) if A.dim() == 3 else A


def _steps_D(D: torch.Tensor) -> torch.Tensor:
    """``D``, per row ``[B, D]`` or shared ``[D]``, to broadcast over ``[B, L, D]``."""
    return D.unsqueeze(1) if D.dim() == 2 else D


def _decay_and_drive(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Time-major, contiguous ``exp(Δ A)`` and ``(Δ u) ⊗ B``: ``[L, B, D, N]`` each."""
    dt = delta.transpose(0, 1)
    decay = torch.exp(dt.unsqueeze(-1) * A)
    drive = (dt * u.transpose(0, 1)).unsqueeze(-1) * B.transpose(0, 1).unsqueeze(2)
    return decay, drive


#: Elements of one block's ``[T, B, D, N]`` tensors: blocks of steps small enough to stay
#: in a core's cache while they are scanned (about 1 MiB in float32).
_BLOCK_ELEMENTS = 1 << 18


def _blocks(u: torch.Tensor, num_state: int) -> list[tuple[int, int]]:
    b, length, d = u.shape
    if torch.compiler.is_compiling():  # traced (torch.export, ONNX): no guard on the batch
        return [(0, length)]
    size = max(1, min(length, _BLOCK_ELEMENTS // max(1, b * d * num_state)))
    return [(s, min(s + size, length)) for s in range(0, length, size)]


def _block_states(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
    start: torch.Tensor | None, s: int, e: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps ``s:e`` from state ``start`` (None: zero): (decay, states), time-major."""
    decay, h = _decay_and_drive(u[:, s:e], delta[:, s:e], A, B[:, s:e])
    hs, ds = h.unbind(0), decay.unbind(0)  # the steps' views, made once
    if start is not None:
        hs[0].addcmul_(ds[0], start)
    for t in range(1, len(hs)):  # one fused multiply-add a step on a [B, D, N] slab
        hs[t].addcmul_(ds[t], hs[t - 1])
    return decay, h


def _readout(h: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """``y_t = h_t C_t`` for time-major states ``[T, B, D, N]``, ``C`` ``[B, T, N]`` ->
    ``[B, T, D]``."""
    return torch.matmul(h, C.transpose(0, 1).unsqueeze(-1)).squeeze(-1).transpose(0, 1)


def _recurrent_forward(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor,
) -> torch.Tensor:
    """The scan block by block."""
    y = torch.empty_like(u)
    state = None
    for s, e in _blocks(u, A.shape[-1]):
        _, h = _block_states(u, delta, A, B, state, s, e)
        y[:, s:e] = _readout(h, C[:, s:e])
        state = h[-1]
    return y.addcmul_(u, _steps_D(D))


def _block_starts(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
    blocks: list[tuple[int, int]],
) -> list[torch.Tensor | None]:
    """Each block's start state (None: zero), the recurrence run over every block but the
    last, without the read-out: nothing to recompute when the sequence is one block."""
    starts: list[torch.Tensor | None] = [None]
    for s, e in blocks[:-1]:
        starts.append(_block_states(u, delta, A, B, starts[-1], s, e)[1][-1].clone())
    return starts


class _RecurrentScan(torch.autograd.Function):
    """The recurrent scan with the gradient of the recurrence written out (a reverse scan),
    recomputing the states block by block in the backward pass instead of storing them."""

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                B: torch.Tensor, C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(u, delta, A, B, C, D)
        return _recurrent_forward(u, delta, A, B, C, D)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor, ...]:
        u, delta, A, B, C, D = ctx.saved_tensors
        blocks = _blocks(u, A.shape[-1])
        starts = _block_starts(u, delta, A, B, blocks)
        g_u, g_delta = torch.empty_like(u), torch.empty_like(delta)
        g_B, g_C = torch.empty_like(B), torch.empty_like(C)
        g_A = torch.zeros_like(A)
        carry = None  # exp(Δ_e A) ⊙ dL/dh_e from the block after this one
        for (s, e), start in reversed(list(zip(blocks, starts))):
            decay, h = _block_states(u, delta, A, B, start, s, e)
            gy_t = gy[:, s:e].transpose(0, 1)  # [T, B, D]
            dt, u_t = delta[:, s:e].transpose(0, 1), u[:, s:e].transpose(0, 1)
            B_t, C_t = B[:, s:e].transpose(0, 1), C[:, s:e].transpose(0, 1)  # [T, B, N]
            g_C[:, s:e] = torch.einsum("lbdn,lbd->lbn", h, gy_t).transpose(0, 1)
            # dL/dh_t = C_t gy_t + exp(Δ_{t+1} A) ⊙ dL/dh_{t+1}: a scan from the end
            gh = gy_t.unsqueeze(-1) * C_t.unsqueeze(2)
            if carry is not None:
                gh[-1].add_(carry)
            ghs, ds = gh.unbind(0), decay.unbind(0)
            for t in range(len(ghs) - 2, -1, -1):
                ghs[t].addcmul_(ds[t + 1], ghs[t + 1])
            carry = decay[0] * gh[0]
            # through decay_t = exp(Δ_t A): d/d(Δ_t A) = dL/dh_t ⊙ h_{t-1} ⊙ decay_t
            g_dA = h.roll(1, 0)
            if start is None:
                g_dA[0].zero_()
            else:
                g_dA[0].copy_(start)
            g_dA.mul_(gh).mul_(decay)
            del h, decay
            g_A.add_(torch.einsum("lbdn,lbd->dn" if A.dim() == 2 else "lbdn,lbd->bdn", g_dA, dt))
            gh_B = torch.einsum("lbdn,lbn->lbd", gh, B_t)  # through drive = (Δ u) ⊗ B
            g_B[:, s:e] = torch.einsum("lbdn,lbd->lbn", gh, dt * u_t).transpose(0, 1)
            g_delta[:, s:e] = (torch.einsum("lbdn,dn->lbd" if A.dim() == 2 else "lbdn,bdn->lbd",
                                            g_dA, A) + gh_B * u_t
                               ).transpose(0, 1)
            g_u[:, s:e] = (gh_B * dt + gy_t * D).transpose(0, 1)
        g_D = (gy * u).sum(dim=(0, 1) if D.dim() == 1 else 1)
        return g_u, g_delta, g_A, g_B, g_C, g_D


def selective_scan_recurrent(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor,
) -> torch.Tensor:
    """The recurrence, one fused multiply-add per step, in cache-sized blocks of steps; its
    backward recomputes the states (memory linear in the sequence, not in the states)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C, D)):
        return _RecurrentScan.apply(u, delta, A, B, C, D)
    return _recurrent_forward(u, delta, A, B, C, D)


def selective_scan_chunked(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor, chunk_size: int = DEFAULT_SCAN_CHUNK,
) -> torch.Tensor:
    """Log-depth scans inside chunks of ``chunk_size`` steps, states carried between
    chunks. Linear in the sequence length: ``L·log2(chunk)`` work, ``L / chunk`` steps."""
    b, length, d = u.shape
    n = A.shape[-1]
    decay = torch.exp(delta.unsqueeze(-1) * _steps_A(A))  # [B, L, D, N]
    drive = (delta * u).unsqueeze(-1) * B.unsqueeze(2)
    size = max(1, min(chunk_size, length))
    chunks = -(-length // size)
    pad = chunks * size - length
    if pad:  # pad the end with identity steps (decay 1, no drive): earlier steps unchanged
        decay = F.pad(decay, (0, 0, 0, 0, 0, pad), value=1.0)
        drive = F.pad(drive, (0, 0, 0, 0, 0, pad))
    a = decay.reshape(b, chunks, size, d, n)
    h = drive.reshape(b, chunks, size, d, n)
    step = 1
    while step < size:  # after this, h: states from a zero start; a: decay since chunk start
        h = torch.cat([h[:, :, :step], torch.addcmul(h[:, :, step:], a[:, :, step:],
                                                     h[:, :, :-step])], dim=2)
        a = torch.cat([a[:, :, :step], a[:, :, step:] * a[:, :, :-step]], dim=2)
        step *= 2
    if chunks > 1:
        state = h.new_zeros(b, d, n)
        carried = [state]
        for c in range(chunks - 1):
            state = torch.addcmul(h[:, c, -1], a[:, c, -1], state)
            carried.append(state)
        h = torch.addcmul(h, a, torch.stack(carried, dim=1).unsqueeze(2))
    h = h.reshape(b, chunks * size, d, n)[:, :length]
    y = torch.matmul(h, C.unsqueeze(-1)).squeeze(-1)
    return y + u * _steps_D(D)


def selective_scan(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor, *, scan: str = "auto", chunk_size: int = DEFAULT_SCAN_CHUNK,
) -> torch.Tensor:
    """The selective scan in the form ``scan`` (module docstring)."""
    if scan == "auto":
        scan = "recurrent" if u.device.type == "cpu" else "chunked"
    if scan == "recurrent":
        return selective_scan_recurrent(u, delta, A, B, C, D)
    if scan == "chunked":
        return selective_scan_chunked(u, delta, A, B, C, D, chunk_size)
    if scan == "reference":
        return selective_scan_reference(u, delta, A, B, C, D)
    raise ValueError(f"scan must be one of {SCANS}, got {scan!r}")


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """The x with softplus(x) = y (y > 0): ``y + log(1 - exp(-y))``."""
    return y + torch.log(-torch.expm1(-y))


# ---------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------
@register_mixer("bimamba")
class BiMambaMixer(TokenMixer):
    """Vim's bidirectional Mamba layer (``bimamba_type="v2"``): ``[B, N, E] -> [B, N, E]``
    for N = prefix tokens + h·w, the tokens scanned in row-major order with the prefix
    (class) token at ``cls_position`` (``middle``: index ⌊hw/2⌋ of the scanned sequence, as
    Vim; ``first``), forward and backward (``bidirectional``), the two gated outputs
    averaged (``divide_out``) or summed.

    Options with the authors' names: ``d_state`` N, ``d_conv`` K, ``expand`` (D_i = expand·E),
    ``dt_rank`` R (None: ⌈E/16⌉), ``dt_min``/``dt_max``/``dt_init_floor``/``dt_scale``,
    ``conv_bias``, ``bias`` (in/out projections). ``num_layers``: the depth of the model it is
    in, for the GPT-2 style 1/√depth scale of ``out_proj`` at init. ``backward_dt_init``:
    ``"zero"`` (the backward branch's dt bias starts at 0, as it ends up in the authors'
    code, whose model-wide init zeroes every Linear bias not marked to keep its value and
    marks only the forward one) or ``"forward"`` (drawn like the forward one).
    """

    label = "bidirectional Mamba (Vision Mamba)"
    macs_formula = ("3·N·C·E (in_proj, out_proj; E = 2C) + per direction N·E·(K + 2R + 6S + 3) "
                    "(conv K, x_proj R + 2S, dt_proj R, scan 4S: ΔA, Δu·B, decay·h, C·h; Δ·u, "
                    "D·u, gate) + N·E (average); S state size, R dt rank")
    prefix_tokens = "mixed"
    # Vim's blocks are norm -> mixer -> residual only: the expansion is its channel mixing.
    topology = Topology(mlp=False)
    _no_weight_decay = ("A_log", "D", "A_b_log", "D_b")

    def __init__(
        self,
        dim: int,
        *,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        conv_bias: bool = True,
        bias: bool = False,
        bidirectional: bool = True,
        divide_out: bool = True,
        cls_position: str = "middle",
        num_layers: int = 1,
        backward_dt_init: str = "zero",
        scan: str = "auto",
        chunk_size: int = DEFAULT_SCAN_CHUNK,
    ) -> None:
        super().__init__()
        for name, value in (("d_state", d_state), ("d_conv", d_conv), ("expand", expand),
                            ("num_layers", num_layers), ("chunk_size", chunk_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"bimamba: {name} must be a positive integer, got {value!r}")
        if cls_position not in CLS_POSITIONS:
            raise ValueError(
                f"bimamba: cls_position must be one of {CLS_POSITIONS}, got {cls_position!r}"
            )
        if backward_dt_init not in ("zero", "forward"):
            raise ValueError(
                f"bimamba: backward_dt_init must be 'zero' or 'forward', got {backward_dt_init!r}"
            )
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"bimamba: need 0 < dt_min <= dt_max, got {dt_min} and {dt_max}")
        if scan not in SCANS:
            raise ValueError(f"bimamba: scan must be one of {SCANS}, got {scan!r}")
        self.dim = dim
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * dim
        self.dt_rank = math.ceil(dim / 16) if dt_rank is None else dt_rank
        self.bidirectional = bidirectional
        self.divide_out = divide_out
        self.cls_position = cls_position
        self.num_layers = num_layers
        self.backward_dt_init = backward_dt_init
        self.scan = scan
        self.chunk_size = chunk_size
        self._dt_init = (dt_min, dt_max, dt_init_floor, dt_scale)

        e, r, s = self.d_inner, self.dt_rank, d_state
        self.in_proj = nn.Linear(dim, 2 * e, bias=bias)
        self.A_log = nn.Parameter(torch.empty(e, s))
        self.D = nn.Parameter(torch.empty(e))
        self.conv1d = nn.Conv1d(e, e, d_conv, groups=e, bias=conv_bias)
        self.x_proj = nn.Linear(e, r + 2 * s, bias=False)
        self.dt_proj = nn.Linear(r, e, bias=True)
        if bidirectional:  # the authors' names and order for the backward branch
            self.A_b_log = nn.Parameter(torch.empty(e, s))
            self.D_b = nn.Parameter(torch.empty(e))
            self.conv1d_b = nn.Conv1d(e, e, d_conv, groups=e, bias=conv_bias)
            self.x_proj_b = nn.Linear(e, r + 2 * s, bias=False)
            self.dt_proj_b = nn.Linear(r, e, bias=True)
        self.out_proj = nn.Linear(e, dim, bias=bias)
        self._orders: dict[tuple[int, int, int, str], torch.Tensor | None] = {}
        self.reset_parameters()

    # -- init ----------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """The authors' init: PyTorch's default for the projections and convs, their biases
        zero; dt_proj weights uniform in ±dt_scale/√R and its bias the inverse softplus of
        dt ~ log-uniform[dt_min, dt_max] (floored); A_log = ln(1..N) per channel; D = 1;
        out_proj re-drawn (Kaiming uniform) and scaled by 1/√num_layers."""
        dt_min, dt_max, floor, scale = self._dt_init
        std = self.dt_rank ** -0.5 * scale
        with torch.no_grad():
            for suffix in ("", "_b") if self.bidirectional else ("",):
                for name in ("in_proj", "x_proj", "dt_proj", "conv1d") if not suffix else (
                        "x_proj", "dt_proj", "conv1d"):
                    getattr(self, name + suffix).reset_parameters()
                dt_proj = getattr(self, "dt_proj" + suffix)
                nn.init.uniform_(dt_proj.weight, -std, std)
                if suffix and self.backward_dt_init == "zero":
                    dt_proj.bias.zero_()
                else:
                    log_dt = torch.rand_like(dt_proj.bias) * (
                        math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
                    dt_proj.bias.copy_(_inverse_softplus(log_dt.exp().clamp(min=floor)))
                a_log = getattr(self, "A_log" if not suffix else "A_b_log")
                a_log.copy_(torch.arange(1, self.d_state + 1, dtype=a_log.dtype,
                                         device=a_log.device).log().expand(self.d_inner, -1))
                getattr(self, "D" + suffix).fill_(1.0)
            if self.in_proj.bias is not None:
                self.in_proj.bias.zero_()
            nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
            self.out_proj.weight.div_(math.sqrt(self.num_layers))
            if self.out_proj.bias is not None:
                self.out_proj.bias.zero_()

    # -- token order ---------------------------------------------------------------------
    def _order(self, grid: tuple[int, int], prefix: int, device: torch.device
               ) -> torch.Tensor | None:
        """Indices putting ``[prefix tokens, grid row-major]`` into scan order (None: the
        same order)."""
        key = (grid[0], grid[1], prefix, self.cls_position)
        if key not in self._orders:
            at = 0 if self.cls_position == "first" or not prefix else grid[0] * grid[1] // 2
            if at == 0:
                self._orders[key] = None
            else:
                idx = [*range(prefix, prefix + at), *range(prefix),
                       *range(prefix + at, prefix + grid[0] * grid[1])]
                self._orders[key] = torch.tensor(idx)
        order = self._orders[key]
        return None if order is None else order.to(device)

    # -- forward -------------------------------------------------------------------------
    def _inputs(self, x: torch.Tensor, suffix: str) -> tuple[torch.Tensor, ...]:
        """One direction's scan inputs from ``x`` ``[B, L, E]`` in its scan order: v, Δ, A,
        B, C and D, in the scan's precision (float32; float64 for a float64 model, as the
        authors' kernels run it)."""
        conv = getattr(self, "conv1d" + suffix)
        x_proj = getattr(self, "x_proj" + suffix)
        dt_proj = getattr(self, "dt_proj" + suffix)
        a_log = self.A_log if not suffix else self.A_b_log
        skip = self.D if not suffix else self.D_b
        v = F.silu(conv(F.pad(x.transpose(1, 2), (self.d_conv - 1, 0)))).transpose(1, 2)
        dt, b_in, c_in = x_proj(v).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        ct = torch.float64 if v.dtype == torch.float64 else torch.float32
        delta = F.softplus(F.linear(dt, dt_proj.weight).to(ct) + dt_proj.bias.to(ct))
        return v.to(ct), delta, -torch.exp(a_log.to(ct)), b_in.to(ct), c_in.to(ct), skip.to(ct)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``[B, N, E] -> [B, N, E]``, N = prefix tokens + ``grid[0]·grid[1]``."""
        if is_fx_proxy(x):
            return fx_leaf_call(self, x, grid)  # its scans are Python loops
        n = x.shape[1]
        prefix = n - grid[0] * grid[1]
        if prefix < 0:
            raise ValueError(f"{n} tokens do not hold a {grid[0]}x{grid[1]} grid")
        order = self._order(grid, prefix, x.device)
        seq = x if order is None else x.index_select(1, order)
        xs, z = self.in_proj(seq).chunk(2, dim=-1)
        forward = self._inputs(xs, "")
        if self.bidirectional:
            # Both directions in one scan: the backward one's rows (its inputs flipped in
            # time) after the forward one's, each row with its own A and D.
            backward = self._inputs(xs.flip(1), "_b")
            b = x.shape[0]
            u, delta, _, b_in, c_in, _ = (torch.cat(p, 0) for p in zip(forward, backward))
            a = torch.cat([forward[2].expand(b, -1, -1), backward[2].expand(b, -1, -1)])
            d = torch.cat([forward[5].expand(b, -1), backward[5].expand(b, -1)])
            y = self._scan(u, delta, a, b_in, c_in, d)
            y_f, y_b = y[:b], y[b:]
            z = z.to(y.dtype)
            y_f, y_b = y_f * F.silu(z), y_b.flip(1) * F.silu(z)
            y = (y_f + y_b) * 0.5 if self.divide_out else y_f + y_b
        else:
            y = self._scan(*forward) * F.silu(z.to(forward[0].dtype))
        out = self.out_proj(y.to(self.out_proj.weight.dtype))
        if order is None:
            return out
        return torch.empty_like(out).index_copy_(1, order, out)

    def _scan(self, u: torch.Tensor, delta: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
              c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        if u.shape[1] == 0:
            return u
        return selective_scan(u, delta, a, b, c, d, scan=self.scan, chunk_size=self.chunk_size)

    # -- facts ---------------------------------------------------------------------------
    def macs(self, grid: tuple[int, int], num_prefix_tokens: int = 0) -> int:
        n = num_prefix_tokens + grid[0] * grid[1]
        c, e, r, s = self.dim, self.d_inner, self.dt_rank, self.d_state
        directions = 2 if self.bidirectional else 1
        per_direction = e * (self.d_conv + (r + 2 * s) + r + 4 * s + 3)
        average = e if self.bidirectional and self.divide_out else 0
        return n * (3 * c * e + directions * per_direction + average)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, d_inner={self.d_inner}, d_state={self.d_state}, "
                f"dt_rank={self.dt_rank}, bidirectional={self.bidirectional}, "
                f"cls_position={self.cls_position!r}, scan={self.scan!r}")




def set_scan(model: nn.Module, scan: str, *, chunk_size: int | None = None) -> int:
    """Switch every bidirectional Mamba layer in ``model`` to the scan form ``scan`` (and
    ``chunk_size``); returns how many layers were switched."""
    if scan not in SCANS:
        raise ValueError(f"scan must be one of {SCANS}, got {scan!r}")
    count = 0
    for module in model.modules():
        if isinstance(module, BiMambaMixer):
            module.scan = scan
            if chunk_size is not None:
                module.chunk_size = chunk_size
            count += 1
    return count
