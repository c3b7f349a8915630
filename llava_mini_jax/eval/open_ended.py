"""GPT-judged benchmarks: answer files in the reference's format and an offline proxy.

LLaVA-Bench (in-the-wild), MM-Vet, the Video-ChatGPT benchmark and the open-ended video QA sets
(MSVD-QA, MSRVTT-QA, ActivityNet-QA) are officially scored by a GPT judge, which is not run here.
This module writes the files that judge takes, and computes an **offline proxy** that is never the
official number: after VQA normalisation (`vqa.normalize_answer`) of both texts,

* `proxy_exact`: the prediction equals the reference answer;
* `proxy_contains`: the reference answer's words appear, in order and adjacent, in the prediction.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

from llava_mini_jax.eval.item import EvalItem, Key
from llava_mini_jax.eval.vqa import normalize_answer

PROXY_NOTE = "offline proxy (exact/contains match), not the official GPT-judged score"


def proxy_match(prediction: str, reference: str) -> Tuple[bool, bool]:
    """(exact, contains) match of a prediction against a reference answer, both normalised."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    if not ref:
        return (not pred, False)
    contains = any(pred[i : i + len(ref)] == ref for i in range(len(pred) - len(ref) + 1))
    return (pred == ref, contains)


def score_proxy(items: Sequence[EvalItem], answers: Mapping[Key, str]) -> Dict[str, object]:
    """Percent of exact and contains matches over items with a reference answer (meta `answer`)."""
    judged = [item for item in items if item.meta.get("answer")]
    matches = [proxy_match(answers.get(item.key, ""), item.meta["answer"]) for item in judged]
    percent = lambda flags: 100.0 * sum(flags) / len(flags) if flags else 0.0
    return {
        "proxy_exact": percent([e for e, _ in matches]),
        "proxy_contains": percent([c for _, c in matches]),
        "proxy": True,
        "note": PROXY_NOTE,
        "count": len(items),
        "with_reference": len(judged),
    }


def _dump(data, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    return path


def write_mmvet_results(items: Sequence[EvalItem], answers: Mapping[Key, str], path: Path) -> Path:
    """MM-Vet evaluator input: `{"v1_<question_id>": answer}` (convert_mmvet_for_eval.py)."""
    return _dump({f"v1_{item.question_id}": answers.get(item.key, "") for item in items}, path)


def write_video_qa_predictions(items: Sequence[EvalItem], answers: Mapping[Key, str], path: Path) -> Path:
    """Video QA judge input: a list of `{"id", "question", "answer", "pred"}`."""
    rows = [
        {
            "id": item.question_id,
            "question": item.meta["question"],
            "answer": item.meta["answer"],
            "pred": answers.get(item.key, ""),
        }
        for item in items
    ]
    return _dump(rows, path)


def write_vcgbench_predictions(items: Sequence[EvalItem], answers: Mapping[Key, str], path: Path) -> Path:
    """Video-ChatGPT benchmark judge input.

    Generic and temporal questions: `{"video_name", "Q", "A", "pred"}`. Consistency pairs (items
    with meta `pair` 1 and 2 sharing meta `group`): `{"video_name", "Q1", "Q2", "A", "pred1",
    "pred2"}`, one row per pair.
    """
    rows: List[dict] = []
    pairs: Dict[object, dict] = {}
    for item in items:
        meta, pred = item.meta, answers.get(item.key, "")
        if "pair" not in meta:
            rows.append(
                {"video_name": meta["video_name"], "Q": meta["question"], "A": meta["answer"], "pred": pred}
            )
            continue
        row = pairs.get(meta["group"])
        if row is None:
            row = pairs[meta["group"]] = {"video_name": meta["video_name"], "A": meta["answer"]}
            rows.append(row)
        row[f"Q{meta['pair']}"] = meta["question"]
        row[f"pred{meta['pair']}"] = pred
    return _dump(rows, path)
