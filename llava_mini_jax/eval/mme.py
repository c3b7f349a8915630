"""MME: yes/no questions, two per image, scored as acc + acc+ per subtask.

Following MME's `calculation.py`: an answer is lower-cased; "yes"/"no" as is, otherwise "yes" if
its first four characters contain 'yes', else "no" if they contain 'no', else "other" (wrong).
For each subtask: acc = percent of questions right, acc+ = percent of images whose questions are
all right; the subtask score is acc + acc+ (at most 200). Perception is the sum over the 10
perception subtasks, cognition over the 4 cognition subtasks (the paper reports perception).

Images are grouped by (subtask, image) rather than by consecutive lines of the answer file, which
is the same for the reference's ordered files and also right for the runner's sorted ones.
"""

from __future__ import annotations

from typing import Dict, Mapping, Sequence

from llava_mini_jax.eval.item import EvalItem, Key

PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def parse_yes_no(text: str) -> str:
    """'yes', 'no' or 'other', as MME's calculation.py reads an answer."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def subtask_score(rows: Sequence[tuple]) -> Dict[str, float]:
    """acc, acc+ and score of one subtask from (image, label, answer text) rows."""
    per_image: Dict[str, list] = {}
    for image, label, text in rows:
        per_image.setdefault(image, []).append(parse_yes_no(text) == label.lower())
    flat = [c for corrects in per_image.values() for c in corrects]
    acc = 100.0 * sum(flat) / len(flat)
    acc_plus = 100.0 * sum(all(c) for c in per_image.values()) / len(per_image)
    return {
        "acc": acc,
        "acc_plus": acc_plus,
        "score": acc + acc_plus,
        "questions": len(flat),
        "images": len(per_image),
    }


def score(items: Sequence[EvalItem], answers: Mapping[Key, str]) -> Dict[str, object]:
    """Perception and cognition totals plus per-subtask scores; meta: `category`, `label`."""
    rows: Dict[str, list] = {}
    for item in items:
        category = item.meta["category"]
        if category not in PERCEPTION + COGNITION:
            raise ValueError(
                f"MME question {item.question_id!r}: unknown subtask {category!r}, "
                f"expected one of {PERCEPTION + COGNITION}"
            )
        rows.setdefault(category, []).append((item.image, item.meta["label"], answers.get(item.key, "")))
    subtasks = {name: subtask_score(rows[name]) for name in PERCEPTION + COGNITION if name in rows}
    total = lambda names: sum(subtasks[n]["score"] for n in names if n in subtasks)
    return {
        "perception": total(PERCEPTION),
        "cognition": total(COGNITION),
        "subtasks": subtasks,
        "count": len(items),
    }
