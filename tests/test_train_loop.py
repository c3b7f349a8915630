"""train.loop: non-finite steps (stop naming the step and the last good checkpoint, or skip and
count), configs that do not fit the mesh fail before any compile, metrics records."""
import functools
import os
import re
import tempfile

import numpy as np
import pytest

import train.loop as loop
from train.config import ConfigError
from train.tiny import tiny_train_config, write_tiny_model

TOTAL = 6


@functools.lru_cache(maxsize=None)
def _model_json():
    return write_tiny_model(tempfile.mkdtemp(prefix="tiny_mini_"), "mini")


def config(run_dir=None, mesh=(1, 1, 1), devices=1, **train_kw):
    d, f, t = mesh
    ck = {"dir": str(run_dir), "every_steps": 2} if run_dir else {"dir": None}
    return tiny_train_config(_model_json(), mesh={"data": d, "fsdp": f, "tensor": t, "devices": devices},
                             train={"max_steps": TOTAL, **train_kw}, checkpoint=ck)


class _Corrupt:
    """Wraps a data iterator: the batches of steps `bad` (1-based) get NaN pixels."""

    def __init__(self, it, bad):
        self.it, self.bad, self.n = it, set(bad), 0

    def __iter__(self):
        return self

    def __next__(self):
        b = next(self.it)
        self.n += 1
        if self.n in self.bad:
            b = dict(b, images=np.full_like(b["images"], np.nan))
        return b

    def get_state(self):
        return {"inner": self.it.get_state(), "n": self.n}

    def set_state(self, s):
        self.it.set_state(s["inner"])
        self.n = s["n"]


@pytest.fixture
def corrupt(monkeypatch):
    def install(bad):
        real = loop.make_pipeline

        def make(*a, **k):
            it, spe = real(*a, **k)
            return _Corrupt(it, bad), spe
        monkeypatch.setattr(loop, "make_pipeline", make)
    return install


def test_nonfinite_stops_naming_step_and_last_good_checkpoint(corrupt, tmp_path):
    corrupt({3})
    with pytest.raises(loop.NonFiniteError) as e:
        loop.train(config(tmp_path))
    msg = str(e.value)
    assert "at step 3" in msg and os.path.join(str(tmp_path), "2") in msg
    assert sorted(n for n in os.listdir(tmp_path) if n.isdigit()) == ["2"]  # nothing written after it


def test_nonfinite_skip_counts_and_goes_on(corrupt):
    corrupt({2, 4})
    seen = []
    r = loop.train(config(nonfinite="skip"), on_step=seen.append)
    assert r.stopped == "finished" and r.step == TOTAL and r.skipped == 2
    assert [rec["finite"] for rec in seen] == [True, False, True, False, True, True]
    assert [rec["skipped"] for rec in seen] == [0, 1, 1, 2, 2, 2]
    corrupt({1, 2, 3})
    with pytest.raises(loop.NonFiniteError, match="max_skipped=1"):
        loop.train(config(nonfinite="skip", max_skipped=1))


@pytest.mark.parametrize("mesh,devices,kw,match", [
    ((3, 1, 1), None, {}, "mesh data=3 fsdp=1 tensor=1 needs 3 devices, found 8"),
    ((-1, 3, 1), None, {}, r"the fixed sizes \(3\) do not divide the 8 devices"),
    ((8, 1, 1), None, {"grad_accum_steps": 2}, "4 rows per micro-batch, not divisible by the mesh's data x fsdp = "
                                               "8 x 1 = 8 devices"),
    ((1, 1, 1), 1, {"loss_reduction": "reference", "reference_rows": 3}, "reference_rows=3 does not divide"),
])
def test_config_that_does_not_fit_the_mesh_fails_before_compiling(monkeypatch, mesh, devices, kw, match):
    monkeypatch.setattr(loop, "build_trainer", lambda *a, **k: pytest.fail("got past the checks"))
    with pytest.raises(ConfigError, match=match):
        loop.train(config(mesh=mesh, devices=devices, **kw))


def test_unknown_mesh_axis_in_rules():
    with pytest.raises(ConfigError, match="unknown mesh axis 'model'"):
        tiny_train_config(_model_json(), mesh={"rules": {"embed": "model"}})


def test_llava_json_pipeline_end_to_end(tmp_path):
    """Issue 5's pipeline (LLaVA json, vicuna_v1 template, the vicuna tokenizer, real images and
    text-only rows) feeding the loop: a tiny model with the tokenizer's vocabulary trains 3 steps."""
    from llava_mini_jax.data.synthetic import write_synthetic_dataset
    fixtures = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "preprocess", "tokenizers")
    data = write_synthetic_dataset(tmp_path / "data", num_images=12, num_text=4, seed=0)
    model = write_tiny_model(str(tmp_path / "model"), "mini", vocab=32000)
    cfg = tiny_train_config(model, data={"source": "json", "data_path": [data], "image_folder": str(tmp_path / "data"),
                                         "tokenizer_path": os.path.join(fixtures, "vicuna"), "template": "vicuna_v1",
                                         "model_max_length": 128, "length_buckets": [128], "read_threads": 1},
                            train={"max_steps": 3, "global_batch_size": 4, "grad_accum_steps": 2})
    seen = []
    r = loop.train(cfg, on_step=seen.append)
    assert r.step == 3 and all(np.isfinite(list(r.losses.values())))
    assert all(rec["supervised_tokens"] > 0 for rec in seen)


