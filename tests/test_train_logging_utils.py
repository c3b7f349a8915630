"""train.logging_utils: one metrics row per step across resumes (`settle_metrics`)."""
import json

from train.logging_utils import SUPERSEDED_FILE, MetricsLogger, settle_metrics


def _rows(path):
    return [json.loads(x) for x in open(path)]


def test_settle_keeps_the_last_row_of_each_step_up_to_the_resume_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 3.0},
             {"step": 2, "loss": 2.5}, {"step": 4, "loss": 4.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 5, "lo')  # last line cut short
    assert settle_metrics(str(path), 2) == 4
    assert _rows(path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.5}]
    moved = open(tmp_path / SUPERSEDED_FILE).read().splitlines()
    assert [json.loads(x)["loss"] for x in moved[:3]] == [3.0, 2.0, 4.0] and moved[3] == '{"step": 5, "lo'
    assert settle_metrics(str(path), 2) == 0  # settled: nothing more moves
    assert settle_metrics(str(tmp_path / "missing.jsonl"), 0) == 0


def test_a_fresh_run_over_old_rows_starts_a_clean_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "loss": 9.0}) + "\n")
    logger = MetricsLogger(str(tmp_path), True, 3, 0, progress_bar=False)
    logger.write({"step": 1, "loss": 1.0, "grad_norm": 0.0})
    logger.close()
    assert _rows(path) == [{"step": 1, "loss": 1.0, "grad_norm": 0.0}]
    assert _rows(tmp_path / SUPERSEDED_FILE) == [{"step": 1, "loss": 9.0}]
