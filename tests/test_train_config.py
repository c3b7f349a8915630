"""train.config: YAML/JSON + command-line overrides -> frozen dataclasses; errors name the key."""
import json

import pytest

from train.config import ConfigError, TrainConfig, config_keys, load_config, to_dict


def test_presets_are_table_9():
    s1 = load_config("stage1")
    assert s1.model.mode == "baseline" and s1.data.template == "plain"
    assert [(g.name, g.match, g.lr) for g in s1.optimizer.groups] == [("projector", ("mm_projector",), 1e-3)]
    assert s1.train.global_batch_size == 256 and s1.train.epochs == 1 and s1.optimizer.max_grad_norm == 1.0
    s2 = load_config("stage2")
    assert s2.model.mode == "mini" and s2.data.template == "vicuna_v1" and s2.train.epochs == 2
    assert [(g.name, g.lr) for g in s2.optimizer.groups] == [("projector", 1e-5), ("default", 1e-4)]
    assert s2.optimizer.max_grad_norm == 0.5 and s2.model.init_patterns == ("mm_projector",)
    for s in (s1, s2):
        o = s.optimizer
        assert (o.b1, o.b2, o.eps, o.weight_decay) == (0.9, 0.999, 1e-8, 0.0)
        assert s.schedule.warmup_ratio == 0.03 and s.schedule.decay == "cosine"
        assert s.model.param_dtype == "float32" and s.model.compute_dtype == "bfloat16"


def test_overrides_every_kind_of_field():
    cfg = load_config("stage2", ["optimizer.groups.0.lr=2e-5", "train.global_batch_size=64", "mesh.fsdp=4",
                                 "mesh.data=-1", "data.data_path=[a.json, b.json]", "data.image_folder=/img",
                                 "mesh.rules={embed: null, mlp: [fsdp, tensor]}", "checkpoint.async_save=false",
                                 "model.overrides.compressor_size=2", "schedule.warmup_steps=10",
                                 "optimizer.max_grad_norm=null"])
    assert cfg.optimizer.groups[0].lr == 2e-5 and cfg.optimizer.groups[1].lr == 1e-4
    assert cfg.train.global_batch_size == 64 and cfg.mesh.shape == (-1, 4, 1)
    assert cfg.data.data_path == ("a.json", "b.json") and cfg.data.image_folder == "/img"
    assert cfg.mesh.rules == {"embed": None, "mlp": ["fsdp", "tensor"]}
    assert cfg.checkpoint.async_save is False and cfg.model.overrides["compressor_size"] == 2
    assert cfg.schedule.warmup_steps == 10 and cfg.optimizer.max_grad_norm is None


@pytest.mark.parametrize("override,match", [
    ("optimizer.lrr=1", "unknown key 'optimizer.lrr'; valid keys of optimizer: b1, b2, eps, weight_decay"),
    ("trian.epochs=1", "unknown key 'trian'; valid keys of the top level: stage, model, data, mesh"),
    ("train.global_batch_size=abc", "train.global_batch_size='abc': expected an integer"),
    ("train.global_batch_size=100", "global_batch_size=100 is not divisible by train.grad_accum_steps=8"),
    ("train.loss_reduction=mean", "train.loss_reduction='mean': expected one of \\['token', 'reference'\\]"),
    ("optimizer.groups.5.lr=1", "index 5 out of range for a list of 2"),
    ("mesh.data=0", "each must be >= 1"),
    ("mesh.rules={embed: model}", "unknown mesh axis 'model'"),
    ("model.overrides.compressor=2", "unknown LlavaMiniConfig field"),
    ("model.path=/x", "give one weight source"),
    ("checkpoint.async_save=maybe", "expected true or false"),
    ("novalue", "expected key=value"),
])
def test_bad_values_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("stage2", ["model.llm_path=/l", "model.vision_path=/v", "train.grad_accum_steps=8", override])


def test_files_json_and_yaml_and_unknown_top_level(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"train": {"global_batch_size": 32}, "mesh": {"fsdp": 2}}))
    cfg = load_config(str(p))
    assert cfg.train.global_batch_size == 32 and cfg.mesh.fsdp == 2 and cfg.optimizer == TrainConfig().optimizer
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  epochs: 3\nwhatever: 1\n")
    with pytest.raises(ConfigError, match="unknown key 'whatever'"):
        load_config(str(y))
    with pytest.raises(FileNotFoundError, match="neither a file nor a preset"):
        load_config(str(tmp_path / "missing.yaml"))


def test_round_trip_and_key_listing():
    cfg = load_config("stage1")
    again = load_config(None, [f"{k}={json.dumps(v)}" for k, v in _flat(to_dict(cfg)).items()])
    assert again == cfg
    keys = config_keys()
    assert "optimizer.groups" in keys and "mesh.tensor" in keys and "distributed.coordinator_address" in keys


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in ("rules", "overrides"):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def test_a_run_directory_never_holds_or_lies_in_a_weight_source(tmp_path):
    from train.config import load_config
    for key, src, run, relation in (("path", tmp_path / "run" / "4", tmp_path / "run", "contains"),
                                    ("init_from_checkpoint", tmp_path / "s1", tmp_path / "s1", "is"),
                                    ("path", tmp_path / "m", tmp_path / "m" / "run", "lies inside")):
        with pytest.raises(ConfigError, match=rf"checkpoint.dir {run} {relation} the source {src}; .*\(model.{key}\)"):
            load_config(None, [f"model.{key}={src}", f"checkpoint.dir={run}"])
    load_config(None, [f"model.path={tmp_path / 'm'}", f"checkpoint.dir={tmp_path / 'run'}"])  # apart: fine
