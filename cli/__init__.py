"""The `llava-mini-jax` command line, an application above the library: it dispatches `demo`,
`chat`, `eval`, `train` and `serve` to their packages (`cli.main:main` is the console script)."""
from cli.main import main

__all__ = ["main"]
