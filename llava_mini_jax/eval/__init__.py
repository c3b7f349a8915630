"""Benchmark evaluation: readers, prompts, scorers, submission files and the results table.

Model-independent: the model enters as `answer_fn(list[EvalItem]) -> list[str]`.

    from llava_mini_jax.eval import evaluate
    row = evaluate("pope", "playground/data/eval/pope", answer_fn, out="results.md")
"""

from llava_mini_jax.eval.evaluate import evaluate
from llava_mini_jax.eval.item import EvalItem
from llava_mini_jax.eval.registry import BENCHMARKS, Benchmark
from llava_mini_jax.eval.runner import load_answers, run_benchmark

__all__ = ["BENCHMARKS", "Benchmark", "EvalItem", "evaluate", "load_answers", "run_benchmark"]
