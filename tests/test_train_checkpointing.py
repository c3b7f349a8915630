"""train.checkpointing (through train.loop): exact resume after an interruption or SIGTERM,
retention, step directories that load and export, stage 2 from a stage-1 checkpoint."""
import functools
import os
import signal
import tempfile

import jax
import numpy as np
import pytest
from flax import traverse_util

from train.checkpointing import Checkpointer
from train.config import to_dict
from train.loop import train
from train.model_setup import initial_params, model_config
from train.tiny import tiny_train_config, write_tiny_model
from train.trainer import build_trainer

TOTAL = 6


@functools.lru_cache(maxsize=None)
def _model_json(mode="mini"):
    return write_tiny_model(tempfile.mkdtemp(prefix=f"tiny_{mode}_"), mode)


def config(run_dir, mode="mini", every=2, keep=3, **train_kw):
    return tiny_train_config(_model_json(mode), mesh={"data": 1, "fsdp": 1, "tensor": 1, "devices": 1},
                             train={"max_steps": TOTAL, **train_kw},
                             checkpoint={"dir": str(run_dir), "every_steps": every, "keep": keep})


def params_np(state):
    return traverse_util.flatten_dict(jax.tree.map(np.asarray, state.params))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    d = tmp_path_factory.mktemp("full")
    return d, train(config(d))


def assert_same_run(resumed, full, first_step):
    for s in range(first_step, TOTAL + 1):
        assert resumed.losses[s] == full.losses[s], s  # bit-exact on CPU
    a, b = params_np(resumed.state), params_np(full.state)
    for k in b:
        assert np.array_equal(a[k], b[k]), k


def test_stop_and_resume_is_bit_exact(uninterrupted, tmp_path):
    full_dir, full = uninterrupted
    assert full.stopped == "finished" and full.step == TOTAL and sorted(full.losses) == list(range(1, TOTAL + 1))
    first = train(config(tmp_path, stop_at_step=3))
    assert first.stopped == "stop_at_step" and first.step == 3
    assert first.last_checkpoint == os.path.join(str(tmp_path), "3")
    for s in (1, 2, 3):
        assert first.losses[s] == full.losses[s]
    resumed = train(config(tmp_path))  # same command again: resumes from step 3
    assert sorted(resumed.losses) == [4, 5, 6]
    assert_same_run(resumed, full, 4)


def test_sigterm_saves_then_resume_is_bit_exact(uninterrupted, tmp_path):
    _, full = uninterrupted

    def hook(rec):
        if rec["step"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)
    first = train(config(tmp_path, every=100), on_step=hook)
    # step 2 was already dispatched when step 1's metrics arrived: it is the one saved
    assert first.stopped == "preempted" and first.step == 2
    assert os.path.isdir(os.path.join(str(tmp_path), "2", "params"))
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler) or \
        callable(signal.getsignal(signal.SIGTERM))
    resumed = train(config(tmp_path, every=100))
    assert_same_run(resumed, full, 3)


def test_run_directory_layout_retention_and_metrics(uninterrupted):
    d, full = uninterrupted
    steps = sorted(int(n) for n in os.listdir(d) if n.isdigit())
    assert steps == [2, 4, 6]  # every 2 steps, keep 3 (the end is step 6)
    for name in ("config.json", "train_config.json", "metrics.jsonl"):
        assert os.path.isfile(os.path.join(d, name)), name
    for item in ("params", "opt_state", "meta", "data", "config.json"):
        assert os.path.exists(os.path.join(d, "6", item)), item
    import json
    lines = [json.loads(x) for x in open(os.path.join(d, "metrics.jsonl"))]
    assert [r["step"] for r in lines] == list(range(1, TOTAL + 1))
    for key in ("loss", "grad_norm", "lr", "lr/default", "lr/projector", "supervised_tokens", "tokens",
                "tokens_per_s", "step_time_s", "skipped"):
        assert key in lines[-1], key
    assert lines[0]["lr"] == 0.0 and lines[1]["lr"] == pytest.approx(1e-3)  # warmup of 1 step, then cosine


def test_keep_last_n(tmp_path):
    r = train(config(tmp_path, every=1, keep=2))
    assert sorted(int(n) for n in os.listdir(tmp_path) if n.isdigit()) == [5, 6]
    assert r.last_checkpoint == os.path.join(str(tmp_path), "6")


