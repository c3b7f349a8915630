"""Answers files in the layouts the reference's scripts write, re-scored through `evaluate`."""

import json

import pytest

import eval_synthetic as syn
from llava_mini_jax.eval import evaluate, reference_answers


def test_mmbench_file_of_model_vqa_mmbench(tmp_path):
    root = syn.mmbench(tmp_path)
    lines = [  # its prompt: the question block without the instruction; question_id: the row index
        {"question_id": 0, "round_id": 0, "prompt": "A zoo photo.\nWhat animal?\nA. cat\nB. dog\nC. bird\nD. fish",
         "text": "B", "options": ["cat", "dog", "bird", "fish"], "option_char": ["A", "B", "C", "D"],
         "answer_id": "x", "model_id": "llava-mini", "metadata": {}},
        {"question_id": 1, "round_id": 0, "prompt": "Is it day?\nA. yes\nB. no", "text": "B",
         "options": ["yes", "no"], "option_char": ["A", "B"], "answer_id": "y", "model_id": "m", "metadata": {}},
    ]
    path = syn.write_jsonl(tmp_path / "ckpt.jsonl", lines)
    row = evaluate("mmbench", root, None, answers_file=path)
    assert row["ours"] == pytest.approx(50.0)  # question 1 (answer A) answered B


def test_mvbench_and_mlvu_files_of_the_mc_scripts(tmp_path):
    root = syn.mvbench(tmp_path)
    prefix = "/elsewhere/MVBench/video/star/Charades_v1_480/"
    lines = [
        {"pred": "(B) Opened the door.", "gt": "(B) Opened the door.",
         "question": "Question: What did the person do first?\nOptions:\n(A) Sat down.\n(B) Opened the door.",
         "question_type": "Action Sequence", "video": prefix + "A1.mp4", "ans": "B", "acc": 1},
        {"pred": "B", "gt": "(A) Ran.",
         "question": "Question: What happened last?\nOptions:\n(A) Ran.\n(B) Slept.\n(C) Ate.",
         "question_type": "Action Sequence", "video": prefix + "A2.mp4", "ans": "B", "acc": 0},
        {"pred": "(B)", "gt": "(B) Bob", "question": "Question: Who spoke?\nOptions:\n(A) Ann\n(B) Bob",
         "question_type": "Episodic Reasoning", "video": "/x/tvqa/frames_fps3_hq/show_s01e01_seg01", "ans": "B"},
    ]
    row = evaluate("mvbench", root, None, answers_file=syn.write_jsonl(tmp_path / "merge.jsonl", lines))
    assert row["metrics"]["tasks"] == {"Action Sequence": 50.0, "Episodic Reasoning": 100.0}
    assert row["ours"] == pytest.approx(75.0)


def test_egoschema_video_qa_and_vcg_files(tmp_path):
    ego = syn.egoschema(tmp_path)
    lines = [{"q_uid": "uid0", "question": "q", "prompt": "p", "output": "D. Because", "pred": 3, "acc": 1},
             {"q_uid": "uid1", "question": "q", "prompt": "p", "output": "B", "pred": 1, "acc": 0}]
    row = evaluate("egoschema", ego, None, answers_file=syn.write_jsonl(tmp_path / "ego.jsonl", lines))
    assert row["ours"] == pytest.approx(50.0)

    msvd = syn.msvd_qa(tmp_path)
    lines = [{"id": "v1_0", "question": "what is a man doing?", "answer": "play", "pred": "The man is playing."}]
    row = evaluate("msvd_qa", msvd, None, answers_file=syn.write_jsonl(tmp_path / "msvd.jsonl", lines))
    judge = json.loads(open(row["files"]["GPT judge input"]).read())
    assert [r["pred"] for r in judge] == ["The man is playing.", ""]

    vcg = syn.vcgbench(tmp_path)
    lines = [{"video_name": "v_x1", "Q1": "What is the man wearing?", "Q2": "Describe his clothes.",
              "A": "A red shirt.", "pred1": "red", "pred2": "a shirt"}]
    row = evaluate("vcgbench", vcg, None, split="consistency",
                   answers_file=syn.write_json(tmp_path / "cons.json", lines))  # a JSON list works too
    [pair] = json.loads(open(row["files"]["GPT judge input"]).read())
    assert (pair["pred1"], pair["pred2"]) == ("red", "a shirt")


def test_loader_file_matches_by_id_when_the_prompt_differs(tmp_path):
    root = syn.gqa(tmp_path)
    lines = [{"question_id": "201", "prompt": "Is it red?", "text": "yes"},  # prompt recorded otherwise
             {"question_id": "999", "prompt": "elsewhere", "text": "no"}]  # not in this split: ignored
    row = evaluate("gqa", root, None, answers_file=syn.write_jsonl(tmp_path / "a.jsonl", lines))
    assert row["ours"] == pytest.approx(50.0)  # 201 right, 202 unanswered


def test_a_file_matching_nothing_is_named(tmp_path):
    root = syn.gqa(tmp_path)
    path = syn.write_jsonl(tmp_path / "other.jsonl", [{"question_id": "x", "prompt": "y", "text": "z"}])
    with pytest.raises(ValueError, match="none of its 1 records matches"):
        evaluate("gqa", root, None, answers_file=path)
    with pytest.raises(ValueError, match="expected JSON objects"):
        reference_answers.read_records(syn.write_json(tmp_path / "bad.json", [1, 2]))


def test_reference_file_in_place_of_ours(tmp_path):
    """The reference's MMBench answers copied to where ours go are scored without a model."""
    root = syn.mmbench(tmp_path)
    syn.write_jsonl(
        root / "answers" / "mmbench-dev.jsonl",
        [{"question_id": 0, "round_id": 0, "prompt": "A zoo photo.\nWhat animal?\nA. cat\nB. dog\nC. bird\nD. fish",
          "text": "B"}, {"question_id": 1, "round_id": 0, "prompt": "Is it day?\nA. yes\nB. no", "text": "A"}],
    )
    assert evaluate("mmbench", root, None)["ours"] == pytest.approx(100.0)
    assert evaluate("mmbench", syn.mmbench(tmp_path / "empty"), None)["ours"] == pytest.approx(0.0)
