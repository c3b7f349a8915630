"""`llava-mini-jax serve`: load a checkpoint, warm the engine up, serve it over HTTP with uvicorn."""
from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("serve")


def add_parser(subparsers):
    p = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server with continuous batching and a chat page")
    p.add_argument("--model", required=True, help="checkpoint directory (HF LLaVA-Mini or convert.hf_to_jax output)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=8, help="KV-cache slots: requests decoded together")
    p.add_argument("--max-context", type=int, default=2048,
                   help="tokens per slot: prompt (vision tokens counted) + answer")
    p.add_argument("--min-bucket", type=int, default=16,
                   help="shortest prompt bucket: prompts pad to powers of two from here (fewer buckets, fewer "
                        "compiles)")
    p.add_argument("--max-queue", type=int, default=256, help="requests that may wait for a slot; beyond: 429")
    p.add_argument("--api-key", default=os.environ.get("LLAVA_MINI_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $LLAVA_MINI_API_KEY, else none)")
    p.add_argument("--allow-local-media", metavar="DIR", default=None,
                   help="let requests name image / video files under DIR (default: data URLs only)")
    p.add_argument("--served-model-name", default=None, help="the model id clients send (default: the directory name)")
    p.add_argument("--conv-mode", default=None, help="conversation template (default: from the tokenizer)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--quantize", choices=["int8", "int4"], default=None,
                   help="weight-only quantization at load: int8 (per output channel) or int4 (groups of 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="for requests that give none (0: greedy)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="answer length for requests that give none (default: the room left in the context)")
    p.add_argument("--max-frames", type=int, default=16, help="cap on sampled video frames (1 per second)")
    p.add_argument("--max-image-pixels", type=int, default=16_000_000, help="larger images are refused (400)")
    p.add_argument("--max-body-bytes", type=int, default=32 * 2 ** 20)
    p.add_argument("--warmup", default="text,image", help="comma list of what to compile before serving: text, "
                   "image, video (1..--max-frames frames; slow), or none")
    p.add_argument("--log-level", default="info")


def build(args):
    """`(ChatService, warm-up seconds)` from the parsed arguments."""
    import jax.numpy as jnp
    from PIL import Image

    from llava_mini_jax.chat import ChatSession
    from llava_mini_jax.engine import Engine

    from .service import ChatService, ServeOptions

    session = ChatSession(args.model, conv_mode=args.conv_mode, dtype=getattr(jnp, args.dtype), quantize=args.quantize)
    engine = Engine(session.model, session.params, max_batch=args.max_batch, max_context=args.max_context,
                    max_queue=args.max_queue, min_bucket=args.min_bucket)
    name = args.served_model_name or os.path.basename(os.path.normpath(args.model))
    options = ServeOptions(model_name=name, api_key=args.api_key, allow_local_media=args.allow_local_media,
                           max_image_pixels=args.max_image_pixels, max_frames=args.max_frames,
                           max_body_bytes=args.max_body_bytes, temperature=args.temperature,
                           max_tokens=args.max_tokens)
    service = ChatService(engine, session.tokenizer, session.template, options, processor=session.processor)
    wanted = {w.strip() for w in args.warmup.split(",") if w.strip() and w.strip() != "none"}
    unknown = wanted - {"text", "image", "video"}
    if unknown:
        raise ValueError(f"--warmup: unknown {sorted(unknown)}; expected a comma list of text, image, video, or none")
    image_shape = session.load_pixels(image=Image.new("RGB", (8, 8))).shape
    shapes = ([None] if "text" in wanted else []) + ([image_shape] if "image" in wanted else [])
    shapes += [(t,) + image_shape for t in range(1, args.max_frames + 1)] if "video" in wanted else []
    start = time.perf_counter()
    if shapes:
        engine.warmup(shapes)
    return service, time.perf_counter() - start


def run(args) -> int:
    import uvicorn

    from .app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    service, warm = build(args)
    log.info("warm-up %.1f s; serving %r on http://%s:%d (page at /)", warm, service.options.model_name, args.host,
             args.port)
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level=args.log_level)
    return 0
