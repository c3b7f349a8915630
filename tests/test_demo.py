"""The demo: procedural data, its tokenizer, and one small end-to-end run of the whole pipeline."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from llava_mini_jax import load_tokenizer, tokenize_conversation
from demo import run_demo
from demo import shapes
from demo.dataset import write_dataset
from demo.report import format_table, real_size_flops
from demo.tokenizer import train_tokenizer


def test_scene_answers_match_the_pixels():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = shapes.random_scene(rng)
        img = np.asarray(shapes.draw(scene, rng, 32)).astype(int)
        painted = (np.abs(img - np.array(shapes.BACKGROUND)).sum(-1) > 0)
        colour = np.array(shapes.COLOURS[scene.colour])
        assert (np.abs(img[painted] - colour).sum(-1) == 0).all()  # one colour only
        quadrants = {(y // 16) * 2 + x // 16 for y, x in zip(*np.nonzero(painted))}
        assert quadrants == set(scene.cells) and len(scene.cells) == scene.count
        if scene.count == 1:
            xs = np.nonzero(painted)[1]
            assert scene.answer("position") == ("left" if xs.mean() < 16 else "right")
        else:
            assert scene.answer("position") is None
    with pytest.raises(ValueError, match="question kind"):
        scene.answer("size")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    rng = np.random.default_rng(0)
    d = train_tokenizer(str(tmp_path_factory.mktemp("tok")), shapes.corpus() +
                        [shapes.random_scene(rng).caption() for _ in range(100)])
    return load_tokenizer(d)


def test_tokenizer_serves_both_templates_without_mismatch(tokenizer):
    """Every question/answer pair trains (the reference's v1 arithmetic lines up) and answers are
    single supervised words plus `</s>`; captions contain no `<unk>`."""
    assert tokenizer.kind == "sentencepiece" and tokenizer.vocab_size <= 256
    answers = list(shapes.COLOURS) + list(shapes.SHAPES) + list(shapes.COUNTS) + ["left", "right"]
    for q in shapes.QUESTIONS.values():
        for a in answers:
            s = tokenize_conversation([{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": a}],
                                      tokenizer, "vicuna_v1", True)
            assert not s.fully_masked, (q, a)
            supervised = s.input_ids[s.labels >= 0]
            assert tokenizer.decode(supervised[:-1]).strip() == a and supervised[-1] == tokenizer.eos_id
    rng = np.random.default_rng(1)
    for _ in range(20):
        cap = shapes.random_scene(rng).caption()
        s = tokenize_conversation([{"from": "human", "value": "<image>"}, {"from": "gpt", "value": cap}],
                                  tokenizer, "plain", True)
        assert tokenizer.unk_id not in s.input_ids and tokenizer.decode(s.input_ids).strip() == cap


def test_dataset_files(tmp_path):
    data = write_dataset(str(tmp_path), num_train=30, num_test=12, progress=False)
    stage1, stage2, test = (json.load(open(p)) for p in (data.stage1_json, data.stage2_json, data.test_json))
    assert len(stage1) == 30 and 30 * 3 <= len(stage2) <= 30 * 4 and len(test) == 12
    assert [t["kind"] for t in test[:4]] == list(shapes.QUESTIONS)
    assert all(os.path.exists(os.path.join(data.image_folder, r["image"])) for r in stage1 + test)
    assert not {r["image"] for r in stage1} & {r["image"] for r in test}  # held out


def test_real_size_flops_match_the_benchmark():
    f = real_size_flops()
    assert 0.73 < 1 - f["mini"] / f["baseline"] < 0.76  # 74% (XLA: 8.90 -> 2.31 TFLOPs)
    assert abs(f["baseline"] - 8.89) < 0.05 and abs(f["mini"] - 2.30) < 0.05


def test_format_table_lists_every_row():
    text = format_table([{"name": "a", "tokens": 1, "accuracy": {"overall": 0.5}, "flops": 2e6, "ttft_s": 1e-3,
                          "decode_s_per_token": 1e-4}, {"name": "chance", "accuracy": {"overall": 0.25}}])
    assert "0.50" in text and "0.25" in text and "2.0" in text and text.count("\n") == 3


def test_demo_end_to_end_small(tmp_path):
    """The whole pipeline at a few steps: TFDS, both stages through train/, orbax, HF export, reload,
    generate, FLOPs, latency, attention PNG. (The real run: `llava-mini-jax demo`, README.)"""
    res = run_demo(str(tmp_path / "demo"), steps=8, stage1_steps=4, train_images=64, test_questions=16, seed=0,
                   progress=False)
    names = [r["name"] for r in res["rows"]]
    assert names == ["LLaVA-Mini (1 token)", "LLaVA-v1.5 mode", "chance"]
    mini, base = res["rows"][0], res["rows"][1]
    assert (mini["tokens"], base["tokens"]) == (1, 64)
    assert mini["flops"] < base["flops"]
    for r in (mini, base):
        assert 0.0 <= r["accuracy"]["overall"] <= 1.0 and set(r["accuracy"]) >= set(shapes.QUESTIONS)
        assert os.path.exists(os.path.join(r["hf_dir"], "model.safetensors"))
        assert os.path.exists(os.path.join(r["hf_dir"], "clip", "model.safetensors"))
        assert os.path.exists(os.path.join(r["hf_dir"], "tokenizer.model"))
    assert os.path.getsize(res["attention_png"]) > 0
    assert os.path.isdir(tmp_path / "demo" / "runs" / "stage1" / "4" / "params")  # orbax step
    assert json.load(open(tmp_path / "demo" / "results.json"))["rows"][2]["accuracy"]["overall"] == pytest.approx(
        res["rows"][2]["accuracy"]["overall"])
    # what benchmarks/demo_seeds.py stores per run (results/demo.json), from this run
    from benchmarks.demo_seeds import DEFAULTS, figure
    settings = {**DEFAULTS, "steps": 8, "stage1_steps": 4, "train_images": 64, "test_questions": 16}
    row = figure("small", settings, 0, res)
    assert row["command"] == "llava-mini-jax demo --seed 0 --steps 8 --stage1-steps 4 --train-images 64 " \
                             "--test-questions 16"
    assert row["mini"]["accuracy"]["overall"] == pytest.approx(mini["accuracy"]["overall"], abs=1e-4)
    assert (row["mini"]["tokens"], row["baseline"]["tokens"]) == (1, 64) and row["chance"] == pytest.approx(
        res["rows"][2]["accuracy"]["overall"])


def test_demo_model_quantize_flag_reaches_the_session(monkeypatch):
    import llava_mini_jax.chat
    from cli.main import main as cli_main

    seen = []

    def fake_session(*args, **kwargs):  # records what the CLI asks for, then stops it (a one-line error)
        seen.append(kwargs.get("quantize"))
        raise RuntimeError("stop here")
    monkeypatch.setattr(llava_mini_jax.chat, "ChatSession", fake_session)
    assert cli_main(["demo", "--model", "some/dir", "--quantize", "int8"]) == 1
    assert seen == ["int8"]
