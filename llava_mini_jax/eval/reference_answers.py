"""Answers files written by the reference's evaluation scripts, matched to our items.

`load(path, items)` reads a jsonl file (or a JSON list) and returns `item.key -> answer text` for
every record it can match, whatever script wrote it:

* `{"question_id", "prompt", "text", ...}`: ours, and the reference's `model_vqa_loader.py`,
  `model_vqa_science.py`, `model_vqa_mmbench.py` (whose prompt is the question block without the
  instruction, which is what our MMBench items record): matched by (question id, prompt), or by
  the question id alone when exactly one item has it;
* `{"pred", "question", "video", "question_type", ...}` (`mvbench_mc.py`, `mlvu_mc.py`): matched
  by task name, video file name and recorded question block;
* `{"q_uid", "output", ...}` (`egoschema_mc.py`): by `q_uid`;
* `{"id", "question", "answer", "pred"}` (`run_inference_video_qa*.py`): by question id;
* `{"video_name", "Q", "pred"}` / `{"video_name", "Q1", "Q2", "pred1", "pred2"}`
  (`run_inference_benchmark_*.py`): by video name and question.

Records that match no item are ignored (another split, or questions left out with `limit`); a
file none of whose records matches raises `ValueError`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

from llava_mini_jax.eval import files
from llava_mini_jax.eval.item import EvalItem, Key, item_key


def read_records(path: Path) -> List[dict]:
    """The records of a jsonl file, or of a file holding one JSON list."""
    path = files.require_file(Path(path), "answers file")
    text = path.read_text(encoding="utf-8")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, list):
        records = whole
    elif isinstance(whole, dict):
        records = [whole]
    else:
        records = files.read_jsonl(path, "answers file")
    bad = next((r for r in records if not isinstance(r, dict)), None)
    if bad is not None:
        raise ValueError(f"answers file {path}: expected JSON objects, got {bad!r:.200}")
    return records


def _name(path) -> str:
    return os.path.basename(str(path).rstrip("/"))


class _Index:
    """Lookups from the fields the reference's files carry to our items' keys."""

    def __init__(self, items: Sequence[EvalItem]):
        self.keys = {item.key for item in items}
        self.by_id: Dict[str, List[Key]] = {}
        self.by_video_question: Dict[Tuple[str, str, str], Key] = {}
        for item in items:
            self.by_id.setdefault(str(item.question_id), []).append(item.key)
            if item.video is not None:
                task = str(item.meta.get("task", ""))
                self.by_video_question[(task, _name(item.video), item.prompt)] = item.key
                self.by_video_question[("", _name(item.video), item.prompt)] = item.key
            if "video_name" in item.meta:
                self.by_video_question[("vcg", str(item.meta["video_name"]), item.prompt)] = item.key

    def by_question_id(self, qid) -> Iterable[Key]:
        found = self.by_id.get(str(qid), [])
        return found if len(found) == 1 else []

    def match(self, record: dict) -> List[Tuple[Key, str]]:
        if {"question_id", "prompt", "text"} <= set(record):
            key = item_key(record["question_id"], record["prompt"])
            keys = [key] if key in self.keys else self.by_question_id(record["question_id"])
            return [(k, record["text"]) for k in keys]
        if {"pred", "question", "video"} <= set(record):
            task = str(record.get("question_type", ""))
            key = self.by_video_question.get((task, _name(record["video"]), record["question"]))
            return [(key, record["pred"])] if key else []
        if {"q_uid", "output"} <= set(record):
            return [(k, record["output"]) for k in self.by_question_id(record["q_uid"])]
        if {"id", "pred"} <= set(record):
            return [(k, record["pred"]) for k in self.by_question_id(record["id"])]
        if {"video_name", "Q", "pred"} <= set(record):
            key = self.by_video_question.get(("vcg", str(record["video_name"]), record["Q"]))
            return [(key, record["pred"])] if key else []
        if {"video_name", "Q1", "Q2", "pred1", "pred2"} <= set(record):
            out = []
            for pair in ("1", "2"):
                key = self.by_video_question.get(("vcg", str(record["video_name"]), record["Q" + pair]))
                if key:
                    out.append((key, record["pred" + pair]))
            return out
        return []


def load(path: Path, items: Sequence[EvalItem]) -> Dict[Key, str]:
    """`item.key -> answer text` for the records of `path` that match `items` (see module doc)."""
    records = read_records(path)
    index = _Index(items)
    answers: Dict[Key, str] = {}
    for record in records:
        for key, text in index.match(record):
            if not isinstance(text, str):
                raise ValueError(f"answers file {path}: answer {text!r} of {record!r:.200} is not a string")
            answers[key] = text
    if records and not answers:
        raise ValueError(
            f"answers file {path}: none of its {len(records)} records matches a question of this "
            f"benchmark split (first record: {records[0]!r:.200})"
        )
    return answers
