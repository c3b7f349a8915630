"""The model side of evaluation: an `answer_fn` that runs batched greedy generation with a checkpoint."""
from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence

from llava_mini_jax.eval.item import EvalItem
from llava_mini_jax.eval.registry import Benchmark


def make_answer_fn(session, bench: Benchmark, max_frames: Optional[int] = None,
                   max_new_tokens: Optional[int] = None,
                   fix_reference_prompts: bool = False) -> Callable[[Sequence[EvalItem]], list]:
    """`answer_fn(items) -> answers` for `evaluate`, asking as the reference's script for `bench` does.

    Each item's image (or video at 1 fps, capped by the item's `meta["max_frames"]` or
    `max_frames`) is preprocessed as the checkpoint's config says; the prompt is the item's query
    (`<image>\\n` + query when there is media) in the benchmark's conversation template
    (`bench.conv_mode`, e.g. EgoSchema's `vicuna_v1`, whatever the checkpoint; the session's own
    template with `fix_reference_prompts` or when the benchmark has none); the batch is answered
    greedily with the benchmark's budget (`bench.max_new_tokens`, unless `max_new_tokens`) in one
    padded `generate` call per pixel shape. The session itself is left unchanged.
    `answer_fn.settings` records what shapes the answers (template, budget, frames, sampling,
    param dtype, prompt fixes); `evaluate` writes it beside every answer and refuses to resume
    answers written with other settings.
    """
    budget = max_new_tokens or bench.max_new_tokens
    template = bench.template(session.template, fix_reference_prompts)
    if template != session.template:
        session = copy.copy(session)  # shares model, params and tokenizer; only the template differs
        session.template = template

    def answer_fn(items: Sequence[EvalItem]) -> list:
        pixels = [session.load_pixels(image=it.image, video=it.video,
                                      max_frames=it.meta.get("max_frames", max_frames) if it.video else None)
                  for it in items]
        return session.answer_batch([it.query for it in items], pixels, max_new_tokens=budget)
    answer_fn.settings = answer_settings(session, template, budget, max_frames, fix_reference_prompts)
    return answer_fn


def answer_settings(session, template: str, max_new_tokens: int, max_frames: Optional[int],
                    fix_reference_prompts: bool) -> dict:
    """The settings a benchmark's answers depend on, besides the model (JSON-able)."""
    import jax
    leaves = jax.tree.leaves(session.params)
    return {"template": template, "max_new_tokens": max_new_tokens, "max_frames": max_frames,
            "temperature": session.temperature, "top_p": session.top_p,
            "dtype": str(leaves[0].dtype) if leaves else None, "fix_reference_prompts": bool(fix_reference_prompts)}


def evaluate_model(bench: str, model, data_dir, split: Optional[str] = None, batch_size: int = 8,
                   limit: Optional[int] = None, out=None, conv_mode: Optional[str] = None,
                   max_frames: Optional[int] = None, max_new_tokens: Optional[int] = None, work_dir=None,
                   progress: bool = True, answer_parsing: str = "official",
                   fix_reference_prompts: bool = False) -> dict:
    """Evaluates a checkpoint on one benchmark: `model` is a checkpoint directory (HF or converted)
    or a `ChatSession`. Reads `data_dir` in the benchmark's layout, answers (batched greedy,
    resumable) with the reference's prompts, templates and budgets, scores with the official rule
    (`answer_parsing="lenient"` adds the forgiving reading beside it), writes answer/submission
    files and, with `out`, the results table. `fix_reference_prompts` asks the sensible variant
    where the reference's script looks like an omission (EgoSchema in the checkpoint's own
    template, MMBench-CN with the Chinese instruction). Returns the result row (metrics, the
    paper's number, notes)."""
    from llava_mini_jax.chat import ChatSession
    from llava_mini_jax.eval import registry
    from llava_mini_jax.eval.evaluate import evaluate
    session = model if isinstance(model, ChatSession) else ChatSession(model, conv_mode=conv_mode)
    answer_fn = make_answer_fn(session, registry.get(bench), max_frames, max_new_tokens,
                               fix_reference_prompts)
    return evaluate(bench, data_dir, answer_fn, out=out, split=split, batch_size=batch_size, limit=limit,
                    work_dir=work_dir, progress=progress, model_id=session.model_dir,
                    answer_parsing=answer_parsing, fix_reference_prompts=fix_reference_prompts)
