"""ViL's mLSTM layer and the mLSTM cell.

- :mod:`~tokenmixers.mixers.mlstm.cell`: the cell, ``[B, NH, S, d] -> [B, NH, S, d]``, in
  its parallel (the stabilised equations), chunkwise, recurrent and ``mlstm-kernels``
  forms, and the dispatcher :func:`mlstm` over :data:`BACKENDS`.
- :mod:`~tokenmixers.mixers.mlstm.layer`: :class:`MLSTMMixer`, the ViL layer (registered as
  mixer ``"mlstm"``), fused for speed, with its block-diagonal maps and per-head norm.
- :mod:`~tokenmixers.mixers.mlstm.reference`: :func:`mlstm_layer_reference`, the same layer
  written as the paper's equations on an ``MLSTMMixer``'s parameters (the specification
  the fused layer is tested against).
"""

from tokenmixers.mixers.mlstm.cell import (
    BACKENDS,
    DEFAULT_CHUNK_SIZE,
    EPS,
    TRAVERSALS,
    check_backend,
    mlstm,
    mlstm_chunkwise,
    mlstm_kernels,
    mlstm_parallel,
    mlstm_recurrent,
)
from tokenmixers.mixers.mlstm.layer import (
    BlockDiagonalLinear,
    HeadNorm,
    MLSTMMixer,
    set_mlstm_backend,
)
from tokenmixers.mixers.mlstm.reference import mlstm_layer_reference

__all__ = [
    "BACKENDS",
    "DEFAULT_CHUNK_SIZE",
    "EPS",
    "TRAVERSALS",
    "BlockDiagonalLinear",
    "HeadNorm",
    "MLSTMMixer",
    "check_backend",
    "mlstm",
    "mlstm_chunkwise",
    "mlstm_kernels",
    "mlstm_layer_reference",
    "mlstm_parallel",
    "mlstm_recurrent",
    "set_mlstm_backend",
]
