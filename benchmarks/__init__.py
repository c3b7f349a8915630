"""Benchmarks (an application above the library): run each as `python -m benchmarks.NAME` from the
repository root; see benchmarks/README.md."""
