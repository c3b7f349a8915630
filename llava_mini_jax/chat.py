"""The chat layer: a checkpoint, its tokenizer and processor, prompts, streaming answers.

`ChatSession(model_dir).ask("What is in the image?", image="cat.png")` builds the reference's
inference prompt, preprocesses the image (or video) as the checkpoint's config says (pad /
resolution ratio / 1-fps frames), generates with the KV cache and streams decoded text. Stop
strings are applied here (the tokenizer lives here), EOS ids in `generate`. A video stays uint8 on
the host (resized and cropped, a quarter of float32's bytes) and `generate` streams it to the device
a chunk of frames at a time, normalised there.

What a user types is text. A typed `<image>` (or `<image-placeholder>`) is tokenized as those
characters, in questions and in the history, with one exception (LLaVA's convention): in the
turn that carries the image or video (the first), the first `<image>` typed marks where the media
goes instead of the front of the turn. The tokenizer must fit the model's vocabulary (checked at
load). A conversation that outgrows the model's context drops its oldest turns (and says so).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, Optional

import jax.numpy as jnp
import numpy as np

from .config import GenerationConfig
from .conversation import (IMAGE_PLACEHOLDER, IMAGE_TOKEN, build_inference_prompt, escape_media_tags, literal_tag,
                           stop_strings, tokenizer_image_token)
from .flops import vision_tokens
from .generate import generate, max_prompt_tokens
from .image_processing import ImageProcessorConfig, load_image, process_image
from .loading import load_pretrained, read_json, resolve_vision_tower
from .tokenizer import Tokenizer, check_vocabulary, load_tokenizer
from .video import process_frame_folder, process_video

log = logging.getLogger(__name__)


def default_template(tokenizer: Tokenizer) -> str:
    """`vicuna_v1` for SentencePiece (Vicuna) tokenizers, `llava_llama_3_1` for chat-templated BPE ones."""
    if tokenizer.kind == "bpe" and tokenizer.chat_template:
        return "llava_llama_3_1"
    return "vicuna_v1"


def processor_config(model_dir: str, image_size: int) -> ImageProcessorConfig:
    """`preprocessor_config.json` of the checkpoint or its vision tower; else CLIP's defaults at the
    tower's image size."""
    candidates = [model_dir]
    try:
        _, tower = resolve_vision_tower(read_json(os.path.join(model_dir, "config.json")), model_dir)
        candidates.append(tower)
    except (FileNotFoundError, ValueError):
        pass
    for d in candidates:
        if d and os.path.exists(os.path.join(d, "preprocessor_config.json")):
            return ImageProcessorConfig.from_json(d)
    return dataclasses.replace(ImageProcessorConfig(), shortest_edge=image_size, crop_height=image_size,
                               crop_width=image_size)


def prompt_ids(question: str, template: str, tokenizer: Tokenizer, history=(), with_image: bool = False,
               system: Optional[str] = None) -> list[int]:
    """Token ids of the inference prompt for `question` after `history` (`(question, answer)` pairs):
    the media placeholder (-200) goes into the first user turn when `with_image` (where the user
    typed `<image>` in it, else in front); every other typed `<image>` is text (module doc);
    `system` replaces the template's system prompt."""
    history = [(escape_media_tags(q), escape_media_tags(a)) for q, a in history]
    question = escape_media_tags(question)
    if with_image:
        typed = literal_tag(IMAGE_TOKEN)
        if history:
            history[0] = (history[0][0].replace(typed, IMAGE_PLACEHOLDER, 1), history[0][1])
        else:
            question = question.replace(typed, IMAGE_PLACEHOLDER, 1)
    prompt = build_inference_prompt(question, template, tokenizer, history, with_image=with_image,
                                    system=None if system is None else escape_media_tags(system))
    return tokenizer_image_token(prompt, tokenizer)


def prompt_positions(config, ids, pixels: Optional[np.ndarray]) -> int:
    """LLM positions of a prompt: text ids plus the vision tokens its media puts in place of -200
    (`pixels`: `[P, 3, H, W]` image, `[T, P, 3, H, W]` video, or None)."""
    n = len(ids)
    if pixels is None:
        return n
    frames, parts = (pixels.shape[0], pixels.shape[1]) if pixels.ndim == 5 else (1, pixels.shape[0])
    return n - 1 + vision_tokens(config, parts, frames)


