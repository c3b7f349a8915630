"""train.__main__: `llava-mini-jax train --config FILE [key=value ...]` end to end, and its exit codes."""
import json
import os

import yaml

import pytest

from train.__main__ import EXIT_BUSY, EXIT_CONFIG, EXIT_OK, main
from train.config import to_dict
from train.tiny import tiny_train_config, write_tiny_model


def _config_file(tmp_path):
    cfg = tiny_train_config(write_tiny_model(str(tmp_path / "model")),
                            mesh={"data": 1, "fsdp": 1, "tensor": 1, "devices": 1}, train={"max_steps": 6})
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(to_dict(cfg)))
    return str(p)


def test_cli_trains_and_writes_metrics(tmp_path, capsys):
    path = _config_file(tmp_path)
    run = tmp_path / "run"
    assert main(["--config", path, f"checkpoint.dir={run}", "checkpoint.every_steps=4", "logging.level=WARNING"]) \
        == EXIT_OK
    lines = [json.loads(x) for x in open(run / "metrics.jsonl")]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert sorted(n for n in os.listdir(run) if n.isdigit()) == ["4", "6"]
    # running the same command again resumes at the end: nothing to do
    assert main(["--config", path, f"checkpoint.dir={run}", "logging.level=WARNING"]) == EXIT_OK
    assert len(open(run / "metrics.jsonl").readlines()) == 6


def test_cli_config_errors_exit_2(tmp_path, capsys):
    path = _config_file(tmp_path)
    assert main(["--config", path, "optimizer.lrr=1"]) == EXIT_CONFIG
    assert "valid keys of optimizer" in capsys.readouterr().err
    assert main(["--config", path, "mesh.devices=null", "mesh.data=3"]) == EXIT_CONFIG
    assert "needs 3 devices, found 8" in capsys.readouterr().err


def test_print_config_and_list_keys(capsys):
    assert main(["--config", "stage2", "--print-config", "train.global_batch_size=128"]) == EXIT_OK
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["train"]["global_batch_size"] == 128 and out["stage"] == "stage2"
    assert main(["--list-keys"]) == EXIT_OK
    assert "optimizer.groups" in capsys.readouterr().out.split()


def test_errors_print_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    path = _config_file(tmp_path)
    from train.run_lock import RunLock
    run = tmp_path / "run"
    with RunLock(str(run)):
        assert main(["--config", path, f"checkpoint.dir={run}"]) == EXIT_BUSY
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("llava-mini-jax train: error: run directory ") and "in use by pid" in err
    missing = ["--config", path, "data.source=json", f"data.data_path={tmp_path}/nope.json",
               f"data.tokenizer_path={tmp_path}"]
    assert main(missing) == EXIT_CONFIG
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.json" in err and "Traceback" not in err
    with pytest.raises(FileNotFoundError, match="nope.json"):
        main(missing + ["--debug"])
    monkeypatch.setenv("LLAVA_MINI_JAX_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        main(missing)
