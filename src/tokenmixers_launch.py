"""The ``tokenmixers`` command's first lines.

They live outside the ``tokenmixers`` package on purpose: importing the package imports torch
and timm, which takes seconds, and a Ctrl-C or a SIGTERM in those seconds should end in one
line and the usual exit status (130, 143), not in a traceback or a silent death. While the
imports run, either signal ends the process at once (nothing is written before they finish,
and an exception raised inside a half-imported module can leave it broken); from then on
Ctrl-C raises KeyboardInterrupt and SIGTERM :class:`Terminated`, which ``tokenmixers.cli``
turns into a message, and the trainer into a checkpoint. A signal the parent set to be
ignored (a background job of a script) stays ignored.
"""

from __future__ import annotations

import os
import signal
import sys


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever Python is when it arrives (until the trainer takes it over)."""

    exit_code = 128 + signal.SIGTERM


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def _exit_now(signum: int, frame: object) -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    what = "stopped by SIGTERM" if signum == signal.SIGTERM else "aborted"
    sys.stderr.write(f"tokenmixers {command}: {what} during start-up; nothing was written\n")
    sys.stderr.flush()
    os._exit(128 + signum)


def _install(signum: int, handler: object) -> None:
    if signal.getsignal(signum) is not signal.SIG_IGN:
        signal.signal(signum, handler)  # type: ignore[arg-type]


def main() -> int:
    _install(signal.SIGINT, _exit_now)
    _install(signal.SIGTERM, _exit_now)
    from tokenmixers.cli import main as cli_main

    _install(signal.SIGINT, signal.default_int_handler)
    _install(signal.SIGTERM, _terminate)
    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
