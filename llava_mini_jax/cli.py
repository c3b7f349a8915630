"""`llava-mini-jax` command line (subcommands are added as the library grows)."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="llava-mini-jax", description=__doc__)
    parser.add_subparsers(dest="command")
    args = parser.parse_args(argv)
    parser.print_help()
    return 0 if args.command is None else 2


if __name__ == "__main__":
    sys.exit(main())
