"""Letter extraction and multiple-choice scoring (ScienceQA, SEED, MMBench circular, video MC)."""

import csv
import json
import zipfile

import pytest

from llava_mini_jax.eval import multiple_choice as mc
from llava_mini_jax.eval import prompts
from llava_mini_jax.eval.item import EvalItem


def test_score_sqa_img_accuracy_and_out_of_range_letter():
    items = [
        EvalItem("1", "q", image="/a.png", meta={"answer": 0, "num_choices": 2}),
        EvalItem("2", "q", image="/b.png", meta={"answer": 1, "num_choices": 3}),
        EvalItem("3", "q", meta={"answer": 2, "num_choices": 3}),  # text-only
        EvalItem("4", "q", image="/c.png", meta={"answer": 0, "num_choices": 2}),
    ]
    answers = {
        items[0].key: "A",
        items[1].key: "B. dog",
        items[2].key: "C",
        items[3].key: "C",
    }  # 'C' with 2 choices: invalid -> wrong
    m = mc.score_sqa(items, answers)
    assert m["accuracy"] == pytest.approx(75.0)  # 3 of 4
    assert m["img_accuracy"] == pytest.approx(200 / 3)  # items 1, 2 of the 3 with an image
    assert m["img_count"] == 3


def test_seed_requires_the_exact_letter():
    items = [
        EvalItem(1, "q", meta={"answer": "A", "data_type": "image", "dimension": "Scene"}),
        EvalItem(2, "q", meta={"answer": "B", "data_type": "image", "dimension": "Count"}),
        EvalItem(3, "q", meta={"answer": "C", "data_type": "video", "dimension": "Action"}),
    ]
    answers = {items[0].key: "A", items[1].key: "B.", items[2].key: "C"}
    m = mc.score_seed(items, answers)
    assert m["accuracy"] == pytest.approx(200 / 3)
    assert m["image_accuracy"] == pytest.approx(50.0)
    assert m["video_accuracy"] == pytest.approx(100.0)
    assert m["dimensions"] == {"Action": 100.0, "Count": 0.0, "Scene": 100.0}


def _rotations(index, options, answer, category="c"):
    """The 4 rotated copies of one MMBench question, as the reader numbers them."""
    items = []
    for r in range(len(options)):
        rotated = options[r:] + options[:r]
        letter = "ABCD"[(("ABCD".index(answer)) - r) % len(options)]
        items.append(
            EvalItem(
                index + r * mc.CIRCULAR_STRIDE,
                f"q{r}",
                meta={
                    "index": index + r * mc.CIRCULAR_STRIDE,
                    "category": category,
                    "options": dict(zip("ABCD", rotated)),
                    "answer": letter,
                },
            )
        )
    return items


def test_mmbench_circular_one_rotation_wrong():
    q1 = _rotations(1, ["cat", "dog", "bird", "fish"], "B", "animals")  # right: dog
    q2 = _rotations(2, ["red", "green", "blue", "pink"], "A", "colours")
    # q1: letters of 'dog' per rotation: B, A, D, C -> all right
    answers = {q1[0].key: "B", q1[1].key: "A", q1[2].key: "D", q1[3].key: "dog"}
    # q2: right answer 'red' sits at A, D, C, B; rotation 2 answered wrong
    answers.update({q2[0].key: "A", q2[1].key: "D", q2[2].key: "A", q2[3].key: "B"})
    m = mc.score_mmbench(q1 + q2, answers)
    assert m["circular_accuracy"] == pytest.approx(50.0)  # q2 fails circular
    assert m["single_accuracy"] == pytest.approx(100.0)  # both right in original order
    assert m["categories"] == {"animals": 100.0, "colours": 0.0}
    assert m["questions"] == 2 and m["count"] == 8


def test_score_choice_tasks_and_mean_official_and_lenient():
    def item(i, task, answer):
        return EvalItem(
            i, "q", video="/v.mp4", meta={"task": task, "answer": answer, "options": {"A": "x", "B": "y"}}
        )

    items = [item(1, "t1", "A"), item(2, "t1", "B"), item(3, "t1", "A"), item(4, "t2", "B"), item(5, "t2", "A")]
    texts = ["(A) x", "B", "B", "y", "B or A"]
    answers = {i.key: t for i, t in zip(items, texts)}
    m = mc.score_choice(items, answers)  # check_ans: '(A) x' -> 'A' right, 'y' (option text) wrong
    assert m["tasks"] == {"t1": pytest.approx(200 / 3), "t2": 0.0}
    assert m["accuracy"] == pytest.approx(40.0)
    assert m["task_mean"] == pytest.approx((200 / 3 + 0) / 2)
    lenient = mc.score_choice(items, answers, parsing="lenient")  # the option text 'y' reads B
    assert lenient["tasks"] == {"t1": pytest.approx(200 / 3), "t2": 50.0}  # "B or A" never credited
    first = mc.score_choice(items, answers, rule="first_letter")  # first of A-E anywhere
    assert first["accuracy"] == pytest.approx(40.0)  # A, B right; B wrong; "y": none; "B or A": B, wrong
    with pytest.raises(ValueError, match="'loose'"):
        mc.score_choice(items, answers, parsing="loose")


def test_option_lines():
    assert prompts.option_lines(["x", "y"], "dot") == ["A. x", "B. y"]
    assert prompts.option_lines(["x", "y"], "paren") == ["(A) x", "(B) y"]
    with pytest.raises(ValueError, match="'bullet'"):
        prompts.option_lines(["x"], "bullet")


def test_mmbench_submission_columns(tmp_path):
    row = {
        "index": "3",
        "question": "Q?",
        "A": "x",
        "B": "y",
        "C": "",
        "D": "",
        "answer": "A",
        "split": "dev",
    }
    items = [EvalItem(3, "q", meta={"row": row}), EvalItem(3 + mc.CIRCULAR_STRIDE, "q2", meta={})]
    path = mc.write_mmbench_submission(items, {items[0].key: "A"}, tmp_path / "s.xlsx")
    with zipfile.ZipFile(path) as z:
        sheet = z.read("xl/worksheets/sheet1.xml").decode()
    # header: the row's columns with 'prediction' as the 7th; one data row (round 0 only)
    for cell in ["index", "question", "prediction", "answer", "split", "Q?", "dev"]:
        assert f">{cell}</t>" in sheet
    assert sheet.index(">D</t>") < sheet.index(">prediction</t>") < sheet.index(">answer</t>")
    assert sheet.count("<row ") == 2


def test_seed_and_egoschema_uploads(tmp_path):
    items = [
        EvalItem("q1", "q", meta={"options": {"A": "x", "B": "y"}}),
        EvalItem("q2", "q", meta={"options": {"A": "x", "B": "y"}}),
    ]
    answers = {items[0].key: "B", items[1].key: "no idea"}
    seed = mc.write_seed_submission(items, answers, tmp_path / "seed.jsonl")
    assert [json.loads(l) for l in seed.read_text().splitlines()] == [
        {"question_id": "q1", "prediction": "B"},
        {"question_id": "q2", "prediction": "no idea"},
    ]
    ego = mc.write_egoschema_submission(items, answers, tmp_path / "ego.csv")
    assert list(csv.reader(ego.open())) == [["q_uid", "answer"], ["q1", "1"], ["q2", "-1"]]
