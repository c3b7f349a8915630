"""Training metrics on process 0: a progress bar, one JSON line per step, optional TensorBoard.

JSONL record per step: `step` (1-based count of optimizer steps done), `loss`, `grad_norm`,
`lr` (first group) and `lr/<group>`, `supervised_tokens`, `tokens` (LLM sequence tokens, vision
tokens included), `tokens_per_s`, `step_time_s`, `skipped` (non-finite steps dropped so far),
`finite`, `empty_rows` (rows of the global batch without a supervised token), `time` (unix seconds).

One row per step: when a run (re)starts at step `s`, rows of steps after `s` (written after the
checkpoint it resumes from, so about to be redone) and earlier duplicates of a step move to
`metrics.superseded.jsonl` beside it, as does a line cut short by a crash.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Optional

log = logging.getLogger(__name__)


def _tensorboard_writer(log_dir: str):
    """A SummaryWriter from tensorboardX or torch, or None (with a warning) when neither is installed."""
    for module in ("tensorboardX", "torch.utils.tensorboard"):
        try:
            mod = __import__(module, fromlist=["SummaryWriter"])
            return mod.SummaryWriter(log_dir)
        except Exception:  # noqa: BLE001  missing package or missing tensorboard backend
            continue
    log.warning("logging.tensorboard=true but neither tensorboardX nor torch.utils.tensorboard (with tensorboard) "
                "is installed; metrics go to JSONL only")
    return None


class MetricsLogger:
    """Writes step metrics (process 0 only; elsewhere a no-op)."""

    def __init__(self, log_dir: Optional[str], primary: bool, total_steps: int, start_step: int,
                 progress_bar: bool = True, tensorboard: bool = False):
        self.primary = primary
        self.file = None
        self.bar = None
        self.tb = None
        if not primary:
            return
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
            self.path = os.path.join(log_dir, METRICS_FILE)
            moved = settle_metrics(self.path, start_step)
            if moved:
                log.warning("%s: %d row(s) of steps after %d (or repeated, or cut short) moved to %s", self.path, moved,
                            start_step, SUPERSEDED_FILE)
            self.file = open(self.path, "a")
            if tensorboard:
                self.tb = _tensorboard_writer(os.path.join(log_dir, "tensorboard"))
        if progress_bar:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True,
                            smoothing=0.1)

    def write(self, record: dict) -> None:
        if not self.primary:
            return
        record = {k: _plain(v) for k, v in record.items()}
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step" and math.isfinite(v):
                    self.tb.add_scalar(k, v, record["step"])
        if self.bar is not None:
            self.bar.update(record["step"] - self.bar.n)
            self.bar.set_postfix_str(
                f"loss {record['loss']:.4f} lr {record.get('lr', 0):.2e} gnorm {record['grad_norm']:.3f} "
                f"tok/s {record.get('tokens_per_s', 0):.0f} step {record.get('step_time_s', 0):.3f}s", refresh=False)

    def message(self, text: str) -> None:
        """A line above the bar (or to the log)."""
        if not self.primary:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            log.info("%s", text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


METRICS_FILE = "metrics.jsonl"
SUPERSEDED_FILE = "metrics.superseded.jsonl"


def settle_metrics(path: str, start_step: int) -> int:
    """Keeps in `path` the last row of each step <= `start_step`, in step order; appends the other
    lines (later steps, earlier duplicates, unreadable lines) to `metrics.superseded.jsonl` in the
    same folder. Returns how many lines moved."""
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        text = f.read()
    lines = text.splitlines()
    keep: dict[int, str] = {}
    moved: list[str] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            moved.append(line)
            continue
        if step > start_step:
            moved.append(line)
            continue
        if step in keep:
            moved.append(keep[step])
        keep[step] = line
    settled = "".join(keep[s] + "\n" for s in sorted(keep))
    if moved:
        with open(os.path.join(os.path.dirname(path), SUPERSEDED_FILE), "a") as f:
            f.write("".join(line + "\n" for line in moved))
    if settled != text:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(settled)
        os.replace(tmp, path)
    return len(moved)


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf
    return v


class PrimaryOnly(logging.Filter):
    """Drops records below WARNING on processes other than 0 (once `jax.distributed` is up; it never
    asks jax before, which would start the backend too early)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from . import multihost
        if record.levelno >= logging.WARNING or not multihost.is_initialized():
            return True
        import jax
        return jax.process_index() == 0


class StepTimer:
    """Wall time between consecutive finished steps (the host reads metrics one step late, so this
    is the device's step time once the pipeline is full)."""

    def __init__(self):
        self.last = None

    def lap(self) -> Optional[float]:
        now = time.perf_counter()
        dt = None if self.last is None else now - self.last
        self.last = now
        return dt
