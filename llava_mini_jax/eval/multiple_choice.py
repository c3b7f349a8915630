"""Multiple-choice scoring: ScienceQA, SEED-Bench, MMBench (circular), MVBench, MLVU, EgoSchema.

Each benchmark reads the chosen option as its official scorer does (`answer_parsing`):

* ScienceQA (`eval_science_qa.py`): `sqa_letter`; a letter beyond the question's choices is wrong.
* SEED-Bench (`convert_seed_for_submission.py`): the answer text must equal the letter exactly.
* MMBench (VLMEvalKit's rule-based matcher under its exact-matching policy, no GPT fallback):
  `vlmevalkit_letter`; refusals and a lone 'Z' are no answer.
* MVBench, MLVU (the reference's `check_ans`): `check_ans_letter` must equal the right letter.
* EgoSchema (the reference's `first_char_as_answer`): the first of A-E anywhere in the answer.

`parsing="lenient"` reads MMBench with `infer_letter` and the video benchmarks with
`leading_letter` (ScienceQA and SEED keep their rule): a more forgiving number, reported beside the
official one, never as it.

MMBench circular evaluation (VLMEvalKit's): rows whose index differs by multiples of 1,000,000 are
rotations of one question (the convention of MMBench's files); a question counts as right only when
every rotation is, and only questions whose original row (index < 1,000,000) was asked count.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

from llava_mini_jax.eval import xlsx
from llava_mini_jax.eval.answer_parsing import (
    check_ans_letter,
    first_letter_a_to_e,
    infer_letter,
    leading_letter,
    sqa_letter,
    vlmevalkit_letter,
)
from llava_mini_jax.eval.item import EvalItem, Key
from llava_mini_jax.eval.prompts import LETTERS, option_lines

CIRCULAR_STRIDE = 1_000_000
PARSINGS = ("official", "lenient")


def _check_parsing(parsing: str) -> None:
    if parsing not in PARSINGS:
        raise ValueError(f"answer parsing {parsing!r}: expected one of {PARSINGS}")


def _percent(flags: Sequence[bool]) -> float:
    return 100.0 * sum(flags) / len(flags) if flags else 0.0


def _grouped(items, correct, field: str) -> Dict[str, float]:
    groups: Dict[str, list] = {}
    for item, ok in zip(items, correct):
        groups.setdefault(str(item.meta[field]), []).append(ok)
    return {name: _percent(flags) for name, flags in sorted(groups.items())}


def score_sqa(
    items: Sequence[EvalItem], answers: Mapping[Key, str], parsing: str = "official"
) -> Dict[str, object]:
    """ScienceQA accuracy overall and on questions with an image (`img_accuracy`, the paper's).

    meta: `answer` (index of the right choice), `num_choices`. One rule for both parsings.
    """
    _check_parsing(parsing)
    correct = []
    for item in items:
        letter = sqa_letter(answers.get(item.key, "FAILED"))
        index = "ABCDE".index(letter) if letter and letter in "ABCDE" else -1
        correct.append(index < item.meta["num_choices"] and index == item.meta["answer"])
    with_image = [ok for item, ok in zip(items, correct) if item.image is not None]
    return {
        "img_accuracy": _percent(with_image),
        "accuracy": _percent(correct),
        "count": len(items),
        "img_count": len(with_image),
    }


def score_seed(
    items: Sequence[EvalItem], answers: Mapping[Key, str], parsing: str = "official"
) -> Dict[str, object]:
    """SEED-Bench accuracy overall, for image and video-frame questions, and per dimension.

    meta: `answer` (letter), `data_type` ('image' or 'video'), `dimension` (question type name).
    One rule for both parsings.
    """
    _check_parsing(parsing)
    correct = [answers.get(item.key, "") == item.meta["answer"] for item in items]
    by_type = _grouped(items, correct, "data_type")
    return {
        "accuracy": _percent(correct),
        "image_accuracy": by_type.get("image"),
        "video_accuracy": by_type.get("video"),
        "dimensions": _grouped(items, correct, "dimension"),
        "count": len(items),
    }


def mmbench_letter(text: str, options: Mapping[str, str], parsing: str = "official") -> Optional[str]:
    """The letter MMBench reads (`vlmevalkit_letter`; lenient: `infer_letter`)."""
    _check_parsing(parsing)
    return vlmevalkit_letter(text, options) if parsing == "official" else infer_letter(text, options)


def score_mmbench(
    items: Sequence[EvalItem], answers: Mapping[Key, str], parsing: str = "official"
) -> Dict[str, object]:
    """MMBench circular accuracy (the official metric), single-pass accuracy and per category.

    meta: `index` (row index), `answer` (letter), `options` (letter -> text), `category`.
    Rotations whose original row (index < 1,000,000) is not among `items` are left out.
    """
    groups: Dict[int, list] = {}
    main: Dict[int, tuple] = {}  # group -> (category, original row answered right)
    for item in items:
        ok = mmbench_letter(answers.get(item.key, ""), item.meta["options"], parsing) == item.meta["answer"]
        group = item.meta["index"] % CIRCULAR_STRIDE
        groups.setdefault(group, []).append(ok)
        if item.meta["index"] < CIRCULAR_STRIDE:
            main[group] = (item.meta["category"], ok)
    circular = {g: all(groups[g]) for g in main}
    single = [ok for _, ok in main.values()]
    per_category: Dict[str, list] = {}
    for g, ok in circular.items():
        per_category.setdefault(main[g][0], []).append(ok)
    return {
        "circular_accuracy": _percent(list(circular.values())),
        "single_accuracy": _percent(single),
        "categories": {c: _percent(v) for c, v in sorted(per_category.items())},
        "questions": len(circular),
        "count": len(items),
    }


def choice_correct(text: str, item: EvalItem, rule: str, parsing: str = "official") -> bool:
    """Whether a video multiple-choice answer is credited: `rule` 'check_ans' (MVBench, MLVU) or
    'first_letter' (EgoSchema) when `parsing` is 'official', `leading_letter` when 'lenient'."""
    _check_parsing(parsing)
    if parsing == "lenient":
        return leading_letter(text, item.meta["options"]) == item.meta["answer"]
    if rule == "check_ans":
        return check_ans_letter(text) == item.meta["answer"]
    if rule == "first_letter":
        return first_letter_a_to_e(text) == item.meta["answer"]
    raise ValueError(f"multiple-choice rule {rule!r}: expected 'check_ans' or 'first_letter'")


def score_choice(
    items: Sequence[EvalItem], answers: Mapping[Key, str], parsing: str = "official", rule: str = "check_ans"
) -> Dict[str, object]:
    """Video multiple choice: accuracy per task, their mean (the reference's 'Avg') and overall.

    meta: `answer` (letter), `options` (letter -> text), `task`. A missing answer is wrong.
    """
    correct = [choice_correct(answers.get(item.key, ""), item, rule, parsing) for item in items]
    tasks = _grouped(items, correct, "task")
    return {
        "accuracy": _percent(correct),
        "task_mean": sum(tasks.values()) / max(len(tasks), 1),
        "tasks": tasks,
        "count": len(items),
    }


def write_mmbench_submission(items: Sequence[EvalItem], answers: Mapping[Key, str], path: Path) -> Path:
    """The .xlsx the MMBench server takes: one line per row of the question file.

    Columns are the file's, less hint, category, source, image, comment and l2-category, with
    `prediction` (the raw answer text) inserted as the 7th column, as the reference writes it.
    Each row comes from the item asked with its original option order (meta `row`).
    """
    rows = [item for item in items if "row" in item.meta]
    if not rows:
        raise ValueError("MMBench submission: no item carries its question-file row (meta 'row')")
    header = list(rows[0].meta["row"])
    header.insert(6, "prediction")
    table = [header]
    for item in rows:
        values = dict(item.meta["row"], prediction=answers.get(item.key, ""))
        table.append([values.get(column, "") for column in header])
    return xlsx.write(table, path)


def write_seed_submission(items: Sequence[EvalItem], answers: Mapping[Key, str], path: Path) -> Path:
    """SEED-Bench leaderboard upload: one `{"question_id", "prediction"}` line per question."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for item in items:
            f.write(
                json.dumps({"question_id": item.question_id, "prediction": answers.get(item.key, "")}) + "\n"
            )
    return path


def write_egoschema_submission(items: Sequence[EvalItem], answers: Mapping[Key, str], path: Path) -> Path:
    """EgoSchema's Kaggle upload: csv `q_uid,answer`, the option index of the answer's first letter
    A-E (the reference's reading), -1 when it has none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["q_uid", "answer"])
        for item in items:
            letter = first_letter_a_to_e(answers.get(item.key, ""))
            writer.writerow([item.question_id, LETTERS.index(letter) if letter else -1])
    return path
