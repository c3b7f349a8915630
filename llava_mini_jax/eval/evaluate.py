"""`evaluate`: read a benchmark, ask the model, score, write answer/submission files and the table.

The model is any `answer_fn(list[EvalItem]) -> list[str]` (batched greedy generation); this file
never needs it to be a particular model. Files, by default under `<data_dir>/answers/`
(LLaVA's layout):

* `<benchmark>-<split>.jsonl`: the answers, one line per question (resumable);
* `upload/...`: submission files for scoring servers, GPT-judge inputs, GQA's prediction file.

Scores use each benchmark's official / reference rule (SPEC D17). `answer_parsing="lenient"` adds
the forgiving reading (`row["lenient"]`, `metrics["lenient"]`) beside the headline, never in its
place. Without a model, the answers file (or `answers_file`) is scored, ours or one written by the
reference's scripts (`reference_answers`); questions it has no answer for count as empty answers
and are reported beside the score (`row["missing"]`, and the note). An answers file written by
another model or with other settings is never resumed (`runner.ProvenanceError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

from llava_mini_jax.eval import reference_answers, registry, table
from llava_mini_jax.eval.runner import AnswerFn, run_benchmark

ANSWER_PARSINGS = ("official", "lenient")


def _note(bench: registry.Benchmark, split: str, written: Dict[str, Path], fixed: bool) -> str:
    uploads = "; ".join(f"{label}: {path}" for label, path in written.items())
    if bench.is_server_scored(split):
        note = f"server-scored: submit {uploads}"
    elif bench.judged:
        note = "GPT-judged: official score needs the judge" + (f" ({uploads})" if uploads else "")
    elif bench.name.startswith("mmbench"):
        note = "VLMEvalKit rule-based matching (no GPT fallback)"
    else:
        note = ""
    if bench.reference_quirk:
        quirk = ("NOT " if fixed else "") + "as the reference: " + bench.reference_quirk
        note = f"{note}; {quirk}" if note else quirk
    return note


def evaluate(
    bench: str,
    data_dir,
    answer_fn: Optional[AnswerFn],
    out=None,
    split: Optional[str] = None,
    batch_size: int = 8,
    limit: Optional[int] = None,
    work_dir=None,
    progress: bool = True,
    model_id: str = "llava-mini-jax",
    answer_parsing: str = "official",
    fix_reference_prompts: bool = False,
    answers_file=None,
    settings: Optional[Dict] = None,
) -> Dict:
    """Evaluate `answer_fn` on one benchmark split; returns the result row (metrics included).

    Args:
      bench: a name of `registry.BENCHMARKS` (e.g. 'gqa', 'pope', 'mvbench').
      data_dir: the benchmark's folder, laid out as `registry.BENCHMARKS[bench].layout` says.
      answer_fn: the model; None scores the answers already in the answers file, or in
        `answers_file`, in our layout or a reference script's (missing ones count as empty answers).
      out: results table path (`x.md` or `x.json`; both are written and merged with earlier rows).
      split: the split (default: the one the paper reports).
      batch_size: questions per `answer_fn` call.
      limit: only the first `limit` questions are asked and scored.
      work_dir: where answers and uploads go (default `<data_dir>/answers`).
      progress: show a progress bar.
      model_id: written into the answers file.
      answer_parsing: 'official' (the headline only) or 'lenient' (the forgiving reading is
        computed too and reported beside it, as `row["lenient"]` and `metrics["lenient"]`).
      fix_reference_prompts: ask the sensible variant where the reference's script looks like an
        omission (MMBench-CN's Chinese instruction; the template is `make_answer_fn`'s business).
      answers_file: with `answer_fn` None, score this file instead of the answers file.
      settings: the answering settings recorded with each answer and checked on resume (default:
        `answer_fn.settings` when it has them, as `make_answer_fn`'s do).
    """
    if answer_parsing not in ANSWER_PARSINGS:
        raise ValueError(f"answer_parsing {answer_parsing!r}: expected one of {ANSWER_PARSINGS}")
    b = registry.get(bench)
    split = split or b.default_split
    if split not in b.splits:
        raise ValueError(f"{bench}: unknown split {split!r}, expected one of {list(b.splits)}")
    data_dir = Path(data_dir)
    work = Path(work_dir) if work_dir is not None else data_dir / "answers"
    items = b.reader(fix_reference_prompts)(data_dir, split)
    if limit is not None:
        items = items[:limit]
    answers_path = work / f"{b.name}-{split}.jsonl"
    if answer_fn is None:
        scored = Path(answers_file) if answers_file is not None else answers_path
        answers = reference_answers.load(scored, items) if answers_file is not None or scored.exists() else {}
    else:
        answers = run_benchmark(
            items, answer_fn, answers_path, batch_size=batch_size, progress=progress, model_id=model_id,
            settings=settings if settings is not None else getattr(answer_fn, "settings", None),
        )
    missing = sum(1 for item in items if item.key not in answers)
    server = b.is_server_scored(split)
    metrics = {} if server or b.score is None else b.score(items, answers)
    lenient = None
    if answer_parsing == "lenient" and metrics:
        lenient = b.score(items, answers, parsing="lenient") if b.lenient else dict(metrics)
        metrics["lenient"] = lenient
    written = b.write(items, answers, work / "upload", data_dir, split) if b.write else {}
    value = metrics.get(b.headline)
    row = {
        "benchmark": b.name,
        "title": b.title,
        "split": split,
        "modality": b.modality,
        "metric": b.headline,
        "ours": None if b.judged else value,
        "lenient": None if lenient is None or b.judged else lenient.get(b.headline),
        "proxy": value if b.judged else None,
        "paper": b.paper if split == b.paper_split else None,
        "note": _note(b, split, written, fix_reference_prompts),
        "count": len(items),
        "missing": missing,
        "limit": limit,
        "answers_file": str(answers_path),
        "files": {k: str(v) for k, v in written.items()},
        "metrics": metrics,
    }
    if missing:
        scored = Path(answers_file) if answers_file is not None else answers_path
        gap = (f"{missing} of {len(items)} questions have no answer in {scored} and count as empty answers "
               f"(run with --model to answer them)")
        row["note"] = f"{gap}; {row['note']}" if row["note"] else gap
    if out is not None:
        table.update(Path(out), row)
    return row
