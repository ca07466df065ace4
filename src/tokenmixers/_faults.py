"""Fault injection for the crash tests: ``TOKENMIXERS_FAULT=POINT[@EPOCH][,...]`` makes the
process kill itself with SIGKILL when it reaches ``POINT`` (in epoch ``EPOCH``, 1-based, if
given), exactly as ``kill -9`` from outside would at that moment. With
``TOKENMIXERS_FAULT_RANK=R`` only process R of a multi-process run dies.

The points sit in the windows where a crash is hardest to survive (see docs/reliability.md):
``checkpoint:NAME:written`` (a checkpoint's temporary folder is complete, nothing swapped
yet), ``checkpoint:NAME:swapped-out`` (the previous one renamed away, the new one not yet
renamed in), ``epoch:last`` (``last/`` holds the epoch, ``best/`` not yet), ``epoch:saved``
(both written, no record yet), ``epoch:tensorboard`` (TensorBoard has the epoch, metrics.jsonl
not yet) and ``step`` (after each optimizer update).

Unset, it costs one dictionary look-up per point. Tests only; never set it for real runs.
"""

from __future__ import annotations

import os
import signal

ENV = "TOKENMIXERS_FAULT"
RANK_ENV = "TOKENMIXERS_FAULT_RANK"


def fault_point(name: str, epoch: int | None = None) -> None:
    """Die here if ``TOKENMIXERS_FAULT`` names this point (and epoch, and rank)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    rank = os.environ.get(RANK_ENV)
    if rank is not None and rank != os.environ.get("RANK", "0"):
        return
    for item in spec.split(","):
        point, _, at = item.strip().partition("@")
        if point == name and (not at or (epoch is not None and int(at) == epoch)):
            os.kill(os.getpid(), signal.SIGKILL)
