"""GQA accuracy: exact match after the reference's light clean-up.

The reference converts each answer with `text.rstrip('.').lower()` (convert_gqa_for_eval.py) and
the official `eval.py` counts a balanced question correct when that prediction equals the gold
answer string. Questions whose structural type is 'query' are "open", all others "binary".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping, Sequence

from llava_mini_jax.eval.item import EvalItem, Key


def clean_prediction(text: str) -> str:
    """The prediction GQA's evaluator sees: trailing periods removed, lower-cased (no strip)."""
    return text.rstrip(".").lower()


def score(items: Sequence[EvalItem], answers: Mapping[Key, str]) -> Dict[str, float]:
    """Accuracy (percent) overall and for binary/open questions.

    Each item's meta holds `answer` (gold string) and `structural` (GQA structural type).
    """
    buckets: Dict[str, list] = {"accuracy": [], "binary": [], "open": []}
    for item in items:
        correct = clean_prediction(answers.get(item.key, "")) == item.meta["answer"]
        buckets["accuracy"].append(correct)
        buckets["open" if item.meta.get("structural") == "query" else "binary"].append(correct)
    metrics = {name: 100.0 * sum(v) / len(v) for name, v in buckets.items() if v}
    metrics["count"] = len(buckets["accuracy"])
    return metrics


def write_predictions(items: Sequence[EvalItem], answers: Mapping[Key, str], path: Path) -> Path:
    """`testdev_balanced_predictions.json` for GQA's own eval.py: `[{"questionId", "prediction"}]`."""
    rows = [
        {"questionId": item.question_id, "prediction": clean_prediction(answers.get(item.key, ""))}
        for item in items
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f)
    return path
