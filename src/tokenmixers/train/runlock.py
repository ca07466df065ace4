"""One writer per run folder: an advisory lock file, ``RUN/.lock``, holding the writer's PID,
host, start time and command line.

The lock is ``fcntl.flock`` on that file, so the kernel releases it when the process dies,
however it dies; the file's contents are only for messages. A second ``train`` (or a second
``--resume``) of the same folder is refused while the first runs, naming it. A lock file left
by a process that died is detected (its lock is free but its contents name another process)
and reported as it is taken over, never broken silently.

Only the process of global rank 0 takes the lock (the only one that writes), so a multi-node
run holds one lock. Across machines it needs a shared filesystem with locks (NFSv4, and Lustre
mounted with ``-o flock``, lock across clients); where the filesystem has none, the run goes
on unlocked with a warning. A lock is judged held or left by the lock itself, never by its
PID, so this holds for a writer on another host too (the messages name its host).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another process is writing this run folder."""


def _describe(holder: dict[str, Any]) -> str:
    since = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
    command = holder.get("command") or "?"
    return (f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {when}: "
            f"{command}")


class RunLock:
    """``with RunLock(run_dir, log): ...`` holds ``run_dir/.lock`` for the block."""

    def __init__(self, run_dir: Path, log: Callable[[str], None] = print) -> None:
        self.path = run_dir / LOCK_NAME
        self.log = log
        self.fd: int | None = None

    def _read(self, fd: int) -> dict[str, Any]:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        try:
            holder = json.loads(raw.decode() or "{}")
        except (UnicodeDecodeError, json.JSONDecodeError):
            holder = {}
        return holder if isinstance(holder, dict) else {}

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here; say so once.
            self.log(f"warning: cannot lock {self.path.parent} on this platform; make sure no "
                     "other process writes the same run folder")
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read(fd)
                os.close(fd)
                raise RunLockedError(
                    f"{self.path.parent} is being written by another process "
                    f"({_describe(holder)}); two processes writing one run folder would mix "
                    "their checkpoints and metrics. Wait for it to finish (or stop it), or "
                    "choose another --output") from None
            except OSError as err:
                # A filesystem without locks (Lustre mounted without -o flock, some FUSE and
                # old NFS set-ups): train unlocked, as on Windows, and say so.
                os.close(fd)
                if err.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP,
                                     errno.ENOTSUP):
                    raise
                self.log(f"warning: cannot lock {self.path.parent} ({err.strerror}: its "
                         "filesystem has no file locks); make sure no other process, on this "
                         "machine or another, writes the same run folder")
                return
            # The holder may have removed the file between our open and our lock: then we
            # hold a lock on a file nobody else will see; start again on the new one.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = self._read(fd)
        if previous.get("pid") is not None:
            self.log(f"note: {self.path} was left by a process that is no longer running "
                     f"({_describe(previous)}); it was killed or crashed without releasing "
                     "the run folder, which is now taken over")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "command": " ".join(["tokenmixers", *sys.argv[1:]])[:1000]}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        # Remove the file while still holding the lock, so a newcomer never sees our
        # contents and takes them for a dead process's.
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
