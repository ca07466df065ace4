"""Mixed precision: the one spelling of ``--amp`` that every command takes."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["AMP_CHOICES", "AMP_DTYPES", "autocast", "check_amp"]

#: ``--amp`` values: full precision, bfloat16 or float16 autocast.
AMP_CHOICES = ("none", "bf16", "fp16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str | None) -> str:
    """``amp`` as one of :data:`AMP_CHOICES` (``None`` and ``""`` mean ``none``)."""
    amp = amp or "none"
    if amp not in AMP_CHOICES:
        raise ValueError(f"--amp takes {', '.join(AMP_CHOICES)}, got {amp!r}")
    return amp


def autocast(device: torch.device | str, amp: str | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``amp`` ``bf16``/``fp16`` on ``device``; a no-op for ``none``."""
    amp = check_amp(amp)
    if amp == "none":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=AMP_DTYPES[amp])
