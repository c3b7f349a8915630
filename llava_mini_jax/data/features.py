"""One raw sample -> model features: token ids, labels and pixels (or a counted skip).

Per kind (SPEC part B §4, with the library decisions):

* image: `process_image(..., mode="train")` (the reference's training order for HD: pad the whole
  image, then split), `preprocess_multimodal`, tokenized with `-200` for `<image>`;
* video: `num_frames` frames (`get_seq_frames(T, num_frames)`; the reference's `min(T, 8)` for
  `T >= 8`, repeated frames below), each nearest-resized to 336 and CLIP-processed, then
  `preprocess_multimodal_video` and **`has_image=True`** (library decision D11: the frame tokens
  enter the model; the reference tokenizes `<image>` as text for videos, so its training video
  path has no placeholder and no gradient through the frames);
* text: no pixels (the batch gives the row zeros), tokenized without `-200`, no tag moving.

Labels follow the template (`tokenize_conversation`): `plain` and `vicuna_v1` exactly as the
reference, including its whole-sample masking on a tokenization mismatch (kept and counted as
`fully_masked`); `llava_llama_3_1` the correct supervision (D10).

Nothing is truncated: a sample whose LLM sequence (text tokens plus `vision_tokens_per_frame`
per image/frame) exceeds `model_max_length` is a bad sample, as are missing or undecodable media
and conversations the template cannot tokenize. Bad samples become `Skipped` (logged) or raise,
per `on_bad_sample`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import os
import tempfile
from typing import Union

import numpy as np

from llava_mini_jax.config import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava_mini_jax.conversation import (TokenizedSample, preprocess_multimodal_video,
                                         tokenize_conversation)
from llava_mini_jax.data.config import DataConfig
from llava_mini_jax.data.records import BadSampleError, record_kind, sample_id
from llava_mini_jax.data.sources import RawSample
from llava_mini_jax.image_processing import ImageProcessorConfig, process_image
from llava_mini_jax.tokenizer import Tokenizer, load_tokenizer
from llava_mini_jax.video import (FRAME_SIZE, decode_video, frames_to_pixels, get_seq_frames,
                                  probe_video, resize_frames_nearest)

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class Example:
    """A sample ready for batching.

    Attributes:
      index: position in the source. sample_id: the record's id. kind: "image" | "video" | "text".
      input_ids: `[L]` int32, at most one -200. labels: `[L]` int32, -100 where not supervised.
      pixels: float32 `[P, 3, H, W]` (image), `[T, P, 3, H, W]` (video) or None (text).
      fully_masked: no label is supervised. masked_reason: why (`MASKED_REASONS`), "" otherwise.
    """

    index: int
    sample_id: str
    kind: str
    input_ids: np.ndarray
    labels: np.ndarray
    pixels: Union[np.ndarray, None]
    fully_masked: bool
    masked_reason: str = ""


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A bad sample left out of training: `reason` is a `BadSampleError.reason` code."""

    index: int
    sample_id: str
    kind: str
    reason: str
    message: str


# Why a sample that tokenized has no supervised label (the warning names the cause).
MASKED_REASONS = {
    "no_answer": "no assistant ('gpt') turn, so nothing to supervise",
    "empty_answer": "every assistant ('gpt') turn is empty",
    "tokenization_mismatch": "tokenization mismatch: the template's round arithmetic disagrees with the ids, so "
                             "the whole sample is masked, as the reference does",
    "no_supervised_token": "no supervised token after tokenization",
}


def masked_reason(record: dict, mismatch: bool) -> str:
    """The `MASKED_REASONS` code of a sample whose labels are all ignored."""
    answers = [t.get("value") for t in record.get("conversations") or () if t.get("from") == "gpt"]
    if not answers:
        return "no_answer"
    if not any(isinstance(a, str) and a.strip() for a in answers):
        return "empty_answer"
    return "tokenization_mismatch" if mismatch else "no_supervised_token"


@functools.lru_cache(maxsize=8)
def cached_tokenizer(path: str, model_max_length: int) -> Tokenizer:
    """`load_tokenizer`, once per process (workers load their own)."""
    return load_tokenizer(path, model_max_length=model_max_length)


def tokenize_record(record: dict, tokenizer: Tokenizer, template: str,
                    truncate: bool = False) -> TokenizedSample:
    """`tokenize_conversation` with the arguments the record's kind calls for.

    Images: `has_image=True` (the tags are moved inside). Videos: `<video>` moved and renamed to
    `<image>`, then `has_image=True` (D11). Text: `has_image=False`, turns untouched.
    """
    kind = record_kind(record)
    turns = record["conversations"]
    if kind == "video":
        turns = preprocess_multimodal_video(turns)
    return tokenize_conversation(turns, tokenizer, template, has_image=kind != "text",
                                 truncate=truncate)


