"""GPT-judged benchmarks: judge input files and the offline exact/contains proxy."""

import json

import pytest

from llava_mini_jax.eval import open_ended
from llava_mini_jax.eval.item import EvalItem


@pytest.mark.parametrize(
    "pred, ref, expected",
    [
        ("Two.", "2", (True, True)),
        ("There are two dogs.", "two", (False, True)),
        ("A red car", "red car", (True, True)),  # articles removed on both sides
        ("the cardboard box", "car", (False, False)),  # whole words only
        ("dogs and cats", "cats and dogs", (False, False)),
        ("", "", (True, False)),
    ],
)
def test_proxy_match(pred, ref, expected):
    assert open_ended.proxy_match(pred, ref) == expected


def test_score_proxy_is_labelled_and_skips_missing_references():
    items = [
        EvalItem(1, "q", meta={"answer": "dog"}),
        EvalItem(2, "q", meta={"answer": "cat"}),
        EvalItem(3, "q", meta={"answer": None}),
    ]
    answers = {items[0].key: "dog", items[1].key: "It is a black cat."}
    m = open_ended.score_proxy(items, answers)
    assert m["proxy_exact"] == pytest.approx(50.0)
    assert m["proxy_contains"] == pytest.approx(100.0)
    assert m["proxy"] is True and "not the official" in m["note"]
    assert (m["count"], m["with_reference"]) == (3, 2)


def test_mmvet_results(tmp_path):
    items = [EvalItem(0, "q"), EvalItem(1, "q")]
    path = open_ended.write_mmvet_results(items, {items[0].key: "42"}, tmp_path / "r.json")
    assert json.loads(path.read_text()) == {"v1_0": "42", "v1_1": ""}


def test_video_qa_predictions(tmp_path):
    items = [EvalItem("v1_0", "what?", video="/v.mp4", meta={"question": "what?", "answer": "dog"})]
    path = open_ended.write_video_qa_predictions(items, {items[0].key: "a dog"}, tmp_path / "p.json")
    assert json.loads(path.read_text()) == [
        {"id": "v1_0", "question": "what?", "answer": "dog", "pred": "a dog"}
    ]


def test_vcgbench_consistency_pairs_are_merged(tmp_path):
    base = {"video_name": "v_1", "answer": "A man runs."}
    items = [
        EvalItem("c/0/1", "Q1?", video="/v", meta=dict(base, question="Q1?", pair=1, group=0)),
        EvalItem("c/0/2", "Q2?", video="/v", meta=dict(base, question="Q2?", pair=2, group=0)),
        EvalItem("g/0", "Q?", video="/v", meta=dict(base, question="Q?")),
    ]
    answers = {items[0].key: "p1", items[1].key: "p2", items[2].key: "p"}
    path = open_ended.write_vcgbench_predictions(items, answers, tmp_path / "p.json")
    assert json.loads(path.read_text()) == [
        {"video_name": "v_1", "A": "A man runs.", "Q1": "Q1?", "pred1": "p1", "Q2": "Q2?", "pred2": "p2"},
        {"video_name": "v_1", "Q": "Q?", "A": "A man runs.", "pred": "p"},
    ]
