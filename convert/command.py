"""The converters' shared command-line tail: INFO logging, a user error as one line on stderr.

Every `python -m convert.X` parses its own arguments, then hands the work to `run`, so they all
report a bad path, key or value the same way (`error: ...`, exit status 2) and exit 0 otherwise.
"""
from __future__ import annotations

import logging
import sys
from typing import Callable

# What a converter raises for a user's mistake (bad path, existing output, unknown key, bad value).
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError)


def run(work: Callable[[], object]) -> int:
    """Calls `work()` with INFO logging set up; returns 0, or 2 after printing a user error."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        work()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