class _NoLabels(_Corrupt):
    """The batches of steps `bad` (1-based) supervise nothing."""

    def __next__(self):
        b = next(self.it)
        self.n += 1
        if self.n in self.bad:
            b = dict(b, labels=np.full_like(b["labels"], -100))
        return b


def test_steps_without_supervised_tokens_stop_the_run(monkeypatch, tmp_path):
    real = loop.make_pipeline
    monkeypatch.setattr(loop, "make_pipeline", lambda *a, **k: (_NoLabels(real(*a, **k)[0], {2, 3, 4}), 8))
    with pytest.raises(loop.DataError, match=r"3 consecutive steps \(through step 4\) had no supervised token .*"
                                             r"train.max_empty_steps=3"):
        loop.train(config(tmp_path, max_bad_fraction=1.0))
    assert sorted(n for n in os.listdir(tmp_path) if n.isdigit()) == ["2"]  # nothing saved past the last good step
    seen = []
    r = loop.train(config(max_bad_fraction=1.0, max_empty_steps=0), on_step=seen.append)  # 0: never stops
    assert r.step == TOTAL and [rec["empty_rows"] for rec in seen] == [0, 8, 8, 8, 0, 0]


def _llava_config(tmp_path, data_json, image_folder, **train_kw):
    fixtures = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "preprocess", "tokenizers")
    model = write_tiny_model(str(tmp_path / "model"), "mini", vocab=32000)
    return tiny_train_config(model, data={"source": "json", "data_path": [data_json], "image_folder": image_folder,
                                          "tokenizer_path": os.path.join(fixtures, "vicuna"), "template": "vicuna_v1",
                                          "model_max_length": 128, "length_buckets": [128], "read_threads": 1},
                             train={"max_steps": 3, "global_batch_size": 4, "grad_accum_steps": 2, **train_kw},
                             checkpoint={"dir": str(tmp_path / "run")})  # the end-to-end test's step: one compile


def test_a_wrong_image_folder_stops_the_run_naming_the_cause(tmp_path):
    from llava_mini_jax.data.synthetic import write_synthetic_dataset
    data = write_synthetic_dataset(tmp_path / "data", num_images=8, num_text=0, seed=0)
    with pytest.raises(loop.DataError) as e:
        loop.train(_llava_config(tmp_path, data, str(tmp_path / "imgs")))  # mistyped folder
    msg = str(e.value)
    assert "4 of the 4 rows of steps up to 1 (100%) had no supervised token" in msg
    assert re.search(r"skipped/missing_media: \d+ \(e.g. sample 'img\d+': image: image file not found", msg), msg
    assert str(tmp_path / "imgs") in msg and "data.image_folder" in msg
    assert not [n for n in os.listdir(tmp_path / "run") if n.isdigit()]  # no checkpoint of a run on nothing


def test_data_without_answers_stops_the_run_and_warnings_name_the_cause(tmp_path, caplog):
    import json
    records = [{"id": f"q{i}", "conversations": [{"from": "human", "value": f"question {i}?"}]} for i in range(8)]
    (tmp_path / "q.json").write_text(json.dumps(records))
    with pytest.raises(loop.DataError, match=r"fully_masked/no_answer: \d+ \(e.g. sample 'q\d'\)"):
        loop.train(_llava_config(tmp_path, str(tmp_path / "q.json"), ""))
    assert "no assistant ('gpt') turn" in caplog.text and "tokenization mismatch" not in caplog.text


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(tmp_path, monkeypatch):
    from llava_mini_jax.data.synthetic import write_synthetic_dataset
    data = write_synthetic_dataset(tmp_path / "data", num_images=8, num_text=0, seed=0)
    cfg = _llava_config(tmp_path, data, str(tmp_path / "data"))
    small = write_tiny_model(str(tmp_path / "small"), "mini", vocab=64)
    cfg = tiny_train_config(small, data=loop.to_dict(cfg.data), train={"max_steps": 3, "global_batch_size": 4})
    monkeypatch.setattr(loop, "build_trainer", lambda *a, **k: pytest.fail("got past the check"))
    with pytest.raises(ValueError, match=r"tokenizer .*vicuna has 2000 ids .* a vocabulary of 64 .*ids 64..1999"):
        loop.train(cfg)
