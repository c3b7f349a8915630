"""`llava-mini-jax demo`: the whole library on built-in data, offline, in a few minutes on a CPU.

    1. draw a few thousand shape images with questions; pack them as TFDS ArrayRecord
    2. train a SentencePiece tokenizer on the demo's texts
    3. stage 1 (LLaVA-v1.5 mode, projector only, captions) with the `train/` loop, grain, orbax
    4. stage 2 twice from that projector: LLaVA-Mini (1 vision token) and LLaVA-v1.5 mode (64)
    5. export both to HF safetensors (`convert.jax_to_hf`) and load them back (`load_pretrained`)
    6. answer held-out questions with `generate`; accuracy vs chance, tokens, FLOPs and latency
       per image; a PNG of the compressor's attention

`llava-mini-jax demo --model DIR --image PATH [--prompt TEXT]` chats with a real checkpoint instead.
"""
from __future__ import annotations

import json
import os
import time


def add_parser(sub):
    p = sub.add_parser("demo", help="train, export and evaluate a tiny LLaVA-Mini on built-in data (offline)")
    p.add_argument("--out", default="demo_out", help="output directory (data, runs, exports, results)")
    p.add_argument("--steps", type=int, default=1000, help="stage-2 steps (each of the two runs)")
    p.add_argument("--stage1-steps", type=int, default=150)
    p.add_argument("--train-images", type=int, default=6000)
    p.add_argument("--test-questions", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32, help="rows per training step (both stages)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of both stages (nothing is pretrained)")
    p.add_argument("--prefusion-layers", type=int, default=1, help="pre-fusion layers of the LLaVA-Mini model")
    p.add_argument("--no-baseline", action="store_true", help="skip the LLaVA-v1.5-mode comparison run")
    p.add_argument("--model", default=None, help="chat with this checkpoint instead (with --image)")
    p.add_argument("--image", default=None)
    p.add_argument("--prompt", default="Describe the image.")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None,
                   help="with --model: weight-only quantization at load, int8 (per output channel) or int4 (groups)")


def chat_with(model: str, image: str, prompt: str, quantize=None) -> int:
    from llava_mini_jax.chat import ChatSession
    session = ChatSession(model, quantize=quantize)
    if image:
        session.set_image(image)
    print(f"USER: {prompt}\nASSISTANT: ", end="", flush=True)
    session.ask(prompt, on_text=lambda piece: print(piece, end="", flush=True))
    print()
    return 0


def run(args) -> int:
    if args.model:
        return chat_with(args.model, args.image, args.prompt, args.quantize)
    run_demo(args.out, steps=args.steps, stage1_steps=args.stage1_steps, train_images=args.train_images,
             test_questions=args.test_questions, seed=args.seed, lr=args.lr, batch_size=args.batch_size,
             baseline=not args.no_baseline, prefusion_layers=args.prefusion_layers)
    return 0


def _quiet_tfds() -> None:
    """TFDS talks about 'downloading' while it packs local files: keep only warnings."""
    import logging
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("absl").setLevel(logging.WARNING)
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()


