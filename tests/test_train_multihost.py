"""train.multihost: two processes on localhost (`jax.distributed` with gloo CPU collectives, 2 host
devices each) run the CLI for 6 steps and match the single-process, single-device run: losses
(rtol 1e-5) and the final params that both processes wrote into the checkpoint (atol 2e-6)."""
import json
import os
import socket
import subprocess
import sys
import tempfile

import functools
import jax
import numpy as np
import pytest
import yaml
from flax import traverse_util

from train.config import to_dict
from train.loop import train
from train.multihost import environment_wants_distributed
from train.tiny import tiny_train_config, write_tiny_model

TOTAL = 6


@functools.lru_cache(maxsize=None)
def _model_json():
    return write_tiny_model(tempfile.mkdtemp(prefix="tiny_mini_"), "mini")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    base = tiny_train_config(_model_json(), mesh={"data": 1, "fsdp": 1, "tensor": 1, "devices": 1},
                             train={"max_steps": TOTAL})
    ref = train(base)
    cfg = dict(to_dict(base), mesh={"data": -1, "fsdp": 1, "tensor": 1, "devices": None, "rules": {}})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "run"
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0",
               JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "train", "--config", str(path), f"checkpoint.dir={run_dir}", "checkpoint.every_steps=3",
         "logging.level=WARNING", "distributed.initialize=always", f"distributed.coordinator_address=localhost:{port}",
         "distributed.num_processes=2", f"distributed.process_id={i}"],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=400)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the two training processes did not finish")
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i} failed:\n{out[-4000:]}"
    lines = [json.loads(x) for x in open(run_dir / "metrics.jsonl")]  # process 0 only
    assert [r["step"] for r in lines] == list(range(1, TOTAL + 1))
    np.testing.assert_allclose([r["loss"] for r in lines], [ref.losses[s] for s in range(1, TOTAL + 1)], rtol=1e-5)
    assert sorted(n for n in os.listdir(run_dir / "6" / "data") if n.startswith("process_")) == [
        "process_0-of-2.json", "process_1-of-2.json"]
    from llava_mini_jax.jax_checkpoint import ParamsReader
    reader = ParamsReader(str(run_dir / "6" / "params"))
    want = traverse_util.flatten_dict(jax.tree.map(np.asarray, ref.state.params))
    assert set(reader.paths) == set(want)
    for k, v in want.items():
        np.testing.assert_allclose(reader.read(k), v, rtol=0, atol=2e-6, err_msg="/".join(k))


def test_environment_detection(monkeypatch):
    for k in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_NTASKS",
              "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(k, raising=False)
    assert not environment_wants_distributed()
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert not environment_wants_distributed()
    monkeypatch.setenv("SLURM_NTASKS", "16")
    assert environment_wants_distributed()
    monkeypatch.delenv("SLURM_NTASKS")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "h0,h1,h2,h3")
    assert environment_wants_distributed()
