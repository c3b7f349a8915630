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
