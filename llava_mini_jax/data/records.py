"""LLaVA training records: reading json / jsonl, checking them, and a compact in-memory table.

A record is `{"id", "image" | "video" (optional), "conversations": [{"from": "human" | "gpt",
"value": str}, ...]}` (the 558K caption set, the 665K instruction mix with its text-only samples,
Video-ChatGPT style video samples). Its kind is "image" when it has an `image` key (as the
reference, even if it also has `video`), "video" when it has `video`, else "text".

Structural problems (no or empty conversation, turns that do not alternate, a zero word count
that the reference's sampler asserts against, a media field that is not a string) are found
here, before training, so that the sampler only sees usable records; media and tokenization
problems are found when a sample is built (`features.py`).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from llava_mini_jax.conversation import conversation_messages

logger = logging.getLogger(__name__)

KINDS = ("image", "video", "text")
KIND_CODES = {k: i for i, k in enumerate(KINDS)}


class BadSampleError(ValueError):
    """A sample that cannot be trained on.

    Attributes:
      reason: a short code: "bad_record", "missing_media", "corrupt_media", "too_long",
        "too_many_images", "bad_tokenization".
      sample_id: the record's id (or its index when it has none).
    """

    def __init__(self, reason: str, sample_id: str, message: str):
        super().__init__(f"sample {sample_id!r}: {message}")
        self.reason = reason
        self.sample_id = sample_id
        self.message = message

    def __reduce__(self):  # picklable, so that it crosses from grain workers to the host
        return type(self), (self.reason, self.sample_id, self.message)


def read_llava_json(path: str | os.PathLike) -> list[dict]:
    """The records of a LLaVA `.json` file (one JSON list) or `.jsonl` file (one object a line).

    Raises:
      FileNotFoundError: no such file. ValueError: not valid JSON (with the line for jsonl), or
      a top level that is not a list of objects.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LLaVA data file not found: {path!r}")
    if path.endswith(".jsonl"):
        records = []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line_no}: not valid JSON: {e}") from e
    else:
        with open(path, encoding="utf-8") as f:
            try:
                records = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON: {e}") from e
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of records, got "
                             f"{type(records).__name__}")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {i} is a {type(record).__name__}, expected an "
                             f"object with 'conversations'")
    return records


def record_kind(record: Mapping[str, Any]) -> str:
    """"image", "video" or "text" (an `image` key wins, as in the reference)."""
    if "image" in record:
        return "image"
    if "video" in record:
        return "video"
    return "text"


def sample_id(record: Mapping[str, Any], index: int) -> str:
    """The record's `id` as a string, or `#<index>` when it has none."""
    return str(record["id"]) if "id" in record else f"#{index}"


def word_count(record: Mapping[str, Any]) -> int:
    """Whitespace words over all turns (`<image>` counts), the reference sampler's length."""
    return sum(len(turn["value"].split()) for turn in record["conversations"])


def check_record(record: Mapping[str, Any], index: int) -> None:
    """Raises `BadSampleError("bad_record", ...)` for a record that cannot be a sample.

    Checks: `conversations` is a non-empty list of turns that `conversation_messages` accepts
    (alternating human/gpt after an optional leading gpt turn), at least one word in it, and
    `image` / `video` are non-empty strings when present.
    """
    sid = sample_id(record, index)
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise BadSampleError("bad_record", sid, f"'conversations' must be a non-empty list, got "
                                                f"{turns!r:.80}")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadSampleError("bad_record", sid, f"turn {i} is not an object: {turn!r:.80}")
    try:
        messages = conversation_messages(turns)
    except ValueError as e:
        raise BadSampleError("bad_record", sid, str(e)) from e
    if not messages:
        raise BadSampleError("bad_record", sid, "no turn left after dropping a leading gpt turn")
    if word_count(record) == 0:
        raise BadSampleError("bad_record", sid, "the conversation has no words")
    for key in ("image", "video"):
        if key in record and (not isinstance(record[key], str) or not record[key]):
            raise BadSampleError("bad_record", sid, f"{key!r} must be a non-empty path string, "
                                                    f"got {record[key]!r}")


class RecordTable:
    """Records kept as one UTF-8 JSON blob with offsets (cheap to pickle into grain workers).

    Attributes:
      kinds: `[N]` int8 codes into `KINDS`.
      words: `[N]` int32 word counts (`word_count`).
      ids: the records' ids (`sample_id`).
    """

    def __init__(self, records: Sequence[Mapping[str, Any]]):
        chunks = [json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
                  for r in records]
        self.offsets = np.zeros(len(chunks) + 1, np.int64)
        np.cumsum([len(c) for c in chunks], out=self.offsets[1:])
        self.blob = np.frombuffer(b"".join(chunks), np.uint8)
        self.kinds = np.array([KIND_CODES[record_kind(r)] for r in records], np.int8)
        self.words = np.array([word_count(r) for r in records], np.int32)
        self.ids = [sample_id(r, i) for i, r in enumerate(records)]

    def __len__(self) -> int:
        return len(self.kinds)

    def __getitem__(self, index: int) -> dict:
        start, stop = self.offsets[index], self.offsets[index + 1]
        return json.loads(self.blob[start:stop].tobytes().decode("utf-8"))


def load_records(paths: Iterable[str | os.PathLike], on_bad_sample: str = "skip"
                 ) -> tuple[list[dict], dict[str, int]]:
    """Reads and checks the records of one or more LLaVA files, concatenated in order.

    Returns:
      `(good records, {"bad_record": count})`; bad records are logged and dropped, or raise
      `BadSampleError` when `on_bad_sample == "raise"`.
    """
    good, bad = [], 0
    for path in paths:
        records = read_llava_json(path)
        for i, record in enumerate(records):
            try:
                check_record(record, i)
            except BadSampleError as e:
                if on_bad_sample == "raise":
                    raise
                bad += 1
                logger.warning("skipping record %d of %s (%d bad so far): %s", i, path, bad, e)
                continue
            good.append(record)
    return good, {"bad_record": bad}
