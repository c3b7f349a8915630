"""Batched, resumable answering of a benchmark's questions.

`run_benchmark` asks the model (`answer_fn`, batched greedy generation) every question that has
no answer yet in the answers file, longest query first so that a padded batch holds queries of
similar length, and appends one line per answer as soon as its batch is done:

    {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}

the line layout of the reference's `model_vqa_loader.py`; `metadata` holds the answering
settings (`{"settings": {...}}`: template, token budget, frames, dtype) when given. On restart the
questions already in the file are skipped (matched by `EvalItem.key`); a last line cut short by
an interruption is dropped and overwritten. A file whose lines were written by another model
(`model_id`) or with other settings is never resumed (`ProvenanceError`): one score, one model.
Answers never depend on how questions are batched, provided `answer_fn` itself gives each row the
answer it would give alone.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from llava_mini_jax.eval.item import EvalItem, Key, item_key

AnswerFn = Callable[[List[EvalItem]], List[str]]


def _read_lines(path: Path) -> List[dict]:
    """Answer records of `path`; a truncated last line is cut off the file (it is rewritten)."""
    with open(path, "rb") as f:
        data = f.read()
    records, offset = [], 0
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        is_last = number == len(lines)
        if raw.strip():
            try:
                records.append(json.loads(raw))
            except json.JSONDecodeError as e:
                if not is_last:
                    raise ValueError(
                        f"answers file {path}: line {number} is not valid JSON ({e}); "
                        f"only an interrupted last line is repaired"
                    ) from e
                with open(path, "r+b") as f:  # drop the half-written last line
                    f.truncate(offset)
                break
        offset += len(raw) + 1
    else:
        if data and not data.endswith(b"\n"):  # a complete last line without its newline
            with open(path, "ab") as f:
                f.write(b"\n")
    return records


class ProvenanceError(ValueError):
    """An answers file holds answers of another model or other settings than this run's."""


def load_records(path: Path) -> List[dict]:
    """The answer records of an answers file, checked (empty when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    records = _read_lines(path)
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict) or not {"question_id", "prompt", "text"} <= set(record):
            raise ValueError(
                f"answers file {path}: record {number} needs question_id, prompt and "
                f"text, got {record!r:.200}"
            )
    return records


def load_answers(path: Path) -> Dict[Key, str]:
    """key -> answer text of an answers file (empty when the file does not exist)."""
    return {item_key(r["question_id"], r["prompt"]): r["text"] for r in load_records(path)}


def same_model(a, b) -> bool:
    """Two `model_id`s name the same model: equal, or paths of one directory."""
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and os.path.isdir(a) and os.path.isdir(b):
        return os.path.samefile(a, b)
    return False


def check_provenance(path: Path, records: Sequence[dict], model_id: str, settings: Optional[dict]) -> None:
    """ProvenanceError when a record of `path` was written by another model than `model_id`, or
    (with `settings`) with other answering settings."""
    for number, record in enumerate(records, start=1):
        theirs = record.get("model_id")
        meta = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
        if not same_model(theirs, model_id):
            why = f"model {theirs!r}; this run's model is {model_id!r}"
        elif settings is not None and meta.get("settings") != settings:
            why = f"settings {meta.get('settings')!r}; this run's are {settings!r}"
        else:
            continue
        raise ProvenanceError(
            f"answers file {path} holds {len(records)} answers; line {number} was written by {why}. Resuming "
            f"would mix two models' answers in one score: delete the file, pass another --work-dir, or "
            f"rerun with that model and settings"
        )


def answer_record(item: EvalItem, text: str, model_id: str, settings: Optional[dict] = None) -> dict:
    """One line of the answers file, in the reference's layout (`settings` into `metadata`)."""
    return {
        "question_id": item.question_id,
        "prompt": item.prompt,
        "text": text,
        "answer_id": uuid.uuid4().hex,
        "model_id": model_id,
        "metadata": {"settings": settings} if settings is not None else {},
    }


def pending_batches(items: Sequence[EvalItem], done: Dict[Key, str], batch_size: int) -> List[List[EvalItem]]:
    """Unanswered items, longest query first (stable), cut into batches of `batch_size`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    seen, todo = set(done), []
    for item in items:
        if item.key not in seen:
            seen.add(item.key)
            todo.append(item)
    todo.sort(key=lambda item: -len(item.query))
    return [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]


def run_benchmark(
    items: Sequence[EvalItem],
    answer_fn: AnswerFn,
    answers_path: Path,
    batch_size: int = 8,
    limit: Optional[int] = None,
    progress: bool = True,
    model_id: str = "llava-mini-jax",
    settings: Optional[dict] = None,
) -> Dict[Key, str]:
    """Answer every item (the first `limit` only, if given) and return key -> answer text.

    Args:
      items: the benchmark's questions, in the benchmark's order.
      answer_fn: the model: a batch of items -> one answer string per item, in order.
      answers_path: the jsonl file answers are appended to (and read back on restart).
      batch_size: questions per `answer_fn` call.
      limit: only the first `limit` items (in benchmark order) are asked.
      progress: show a tqdm progress bar.
      model_id: written into each answer line.
      settings: the answering settings (JSON-able), written into each line's metadata.

    Raises:
      ProvenanceError: the answers file holds lines of another model (or other settings).
    """
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        items = list(items)[:limit]
    answers_path = Path(answers_path)
    answers_path.parent.mkdir(parents=True, exist_ok=True)
    settings = None if settings is None else json.loads(json.dumps(settings))  # as the file will hold it
    records = load_records(answers_path)
    check_provenance(answers_path, records, model_id, settings)
    done = {item_key(r["question_id"], r["prompt"]): r["text"] for r in records}
    batches = pending_batches(items, done, batch_size)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(b) for b in batches), desc=answers_path.stem, unit="q")
    with open(answers_path, "a", encoding="utf-8") as f:
        for batch in batches:
            texts = answer_fn(list(batch))
            if len(texts) != len(batch):
                raise ValueError(f"answer_fn returned {len(texts)} answers for a batch of {len(batch)}")
            for item, text in zip(batch, texts):
                if not isinstance(text, str):
                    raise ValueError(
                        f"answer_fn must return strings; got {type(text).__name__} for "
                        f"question {item.question_id!r}"
                    )
                f.write(json.dumps(answer_record(item, text, model_id, settings)) + "\n")
                done[item.key] = text
            f.flush()
            os.fsync(f.fileno())
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    return {item.key: done[item.key] for item in items}
