"""The mLSTM cell: its parallel, chunkwise and recurrent forms agree in values and gradients,
and the parallel form is the stabilised formula of the issue (checked against the
unstabilised recurrence written out from the equations)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tokenmixers.mixers.mlstm.cell import (
    _chunkwise_batched,
    _chunkwise_scan,
    mlstm,
    mlstm_chunkwise,
    mlstm_kernels,
    mlstm_parallel,
    mlstm_recurrent,
)
from tokenmixers.mixers.mlstm.cell import chunk_length as _chunk_length

Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def random_inputs(
    s: int, *, d: int = 16, dtype: torch.dtype = torch.float64, signed: bool = True
) -> Inputs:
    """q, k, v [2, 3, s, d] and extreme gates: ĩ ~ N(0, 3²), f̃ ~ U(-3, 6)."""
    q, k, v = (torch.randn(2, 3, s, d, dtype=dtype) for _ in range(3))
    if not signed:
        q, k = q.abs(), k.abs()
    igate = torch.randn(2, 3, s, dtype=dtype) * 3
    fgate = torch.rand(2, 3, s, dtype=dtype) * 9 - 3
    return q, k, v, igate, fgate


FORMS = {
    "recurrent": mlstm_recurrent,
    "chunkwise_16": lambda *a: mlstm_chunkwise(*a, chunk_size=16),
    "chunkwise_7": lambda *a: mlstm_chunkwise(*a, chunk_size=7),
    "chunkwise_64": lambda *a: mlstm_chunkwise(*a, chunk_size=64),  # one chunk
}


def test_parallel_is_the_unstabilised_recurrence() -> None:
    # C_t = σ(f̃) C + exp(ĩ) v kᵀ/√d, n_t likewise, h = C q / max(|nᵀq|, 1): with moderate
    # gates nothing overflows, and the stabilised form gives the same h up to its 1e-6.
    q, k, v, ig, fg = random_inputs(20, d=8)
    ig = ig / 3
    d = q.shape[-1]
    c = torch.zeros(2, 3, d, d, dtype=q.dtype)
    n = torch.zeros(2, 3, d, dtype=q.dtype)
    out = []
    for t in range(q.shape[2]):
        f, i = torch.sigmoid(fg[..., t, None]), torch.exp(ig[..., t, None])
        kt = k[:, :, t] / d**0.5
        c = f[..., None] * c + i[..., None] * v[:, :, t, :, None] * kt[..., None, :]
        n = f * n + i * kt
        qt = q[:, :, t]
        den = (n * qt).sum(-1, keepdim=True).abs().clamp_min(1.0)
        out.append((c @ qt[..., None]).squeeze(-1) / den)
    expected = torch.stack(out, dim=2)
    torch.testing.assert_close(mlstm_parallel(q, k, v, ig, fg), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("s", [1, 23, 45])
def test_forms_agree_float64_values_and_gradients(s: int) -> None:
    # Sequence lengths that are not multiples of the chunk sizes; extreme gates.
    inputs = random_inputs(s)
    upstream = torch.randn(2, 3, s, inputs[0].shape[-1], dtype=torch.float64)

    def run(form):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = form(*leaves)
        (out * upstream).sum().backward()
        return out.detach(), [leaf.grad for leaf in leaves]

    ref_out, ref_grads = run(mlstm_parallel)
    scale = ref_out.abs().max()
    for name, form in FORMS.items():
        out, grads = run(form)  # chunkwise: all chunks at once (differentiable)
        assert (out - ref_out).abs().max() <= 1e-9 * scale, name
        with torch.no_grad():  # chunkwise: chunk by chunk, state updated in place
            assert (form(*inputs) - ref_out).abs().max() <= 1e-9 * scale, f"{name}, no grad"
        for which, g, ref in zip(("q", "k", "v", "igate", "fgate"), grads, ref_grads):
            # (With s = 1 the forget gate has no effect: both gradients are exactly 0.)
            diff, size = (g - ref).abs().max().item(), ref.abs().max().item()
            assert diff <= 1e-8 * size, f"{name}: d{which} differs by {diff:.2e} of {size:.2e}"


@pytest.mark.parametrize("s", [23, 45, 130])
def test_forms_agree_float32(s: int) -> None:
    # Non-negative q, k keep Σ_s C̃_ts free of cancellation, so |h̃| stays O(|v|) and float32
    # can resolve 1e-5. With signed q, k the normaliser can nearly cancel, |h̃| reaches
    # ~100 and even the parallel form alone is ~1e-3 away from the exact (float64) value:
    # that regime is pinned in float64 above.
    inputs = random_inputs(s, dtype=torch.float32, signed=False)
    ref = mlstm_parallel(*inputs)
    for name, form in FORMS.items():
        for grad in (False, True):  # the chunkwise form's two schedules
            leaves = [t.clone().requires_grad_(grad) for t in inputs]
            diff = (form(*leaves) - ref).abs().max().item()
            assert diff <= 1e-5, f"{name} (grad {grad}): {diff:.2e}"


def test_chunkwise_schedules_take_the_same_steps() -> None:
    # Without a gradient the chunk-by-chunk schedule runs (and never pads q, k, v: its last
    # chunk is short); with one, all chunks at once. Same arithmetic, so float64 agrees to
    # rounding, on a ragged length and with a chunk of one token.
    inputs = random_inputs(45)
    for size in (1, 7, 16, 45):
        scan = _chunkwise_scan(*inputs, size=size)
        batched = _chunkwise_batched(*inputs, size=size)
        torch.testing.assert_close(scan, batched, rtol=1e-12, atol=1e-12)
    leaves = [t.clone().requires_grad_() for t in inputs]
    with torch.inference_mode():
        fast = mlstm_chunkwise(*leaves, chunk_size=16)
    torch.testing.assert_close(fast, mlstm_chunkwise(*leaves, chunk_size=16).detach())


def test_chunk_lengths_divide_or_pad() -> None:
    # A divisor when there is one in [chunk/2, chunk] (ViL-T's 14x14, 28x28, 42x42 grids),
    # else equal chunks and a padded tail: both paths run in the tests above (s = 23 pads).
    assert [_chunk_length(s, 64) for s in (30, 196, 784, 1764)] == [30, 49, 56, 63]
    assert _chunk_length(23, 16) == 12 and _chunk_length(23, 7) == 6  # 24 = 23 + 1 pad


def test_chunkwise_is_unaffected_by_what_follows() -> None:
    # Causality, and with it the internal padding: a prefix's outputs do not change when
    # the sequence goes on.
    q, k, v, ig, fg = random_inputs(40)
    full = mlstm_chunkwise(q, k, v, ig, fg, chunk_size=8)
    part = mlstm_chunkwise(q[:, :, :29], k[:, :, :29], v[:, :, :29], ig[..., :29], fg[..., :29],
                           chunk_size=8)
    torch.testing.assert_close(full[:, :, :29], part, rtol=1e-12, atol=1e-12)


def test_dispatch_and_auto_rule() -> None:
    inputs = random_inputs(70)
    short = tuple(t[:, :, :30] for t in inputs)
    torch.testing.assert_close(mlstm(*inputs, backend="auto"), mlstm_chunkwise(*inputs))
    torch.testing.assert_close(mlstm(*short, backend="auto"), mlstm_parallel(*short))
    with pytest.raises(ValueError, match="unknown mLSTM backend"):
        mlstm(*inputs, backend="quadratic")


def test_chunkwise_schedule_by_device_and_autograd(monkeypatch: pytest.MonkeyPatch) -> None:
    # Chunk by chunk only on the CPU without autograd; all chunks at once with a gradient,
    # or on any other device (few, large kernels; "meta" stands in for a GPU here).
    import tokenmixers.mixers.mlstm.cell as cell

    calls: list[str] = []

    def spy(name: str) -> None:
        real = getattr(cell, name)

        def recorded(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(cell, name, recorded)

    spy("_chunkwise_scan")
    spy("_chunkwise_batched")
    cpu = random_inputs(45)
    meta = tuple(t.to("meta") for t in cpu)
    with torch.no_grad():
        mlstm_chunkwise(*cpu, chunk_size=16)
        out = mlstm_chunkwise(*meta, chunk_size=16)
    mlstm_chunkwise(*(t.clone().requires_grad_() for t in cpu), chunk_size=16)
    assert calls == ["_chunkwise_scan", "_chunkwise_batched", "_chunkwise_batched"]
    assert out.shape == cpu[0].shape and out.device.type == "meta"


def test_epilogue_is_a_per_token_map_of_the_output() -> None:
    # The chunkwise form applies it chunk by chunk (and returns tokens-first memory); every
    # form must give epilogue(h), whatever the input layout.
    q, k, v, ig, fg = random_inputs(45)
    tokens_first = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]

    def epilogue(h: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(h, (h.shape[-1],)) * 2 + 1

    expected = epilogue(mlstm_parallel(q, k, v, ig, fg))
    for backend in ("parallel", "chunkwise", "recurrent"):
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                leaves = [t.clone().requires_grad_(grad) for t in tokens_first]
                got = mlstm(*leaves, ig, fg, backend=backend, chunk_size=16, epilogue=epilogue)
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_kernels_backend_without_the_package_says_how_to_get_it() -> None:
    if importlib.util.find_spec("mlstm_kernels") is not None:
        pytest.skip("mlstm-kernels is installed")
    with pytest.raises(ImportError, match="mlstm-kernels"):
        mlstm_kernels(*random_inputs(8, dtype=torch.float32))
