"""Video benchmark readers on synthetic benchmarks in their real layouts, run end to end."""

import csv
import json

import pytest

import eval_synthetic as syn
from llava_mini_jax.eval import evaluate, video_readers


def run(bench, root, answers, split=None, **kwargs):
    return evaluate(bench, root, syn.CannedModel(answers), split=split, progress=False, **kwargs)


def test_choice_query_layout():
    assert video_readers.choice_query("Why?", ["x", "y"]) == (
        "Question: Why?\nOptions:\n(A) x\n(B) y\nAnswer with one letter."
    )
    # the reference strips the whole block's trailing whitespace: only the last option loses it
    assert video_readers.choice_query("Why? ", ["x ", "y  "]) == (
        "Question: Why? \nOptions:\n(A) x \n(B) y\nAnswer with one letter."
    )


def test_mvbench_tasks_queries_and_scores(tmp_path):
    root = syn.mvbench(tmp_path)
    items = video_readers.read_mvbench(root, "test")
    assert [i.question_id for i in items] == [
        "action_sequence/0",
        "action_sequence/1",
        "episodic_reasoning/0",
    ]
    first = items[0]
    assert first.query == (
        "Question: What did the person do first?\nOptions:\n(A) Sat down.\n"
        "(B) Opened the door.\nAnswer with one letter."
    )
    assert first.prompt == first.query[: -len("\nAnswer with one letter.")]  # recorded as the reference
    assert first.video == str(root / "video" / "star" / "Charades_v1_480" / "A1.mp4")
    assert first.image is None
    assert (first.meta["answer"], first.meta["bound"], first.meta["max_frames"]) == ("B", (1.5, 8.0), 1000)
    assert items[2].meta["data_type"] == "frame"
    row = run(
        "mvbench",
        root,
        {
            "action_sequence/0": "(B) Opened the door.",
            "action_sequence/1": "B",
            "episodic_reasoning/0": "Bob",
        },
        answer_parsing="lenient",
    )
    # check_ans: '(B) ...' is B (right); 'B' for an 'A' question is wrong; the option text 'Bob'
    # alone reads nothing. The headline is the reference's 'Avg', the mean over its task names.
    assert row["metrics"]["tasks"] == {"Action Sequence": 50.0, "Episodic Reasoning": 0.0}
    assert row["ours"] == pytest.approx(25.0) and row["metric"] == "task_mean"
    assert row["metrics"]["accuracy"] == pytest.approx(100 / 3)
    assert row["lenient"] == pytest.approx(75.0)  # lenient: 'Bob' is option B


def test_mvbench_answer_must_be_a_candidate(tmp_path):
    root = syn.mvbench(tmp_path)
    syn.write_json(
        root / "json" / "action_sequence.json",
        [{"video": "A1.mp4", "question": "q", "candidates": ["x", "y"], "answer": "z"}],
    )
    with pytest.raises(ValueError, match="answer 'z' is not one of the candidates"):
        video_readers.read_mvbench(root, "test")


def test_mlvu_multiple_choice_tasks_and_mean(tmp_path):
    root = syn.mlvu(tmp_path)
    items = video_readers.read_mlvu(root, "dev")
    # the reference's task files in its order (count first); generation tasks are not read
    assert [i.question_id for i in items] == ["4_count/0", "1_plotQA/0", "1_plotQA/1"]
    assert items[2].video == str(root / "video" / "1_plotQA" / "movie2.mp4")
    row = run("mlvu", root, {"1_plotQA/0": "A", "1_plotQA/1": "(D)", "4_count/0": "C"})
    assert row["metrics"]["tasks"] == {"count": 100.0, "plotQA": 50.0}
    assert row["ours"] == pytest.approx(75.0)  # M-Avg: mean over tasks
    assert row["metrics"]["accuracy"] == pytest.approx(200 / 3)


def test_egoschema_subset_score_and_full_submission(tmp_path):
    root = syn.egoschema(tmp_path)
    items = video_readers.read_egoschema(root, "subset")
    assert [i.question_id for i in items] == ["uid0", "uid1"]
    assert items[0].query == (
        "You are a helpful expert in first person view video analysis. Please provide a "
        "single-letter answer (A, B, C, D, E) to the following multiple-choice question based on "
        "this video.\nWhat is C doing in clip 0?\nChoices:\nA: option text 0\nB: option text 1\n"
        "C: option text 2\nD: option text 3\nE: option text 4\n\nAnswer with one letter."
    )
    assert run("egoschema", root, {"uid0": "D", "uid1": "B"})["ours"] == pytest.approx(50.0)
    # the first of A-E anywhere: 'I think D' reads D (right); 'Because A' reads B (wrong)
    row = run("egoschema", root, {"uid0": "I think D", "uid1": "Because A"}, work_dir=tmp_path / "w")
    assert row["ours"] == pytest.approx(50.0) and "vicuna_v1" in row["note"]
    row = run("egoschema", root, {"uid0": "D", "uid1": "B", "uid2": "no idea"}, split="full")
    assert row["ours"] is None and "server-scored" in row["note"]
    with open(row["files"]["Kaggle upload"]) as f:
        assert list(csv.reader(f)) == [["q_uid", "answer"], ["uid0", "3"], ["uid1", "1"], ["uid2", "-1"]]


def test_msvd_qa_judge_file_and_proxy(tmp_path):
    root = syn.msvd_qa(tmp_path)
    items = video_readers.read_video_qa(root, "test")
    assert items[0].video == str(root / "videos" / "vid1.avi")  # extension found
    assert items[0].query.startswith("Answer the question based on the video.")
    assert items[0].query.endswith("Answer the question with one complete sentence:\nwhat is a man doing?")
    assert items[0].prompt == "what is a man doing?"
    row = run("msvd_qa", root, {"v1_0": "play", "v2_0": "A woman is cooking."})
    assert row["ours"] is None and row["proxy"] == pytest.approx(100.0)
    assert row["metrics"]["proxy_exact"] == pytest.approx(50.0)
    assert json.loads(open(row["files"]["GPT judge input"]).read())[1] == {
        "id": "v2_0",
        "question": "who is cooking?",
        "answer": "woman",
        "pred": "A woman is cooking.",
    }


def test_activitynet_videos_carry_a_v_prefix(tmp_path):
    root = syn.activitynet_qa(tmp_path)
    [item] = video_readers.read_video_qa(root, "test", benchmark="activitynet_qa")
    assert item.video == str(root / "all_test" / "v_abc.mp4")
    with pytest.raises(FileNotFoundError, match="'abc'"):
        video_readers.read_video_qa(root, "test", benchmark="msrvtt_qa")  # no prefix tried


def test_vcgbench_consistency_pairs(tmp_path):
    root = syn.vcgbench(tmp_path)
    items = video_readers.read_vcgbench(root, "consistency")
    assert [i.query for i in items] == ["What is the man wearing?", "Describe his clothes."]
    row = run(
        "vcgbench", root, {"consistency/0/1": "red shirt", "consistency/0/2": "a shirt"}, split="consistency"
    )
    [pair] = json.loads(open(row["files"]["GPT judge input"]).read())
    assert (pair["pred1"], pair["pred2"], pair["A"]) == ("red shirt", "a shirt", "A red shirt.")


def test_missing_video_is_named(tmp_path):
    root = syn.mlvu(tmp_path)
    (root / "video" / "4_count" / "count1.mp4").unlink()
    with pytest.raises(FileNotFoundError, match="count1.mp4"):
        video_readers.read_mlvu(root, "dev")