def test_step_directory_loads_and_exports(uninterrupted, tmp_path):
    d, full = uninterrupted
    from llava_mini_jax import load_pretrained
    _, params = load_pretrained(os.path.join(d, "6"))
    got, want = traverse_util.flatten_dict(jax.tree.map(np.asarray, params)), params_np(full.state)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    jax_to_hf = pytest.importorskip("convert.jax_to_hf")
    out = jax_to_hf.convert_jax_to_hf(os.path.join(d, "6"), str(tmp_path / "hf"))
    # the HF config only names its CLIP (`mm_vision_tower: tiny-clip`, no hub id); describe it inline
    import json
    mc, _ = model_config(config(d).model)
    hf = json.load(open(os.path.join(out, "config.json")))
    assert "vision_config" not in hf and hf["model_type"] == "llava_mini_llama"
    json.dump(dict(hf, vision_config=mc.vision.to_hf_dict()), open(os.path.join(out, "config.json"), "w"))
    _, params = load_pretrained(out)
    got = traverse_util.flatten_dict(jax.tree.map(np.asarray, params))
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_stage2_takes_the_projector_of_a_stage1_checkpoint(tmp_path):
    # a stage-1 (LLaVA-v1.5 mode) checkpoint with a recognisable projector
    cfg1 = config(tmp_path / "stage1", mode="baseline")
    mc1, _ = model_config(cfg1.model)
    t1 = build_trainer(cfg1, mc1, TOTAL)
    p1 = jax.tree.map(np.asarray, t1.random_params(7))
    p1["mm_projector"]["linear_0"]["bias"] = np.arange(p1["mm_projector"]["linear_0"]["bias"].size, dtype=np.float32)
    from llava_mini_jax.sharding import place_with_shardings
    state1 = t1.init_state(place_with_shardings(p1, t1.param_shardings, np.float32))

    class _NoData:
        def get_state(self):
            return {}
    ck = Checkpointer(cfg1.checkpoint, mc1.to_hf_dict(), to_dict(cfg1))
    ck.save(3, state1, _NoData(), wait=True)
    ck.close()
    # stage 2: fresh LLaVA-Mini with the stage-1 projector
    cfg2 = tiny_train_config(_model_json("mini"), model={"init_from_checkpoint": str(tmp_path / "stage1"),
                                                         "init_patterns": ["mm_projector"]})
    mc2, _ = model_config(cfg2.model)
    t2 = build_trainer(cfg2, mc2, TOTAL, mesh=t1.mesh)
    p2 = jax.tree.map(np.asarray, initial_params(cfg2.model, t2.model, t2.param_shardings, t2.random_params))
    for k, v in traverse_util.flatten_dict(p1["mm_projector"]).items():
        assert np.array_equal(traverse_util.flatten_dict(p2["mm_projector"])[k], v), k
    fresh = jax.tree.map(np.asarray, t2.random_params(cfg2.model.init_seed))
    assert np.array_equal(p2["compressor"]["query"], fresh["compressor"]["query"])
    with pytest.raises(ValueError, match="lacks them"):
        bad = tiny_train_config(_model_json("mini"), model={"init_from_checkpoint": str(tmp_path / "stage1"),
                                                            "init_patterns": ["prefusion"]})
        initial_params(bad.model, t2.model, t2.param_shardings, t2.random_params)


def test_ctrl_c_saves_like_sigterm_then_resume_is_bit_exact(uninterrupted, tmp_path):
    _, full = uninterrupted

    def hook(rec):
        if rec["step"] == 1:
            os.kill(os.getpid(), signal.SIGINT)
    previous = signal.getsignal(signal.SIGINT)
    first = train(config(tmp_path, every=100), on_step=hook)
    assert first.stopped == "interrupted" and first.step == 2
    assert os.path.isdir(os.path.join(str(tmp_path), "2", "params"))
    assert signal.getsignal(signal.SIGINT) is previous  # our handler is gone again
    assert_same_run(train(config(tmp_path, every=100)), full, 3)


def test_a_second_ctrl_c_exits_at_once(tmp_path, monkeypatch):
    class Exited(BaseException):
        pass

    def fake_exit(code):
        raise Exited(code)
    monkeypatch.setattr(os, "_exit", fake_exit)

    def hook(rec):
        if rec["step"] == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(Exited) as e:
        train(config(tmp_path, every=100), on_step=hook)
    assert e.value.args == (130,)
    assert not [n for n in os.listdir(tmp_path) if n.isdigit()]  # nothing saved after the second Ctrl-C


def test_a_crash_and_resume_leave_one_metrics_row_per_step(tmp_path):
    class Crash(Exception):
        pass

    def hook(rec):
        if rec["step"] == 5:  # after step 4's checkpoint and step 5's metrics row
            raise Crash
    with pytest.raises(Crash):
        train(config(tmp_path), on_step=hook)
    import json
    rows = [json.loads(x)["step"] for x in open(tmp_path / "metrics.jsonl")]
    assert rows == [1, 2, 3, 4, 5]
    train(config(tmp_path))  # resumes at step 4: step 5 again, then 6
    rows = [json.loads(x)["step"] for x in open(tmp_path / "metrics.jsonl")]
    assert rows == [1, 2, 3, 4, 5, 6]
    assert [json.loads(x)["step"] for x in open(tmp_path / "metrics.superseded.jsonl")] == [5]
