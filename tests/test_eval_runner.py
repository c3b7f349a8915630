"""Batched, resumable answering: order, batching invariance, resume, repair of a cut last line."""

import json

import pytest

from llava_mini_jax.eval import runner
from llava_mini_jax.eval.item import EvalItem


def _items(n=7):
    # queries of different lengths; question 3 and 4 share an id (as MME's files do)
    items = [EvalItem(i, "q" * (i + 1) + "?", image=f"/img/{i}.png") for i in range(n)]
    if n > 4:
        items[4] = EvalItem(3, "another question about image 3", image="/img/3.png")
    return items


class FakeModel:
    """Deterministic canned answers; records every batch it was asked."""

    def __init__(self, fail_after=None):
        self.batches = []
        self.fail_after = fail_after

    def __call__(self, batch):
        if self.fail_after is not None and len(self.batches) == self.fail_after:
            raise RuntimeError("interrupted")
        self.batches.append([item.key for item in batch])
        return [f"answer to {item.question_id}: {len(item.query)}" for item in batch]


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batched_equals_one_at_a_time(tmp_path):
    items = _items()
    batched = runner.run_benchmark(items, FakeModel(), tmp_path / "b.jsonl", batch_size=3, progress=False)
    single = runner.run_benchmark(items, FakeModel(), tmp_path / "s.jsonl", batch_size=1, progress=False)
    assert batched == single
    assert list(batched) == [item.key for item in items]  # returned in benchmark order
    assert runner.load_answers(tmp_path / "b.jsonl") == runner.load_answers(tmp_path / "s.jsonl")


def test_batches_are_longest_first_and_lines_have_the_reference_layout(tmp_path):
    items = _items(4)
    model = FakeModel()
    runner.run_benchmark(items, model, tmp_path / "a.jsonl", batch_size=2, progress=False, model_id="m")
    lengths = [[len(key[1]) for key in batch] for batch in model.batches]
    assert lengths == [[5, 4], [3, 2]]
    line = _lines(tmp_path / "a.jsonl")[0]
    assert set(line) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
    assert (line["question_id"], line["prompt"], line["model_id"]) == (3, "qqqq?", "m")


def test_resume_does_not_recompute_finished_questions(tmp_path):
    items = _items()
    path = tmp_path / "a.jsonl"
    with pytest.raises(RuntimeError, match="interrupted"):
        runner.run_benchmark(items, FakeModel(fail_after=2), path, batch_size=2, progress=False)
    assert len(_lines(path)) == 4  # two batches were written before the interruption
    model = FakeModel()
    answers = runner.run_benchmark(items, model, path, batch_size=2, progress=False)
    assert sum(len(b) for b in model.batches) == 3  # only the 3 unanswered questions
    assert len(_lines(path)) == 7
    assert answers == runner.run_benchmark(
        items, FakeModel(), tmp_path / "fresh.jsonl", batch_size=2, progress=False
    )
    again = FakeModel()
    runner.run_benchmark(items, again, path, batch_size=2, progress=False)
    assert again.batches == []


def test_truncated_last_line_is_dropped_and_redone(tmp_path):
    items = _items(3)
    path = tmp_path / "a.jsonl"
    runner.run_benchmark(items[:2], FakeModel(), path, batch_size=1, progress=False)
    good = path.read_text()
    path.write_text(good + '{"question_id": 2, "prompt": "qqq?", "te')  # cut mid-write
    model = FakeModel()
    runner.run_benchmark(items, model, path, batch_size=1, progress=False)
    assert model.batches == [[items[2].key]]
    assert [line["question_id"] for line in _lines(path)] == [1, 0, 2]  # longest first


def test_complete_last_line_without_newline_is_kept(tmp_path):
    items = _items(2)
    path = tmp_path / "a.jsonl"
    runner.run_benchmark(items[:1], FakeModel(), path, progress=False)
    path.write_text(path.read_text().rstrip("\n"))
    runner.run_benchmark(items, FakeModel(), path, progress=False)
    assert len(_lines(path)) == 2


def test_corrupt_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(
        '{"question_id": 1, "prompt": "p", "text": "t"}\nnot json\n'
        '{"question_id": 2, "prompt": "p", "text": "t"}\n'
    )
    with pytest.raises(ValueError, match="line 2"):
        runner.load_answers(path)


def test_limit_and_answer_count_checks(tmp_path):
    items = _items()
    model = FakeModel()
    answers = runner.run_benchmark(items, model, tmp_path / "a.jsonl", limit=2, progress=False)
    assert list(answers) == [items[0].key, items[1].key]
    with pytest.raises(ValueError, match="2 answers for a batch of 3"):
        runner.run_benchmark(
            items, lambda batch: ["x", "y"], tmp_path / "b.jsonl", batch_size=3, progress=False
        )
    with pytest.raises(ValueError, match="batch_size"):
        runner.run_benchmark(items, model, tmp_path / "c.jsonl", batch_size=0, progress=False)


def test_duplicate_items_are_asked_once(tmp_path):
    item = EvalItem(1, "same")
    model = FakeModel()
    runner.run_benchmark([item, item], model, tmp_path / "a.jsonl", progress=False)
    assert model.batches == [[item.key]]


def test_answers_of_another_model_or_settings_are_never_resumed(tmp_path):
    items = _items()
    path = tmp_path / "a.jsonl"
    model_dir = tmp_path / "ckpt"
    model_dir.mkdir()
    settings = {"template": "vicuna_v1", "max_new_tokens": 8}
    with pytest.raises(RuntimeError, match="interrupted"):
        runner.run_benchmark(items, FakeModel(fail_after=1), path, batch_size=2, progress=False,
                             model_id=str(model_dir), settings=settings)
    assert _lines(path)[0]["metadata"] == {"settings": settings}
    before = path.read_text()
    with pytest.raises(runner.ProvenanceError, match=r"holds 2 answers; line 1 was written by model '.*ckpt'; "
                                                     r"this run's model is 'other'.*mix two models"):
        runner.run_benchmark(items, FakeModel(), path, batch_size=2, progress=False, model_id="other",
                             settings=settings)
    with pytest.raises(runner.ProvenanceError, match=r"settings .*'max_new_tokens': 8.*this run's are .*16"):
        runner.run_benchmark(items, FakeModel(), path, batch_size=2, progress=False, model_id=str(model_dir),
                             settings={**settings, "max_new_tokens": 16})
    assert path.read_text() == before  # nothing appended
    # the same model named by another path resumes
    model = FakeModel()
    runner.run_benchmark(items, model, path, batch_size=2, progress=False,
                         model_id=str(tmp_path / "." / "ckpt"), settings=settings)
    assert sum(len(b) for b in model.batches) == 5
