"""One run per run directory: an OS file lock with the holder's pid, host and command.

`RunLock(directory).acquire()` takes an exclusive `fcntl.flock` on `directory/run.lock` and
writes who holds it (`{"pid", "host", "started", "argv"}`). The kernel drops the lock when the
holder exits, however it exits (SIGKILL, a crash, a lost NFS client once its lease runs out), so
a crashed run never leaves a directory stuck: the file may stay, the lock does not. A second run
on the same directory gets `RunDirectoryBusy` naming the holder, before it writes anything.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from typing import Optional

LOCK_FILE = "run.lock"


class RunDirectoryBusy(RuntimeError):
    """Another live process holds the run directory."""


class RunLock:
    """An exclusive lock on a run directory (created if missing); `release` or process exit frees it."""

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        self.path = os.path.join(self.directory, LOCK_FILE)
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _describe(_read_holder(fd))
            os.close(fd)
            raise RunDirectoryBusy(f"run directory {self.directory} is in use by {holder}; one run at a time per "
                                   f"directory: wait for it to finish, stop it, or use another directory "
                                   f"(the lock frees itself when that process exits)") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 65536, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another process (it has not written its pid yet)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    argv = " ".join(holder.get("argv") or [])
    return f"pid {holder['pid']} on host {holder.get('host', '?')} (since {since}: {argv})"
