"""train.multihost: two processes on localhost (`jax.distributed` with gloo CPU collectives) run the CLI
and match the single-process, single-device run: losses (rtol 1e-5), gradient norms (rtol 1e-5) and the
final params that both processes wrote into the checkpoint (atol 2e-6). Synthetic data with the token
reduction (2 host devices each), and LLaVA json conversations of different lengths with the `reference`
reduction (4 host devices each, mesh (1, 2, 4): each reference mean's rows sit on both processes)."""
import json
import os
import sys
import tempfile

import functools
import jax
import numpy as np
import yaml
from flax import traverse_util

from train.config import to_dict
from train.loop import train
from train.multihost import environment_wants_distributed
from train.tiny import tiny_train_config, write_tiny_model
from processes import free_port, run_together

TOTAL = 6
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def _model_json():
    return write_tiny_model(tempfile.mkdtemp(prefix="tiny_mini_"), "mini")


def _run_two_processes(cfg: dict, tmp_path, devices_per_process: int, *overrides) -> str:
    """Runs `python -m train` as 2 processes of `devices_per_process` host devices; returns the run dir."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "run"
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count="
               f"{devices_per_process} --xla_backend_optimization_level=0")
    run_together([[sys.executable, "-m", "train", "--config", str(path), f"checkpoint.dir={run_dir}",
                   "logging.level=WARNING", "distributed.initialize=always",
                   f"distributed.coordinator_address=localhost:{port}", "distributed.num_processes=2",
                   f"distributed.process_id={i}", *overrides] for i in range(2)], env, 400,
                 "the two training processes")
    return run_dir


def _assert_checkpoint_params(step_dir, want_params):
    from llava_mini_jax.jax_checkpoint import ParamsReader
    reader = ParamsReader(str(step_dir / "params"))
    want = traverse_util.flatten_dict(jax.tree.map(np.asarray, want_params))
    assert set(reader.paths) == set(want)
    for k, v in want.items():
        np.testing.assert_allclose(reader.read(k), v, rtol=0, atol=2e-6, err_msg="/".join(k))


def test_two_processes_match_one(tmp_path):
    base = tiny_train_config(_model_json(), mesh={"data": 1, "fsdp": 1, "tensor": 1, "devices": 1},
                             train={"max_steps": TOTAL})
    ref = train(base)
    cfg = dict(to_dict(base), mesh={"data": -1, "fsdp": 1, "tensor": 1, "devices": None, "rules": {}})
    run_dir = _run_two_processes(cfg, tmp_path, 2, "checkpoint.every_steps=3")
    lines = [json.loads(x) for x in open(run_dir / "metrics.jsonl")]  # process 0 only
    assert [r["step"] for r in lines] == list(range(1, TOTAL + 1))
    np.testing.assert_allclose([r["loss"] for r in lines], [ref.losses[s] for s in range(1, TOTAL + 1)], rtol=1e-5)
    assert sorted(n for n in os.listdir(run_dir / "6" / "data") if n.startswith("process_")) == [
        "process_0-of-2.json", "process_1-of-2.json"]
    _assert_checkpoint_params(run_dir / "6", ref.state.params)


def test_reference_reduction_two_processes_llava_json(tmp_path):
    """The issue's case: 16 LLaVA conversations (12 with images), global batch 4 = 2 micro-batches of 2 rows,
    2 rows per reference mean, mesh (1, 2, 4) as 2 processes x 4 devices, against one device. Step 1 has
    learning rate 0, so its gradient norm compares gradients of identical params."""
    from llava_mini_jax.data.synthetic import write_synthetic_dataset
    data = write_synthetic_dataset(tmp_path / "data", num_images=12, num_text=4, seed=0)
    model = write_tiny_model(str(tmp_path / "model"), "mini", vocab=32000)
    tokenizer = os.path.join(ROOT, "tests", "fixtures", "preprocess", "tokenizers", "vicuna")
    steps = 3
    base = tiny_train_config(model, data={"source": "json", "data_path": [data], "image_folder": str(tmp_path / "data"),
                                          "tokenizer_path": tokenizer, "template": "vicuna_v1", "model_max_length": 256,
                                          "length_buckets": [256], "read_threads": 1},
                             mesh={"data": 1, "fsdp": 1, "tensor": 1, "devices": 1},
                             train={"max_steps": steps, "global_batch_size": 4, "grad_accum_steps": 2,
                                    "loss_reduction": "reference", "reference_rows": 2},
                             checkpoint={"dir": str(tmp_path / "one")})
    ref = train(base)
    one = [json.loads(x) for x in open(tmp_path / "one" / "metrics.jsonl")]
    assert len({r["tokens"] for r in one}) > 1  # rows of different lengths (every sample fits in 256 tokens)
    cfg = dict(to_dict(base), mesh={"data": 1, "fsdp": 2, "tensor": 4, "devices": None, "rules": {}})
    run_dir = _run_two_processes(cfg, tmp_path, 4)
    two = [json.loads(x) for x in open(run_dir / "metrics.jsonl")]
    assert [r["step"] for r in two] == list(range(1, steps + 1)) and two[0]["lr"] == 0.0
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose([r[key] for r in two], [r[key] for r in one], rtol=1e-5, err_msg=key)
    assert [r["supervised_tokens"] for r in two] == [r["supervised_tokens"] for r in one]
    _assert_checkpoint_params(run_dir / str(steps), ref.state.params)


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
