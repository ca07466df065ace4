"""Progress output: tqdm bars on a terminal, plain log lines otherwise; metrics.jsonl and
TensorBoard events in the run folder (main process only)."""

from __future__ import annotations

import json
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
        self.interval = interval
        self.bar: tqdm | None = None
        self.prefix = ""
        self.total = 0
        self.done = 0
        self.t0 = time.perf_counter()
        self.start_done = 0

    def log(self, message: str) -> None:
        if self.mode == "none":
            return
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


class RunLog:
    """``metrics.jsonl`` (one JSON object per epoch) and TensorBoard events."""

    def __init__(self, run_dir: Path, *, keep_epochs: int | None, purge_step: int | None,
                 tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        if keep_epochs is not None and self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("epoch", 0) <= keep_epochs:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue
            self.path.write_text("".join(f"{line}\n" for line in kept))
        elif keep_epochs is None:
            self.path.write_text("")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)

    def scalars(self, values: dict[str, float | None], step: int, prefix: str = "") -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(f"{prefix}{k}", v, step)

    def epoch(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.scalars({k: v for k, v in record.items() if k not in ("epoch", "step")},
                     record["step"], prefix="epoch/")
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
