"""Training data: LLaVA json (or its TFDS packing) -> grain batches.

Entry point: `make_train_pipeline(DataConfig(...)) -> (iterator, steps_per_epoch)`.
Modules: `config` (DataConfig), `records` (json reading, checks), `sources` (json / TFDS
random access), `features` (sample -> ids, labels, pixels), `order` (epochs, grouping, hosts),
`sampler` (the reference's length grouping), `batching` (padding, buckets), `pipeline` (grain),
`tfds_builder` (ArrayRecord packing).
"""
from llava_mini_jax.data.config import DataConfig

__all__ = ["DataConfig", "TrainIterator", "make_train_pipeline"]


def __getattr__(name):
    """`TrainIterator` / `make_train_pipeline` on first use: the pipeline needs grain, which
    `import llava_mini_jax.data` (e.g. for `features` at inference) does not."""
    if name in ("TrainIterator", "make_train_pipeline"):
        from llava_mini_jax.data import pipeline
        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