def media_pixels(config, processor: ImageProcessorConfig, image=None, video=None,
                 max_frames: Optional[int] = None, as_uint8: bool = False) -> Optional[np.ndarray]:
    """Pixels for one image (`[P, 3, H, W]`: pad / resolution-ratio split as `config` says, inference
    order) or video (`[T, P, 3, H, W]`, ~1 frame per second, at most `max_frames`), else None.
    `image`: a path, a binary file object or a PIL image; `video`: a file or a folder of frames.
    `as_uint8`: uint8 `[P, H, W, 3]` / `[T, P, H, W, 3]` before normalisation (`generate` normalises
    them on the device with `processor`)."""
    if image is not None:
        return process_image(load_image(image), config.image_aspect_ratio, config.resolution_ratio, processor,
                             mode="inference", as_uint8=as_uint8)
    if video is not None:
        load = process_frame_folder if os.path.isdir(video) else process_video
        return load(video, processor, config.resolution_ratio, "infer_1fps", max_frames, as_uint8=as_uint8)[0]
    return None


def eos_token_ids(generation, tokenizer: Tokenizer, template: str) -> list[int]:
    """Ids that end an answer: the checkpoint's EOS (`generation`, the model's `GenerationConfig`),
    the tokenizer's, and the template's stop string when it is one token."""
    eos = set(generation.eos_token_ids)
    if tokenizer.eos_id is not None:
        eos.add(tokenizer.eos_id)
    for s in stop_strings(template):
        tid = tokenizer.token_to_id(s)
        if tid is not None:
            eos.add(tid)
    return sorted(eos)


