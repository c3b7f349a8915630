"""Random-access sources of raw training samples: LLaVA json + media folders, or TFDS.

Both give, for an index, a `RawSample` (the record and where its image/video bytes are), and
expose per-record `kinds` / `words` / `ids` for the sampler without decoding any media. They are
grain `RandomAccessDataSource`s (`__len__`, `__getitem__`) and pickle cheaply into workers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Optional, Sequence, Union

import numpy as np

from llava_mini_jax.data.records import KIND_CODES, RecordTable, load_records, record_kind
from llava_mini_jax.optional_deps import require

logger = logging.getLogger(__name__)

INDEX_FILE = "llava_index.json"  # per-record ids / kinds / words of a TFDS split, in its order


@dataclasses.dataclass(frozen=True)
class RawSample:
    """One record before decoding.

    Attributes:
      index: position in the source.
      record: the LLaVA record.
      media: the image/video as a file path or as encoded bytes; None for text-only records.
      media_error: why the media is unavailable (a TFDS record packed without its file), or "".
    """

    index: int
    record: dict
    media: Union[str, bytes, None]
    media_error: str = ""

    @property
    def kind(self) -> str:
        return record_kind(self.record)


class JsonSource:
    """LLaVA json/jsonl file(s) with image and video folders.

    Records that fail `check_record` are dropped at construction (counted in `bad_counts`), or
    raise with `on_bad_sample="raise"`.
    """

    def __init__(self, paths: Sequence[str], image_folder: str = "", video_folder: str = "",
                 on_bad_sample: str = "skip"):
        records, self.bad_counts = load_records(paths, on_bad_sample)
        self.table = RecordTable(records)
        self.image_folder = os.fspath(image_folder)
        self.video_folder = os.fspath(video_folder)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> RawSample:
        record = self.table[index]
        kind = record_kind(record)
        media: Optional[str] = None
        if kind != "text":
            folder = self.image_folder if kind == "image" else self.video_folder
            media = os.path.join(folder, record[kind])
        return RawSample(int(index), record, media)

    @property
    def kinds(self) -> np.ndarray:
        return self.table.kinds

    @property
    def words(self) -> np.ndarray:
        return self.table.words

    @property
    def ids(self) -> list[str]:
        return self.table.ids


def is_tfds_dir(path: str) -> bool:
    """Whether `path` is a prepared TFDS dataset directory."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "dataset_info.json"))


class TfdsSource:
    """A split of a dataset written by `tfds_builder.build_tfds` (ArrayRecord, no tensorflow).

    The record order is TFDS's (by hashed key), not the json's; `RawSample.index` is the position
    in the TFDS split and `record` the original record. Per-record metadata comes from
    `llava_index.json` written next to the shards by the builder (rebuilt by a scan if absent).
    """

    def __init__(self, data_dir: str, split: str = "train"):
        self.data_dir = os.fspath(data_dir)
        self.split = split
        self._source = None
        meta = self._load_index()
        self.ids = meta["ids"]
        self.kinds = np.array([KIND_CODES[k] for k in meta["kinds"]], np.int8)
        self.words = np.array(meta["words"], np.int32)
        self.bad_counts = {"bad_record": 0}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_source"] = None  # reopened lazily in each worker
        return state

    @property
    def source(self):
        if self._source is None:
            self._source = open_tfds_split(self.data_dir, self.split)
        return self._source

    def __len__(self) -> int:
        return len(self.kinds)

    def __getitem__(self, index: int) -> RawSample:
        return decode_tfds_example(int(index), self.source[int(index)])

    def _load_index(self) -> dict[str, Any]:
        path = index_path(self.data_dir, self.split)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        logger.warning("%s not found: scanning the split once to build it", path)
        return write_index(self.data_dir, self.split)


def open_tfds_split(data_dir: str, split: str):
    """The split's random-access data source (`tfds.builder_from_directory`)."""
    tfds = require("tensorflow_datasets", "reading TFDS-packed training data")
    builder = tfds.builder_from_directory(data_dir)
    if split not in builder.info.splits:
        raise ValueError(f"TFDS dataset {data_dir!r} has no split {split!r}; it has "
                         f"{sorted(builder.info.splits)}")
    return builder.as_data_source(split)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def decode_tfds_example(index: int, example: dict) -> RawSample:
    """A decoded TFDS example (features of `tfds_builder`) -> `RawSample`."""
    record = json.loads(_text(example["record"]))
    error = _text(example["media_error"])
    media = bytes(example["media"]) if record_kind(record) != "text" and not error else None
    return RawSample(index, record, media, error)


def index_path(data_dir: str, split: str) -> str:
    return os.path.join(data_dir, f"{split}.{INDEX_FILE}")


def write_index(data_dir: str, split: str) -> dict[str, Any]:
    """Scans a split once and writes its per-record ids / kinds / words (in split order)."""
    from tqdm import tqdm

    from llava_mini_jax.data.records import sample_id, word_count

    source = open_tfds_split(data_dir, split)
    meta: dict[str, list] = {"ids": [], "kinds": [], "words": []}
    for i in tqdm(range(len(source)), desc=f"indexing {split}", leave=False):
        example = source[i]
        raw = decode_tfds_example(i, example)
        meta["ids"].append(sample_id(raw.record, int(example["index"])))
        meta["kinds"].append(raw.kind)
        meta["words"].append(word_count(raw.record))
    with open(index_path(data_dir, split), "w", encoding="utf-8") as f:
        json.dump(meta, f)
    return meta
