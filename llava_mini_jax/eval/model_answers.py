"""The model side of evaluation: an `answer_fn` that runs batched greedy generation with a checkpoint."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from llava_mini_jax.eval.item import EvalItem
from llava_mini_jax.eval.registry import Benchmark


def make_answer_fn(session, bench: Benchmark, max_frames: Optional[int] = None,
                   max_new_tokens: Optional[int] = None) -> Callable[[Sequence[EvalItem]], list]:
    """`answer_fn(items) -> answers` for `evaluate`: each item's image (or video at 1 fps, capped
    by the item's `meta["max_frames"]` or `max_frames`) is preprocessed as the checkpoint's config
    says, the reference's inference prompt is built (`<image>\\n` + query when there is media), and
    the batch is answered greedily in one padded `generate` call per pixel shape."""
    budget = max_new_tokens or bench.max_new_tokens

    def answer_fn(items: Sequence[EvalItem]) -> list:
        pixels = [session.load_pixels(image=it.image, video=it.video,
                                      max_frames=it.meta.get("max_frames", max_frames) if it.video else None)
                  for it in items]
        return session.answer_batch([it.query for it in items], pixels, max_new_tokens=budget)
    return answer_fn


def evaluate_model(bench: str, model, data_dir, split: Optional[str] = None, batch_size: int = 8,
                   limit: Optional[int] = None, out=None, conv_mode: Optional[str] = None,
                   max_frames: Optional[int] = None, max_new_tokens: Optional[int] = None, work_dir=None,
                   progress: bool = True) -> dict:
    """Evaluates a checkpoint on one benchmark: `model` is a checkpoint directory (HF or converted)
    or a `ChatSession`. Reads `data_dir` in the benchmark's layout, answers (batched greedy,
    resumable), scores, writes answer/submission files and, with `out`, the results table.
    Returns the result row (metrics, the paper's number, notes)."""
    from llava_mini_jax.chat import ChatSession
    from llava_mini_jax.eval import registry
    from llava_mini_jax.eval.evaluate import evaluate
    session = model if isinstance(model, ChatSession) else ChatSession(model, conv_mode=conv_mode)
    answer_fn = make_answer_fn(session, registry.get(bench), max_frames, max_new_tokens)
    return evaluate(bench, data_dir, answer_fn, out=out, split=split, batch_size=batch_size, limit=limit,
                    work_dir=work_dir, progress=progress, model_id=session.model_dir)
