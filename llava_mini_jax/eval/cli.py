"""`llava-mini-jax eval BENCH --model DIR --data DIR`: one command per benchmark of the paper."""
from __future__ import annotations

import json


def add_parser(sub):
    from llava_mini_jax.eval.registry import BENCHMARKS
    p = sub.add_parser("eval", help="evaluate a checkpoint on a benchmark (answers, scores, results table)")
    p.add_argument("bench", choices=sorted(BENCHMARKS), help="benchmark name")
    p.add_argument("--model", required=False, help="checkpoint directory (omit to re-score existing answers)")
    p.add_argument("--data", required=True, help="the benchmark's folder (LLaVA eval layout)")
    p.add_argument("--split", default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", default=None, help="results table (.md and .json are both written)")
    p.add_argument("--work-dir", default=None, help="answers/uploads folder (default: DATA/answers)")
    p.add_argument("--conv-mode", default=None)
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--answer-parsing", default="official", choices=["official", "lenient"],
                   help="lenient: also report a forgiving reading of the answers, beside the official score")
    p.add_argument("--fix-reference-prompts", action="store_true",
                   help="ask EgoSchema in the checkpoint's template and MMBench-CN with the Chinese "
                        "instruction (the reference's scripts do not)")
    p.add_argument("--answers", default=None,
                   help="without --model: score this answers file (ours, or one written by the "
                        "reference's scripts)")


def run(args) -> int:
    from llava_mini_jax.eval import registry
    from llava_mini_jax.eval.evaluate import evaluate
    answer_fn = None
    if args.model:
        import jax.numpy as jnp
        from llava_mini_jax.chat import ChatSession
        from llava_mini_jax.eval.model_answers import make_answer_fn
        session = ChatSession(args.model, conv_mode=args.conv_mode, dtype=getattr(jnp, args.dtype))
        answer_fn = make_answer_fn(session, registry.get(args.bench), args.max_frames, args.max_new_tokens,
                                   args.fix_reference_prompts)
    row = evaluate(args.bench, args.data, answer_fn, out=args.out, split=args.split,
                   batch_size=args.batch_size, limit=args.limit, work_dir=args.work_dir,
                   model_id=args.model or "llava-mini-jax",
                   answer_parsing=args.answer_parsing, fix_reference_prompts=args.fix_reference_prompts,
                   answers_file=None if args.model else args.answers)
    print(json.dumps({k: row[k] for k in ("benchmark", "split", "metric", "ours", "lenient", "proxy", "paper",
                                           "count", "missing", "note")}))
    return 0
