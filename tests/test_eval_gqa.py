"""GQA exact-match accuracy after the reference's clean-up."""

import json

import pytest

from llava_mini_jax.eval import gqa
from llava_mini_jax.eval.item import EvalItem


@pytest.mark.parametrize(
    "raw, expected", [("Yes.", "yes"), ("Table..", "table"), (" left", " left"), ("3.5", "3.5")]
)
def test_clean_prediction(raw, expected):
    assert gqa.clean_prediction(raw) == expected


def test_score_binary_and_open():
    items = [
        EvalItem("a", "q", meta={"answer": "yes", "structural": "verify"}),
        EvalItem("b", "q", meta={"answer": "table", "structural": "query"}),
        EvalItem("c", "q", meta={"answer": "left", "structural": "query"}),
        EvalItem("d", "q", meta={"answer": "no", "structural": "logical"}),
    ]
    answers = {items[0].key: "Yes.", items[1].key: "Table", items[2].key: "the left", items[3].key: "yes"}
    # right: a, b; wrong: c ('the left'), d -> overall 2/4; binary (a, d) 1/2; open (b, c) 1/2
    assert gqa.score(items, answers) == {"accuracy": 50.0, "binary": 50.0, "open": 50.0, "count": 4}


def test_write_predictions(tmp_path):
    items = [EvalItem("201", "q", meta={"answer": "yes", "structural": "verify"})]
    path = gqa.write_predictions(items, {items[0].key: "Yes."}, tmp_path / "p.json")
    assert json.loads(path.read_text()) == [{"questionId": "201", "prediction": "yes"}]
