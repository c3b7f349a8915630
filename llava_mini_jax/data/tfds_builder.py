"""Packing a LLaVA json and its images/videos into a TFDS dataset of ArrayRecord shards.

No tensorflow is needed, to write or to read: media are stored as their encoded file bytes and
the record as its JSON text. Features per example::

    index        int64   position of the record in the (concatenated) json
    id           text    the record's id (`#<index>` when it has none)
    record       text    the record, JSON
    media        bytes   the image / video file's bytes (empty for text-only records)
    media_error  text    why the bytes are missing (file not found), else ""

Records that `records.check_record` rejects are left out (counted, logged), exactly those the
raw json reader leaves out, so both sources hold the same examples. A missing media file is
packed with `media_error` set and skipped at training time like a missing file in the raw
reader. TFDS stores examples in the order of their hashed keys (the json index): compare
examples by id, not by position.

After writing, `<split>.llava_index.json` (ids, kinds, word counts in TFDS order) is written
next to the shards so that the pipeline's sampler needs no scan over the media.

    path = build_tfds("llava_v1_5_mix665k.json", "/data/tfds", image_folder="/data/images",
                      name="mix665k")
    DataConfig(data_path=path, ...)   # the pipeline reads it like the json
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Sequence, Union

import numpy as np
from etils import epath

from llava_mini_jax.data.records import load_records, record_kind, sample_id
from llava_mini_jax.data.sources import write_index
from llava_mini_jax.optional_deps import require

tfds = require("tensorflow_datasets", "packing a LLaVA json into TFDS (llava_mini_jax.data.tfds_builder)")

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


@dataclasses.dataclass
class LlavaJsonConfig(tfds.core.BuilderConfig):
    """Which json(s) and media folders a `LlavaJson` dataset packs (`name` names the dataset)."""

    json_paths: tuple[str, ...] = ()
    image_folder: str = ""
    video_folder: str = ""
    on_bad_sample: str = "skip"


class LlavaJson(tfds.core.GeneratorBasedBuilder):
    """LLaVA-format training data as one "train" split (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Records as JSON text, media as encoded bytes."}
    BUILDER_CONFIGS = [LlavaJsonConfig(name="default")]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # TFDS's default lookup goes through `importlib_resources` (not installed) for builders
        # defined inside a package; this file is where the builder lives.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="LLaVA json records with their image/video bytes (llava-mini-jax).",
            features=tfds.features.FeaturesDict({
                "index": np.int64,
                "id": tfds.features.Text(),
                "record": tfds.features.Text(),
                "media": tfds.features.Scalar(dtype=np.object_),
                "media_error": tfds.features.Text(),
            }),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is local
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        cfg = self.builder_config
        if not cfg.json_paths:
            raise ValueError(f"builder config {cfg.name!r} has no json_paths to pack")
        records, bad = load_records(cfg.json_paths, cfg.on_bad_sample)
        if bad["bad_record"]:
            logger.warning("%d bad records left out of the TFDS dataset", bad["bad_record"])
        for index, record in enumerate(records):
            yield str(index), pack_record(index, record, cfg.image_folder, cfg.video_folder)


def pack_record(index: int, record: dict, image_folder: str, video_folder: str) -> dict:
    """One record -> its TFDS example (media bytes read from the folders)."""
    kind = record_kind(record)
    media, error = b"", ""
    if kind != "text":
        path = os.path.join(image_folder if kind == "image" else video_folder, record[kind])
        try:
            with open(path, "rb") as f:
                media = f.read()
        except OSError as e:
            error = f"{kind} file {path!r} could not be read when packing: {e.strerror or e}"
            logger.warning("record %r: %s", sample_id(record, index), error)
    return {"index": index, "id": sample_id(record, index),
            "record": json.dumps(record, ensure_ascii=False), "media": media,
            "media_error": error}


def build_tfds(json_paths: Union[PathLike, Sequence[PathLike]], data_dir: PathLike, *,
               name: str = "default", image_folder: PathLike = "",
               video_folder: PathLike = "", on_bad_sample: str = "skip") -> str:
    """Packs LLaVA json(s) and their media into `data_dir` (ArrayRecord) and indexes it.

    Args:
      json_paths: a `.json` / `.jsonl` file or several (concatenated in order).
      data_dir: TFDS data directory; the dataset lands in `data_dir/llava_json/<name>/1.0.0`.
      name: the dataset's config name (e.g. "stage1", "mix665k").
      image_folder, video_folder: roots of the records' `image` / `video` paths.
      on_bad_sample: "skip" (leave bad records out) or "raise".

    Returns:
      The dataset directory (what `DataConfig.data_path` takes).
    """
    paths = (json_paths,) if isinstance(json_paths, (str, os.PathLike)) else tuple(json_paths)
    config = LlavaJsonConfig(name=name, json_paths=tuple(os.fspath(p) for p in paths),
                             image_folder=os.fspath(image_folder),
                             video_folder=os.fspath(video_folder), on_bad_sample=on_bad_sample)
    builder = LlavaJson(config=config, data_dir=os.fspath(data_dir), file_format="array_record")
    builder.download_and_prepare()
    out = os.fspath(builder.data_dir)
    write_index(out, "train")
    return out