def load_video_pixels(media: Union[str, bytes], num_frames: int, cfg: ImageProcessorConfig,
                      resolution_ratio: int) -> np.ndarray:
    """A video (path or encoded bytes) -> float32 `[num_frames, P, 3, H, W]`."""
    if isinstance(media, bytes):
        with tempfile.NamedTemporaryFile(suffix=".video") as f:
            f.write(media)
            f.flush()
            return load_video_pixels(f.name, num_frames, cfg, resolution_ratio)
    info = probe_video(media)
    indices = get_seq_frames(info.num_frames, num_frames)
    frames = resize_frames_nearest(decode_video(media, indices), FRAME_SIZE)
    return frames_to_pixels(frames, cfg, resolution_ratio)


@dataclasses.dataclass(frozen=True)
class SampleProcessor:
    """`RawSample -> Example | Skipped` (picklable; the tokenizer is loaded per process).

    Fields mirror `DataConfig` (see there); build with `SampleProcessor.from_config`.
    """

    tokenizer_path: str
    template: str
    model_max_length: int
    vision_tokens_per_frame: int = 1
    image_aspect_ratio: str = "pad"
    resolution_ratio: int = 1
    image_processor: ImageProcessorConfig = ImageProcessorConfig()
    num_frames: int = 8
    on_bad_sample: str = "skip"

    @classmethod
    def from_config(cls, config: DataConfig) -> "SampleProcessor":
        return cls(os.fspath(config.tokenizer_path), config.template, config.model_max_length,
                   config.vision_tokens_per_frame, config.image_aspect_ratio,
                   config.resolution_ratio, config.image_processor, config.num_frames,
                   config.on_bad_sample)

    @property
    def tokenizer(self) -> Tokenizer:
        return cached_tokenizer(self.tokenizer_path, self.model_max_length)

    def __call__(self, raw: RawSample) -> Union[Example, Skipped]:
        try:
            return self.build(raw)
        except BadSampleError as e:
            if self.on_bad_sample == "raise":
                raise
            logger.debug("skipping %s", e)  # the host iterator logs the counted warning
            return Skipped(raw.index, e.sample_id, raw.kind, e.reason, str(e))

    def build(self, raw: RawSample) -> Example:
        """Like `__call__`, but a bad sample raises `BadSampleError`."""
        sid, kind = sample_id(raw.record, raw.index), raw.kind
        try:
            tok = tokenize_record(raw.record, self.tokenizer, self.template)
        except (ValueError, KeyError, TypeError) as e:
            raise BadSampleError("bad_tokenization", sid,
                                 f"template {self.template!r} cannot tokenize it: {e}") from e
        ids = tok.input_ids.astype(np.int32)
        labels = tok.labels.astype(np.int32)
        num_placeholders = int((ids == IMAGE_TOKEN_INDEX).sum())
        if num_placeholders > 1:
            raise BadSampleError("too_many_images", sid, f"{num_placeholders} image placeholders "
                                                         f"after tag moving; at most 1 per sample")
        frames = self.num_frames if kind == "video" else 1
        length = len(ids) + num_placeholders * (self.vision_tokens_per_frame * frames - 1)
        if length > self.model_max_length:
            raise BadSampleError("too_long", sid, f"{length} LLM tokens (text + vision) > "
                                                  f"model_max_length={self.model_max_length}")
        pixels = self._pixels(raw, sid, kind)
        fully_masked = tok.fully_masked or not bool((labels != IGNORE_INDEX).any())
        reason = masked_reason(raw.record, tok.fully_masked) if fully_masked else ""
        return Example(raw.index, sid, kind, ids, labels, pixels, fully_masked, reason)

    def _pixels(self, raw: RawSample, sid: str, kind: str):
        if kind == "text":
            return None
        if raw.media_error:
            raise BadSampleError("missing_media", sid, f"{kind}: {raw.media_error}")
        media = raw.media
        try:
            if kind == "video":
                return load_video_pixels(media, self.num_frames, self.image_processor,
                                         self.resolution_ratio)
            source = io.BytesIO(media) if isinstance(media, bytes) else media
            return process_image(source, self.image_aspect_ratio, self.resolution_ratio,
                                 self.image_processor, mode="train")
        except FileNotFoundError as e:
            raise BadSampleError("missing_media", sid, f"{kind}: {e}") from e
        except Exception as e:  # noqa: BLE001  any decoder failure makes the sample bad
            raise BadSampleError("corrupt_media", sid, f"{kind} {raw.record.get(kind)!r}: "
                                                       f"{type(e).__name__}: {e}") from e
