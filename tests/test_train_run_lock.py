"""train.run_lock: one run per directory; the holder is named; a killed holder leaves no stuck lock;
a second training run on a locked directory fails before writing anything."""
import functools
import os
import socket
import subprocess
import sys
import tempfile

import pytest

from train.loop import train
from train.run_lock import LOCK_FILE, RunDirectoryBusy, RunLock
from train.tiny import tiny_train_config, write_tiny_model


def test_second_lock_is_refused_naming_the_holder(tmp_path):
    with RunLock(str(tmp_path)):
        with pytest.raises(RunDirectoryBusy) as e:
            RunLock(str(tmp_path)).acquire()
        msg = str(e.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in msg and str(tmp_path) in msg
    RunLock(str(tmp_path)).acquire().release()  # released: free again


def test_a_killed_holder_leaves_no_stuck_lock(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import os, signal, sys; from train.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=root), cwd=root)
    assert p.stdout.strip() == "held" and p.returncode == -9
    assert os.path.getsize(tmp_path / LOCK_FILE) > 0  # the file stays, with the dead holder's pid
    lock = RunLock(str(tmp_path)).acquire()  # the kernel dropped the lock with the process
    lock.release()


@functools.lru_cache(maxsize=None)
def _model_json():
    return write_tiny_model(tempfile.mkdtemp(prefix="tiny_lock_"), "mini")


def test_training_on_a_locked_run_directory_fails_before_writing(tmp_path):
    cfg = tiny_train_config(_model_json(), train={"max_steps": 2}, checkpoint={"dir": str(tmp_path)})
    with RunLock(str(tmp_path)):  # another run holds it
        with pytest.raises(RunDirectoryBusy, match="is in use by pid"):
            train(cfg)
    assert os.listdir(tmp_path) == [LOCK_FILE]  # no config, no metrics, no step
