"""`llava-mini-jax` command line: `demo`, `chat`, `eval`, `train`, `serve`.

An application: it imports the library (`llava_mini_jax`) and the other applications (`demo`,
`train`, `serve`), never the other way round. Each subcommand's module is imported only when that
subcommand runs (`train` and `serve` parse their own arguments).

Errors print one line (`llava-mini-jax CMD: error: ...`, exit status 1; 130 after Ctrl-C); `--debug`
anywhere on the command line, or `LLAVA_MINI_JAX_DEBUG=1`, shows the traceback instead. An
interactive chat reports an error in one line and goes on with its conversation; Ctrl-C stops the
answer being written (the conversation goes on), Ctrl-C or Ctrl-D at the prompt ends the chat.
"""
from __future__ import annotations

import argparse
import sys

from llava_mini_jax.user_errors import DEBUG_ENV, debug_requested, report, without_debug_flag



def _add_chat(sub):
    p = sub.add_parser("chat", help="chat about an image or a video with a checkpoint (HF or converted)")
    p.add_argument("--model", required=True, help="checkpoint directory (HF LLaVA-Mini or convert.hf_to_jax output)")
    media = p.add_mutually_exclusive_group()
    media.add_argument("--image", help="image file")
    media.add_argument("--video", help="video file (sampled at 1 frame per second)")
    p.add_argument("--prompt", help="one question; without it the chat is interactive")
    p.add_argument("--conv-mode", default=None,
                   help="vicuna_v1 | llava_v1 | llava_v0 | llava_llama_3_1 (default: from the tokenizer)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--max-frames", type=int, default=None, help="cap on sampled video frames")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0)


def run_chat(args, debug: bool = False) -> int:
    import jax.numpy as jnp

    from llava_mini_jax.chat import ChatSession
    session = ChatSession(args.model, conv_mode=args.conv_mode, dtype=getattr(jnp, args.dtype),
                          max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                          seed=args.seed)
    if args.image:
        session.set_image(args.image)
    elif args.video:
        session.set_video(args.video, max_frames=args.max_frames)

    def answer(question):
        session.ask(question, on_text=lambda piece: print(piece, end="", flush=True),
                    on_notice=lambda note: print(f"\n[note: {note}]", file=sys.stderr, flush=True))
        print(flush=True)

    if args.prompt is not None:
        answer(args.prompt)
        return 0
    print(f"[{session.template}] type a question (empty line or Ctrl-D to quit)", flush=True)
    while True:
        try:
            question = input("USER: ").strip()
        except (EOFError, KeyboardInterrupt):
            print(flush=True)
            break
        if not question:
            break
        print("ASSISTANT: ", end="", flush=True)
        try:
            answer(question)
        except KeyboardInterrupt:
            print("\n[answer stopped; the conversation goes on without it]", flush=True)
        except Exception as e:  # noqa: BLE001  one line, and the conversation survives
            if debug:
                raise
            print(flush=True)
            print(report("llava-mini-jax chat", e) + " (the conversation goes on)", file=sys.stderr, flush=True)
    return 0


def _add_serve(sub, wanted: bool):
    """`serve` (the `serve` application: `serve.cli.add_parser` / `run`); its module is imported
    only when the command is `serve`. Returns that module, or None."""
    if not wanted:
        sub.add_parser("serve", help="serve a checkpoint over HTTP (see `llava-mini-jax serve --help`)")
        return None
    try:
        from serve import cli as serve_cli
    except ModuleNotFoundError as e:
        if e.name not in ("serve", "serve.cli"):
            raise
        sub.add_parser("serve", help="(unavailable: the `serve` package is not installed)")
        return None
    serve_cli.add_parser(sub)
    return serve_cli


def build_parser(command: str | None = None) -> tuple[argparse.ArgumentParser, dict]:
    """The parser and `{command: module with run(args)}` for the subcommands that need one."""
    import demo
    from llava_mini_jax.eval import cli as eval_cli
    parser = argparse.ArgumentParser(prog="llava-mini-jax", description="LLaVA-Mini in JAX/Flax.")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error (anywhere on the line; also {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command")
    demo.add_parser(sub)
    _add_chat(sub)
    eval_cli.add_parser(sub)
    sub.add_parser("train", help="train (see `llava-mini-jax train --help`)", add_help=False)
    runners = {"demo": demo, "eval": eval_cli}
    serve_cli = _add_serve(sub, command == "serve")
    if serve_cli is not None:
        runners["serve"] = serve_cli
    return parser, runners


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    if without_debug_flag(argv)[:1] == ["train"]:
        from train.__main__ import main as train_main
        rest = without_debug_flag(argv)[1:]
        return train_main(rest + (["--debug"] if debug else []))
    argv = without_debug_flag(argv)
    parser, runners = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        return _dispatch(args, parser, runners, debug)
    except KeyboardInterrupt:
        print(f"\nllava-mini-jax {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  one line per error unless --debug
        if debug:
            raise
        print(report(f"llava-mini-jax {args.command}", e), file=sys.stderr)
        return 1


def _dispatch(args, parser, runners, debug: bool) -> int:
    if args.command == "chat":
        return run_chat(args, debug)
    if args.command in runners:
        return runners[args.command].run(args)
    if args.command == "serve":
        print("llava-mini-jax serve: error: the `serve` package is not installed", file=sys.stderr)
        return 2
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
