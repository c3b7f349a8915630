"""`evaluate`: end to end on synthetic benchmarks, resume, limit, scoring saved answers, table."""

import json

import pytest

import eval_synthetic as syn
from llava_mini_jax.eval import evaluate

POPE_ANSWERS = {1: "Yes", 2: "Yes", 3: "Yes, there is a dog.", 4: "No."}


def test_batched_equals_one_at_a_time(tmp_path):
    root = syn.pope(tmp_path)
    batched = evaluate(
        "pope", root, syn.CannedModel(POPE_ANSWERS), batch_size=3, work_dir=tmp_path / "b", progress=False
    )
    single = evaluate(
        "pope", root, syn.CannedModel(POPE_ANSWERS), batch_size=1, work_dir=tmp_path / "s", progress=False
    )
    assert batched["metrics"] == single["metrics"]


def test_rerun_resumes_without_asking_again(tmp_path):
    root = syn.pope(tmp_path)
    first = syn.CannedModel(POPE_ANSWERS)
    evaluate("pope", root, first, limit=2, progress=False)
    assert first.asked == 2
    second = syn.CannedModel(POPE_ANSWERS)
    row = evaluate("pope", root, second, progress=False)
    assert second.asked == 2  # only the two questions the first run did not reach
    assert row["answers_file"] == str(root / "answers" / "pope-test.jsonl")
    assert row["ours"] == pytest.approx((200 / 3 + 100) / 2)


def test_limit_scores_only_the_first_questions(tmp_path):
    root = syn.pope(tmp_path)
    row = evaluate("pope", root, syn.CannedModel(POPE_ANSWERS), limit=2, progress=False)
    assert row["count"] == 2 and list(row["metrics"]["splits"]) == ["adversarial"]


def test_scoring_saved_answers_without_a_model(tmp_path):
    root = syn.gqa(tmp_path)
    syn.write_jsonl(
        root / "answers" / "gqa-testdev.jsonl",
        [
            {"question_id": "201", "prompt": f"Is it red?\n{syn.SHORT}", "text": "yes"},
            {"question_id": "202", "prompt": f"What is it?\n{syn.SHORT}", "text": "Table."},
        ],
    )
    row = evaluate("gqa", root, None)
    assert row["ours"] == pytest.approx(100.0) and row["missing"] == 0


def test_missing_answers_are_reported_beside_the_score(tmp_path):
    root = syn.pope(tmp_path)
    evaluate("pope", root, syn.CannedModel(POPE_ANSWERS), limit=2, progress=False)  # half done
    row = evaluate("pope", root, None)
    path = root / "answers" / "pope-test.jsonl"
    assert row["count"] == 4 and row["missing"] == 2
    assert row["note"].startswith(f"2 of 4 questions have no answer in {path} and count as empty answers")


def test_results_table_accumulates_rows_in_markdown_and_json(tmp_path):
    out = tmp_path / "results.md"
    evaluate("pope", syn.pope(tmp_path), syn.CannedModel(POPE_ANSWERS), out=out, progress=False)
    evaluate("mmvet", syn.mmvet(tmp_path), syn.CannedModel({1: "Hello"}), out=out, progress=False)
    evaluate("vqav2", syn.vqav2(tmp_path), syn.CannedModel({}), out=out, progress=False)
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["benchmark"], r["split"]) for r in rows] == [
        ("vqav2", "test-dev"),
        ("pope", "test"),
        ("mmvet", "test"),
    ]
    md = out.read_text().splitlines()
    assert md[2].startswith("| VQAv2 | test-dev | accuracy | — | 79.0 | — | server-scored")
    assert md[3] == "| POPE (F1) | test | f1 | 83.3 | 85.3 | — |  |"
    assert md[4].startswith("| MM-Vet | test | proxy_contains | — | 37.2 | 50.0 | GPT-judged")
    # running a benchmark again replaces its row
    evaluate(
        "pope",
        tmp_path / "pope",
        syn.CannedModel({}),
        out=tmp_path / "results.json",
        work_dir=tmp_path / "again",
        progress=False,
    )
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    # empty answers read as "yes" (POPE rule): TP 1, FP 1 per split -> F1 2/3
    assert len(rows) == 3 and rows[1]["ours"] == pytest.approx(200 / 3)


def test_unknown_benchmark_and_split_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'vqa3'.*'gqa'"):
        evaluate("vqa3", tmp_path, None)
    with pytest.raises(ValueError, match="unknown split 'train'"):
        evaluate("gqa", tmp_path, None, split="train")


def test_lenient_parsing_is_reported_beside_never_as_the_headline(tmp_path):
    root = syn.mvbench(tmp_path)
    answers = {"action_sequence/0": "Opened the door.", "action_sequence/1": "(A)", "episodic_reasoning/0": "B."}
    out = tmp_path / "results.md"
    row = evaluate("mvbench", root, syn.CannedModel(answers), out=out, answer_parsing="lenient", progress=False)
    # check_ans credits only '(A)': Action Sequence 50, Episodic Reasoning 0 -> 25; lenient reads all
    assert row["ours"] == pytest.approx(25.0) and row["lenient"] == pytest.approx(100.0)
    assert row["metrics"]["lenient"]["tasks"] == {"Action Sequence": 100.0, "Episodic Reasoning": 100.0}
    md = out.read_text().splitlines()
    assert "| Ours | Lenient parsing (not comparable with the paper) |" in md[0]
    assert md[2].startswith("| MVBench | test | task_mean | 25.0 | 100.0 | — |")
    plain = evaluate("pope", syn.pope(tmp_path), syn.CannedModel(POPE_ANSWERS), progress=False)
    assert plain["lenient"] is None and "lenient" not in plain["metrics"]
    with pytest.raises(ValueError, match="'loose'"):
        evaluate("pope", tmp_path / "pope", None, answer_parsing="loose")
