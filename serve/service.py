"""Chat completions on the engine: a checked request -> preprocessing (off the event loop, exactly
as `ChatSession`) -> the engine's slot pool -> text, whole or streamed.

    ChatRequest ──thread──► prompt_ids + media_pixels ──► Engine.submit ──events──► TextStream ──► deltas
                                                                  ▲                              │
                                                                  └──── cancel (stop string, ◄────┘
                                                                        client gone)

The answer text is what `ChatSession.ask` prints: decoded tokens cut at the first stop string (the
template's and the request's), stripped; streamed pieces add up to it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from typing import AsyncIterator, Optional

import numpy as np
from starlette.concurrency import run_in_threadpool

from llava_mini_jax.chat import eos_token_ids, media_pixels, processor_config, prompt_ids
from llava_mini_jax.conversation import stop_strings
from llava_mini_jax.engine import Engine, Event, QueueFull, Request, SamplingParams

from .media import media_source
from .metrics import ServerMetrics
from .protocol import ApiError, ChatRequest, bad_request


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    """Server policy. `model_name`: what `/v1/models` lists and requests must name; `temperature`,
    `max_tokens`: for requests that give none (0: greedy, as `llava-mini-jax chat`; None: as many
    tokens as the context has room for)."""

    model_name: str
    api_key: Optional[str] = None
    allow_local_media: Optional[str] = None
    max_image_pixels: int = 16_000_000
    max_frames: int = 16
    max_body_bytes: int = 32 * 2 ** 20
    temperature: float = 0.0
    max_tokens: Optional[int] = None


class TextStream:
    """Decodes a growing answer the way `ChatSession.ask` does; `push` returns the new visible text."""

    def __init__(self, tokenizer, stops):
        self.tokenizer, self.stops = tokenizer, tuple(s for s in stops if s)
        self.tokens: list[int] = []
        self.shown = ""
        self.stopped = False

    def _text(self) -> str:
        text = self.tokenizer.decode(self.tokens)
        cut = min((text.find(s) for s in self.stops if s in text), default=-1)
        if cut >= 0:
            self.stopped = True
            text = text[:cut]
        return text

    def push(self, tokens) -> str:
        self.tokens.extend(tokens)
        text = self._text()
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
            return ""
        visible = text.strip()
        held = max((k for s in self.stops for k in range(1, len(s)) if visible.endswith(s[:k])), default=0)
        return self._advance(visible[:len(visible) - held])  # a stop string may be starting: wait

    def finish(self) -> str:
        """The rest of the answer (the whole answer is `shown` afterwards)."""
        return self._advance(self._text().strip())

    def _advance(self, visible: str) -> str:
        if len(visible) <= len(self.shown) or not visible.startswith(self.shown):
            return ""
        delta, self.shown = visible[len(self.shown):], visible
        return delta


@dataclasses.dataclass
class Completion:
    """What a finished request produced."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class ChatService:
    """Chat completions from one loaded checkpoint through one engine."""

    def __init__(self, engine: Engine, tokenizer, template: str, options: ServeOptions, model_dir: Optional[str] = None,
                 processor=None):
        cfg = engine.model.config
        self.engine, self.tokenizer, self.template, self.options = engine, tokenizer, template, options
        self.processor = processor or processor_config(model_dir, cfg.vision.image_size)
        self.eos = tuple(eos_token_ids(engine.model.generation, tokenizer, template))
        self.metrics = ServerMetrics(engine)

    # -- preparation (worker thread) ------------------------------------------------------------
    def prepare(self, req: ChatRequest) -> Request:
        """The engine request for `req`: ids and pixels exactly as `ChatSession`; raises ApiError."""
        opts = self.options
        if req.model != opts.model_name:
            raise ApiError(404, f"model {req.model!r} does not exist; this server serves {opts.model_name!r}",
                           "model", "model_not_found")
        pixels = None
        if req.media is not None:
            with media_source(req.media, opts.allow_local_media, opts.max_image_pixels) as source:
                try:
                    pixels = media_pixels(self.engine.model.config, self.processor,
                                          image=source if req.media.kind == "image" else None,
                                          video=source if req.media.kind == "video" else None,
                                          max_frames=opts.max_frames)
                except (ValueError, OSError) as e:
                    raise bad_request(req.media.param, f"cannot read the {req.media.kind}: {e}") from None
        try:
            ids = prompt_ids(req.question, self.template, self.tokenizer, req.history, with_image=pixels is not None,
                             system=req.system)
        except ValueError as e:
            raise bad_request("messages", str(e)) from None
        ids = np.asarray(ids, np.int32)
        n = self.engine.prompt_length(ids, pixels)
        if n >= self.engine.max_context:
            raise ApiError(400, f"messages: the prompt is {n} tokens (vision tokens counted); the context holds "
                                f"{self.engine.max_context} (--max-context), leaving no room for an answer",
                           "messages", "context_length_exceeded")
        room = self.engine.max_context - n + 1
        wanted = self.options.max_tokens if req.max_tokens is None else req.max_tokens
        max_tokens = room if wanted is None else min(wanted, room)
        temperature = self.options.temperature if req.temperature is None else req.temperature
        seed = secrets.randbelow(2 ** 31) if req.seed is None else req.seed
        sampling = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=req.top_p, seed=seed,
                                  eos_token_ids=self.eos)
        return Request(ids, pixels, sampling)

    # -- generation (event loop) ----------------------------------------------------------------
    async def events(self, req: ChatRequest, arrived: float) -> AsyncIterator:
        """Yields `(handle, None)` once queued, then `Event`s; cancels the request if the consumer stops."""
        m = self.metrics
        if self.engine.queued + m.preparing >= self.engine.max_queue:
            raise ApiError(429, f"the queue is full ({self.engine.max_queue} requests wait); retry later",
                           code="queue_full", kind="rate_limit_error")
        m.preparing += 1
        try:
            request = await run_in_threadpool(self.prepare, req)
            loop = asyncio.get_running_loop()
            inbox: asyncio.Queue = asyncio.Queue()

            def deliver(event: Event) -> None:
                if event.tokens:
                    m.rate.add(len(event.tokens))
                try:
                    loop.call_soon_threadsafe(inbox.put_nowait, event)
                except RuntimeError:  # the loop is closed: nobody listens any more
                    pass

            try:
                handle = self.engine.submit(request, on_event=deliver)
            except QueueFull as e:
                raise ApiError(429, f"the queue is full ({e}); retry later", code="queue_full",
                               kind="rate_limit_error") from None
            except RuntimeError as e:  # stopped
                raise ApiError(503, f"not serving: {e}", kind="server_error") from None
        finally:
            m.preparing -= 1
        try:
            yield handle, None
            first = True
            while True:
                event = await inbox.get()
                if first and event.tokens:
                    m.ttft.observe(time.monotonic() - arrived)
                    first = False
                yield handle, event
                if event.finish_reason is not None:
                    return
        finally:
            handle.cancel()  # no-op once finished; frees the slot when the consumer went away

    async def stream(self, req: ChatRequest, arrived: float) -> AsyncIterator:
        """Yields `(handle, "")` once queued, `(handle, delta text)` as the answer grows, then, last,
        `(handle, Completion)`. Closing it early cancels the request."""
        text = TextStream(self.tokenizer, stop_strings(self.template) + req.stop)
        generated = 0
        events = self.events(req, arrived)
        try:
            async for handle, event in events:
                if event is None:
                    yield handle, ""
                    continue
                generated += len(event.tokens)
                delta = text.push(event.tokens)
                if delta:
                    yield handle, delta
                if event.finish_reason == "error":
                    raise ApiError(500, f"generation failed: {event.error}", kind="server_error")
                if text.stopped or event.finish_reason is not None:
                    reason = "stop" if text.stopped else event.finish_reason
                    delta = text.finish()
                    if delta:
                        yield handle, delta
                    yield handle, Completion(text.shown, reason, handle.prompt_tokens, generated)
                    return
        finally:
            await events.aclose()
