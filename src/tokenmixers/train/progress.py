"""Progress output: tqdm bars on a terminal, plain log lines otherwise; metrics.jsonl and
TensorBoard events in the run folder (main process only)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm


def _fmt(values: dict[str, Any]) -> str:
    out = []
    for k, v in values.items():
        if v is None:
            continue
        if isinstance(v, float):
            v = f"{v:.3g}" if k == "lr" else f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
        out.append(f"{k}={v}")
    return " ".join(out)


class Progress:
    """One bar (or one log line every ``interval`` updates) per epoch."""

    def __init__(self, mode: str = "auto", interval: int = 50, enabled: bool = True,
                 stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "plain"
        self.mode = mode if enabled else "none"
        self.enabled = enabled
        self.interval = interval
        self.bar: tqdm | None = None
        self.prefix = ""
        self.total = 0
        self.done = 0
        self.t0 = time.perf_counter()
        self.start_done = 0

    def log(self, message: str) -> None:
        if self.mode != "none":
            self._write(message)

    def warn(self, message: str) -> None:
        """A warning or a note on what was found or repaired: printed even with
        ``--progress none`` (by the main process only)."""
        if self.enabled:
            self._write(message)

    def _write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def start(self, prefix: str, total: int, done: int = 0) -> None:
        self.prefix, self.total, self.done, self.start_done = prefix, total, done, done
        self.t0 = time.perf_counter()
        if self.mode == "bar":
            self.bar = tqdm(total=total, initial=done, desc=prefix, file=self.stream,
                            dynamic_ncols=True, leave=True, unit="step")

    def step(self, values: dict[str, Any]) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(_fmt(values), refresh=False)
            self.bar.update(1)
        elif self.mode == "plain" and (self.done % self.interval == 0 or self.done == self.total):
            elapsed = time.perf_counter() - self.t0
            rate = (self.done - self.start_done) / max(elapsed, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            self.log(f"{self.prefix} step {self.done}/{self.total} {_fmt(values)} "
                     f"eta={eta:.0f}s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


#: The fields of a ``metrics.jsonl`` record that measure the clock (wall time, speed, the
#: share of time spent waiting for data): they differ between two runs that are otherwise
#: identical, e.g. a resumed run and an uninterrupted one.
CLOCK_FIELDS = ("elapsed", "epoch_time", "img_per_sec", "data_wait")


class RunLog:
    """``metrics.jsonl`` (one JSON object per epoch) and TensorBoard events.

    A resumed run passes ``history``, the records its checkpoint holds (every finished epoch,
    saved with the weights): ``metrics.jsonl`` is rewritten to exactly those, so a record
    lost to a crash between the checkpoint and the log is restored and a record of an epoch
    the checkpoint does not hold is dropped, and TensorBoard gets the restored ones again.
    TensorBoard events after the checkpoint's step are purged (``purge_step``).
    """

    def __init__(self, run_dir: Path, *, history: list[dict[str, Any]] | None = None,
                 keep_epochs: int | None = None, purge_step: int | None = None,
                 tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        logged = self._read() if self.path.exists() else []
        restored: list[dict[str, Any]] = []
        if history is not None:
            have = {r.get("epoch") for r in logged}
            restored = [r for r in history if r.get("epoch") not in have]
            self._rewrite(history)
        elif keep_epochs is not None:  # a checkpoint from before records were saved in it
            self._rewrite([r for r in logged if r.get("epoch", 0) <= keep_epochs])
        else:
            self._rewrite([])
        self.restored = [int(r["epoch"]) for r in restored]
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)
            for record in restored:
                self._epoch_scalars(record)
            self.writer.flush()

    def _read(self) -> list[dict[str, Any]]:
        records = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def _rewrite(self, records: list[dict[str, Any]]) -> None:
        from tokenmixers._files import atomic_path

        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records))

    def scalars(self, values: dict[str, float | None], step: int, prefix: str = "") -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(f"{prefix}{k}", v, step)

    def _epoch_scalars(self, record: dict[str, Any]) -> None:
        self.scalars({k: v for k, v in record.items() if k not in ("epoch", "step")},
                     record["step"], prefix="epoch/")

    def epoch(self, record: dict[str, Any]) -> None:
        """Log a finished epoch: TensorBoard first (flushed), then the metrics line, so a
        record in metrics.jsonl is always in TensorBoard too."""
        from tokenmixers._faults import fault_point

        self._epoch_scalars(record)
        if self.writer is not None:
            self.writer.flush()
        fault_point("epoch:tensorboard", record["epoch"])
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
