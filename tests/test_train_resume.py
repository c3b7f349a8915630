"""train.resume: what a resumed run may change. Unit checks of the comparison, then through the
loop: a changed learning rate or model is refused naming the key (nothing written), a changed
checkpoint interval or stop step is accepted, and `checkpoint.resume=false` over steps is refused."""
import functools
import json
import os
import tempfile

import pytest

from train.config import ConfigError, to_dict
from train.loop import train
from train.resume import check_resume, config_differences, may_change
from train.tiny import tiny_train_config, write_tiny_model


@functools.lru_cache(maxsize=None)
def _model_json(hidden=32):
    return write_tiny_model(tempfile.mkdtemp(prefix=f"tiny_resume_{hidden}_"), "mini", hidden=hidden)


def config(run_dir, hidden=32, **sections):
    sections.setdefault("train", {})
    sections["train"] = {"max_steps": 6, **sections["train"]}  # as test_train_checkpointing: one compile
    ck = {"dir": str(run_dir), "every_steps": 2, **sections.pop("checkpoint", {})}
    return tiny_train_config(_model_json(hidden), checkpoint=ck, **sections)


def test_what_may_change():
    assert may_change("checkpoint.every_steps") and may_change("logging.dir") and may_change("mesh.data")
    assert may_change("train.stop_at_step") and may_change("model.remat_policy") and may_change("data.read_threads")
    for key in ("optimizer.groups.0.lr", "train.global_batch_size", "train.seed", "schedule.warmup_steps",
                "model.param_dtype", "model.scan_layers", "data.data_path", "data.template", "train.max_steps"):
        assert not may_change(key), key


def test_config_differences_name_stored_and_new_values(tmp_path):
    a = to_dict(config(tmp_path))
    b = to_dict(config(tmp_path, optimizer={"max_grad_norm": 0.5}, train={"stop_at_step": 2, "seed": 3},
                       logging={"progress_bar": True}, checkpoint={"every_steps": 5}))
    assert config_differences(a, b) == [("optimizer.max_grad_norm", 1.0, 0.5), ("train.seed", 0, 3)]
    # a stored config written before a key existed: the key counts as its default
    old = json.loads(json.dumps(a))
    del old["train"]["max_bad_fraction"]
    assert config_differences(old, a) == []
    # free-form dicts (model.overrides) compare by their entries
    c = to_dict(config(tmp_path, model={"overrides": {"compressor_size": 2}}))
    assert config_differences(a, c) == [("model.overrides", {}, "<absent>"),
                                        ("model.overrides.compressor_size", "<absent>", 2)]


def test_model_difference_is_named(tmp_path):
    from train.model_setup import model_config
    small, _ = model_config(config(tmp_path).model)
    big, _ = model_config(config(tmp_path, hidden=48).model)
    with pytest.raises(ConfigError, match=r"model config.json hidden_size: 32 \(stored\) -> 48 \(now\)"):
        check_resume("RUN", 2, None, {}, small.to_hf_dict(), big.to_hf_dict())


def test_resume_refuses_an_incompatible_config_and_accepts_a_compatible_one(tmp_path):
    first = train(config(tmp_path, train={"stop_at_step": 2}))
    assert first.step == 2
    stored = (tmp_path / "train_config.json").read_text()
    bad = config(tmp_path, optimizer={"groups": [{"name": "projector", "match": ["mm_projector"], "lr": 1e-3},
                                                 {"name": "default", "match": [".*"], "lr": 5e-3}]})
    with pytest.raises(ConfigError) as e:
        train(bad)
    msg = str(e.value)
    assert "optimizer.groups.1.lr: 0.001 (stored) -> 0.005 (now)" in msg and "at step 2" in msg
    assert "checkpoint.*" in msg and "model.init_from_checkpoint=" in msg  # what may change, and the way out
    with pytest.raises(ConfigError, match="hidden_size: 32 \\(stored\\) -> 48"):
        train(config(tmp_path, hidden=48))
    assert (tmp_path / "train_config.json").read_text() == stored  # nothing overwritten
    assert sorted(n for n in os.listdir(tmp_path) if n.isdigit()) == ["2"]
    with pytest.raises(ConfigError, match=r"holds steps \[2\] of an earlier run and checkpoint.resume=false"):
        train(config(tmp_path, checkpoint={"resume": False}))
    resumed = train(config(tmp_path, checkpoint={"every_steps": 1}))  # may change: accepted
    assert sorted(resumed.losses) == [3, 4, 5, 6]
    assert json.loads((tmp_path / "train_config.json").read_text())["checkpoint"]["every_steps"] == 1
