"""Training data: LLaVA json (or its TFDS packing) -> grain batches.

Entry point: `make_train_pipeline(DataConfig(...)) -> (iterator, steps_per_epoch)`.
Modules: `config` (DataConfig), `records` (json reading, checks), `sources` (json / TFDS
random access), `features` (sample -> ids, labels, pixels), `order` (epochs, grouping, hosts),
`sampler` (the reference's length grouping), `batching` (padding, buckets), `pipeline` (grain),
`tfds_builder` (ArrayRecord packing).
"""
from llava_mini_jax.data.config import DataConfig
from llava_mini_jax.data.pipeline import TrainIterator, make_train_pipeline

__all__ = ["DataConfig", "TrainIterator", "make_train_pipeline"]
