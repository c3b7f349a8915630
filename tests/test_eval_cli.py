"""`llava-mini-jax eval` end to end: every benchmark's reader on a synthetic copy in its real layout,
answered by a tiny random checkpoint through the CLI, scored, tabled."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

import eval_synthetic as synth
from cli.main import main as cli_main
from llava_mini_jax.eval import registry
from media import video_file

BUILDERS = {
    "vqav2": synth.vqav2, "gqa": synth.gqa, "vizwiz": synth.vizwiz, "textvqa": synth.textvqa, "pope": synth.pope,
    "mme": synth.mme, "scienceqa": synth.scienceqa, "mmbench": synth.mmbench, "seed": synth.seed,
    "llava_bench": synth.llava_bench, "mmvet": synth.mmvet, "mvbench": synth.mvbench, "mlvu": synth.mlvu,
    "egoschema": synth.egoschema, "msvd_qa": synth.msvd_qa, "activitynet_qa": synth.activitynet_qa,
    "vcgbench": synth.vcgbench,
}


@pytest.fixture(scope="module")
def ckpt(tiny_hf_checkpoint):
    return tiny_hf_checkpoint


def _make_media_real(data_dir, bench, split):
    """The synthetic builders leave videos empty and frame folders bare: fill them with real media."""
    for item in registry.get(bench).read(data_dir, split):
        if item.video is None:
            continue
        if os.path.isdir(item.video):
            for k in range(4):
                Image.fromarray(np.full((12, 12, 3), 40 * k, np.uint8)).save(os.path.join(item.video, f"{k:05d}.jpg"))
        elif os.path.getsize(item.video) == 0:
            os.remove(item.video)
            video_file(item.video, frames=6, fps=3)


def test_every_benchmark_has_a_builder():
    assert set(BUILDERS) | {"mmbench_cn", "msrvtt_qa"} >= set(registry.BENCHMARKS) - {"mmbench_cn", "msrvtt_qa"}


@pytest.mark.parametrize("bench", sorted(BUILDERS))
def test_eval_cli_end_to_end(bench, ckpt, tmp_path, capsys):
    data = BUILDERS[bench](tmp_path)
    b = registry.get(bench)
    split = b.default_split
    _make_media_real(data, bench, split)
    out = tmp_path / "results.md"
    assert cli_main(["eval", bench, "--model", str(ckpt), "--data", str(data), "--batch-size", "2",
                     "--max-new-tokens", "3", "--out", str(out)]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["benchmark"] == bench and row["count"] >= 1
    answers = [json.loads(line) for line in open(data / "answers" / f"{bench}-{split}.jsonl")]
    assert len(answers) == row["count"]
    table = json.loads(out.with_suffix(".json").read_text())
    assert [r["benchmark"] for r in table["rows"]] == [bench]
    assert b.title in out.read_text() and "Paper" in out.read_text()
    if not b.is_server_scored(split) and not b.judged:
        assert row["ours"] is not None and 0 <= float(row["ours"]) <= (2800 if bench == "mme" else 100)


def test_public_evaluate_equals_the_cli(ckpt, tmp_path, capsys):
    """`llava_mini_jax.evaluate(bench, model_dir, data_dir)` gives the CLI's row."""
    import llava_mini_jax
    data = synth.pope(tmp_path / "a")
    row = llava_mini_jax.evaluate("pope", str(ckpt), data, batch_size=2, max_new_tokens=3, progress=False)
    data2 = synth.pope(tmp_path / "b")
    assert cli_main(["eval", "pope", "--model", str(ckpt), "--data", str(data2), "--batch-size", "2",
                     "--max-new-tokens", "3"]) == 0
    cli_row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["ours"] == cli_row["ours"] and row["count"] == cli_row["count"] and row["metric"] == "f1"


def test_quantize_flag_reaches_the_session(ckpt, tmp_path, monkeypatch):
    import llava_mini_jax.chat

    seen = []

    def fake_session(*args, **kwargs):  # records what the CLI asks for, then stops it (a one-line error)
        seen.append(kwargs.get("quantize"))
        raise RuntimeError("stop here")
    monkeypatch.setattr(llava_mini_jax.chat, "ChatSession", fake_session)
    data = BUILDERS["pope"](tmp_path)
    assert cli_main(["eval", "pope", "--model", str(ckpt), "--data", str(data), "--quantize", "int4"]) == 1
    assert seen == ["int4"]


def test_resuming_answers_of_other_settings_is_refused_in_one_line(ckpt, tmp_path, capsys):
    data = synth.pope(tmp_path)
    args = ["eval", "pope", "--model", str(ckpt), "--data", str(data), "--batch-size", "2", "--limit", "2"]
    assert cli_main(args + ["--max-new-tokens", "3"]) == 0
    capsys.readouterr()
    assert cli_main(args[:-2] + ["--max-new-tokens", "4"]) == 1  # the rest of the questions, another budget
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "llava-mini-jax eval: error: answers file" in err[0]
    assert "'max_new_tokens': 3" in err[0] and "'max_new_tokens': 4" in err[0]
    assert len(open(data / "answers" / "pope-test.jsonl").readlines()) == 2  # nothing mixed in
    # scoring the half-done file without a model reports what is missing beside the score
    assert cli_main(["eval", "pope", "--data", str(data)]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["count"] == 4 and row["missing"] == 2 and row["note"].startswith("2 of 4 questions have no answer")