def _say(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def run_demo(out: str, steps: int = 1000, stage1_steps: int = 150, train_images: int = 6000,
             test_questions: int = 400, seed: int = 0, lr: float = 3e-3, batch_size: int = 32, baseline: bool = True,
             progress: bool = True, prefusion_layers: int = 1) -> dict:
    """Runs the demo into `out`; returns the results (also written to `out/results.json`)."""
    _quiet_tfds()
    from llava_mini_jax.chat import ChatSession
    from . import dataset, pipeline, report, shapes, tokenizer
    t0 = time.time()
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)

    _say(f"data: {train_images} training images, {test_questions} held-out questions ({out}/data)")
    data = dataset.write_dataset(os.path.join(out, "data"), train_images, test_questions, pipeline.IMAGE_SIZE, seed,
                                 progress)
    tfds_dirs = dataset.pack_tfds(data)
    tok_dir = tokenizer.train_tokenizer(os.path.join(out, "tokenizer"), shapes.corpus() + list(data.captions[:500]))
    from llava_mini_jax.tokenizer import load_tokenizer
    vocab = load_tokenizer(tok_dir).vocab_size
    configs = {m: pipeline.write_model_config(os.path.join(out, f"{m}_config.json"),
                                              pipeline.tiny_config(vocab, m, prefusion_layers))
               for m in ("baseline", "mini")}
    common = dict(tokenizer=tok_dir, seed=seed, lr=lr, batch=batch_size, progress=progress,
                  prefusion_layers=prefusion_layers)

    _say(f"stage 1: LLaVA-v1.5 mode, projector only, {stage1_steps} steps on captions (plain template)")
    s1 = pipeline.run_stage("stage1", pipeline.stage_overrides(
        config_json=configs["baseline"], mode="baseline", data_path=tfds_dirs["stage1"], template="plain",
        run_dir=os.path.join(out, "runs", "stage1"), steps=stage1_steps, groups=1, **common))
    runs = {"stage1": s1}
    variants = [("mini", "LLaVA-Mini (1 token)")] + ([("baseline", "LLaVA-v1.5 mode")] if baseline else [])
    for mode, title in variants:
        _say(f"stage 2: {title}, {steps} steps on questions (vicuna_v1), projector from stage 1")
        runs[mode] = pipeline.run_stage("stage2", pipeline.stage_overrides(
            config_json=configs[mode], mode=mode, data_path=tfds_dirs["stage2"], template="vicuna_v1",
            run_dir=os.path.join(out, "runs", f"stage2_{mode}"), steps=steps, groups=2,
            init_from=os.path.join(out, "runs", "stage1"), **common))

    _say("export to HF safetensors (convert.jax_to_hf), reload with load_pretrained, evaluate with generate")
    test = report.load_test(data.test_json)
    rows, results = [], {"seed": seed, "lr": lr, "batch_size": batch_size, "steps": steps, "stage1_steps": stage1_steps,
                         "train_images": train_images, "prefusion_layers": prefusion_layers}
    probe = os.path.join(data.image_folder, test[0]["image"])
    for mode, title in variants:
        hf_dir = pipeline.export_hf(runs[mode].last_checkpoint, os.path.join(out, "hf", mode), tok_dir)
        session = ChatSession(hf_dir, max_new_tokens=4)
        row = {"name": title, "tokens": session.model.config.tokens_per_frame,
               "accuracy": report.accuracy(session, test, data.image_folder, progress=progress),
               "flops": report.prefill_flops(session, probe), **report.latency(session, probe),
               "final_loss": float(runs[mode].losses[max(runs[mode].losses)]), "hf_dir": hf_dir}
        rows.append(row)
        if mode == "mini":
            results["attention_png"] = report.attention_png(session, test, data.image_folder,
                                                            os.path.join(out, "compressor_attention.png"))
    rows.append({"name": "chance", "accuracy": {"overall": report.chance(test)}})
    results["rows"] = rows
    results["seconds"] = time.time() - t0
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)

    _say(f"results ({len(test)} held-out questions, seed {seed}, {results['seconds']:.0f} s)")
    print(report.format_table(rows))
    real = report.real_size_flops()
    results["real_size_tflops"] = real
    if len(rows) > 2:
        mini, base = rows[0], rows[1]
        print(f"\nLLaVA-Mini puts {mini['tokens']} vision token into the LLM instead of {base['tokens']}. In this toy "
              f"(a 2-layer, 64-wide LLM) the vision side dominates: {1 - mini['flops'] / base['flops']:.0%} fewer "
              f"prefill FLOPs, time to first token {mini['ttft_s'] * 1e3:.1f} vs {base['ttft_s'] * 1e3:.1f} ms.")
    print(f"At the real size (CLIP-L/336 + Vicuna-7B, 64-token prompt) one image costs {real['mini']:.2f} TFLOPs "
          f"in LLaVA-Mini vs {real['baseline']:.2f} in LLaVA-v1.5: {1 - real['mini'] / real['baseline']:.0%} fewer "
          "(paper: 1.96 vs 8.55; see benchmarks/flops.py for XLA's count).")
    print(f"Compressor attention over test images: {results['attention_png']}")
    print(f"Exported checkpoints (HF safetensors): {', '.join(r['hf_dir'] for r in rows if 'hf_dir' in r)}")
    print("The vision tower is a random frozen ViT (no CLIP download offline) and the LLM starts from scratch; "
          "with real checkpoints use `llava-mini-jax chat`.")
    return results
