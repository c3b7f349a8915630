"""How the command lines report errors: one line, the traceback only when asked for.

`report(prog, exc)` is the line a command prints for an error (`PROG: error: message`; an error
that is not a user error names its type and says how to see the traceback).
`debug_requested(argv)` is true with `--debug` among the arguments or `LLAVA_MINI_JAX_DEBUG` set
to anything but "", "0" or "false"; the commands then let the exception through (full traceback).
"""
from __future__ import annotations

import os
from typing import Sequence

DEBUG_FLAG = "--debug"
DEBUG_ENV = "LLAVA_MINI_JAX_DEBUG"

# What a user can cause and fix: bad values, missing or unreadable files, bad configs and data.
USER_ERRORS = (ValueError, OSError, LookupError)


def debug_requested(argv: Sequence[str] = ()) -> bool:
    """`--debug` in `argv`, or the `LLAVA_MINI_JAX_DEBUG` environment variable set (not 0/false)."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return DEBUG_FLAG in argv or env not in ("", "0", "false", "no")


def without_debug_flag(argv: Sequence[str]) -> list[str]:
    return [a for a in argv if a != DEBUG_FLAG]


def message(exc: BaseException) -> str:
    """The exception's text on one line (its lines joined; its type when it has no text)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = f"missing key {exc.args[0]!r}"
    return text or type(exc).__name__


def report(prog: str, exc: BaseException, also_user_errors: tuple = ()) -> str:
    """`PROG: error: message` (user errors: `USER_ERRORS` and `also_user_errors`) or
    `PROG: error: Type: message (...)` (others)."""
    if isinstance(exc, USER_ERRORS + tuple(also_user_errors)):
        return f"{prog}: error: {message(exc)}"
    return (f"{prog}: error: {type(exc).__name__}: {message(exc)} (unexpected: rerun with {DEBUG_FLAG} or "
            f"{DEBUG_ENV}=1 for the traceback)")