def _trim_at_stop(text: str, stops) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class ChatSession:
    """A multi-turn conversation about one image or video (or none)."""

    def __init__(self, model_dir: str, conv_mode: Optional[str] = None, dtype=jnp.float32,
                 compute_dtype=None, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: Optional[float] = None, seed: int = 0, model=None, params=None,
                 tokenizer: Optional[Tokenizer] = None):
        self.model_dir = os.fspath(model_dir)
        if model is None:
            model, params = load_pretrained(self.model_dir, dtype=dtype, compute_dtype=compute_dtype)
        self.model, self.params = model, params
        self.tokenizer = tokenizer or load_tokenizer(self.model_dir)
        llm = getattr(model.config, "llm", None)  # None: a stand-in model without an LLM (prompt tests)
        if llm is not None:
            check_vocabulary(self.tokenizer, llm.vocab_size, f"the model in {self.model_dir}")
        self.template = conv_mode or default_template(self.tokenizer)
        self.processor = processor_config(self.model_dir, model.config.vision.image_size)
        self.max_new_tokens, self.temperature, self.top_p, self.seed = max_new_tokens, temperature, top_p, seed
        self.history: list[tuple[str, str]] = []
        self.pixels: Optional[np.ndarray] = None

    def set_image(self, path) -> np.ndarray:
        """Preprocesses an image (inference order: split, then pad each part). Returns `[P, 3, H, W]`."""
        self.pixels = self.load_pixels(image=path)
        self.history = []
        return self.pixels

    def set_video(self, path, max_frames: Optional[int] = None) -> np.ndarray:
        """Samples ~1 frame per second. Returns uint8 `[T, P, H, W, 3]` (resized and cropped; `ask`
        streams them to the device in chunks, where they are normalised)."""
        self.pixels = self.load_pixels(video=path, max_frames=max_frames, as_uint8=True)
        self.history = []
        return self.pixels

    def prompt_ids(self, question: str) -> list[int]:
        return prompt_ids(question, self.template, self.tokenizer, self.history, with_image=self.pixels is not None)

    def load_pixels(self, image=None, video=None, max_frames: Optional[int] = None,
                    as_uint8: bool = False) -> Optional[np.ndarray]:
        """Pixels for one image (`[P, 3, H, W]`) or video (`[T, P, 3, H, W]`) without touching the
        session (uint8 `[.., H, W, 3]` with `as_uint8`, see `media_pixels`)."""
        return media_pixels(self.model.config, self.processor, image, video, max_frames, as_uint8)

    def eos_ids(self) -> list[int]:
        """The ids that end an answer; a model object without a `generation` field (e.g. a stand-in
        for testing prompts) contributes none of its own."""
        return eos_token_ids(getattr(self.model, "generation", GenerationConfig()), self.tokenizer, self.template)

    def answer_batch(self, questions, pixels, max_new_tokens: Optional[int] = None) -> list[str]:
        """Single-turn answers for a batch: `questions[i]` about `pixels[i]` (`[P, 3, H, W]`,
        `[T, P, 3, H, W]` or None). Rows are right-padded into one `generate` call per pixel shape
        (videos of different lengths go separately); each row continues from its own last token."""
        groups: dict = {}
        for i, px in enumerate(pixels):
            groups.setdefault(None if px is None else (tuple(px.shape), np.dtype(px.dtype).str), []).append(i)
        answers: list[Optional[str]] = [None] * len(questions)
        stops = stop_strings(self.template)
        for shape, rows in groups.items():
            prompts = [prompt_ids(questions[i], self.template, self.tokenizer, with_image=shape is not None)
                       for i in rows]
            width = max(len(p) for p in prompts)
            ids = np.zeros((len(rows), width), np.int32)
            mask = np.zeros((len(rows), width), np.int32)
            for r, p in enumerate(prompts):
                ids[r, :len(p)], mask[r, :len(p)] = p, 1
            images = None if shape is None else np.stack([pixels[i] for i in rows])
            out = generate(self.model, self.params, ids, attention_mask=mask, images=images,
                           max_new_tokens=max_new_tokens or self.max_new_tokens, temperature=self.temperature,
                           top_p=self.top_p, eos_token_ids=self.eos_ids(), pad_token_id=-1, rng=self.seed,
                           processor=self.processor)
            for r, i in enumerate(rows):
                toks = [int(t) for t in out[r] if t >= 0]
                answers[i] = _trim_at_stop(self.tokenizer.decode(toks), stops)[0].strip()
        return answers

    def fitting_prompt(self, question: str) -> tuple[list[int], int]:
        """`(prompt ids, k)`: the prompt for `question` after the newest turns of the history that
        fit the model's context with `max_new_tokens` to spare, leaving out the `k` oldest turns.
        ValueError when even the question alone does not fit."""
        limit = max_prompt_tokens(self.model.config, self.max_new_tokens)
        for k in range(len(self.history) + 1):
            ids = prompt_ids(question, self.template, self.tokenizer, self.history[k:],
                             with_image=self.pixels is not None)
            if prompt_positions(self.model.config, ids, self.pixels) <= limit:
                return ids, k
        need = prompt_positions(self.model.config, ids, self.pixels)
        raise ValueError(f"the question alone needs {need} positions (prompt, media included), more than the "
                         f"model's context leaves for a prompt ({limit} with max_new_tokens={self.max_new_tokens}): "
                         f"shorten it, use fewer video frames, or ask for fewer new tokens")

    def ask(self, question: str, on_text: Optional[Callable[[str], None]] = None,
            on_notice: Optional[Callable[[str], None]] = None) -> str:
        """Answers `question` (the image goes into the first turn); `on_text` receives each new piece
        of decoded text as it is generated. When the conversation no longer fits the model's context,
        its oldest turns are dropped and `on_notice` (default: a logged warning) says so. The
        history changes only once an answer is complete."""
        prompt, dropped = self.fitting_prompt(question)
        if dropped:
            (on_notice or log.warning)(
                f"dropped the {dropped} oldest turn(s) of the conversation to fit the model's context "
                f"({max_prompt_tokens(self.model.config, self.max_new_tokens)} prompt positions, "
                f"{self.max_new_tokens} kept for the answer)")
        ids = np.asarray([prompt], np.int32)
        images = None if self.pixels is None else self.pixels[None]
        stops = stop_strings(self.template)
        generated: list[int] = []
        shown = [""]

        def stream(tokens):
            generated.append(int(tokens[0]))
            text, _ = _trim_at_stop(self.tokenizer.decode(generated), stops)
            if on_text is not None and len(text) > len(shown[0]) and not text.endswith("\ufffd"):
                on_text(text[len(shown[0]):])
                shown[0] = text

        generate(self.model, self.params, ids, images=images, max_new_tokens=self.max_new_tokens,
                 temperature=self.temperature, top_p=self.top_p, eos_token_ids=self.eos_ids(),
                 pad_token_id=self.tokenizer.pad_id or 0, rng=self.seed, stream=stream, processor=self.processor)
        answer, _ = _trim_at_stop(self.tokenizer.decode(generated), stops)
        answer = answer.strip()
        if on_text is not None and len(answer) > len(shown[0].strip()):
            on_text(answer[len(shown[0].strip()):])
        self.history = self.history[dropped:] + [(question, answer)]
        return answer
