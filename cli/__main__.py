"""`python -m cli ...`: the same as the `llava-mini-jax` console script."""
import sys

from cli.main import main

sys.exit(main())
