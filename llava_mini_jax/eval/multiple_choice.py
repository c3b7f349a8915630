"""Multiple-choice scoring: ScienceQA, SEED-Bench, MMBench (circular), MVBench, MLVU, EgoSchema.

How a letter is read from an answer differs per benchmark, as in each reference scorer:

* ScienceQA (`eval_science_qa.py`): the answer is exactly a letter A-E; or starts with "X. ";
  or contains exactly one match of the regex `The answer is ([A-Z]).` (whose '.' needs one more
  character after the letter). A letter beyond the question's choices is wrong.
* SEED-Bench (`convert_seed_for_submission.py`): the answer text must equal the letter exactly.
* MMBench (the rule-based step of the official evaluator, without its GPT fallback): after
  replacing `.()[],:;!*#{}` by spaces, exactly one option letter appears as a word; otherwise
  exactly one option's text appears (case-insensitively) in the answer.
* MVBench, MLVU, EgoSchema: the answer's first character (after an opening parenthesis) is an
  option letter not followed by another letter; otherwise the MMBench rule.

MMBench circular evaluation: a question is asked once per rotation of its options (rows whose
index differs by multiples of 1,000,000, the convention of MMBench's files); it counts as right
only when every rotation is answered right.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from llava_mini_jax.eval import xlsx
from llava_mini_jax.eval.item import EvalItem, Key

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CIRCULAR_STRIDE = 1_000_000
_SQA_LETTERS = ("A", "B", "C", "D", "E")
_SQA_PATTERN = re.compile(r"The answer is ([A-Z]).")
_SEPARATORS = ".()[],:;!*#{}"


def sqa_letter(text: str) -> Optional[str]:
    """The option letter ScienceQA's scorer reads from an answer, or None."""
    if text in _SQA_LETTERS:
        return text
    if len(text) >= 3 and text[0] in _SQA_LETTERS and text[1:3] == ". ":
        return text[0]
    found = _SQA_PATTERN.findall(text)
    return found[0] if len(found) == 1 else None


def infer_letter(text: str, options: Mapping[str, str]) -> Optional[str]:
    """MMBench's rule-based letter: a lone option letter word, else a lone option text; or None."""
    cleaned = text
    for ch in _SEPARATORS:
        cleaned = cleaned.replace(ch, " ")
    words = cleaned.split()
    letters = [letter for letter in options if letter in words]
    if len(letters) == 1:
        return letters[0]
    lowered = text.lower()
    matches = [letter for letter, option in options.items() if str(option).lower() in lowered]
    return matches[0] if len(matches) == 1 else None


def leading_letter(text: str, options: Mapping[str, str]) -> Optional[str]:
    """Video multiple choice: a leading option letter ('B', '(B) dog', 'B.'), else `infer_letter`."""
    stripped = text.strip().lstrip("(").lstrip()
    if stripped and stripped[0] in options and (len(stripped) == 1 or not stripped[1].isalpha()):
        return stripped[0]
    return infer_letter(text, options)


def _percent(flags: Sequence[bool]) -> float:
    return 100.0 * sum(flags) / len(flags) if flags else 0.0


def _grouped(items, correct, field: str) -> Dict[str, float]:
    groups: Dict[str, list] = {}
    for item, ok in zip(items, correct):
        groups.setdefault(str(item.meta[field]), []).append(ok)
    return {name: _percent(flags) for name, flags in sorted(groups.items())}


def score_sqa(items: Sequence[EvalItem], answers: Mapping[Key, str]) -> Dict[str, object]:
    """ScienceQA accuracy overall and on questions with an image (`img_accuracy`, the paper's).

    meta: `answer` (index of the right choice), `num_choices`.
    """
    correct = []
    for item in items:
        letter = sqa_letter(answers.get(item.key, "FAILED"))
        index = _SQA_LETTERS.index(letter) if letter and letter in _SQA_LETTERS else -1
        correct.append(index < item.meta["num_choices"] and index == item.meta["answer"])
    with_image = [ok for item, ok in zip(items, correct) if item.image is not None]
    return {
        "img_accuracy": _percent(with_image),
        "accuracy": _percent(correct),
        "count": len(items),
        "img_count": len(with_image),
    }


def score_seed(items: Sequence[EvalItem], answers: Mapping[Key, str]) -> Dict[str, object]:
    """SEED-Bench accuracy overall, for image and video-frame questions, and per dimension.

    meta: `answer` (letter), `data_type` ('image' or 'video'), `dimension` (question type name).
    """
    correct = [answers.get(item.key, "") == item.meta["answer"] for item in items]
    by_type = _grouped(items, correct, "data_type")
    return {
        "accuracy": _percent(correct),
        "image_accuracy": by_type.get("image"),
        "video_accuracy": by_type.get("video"),
        "dimensions": _grouped(items, correct, "dimension"),
        "count": len(items),
    }


def score_mmbench(items: Sequence[EvalItem], answers: Mapping[Key, str]) -> Dict[str, object]:
    """MMBench circular accuracy (the official metric), single-pass accuracy and per category.

    meta: `index` (row index), `answer` (letter), `options` (letter -> text), `category`.
    """
    groups: Dict[int, list] = {}
    category: Dict[int, str] = {}
    single = []
    for item in items:
        ok = infer_letter(answers.get(item.key, ""), item.meta["options"]) == item.meta["answer"]
        group = item.meta["index"] % CIRCULAR_STRIDE
        groups.setdefault(group, []).append(ok)
        category.setdefault(group, item.meta["category"])
        if item.meta["index"] < CIRCULAR_STRIDE:
            single.append(ok)
    circular = {g: all(flags) for g, flags in groups.items()}
    per_category: Dict[str, list] = {}
    for g, ok in circular.items():
        per_category.setdefault(category[g], []).append(ok)
    return {
        "circular_accuracy": _percent(list(circular.values())),
        "single_accuracy": _percent(single),
        "categories": {c: _percent(v) for c, v in sorted(per_category.items())},
        "questions": len(circular),
        "count": len(items),
    }


def score_choice(items: Sequence[EvalItem], answers: Mapping[Key, str]) -> Dict[str, object]:
    """Video multiple choice: accuracy over all questions, per task, and the mean over tasks.

    meta: `answer` (letter), `options` (letter -> text), `task`.
    """
    correct = [
        leading_letter(answers.get(item.key, ""), item.meta["options"]) == item.meta["answer"]
        for item in items
    ]
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
    """EgoSchema's Kaggle upload: csv `q_uid,answer` with the option index (-1 when unreadable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["q_uid", "answer"])
        for item in items:
            letter = leading_letter(answers.get(item.key, ""), item.meta["options"])
            writer.writerow([item.question_id, LETTERS.index(letter) if letter else -1])
    return path


def option_lines(options: Sequence[str], style: str) -> List[str]:
    """Option lines 'A. text' (style 'dot') or '(A) text' (style 'paren')."""
    if style == "dot":
        return [f"{LETTERS[i]}. {text}" for i, text in enumerate(options)]
    if style == "paren":
        return [f"({LETTERS[i]}) {text}" for i, text in enumerate(options)]
    raise ValueError(f"option style {style!r}: expected 'dot' or 'paren'")
