"""The official VQAv2 and VizWiz accuracies: cases worked by hand from the evaluators' rules.

Predictions go through EvalAI's processor first (as the reference's submission converters do),
then through the evaluator; the lenient reading normalises both sides with EvalAI's processor.
"""

import pytest

from llava_mini_jax.eval import vqa_official as vo
from llava_mini_jax.eval.item import EvalItem


def records(answers, ids=True):
    """Human answer records as in the official annotations (each with its own answer_id)."""
    if not ids:
        return [{"answer": a} for a in answers]
    return [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(answers)]


def vqav2(pred, humans, parsing="official"):
    item = EvalItem(1, "q", meta={"answer_records": humans})
    return vo.score_vqav2([item], {item.key: pred}, parsing)["accuracy"]


def vizwiz(pred, humans, parsing="official"):
    item = EvalItem("img.jpg", "q", meta={"answers": humans})
    return vo.score_vizwiz([item], {item.key: pred}, parsing)["accuracy"]


@pytest.mark.parametrize(
    "pred, humans, official, lenient",
    [
        # all ten humans agree: nothing is processed, the submitted answer meets them as written
        ("two", ["2"] * 10, 100.0, 100.0),  # submitted '2'
        ("two", ["two"] * 10, 0.0, 100.0),  # submitted '2' vs 'two': number word
        ("man's", ["man's"] * 10, 0.0, 100.0),  # submitted "man 's" (EvalAI splits the 's)
        ("dont", ["dont"] * 10, 0.0, 100.0),  # submitted "don't"
        ("dont", ["don't"] * 10, 100.0, 100.0),
        ("Yes", ["Yes"] * 10, 0.0, 100.0),  # submitted lower-cased
        ("yes...", ["yes."] * 10, 0.0, 100.0),  # submitted 'yes'; the humans keep their period
        ("yes", ["  yes\n"] * 10, 100.0, 100.0),  # newlines/tabs and outer spaces always go
        # the humans disagree: both sides processed (no "'s" split for the humans)
        ("man's", ["man's"] * 4 + ["woman's"] * 6, 0.0, 100.0),
        ("a dog", ["the dog"] * 3 + ["cat"] * 7, 90.0, 90.0),  # articles dropped: 3 matches
        ("red, white", ["red,white"] * 4 + ["blue"] * 6, 100.0, 0.0),  # ',' -> ' ' for humans
        ("1000", ["1,000"] * 4 + ["5"] * 6, 100.0, 100.0),  # digit,digit: ',' deleted
        # 40 periods: EvalAI deletes 32, the evaluator the other 8 (counted once: left over)
        ("yes" + "." * 40, ["yes"] * 3 + ["no"] * 7, 90.0, 0.0),
        ("", ["yes"] * 3 + ["no"] * 7, 0.0, 0.0),
    ],
)
def test_vqav2_official_and_lenient(pred, humans, official, lenient):
    assert vqav2(pred, records(humans)) == pytest.approx(official)
    assert vqav2(pred, records(humans), "lenient") == pytest.approx(lenient)


def test_vqav2_leave_one_out_compares_whole_records():
    # With answer ids: the usual leave-one-out (2 of 10 -> 0.6; 8 of 10 -> 1).
    assert vo.vqav2_accuracy("2", records(["2"] * 2 + ["3"] * 8)) == pytest.approx(0.6)
    assert vo.vqav2_accuracy("3", records(["2"] * 2 + ["3"] * 8)) == pytest.approx(1.0)
    # Without ids identical records are equal, and each held-out record removes all its copies:
    # for a '3' record the others are the two '2's (0 matches), for a '2' record the eight '3's
    # (8 matches -> 1): (8 x 0 + 2 x 1) / 10.
    assert vo.vqav2_accuracy("3", records(["2"] * 2 + ["3"] * 8, ids=False)) == pytest.approx(0.2)
    # '2' then: '2' records see no '2' left (0), '3' records see both (2/3): 8 x 2/3 / 10.
    assert vo.vqav2_accuracy("2", records(["2"] * 2 + ["3"] * 8, ids=False)) == pytest.approx(8 * 2 / 30)


@pytest.mark.parametrize(
    "pred, humans, official, lenient",
    [
        ("Blue.", ["blue"] * 3 + ["navy"] * 7, 90.0, 90.0),
        ("blue", ["Blue"] * 10, 0.0, 100.0),  # humans compared as written: case kept
        ("Unanswerable", ["unanswerable"] * 10, 100.0, 100.0),
        ("left-right", ["left-right"] * 10, 0.0, 100.0),  # submitted 'left right'
        ("two", ["2"] * 10, 100.0, 100.0),
        ("two", ["two"] * 10, 0.0, 100.0),
        ("the red car", ["red car"] * 10, 100.0, 100.0),  # article dropped from the prediction
        ("the red one", ["red one"] * 10, 0.0, 100.0),  # submitted 'red 1'; humans keep 'one'
        ("3", ["2"] * 2 + ["3"] * 8, 100.0, 100.0),
        ("2", ["2"] * 2 + ["3"] * 8, 60.0, 60.0),  # leave-one-out by position
        ("dont", ["don\u2019t"] * 10, 0.0, 0.0),  # EvalAI made it "don't" (ASCII apostrophe)
    ],
)
def test_vizwiz_official_and_lenient(pred, humans, official, lenient):
    assert vizwiz(pred, humans) == pytest.approx(official)
    assert vizwiz(pred, humans, "lenient") == pytest.approx(lenient)


def test_vizwiz_evaluator_alone_uses_its_own_contraction_table():
    # without EvalAI's step first, VizWiz's table gives the typographic apostrophe
    assert vo.vizwiz_accuracy("dont", ["don\u2019t"] * 10) == pytest.approx(1.0)
    assert vo.vizwiz_accuracy("weve", ["we've"] * 10) == pytest.approx(1.0)  # one of its ASCII ones
    table = vo.VIZWIZ_CONTRACTIONS
    assert (table["dont"], table["aint"], table["twas"]) == ("don\u2019t", "ain't", "\u2019twas")
    assert table["couldn'tve"] == "couldn\u2019t\u2019ve" and table["somebody\u2019d"] == "somebodyd"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Two Dogs!", "2 dogs"),  # '!' touches nothing: a space, then split away
        ("man's", "man's"),  # no "'s" split in the official processing
        ("hello ,world", "hello world"),  # ',' touches a space: deleted
        ("1,000 apples", "1000 apples"),
        ("e.g. this", "eg this"),  # periods not before a digit deleted
        ("3.5", "3.5"),
        ("An Apple", "apple"),
        ("isnt", "isn't"),
    ],
)
def test_official_processing(text, expected):
    assert vo.official_process(text) == expected


def test_empty_answer_lists_are_named():
    with pytest.raises(ValueError, match="at least one"):
        vo.vqav2_accuracy("x", [])
    with pytest.raises(ValueError, match="at least one"):
        vo.vizwiz_accuracy("x", [])
    with pytest.raises(ValueError, match="'loose'"):
        vqav2("x", records(["x"]), "loose")
