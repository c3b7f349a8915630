"""Running cooperating processes in tests (two `jax.distributed` processes on localhost)."""
from __future__ import annotations

import os
import socket
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_together(commands: list[list[str]], env: dict, timeout: float, what: str) -> list[str]:
    """Starts every command at once (cwd: the repository), waits for all and returns their
    combined stdout + stderr. Fails the test when one exits non-zero, or kills them all and fails
    when they do not finish within `timeout` seconds each (`what` names them in the message)."""
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in commands]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"{what} did not finish within {timeout} s")
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i} of {what} failed:\n{out[-4000:]}"
    return outs
