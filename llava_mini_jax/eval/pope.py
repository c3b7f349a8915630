"""POPE: yes/no object-hallucination probing, scored per split (adversarial, popular, random).

Answer parsing follows the reference's `eval_pope.py`: keep the text before the first '.', drop
commas, split on single spaces; the answer is "no" when one of the words is exactly 'No', 'no'
or 'not', and "yes" otherwise (so 'NO' and an empty answer count as "yes").

Per split: accuracy, precision, recall and F1 of the "yes" class, and the ratio of "yes"
answers. The paper's POPE number is the F1 averaged over the splits (`f1`).
Where the reference divides by zero (no "yes" predicted or no "yes" label) the value here is 0.
"""

from __future__ import annotations

from typing import Dict, Mapping, Sequence

from llava_mini_jax.eval.item import EvalItem, Key

_NO_WORDS = ("No", "no", "not")


def parse_yes_no(text: str) -> str:
    """'yes' or 'no', read from a free-form answer as the reference does."""
    first_sentence = text.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if any(w in words for w in _NO_WORDS) else "yes"


def binary_metrics(predictions: Sequence[str], labels: Sequence[str]) -> Dict[str, float]:
    """Counts and rates (in [0, 1]) of 'yes'/'no' predictions against 'yes'/'no' labels."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    pairs = list(zip(predictions, labels))
    tp = sum(p == "yes" and l == "yes" for p, l in pairs)
    fp = sum(p == "yes" and l == "no" for p, l in pairs)
    tn = sum(p == "no" and l == "no" for p, l in pairs)
    fn = sum(p == "no" and l == "yes" for p, l in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(pairs)
    return {
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n if n else 0.0,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "count": n,
    }


def score(items: Sequence[EvalItem], answers: Mapping[Key, str]) -> Dict[str, object]:
    """Per-split metrics (percent) and their means; meta holds `category` and `label`."""
    splits: Dict[str, tuple] = {}
    for item in items:
        preds, labels = splits.setdefault(item.meta["category"], ([], []))
        preds.append(parse_yes_no(answers.get(item.key, "")))
        labels.append(item.meta["label"])
    per_split = {}
    for name in sorted(splits):
        m = binary_metrics(*splits[name])
        per_split[name] = {
            k: (100.0 * v if k in ("accuracy", "precision", "recall", "f1", "yes_ratio") else v)
            for k, v in m.items()
        }
    means = {
        key: sum(m[key] for m in per_split.values()) / max(len(per_split), 1)
        for key in ("f1", "accuracy", "precision", "recall", "yes_ratio")
    }
    return dict(means, splits=per_split, count=len(items))
