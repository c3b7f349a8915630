"""`llava-mini-jax demo`: the whole pipeline on an embedded default (interim: the vendored fixture)."""
from __future__ import annotations

import pathlib


def add_parser(sub):
    p = sub.add_parser("demo", help="run the pipeline end to end on built-in data (offline)")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--image", default=None)


def run(args) -> int:
    import numpy as np
    from llava_mini_jax import generate, load_pretrained
    root = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "std"
    model, params = load_pretrained(root / "hf")
    data = np.load(root / "inputs.npz")
    out = model.apply({"params": params}, input_ids=data["input_ids"], attention_mask=data["attention_mask"],
                      images=data["images"], labels=data["labels"])
    ids = generate(model, params, data["input_ids"][:1, :12], images=data["images"][:1], max_new_tokens=8)
    print(f"fixture std: loss {float(out.loss):.4f} over {int(out.num_target_tokens)} tokens; greedy ids {ids[0]}")
    return 0
