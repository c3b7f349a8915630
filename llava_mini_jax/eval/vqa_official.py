"""The official VQAv2 and VizWiz evaluators' per-question accuracy, rule for rule.

Both score a *submitted* answer, i.e. what the reference uploads: its
`convert_{vqav2,vizwiz}_for_submission.py` first runs every prediction through the EvalAI answer
processor (`vqa.normalize_answer`), and the evaluator then processes it again.

VQAv2 (GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py`), per question:

1. newlines and tabs of the submitted answer and of every human answer become spaces; both are
   stripped;
2. only when the human answers are not all the same string, the submitted answer and every human
   answer are processed: punctuation (`vqa.strip_punctuation` with the test "a digit, one comma, a
   digit" and the text's case kept), then lower-case, number words, articles, contractions
   (`vqa.normalize_words`). No "'s" splitting and no ','/'?' pre-removal (EvalAI's first step);
3. for each human answer record, the other records are those *not equal to it as a whole record*
   (answer after processing plus its other fields, e.g. `answer_id`): accuracy min(1, matches
   among them / 3); the question's accuracy is the mean. With the official annotations every record
   has its own `answer_id`, so this is the usual leave-one-out mean; records written without one
   leave out every identical record at once.

VizWiz (the evaluator on vizwiz.org, `VQAEval` by Qing Li), per question:

1. the submitted answer: newlines/tabs to spaces, stripped, punctuation as in VQAv2, then
   lower-case, number words, articles and VizWiz's contraction table (the VQA table with a
   typographic apostrophe U+2019 in most keys and values, see `VIZWIZ_CONTRACTIONS`);
2. the ten human answers are compared **as written** (case, punctuation, spaces kept);
3. leave-one-out by position: mean over i of min(1, matches among the answers other than the
   i-th / 3).

The official scripts round the reported overall figure to 2 decimals; the scorers here keep full
precision.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Sequence

from llava_mini_jax.eval.item import EvalItem, Key
from llava_mini_jax.eval.vqa import (
    CONTRACTIONS,
    normalize_answer,
    normalize_words,
    strip_punctuation,
    vqa_accuracy,
)

OFFICIAL_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")

_CURLY = "\u2019"
# Entries whose value keeps the ASCII apostrophe in VizWiz's table (by key), and keys that keep it.
_VIZWIZ_ASCII_VALUES = frozenset({"aint", "arent", "cant", "couldve", "couldnt", "weve", "wheres", "whove"})
_VIZWIZ_ASCII_KEYS = frozenset({"couldn'tve", "hadn'tve"})
VIZWIZ_CONTRACTIONS: Dict[str, str] = {
    (k if k in _VIZWIZ_ASCII_KEYS else k.replace("'", _CURLY)): (
        v if k in _VIZWIZ_ASCII_VALUES else v.replace("'", _CURLY)
    )
    for k, v in CONTRACTIONS.items()
}


def _spaces(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def official_process(text: str, contractions: Mapping[str, str] = CONTRACTIONS) -> str:
    """The official evaluators' processPunctuation then processDigitArticle."""
    return normalize_words(strip_punctuation(text, OFFICIAL_DIGIT_COMMA_DIGIT), contractions)


def vqav2_accuracy(submitted: str, records: Sequence[Mapping[str, Any]]) -> float:
    """Accuracy in [0, 1] of a submitted answer against a question's human answer records
    (`{"answer": ..., [other fields]}`), as GT-Vision-Lab's vqaEval.py computes it."""
    if not records:
        raise ValueError("vqav2_accuracy needs at least one human answer record, got none")
    humans = [dict(r, answer=_spaces(r["answer"])) for r in records]
    answer = _spaces(submitted)
    if len({h["answer"] for h in humans}) > 1:
        humans = [dict(h, answer=official_process(h["answer"])) for h in humans]
        answer = official_process(answer)
    scores = []
    for held_out in humans:
        others = [h for h in humans if h != held_out]
        scores.append(min(1.0, sum(h["answer"] == answer for h in others) / 3))
    return sum(scores) / len(scores)


def vizwiz_accuracy(submitted: str, human_answers: Sequence[str]) -> float:
    """Accuracy in [0, 1] of a submitted answer against the human answers as written, as the
    official VizWiz evaluator computes it."""
    if not human_answers:
        raise ValueError("vizwiz_accuracy needs at least one human answer, got none")
    answer = official_process(_spaces(submitted), VIZWIZ_CONTRACTIONS)
    scores = []
    for i in range(len(human_answers)):
        matches = sum(h == answer for j, h in enumerate(human_answers) if j != i)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


def _check_parsing(parsing: str) -> None:
    if parsing not in ("official", "lenient"):
        raise ValueError(f"answer parsing {parsing!r}: expected 'official' or 'lenient'")


def score_vqav2(
    items: Sequence[EvalItem], answers: Mapping[Key, str], parsing: str = "official"
) -> Dict[str, object]:
    """VQAv2 val accuracy (percent): each prediction through EvalAI's processor, then vqaEval.py.

    meta: `answer_records` (the annotation's answer dicts). `parsing="lenient"`: EvalAI processing
    of both sides, every time (`vqa.vqa_accuracy`). A missing answer counts as the empty answer.
    """
    _check_parsing(parsing)
    scores = []
    for item in items:
        prediction, humans = answers.get(item.key, ""), item.meta["answer_records"]
        if parsing == "lenient":
            scores.append(vqa_accuracy(prediction, [r["answer"] for r in humans]))
        else:
            scores.append(vqav2_accuracy(normalize_answer(prediction), humans))
    return {"accuracy": 100.0 * sum(scores) / max(len(scores), 1), "count": len(scores)}


def score_vizwiz(
    items: Sequence[EvalItem], answers: Mapping[Key, str], parsing: str = "official"
) -> Dict[str, object]:
    """VizWiz val accuracy (percent): each prediction through EvalAI's processor, then VizWiz's
    evaluator against the human answers as written (meta `answers`). `parsing="lenient"`: EvalAI
    processing of both sides (`vqa.vqa_accuracy`)."""
    _check_parsing(parsing)
    scores = []
    for item in items:
        prediction, humans = answers.get(item.key, ""), item.meta["answers"]
        if parsing == "lenient":
            scores.append(vqa_accuracy(prediction, humans))
        else:
            scores.append(vizwiz_accuracy(normalize_answer(prediction), humans))
    return {"accuracy": 100.0 * sum(scores) / max(len(scores), 1), "count": len(scores)}
