"""Continuous batching: a fixed pool of KV-cache slots, one compiled decode step for all of them.

    submit(request) ──► pending queue (bounded: `QueueFull` at once when it is full)
                              │  between two decode steps, into a free slot:
                              ▼
    prefill [1, bucket_length(L)] (splice + LLM) ──► cache[:, slot, :P], first token
                                                              │
    every step: decode_step over all N slots ◄────────────────┘  (free rows compute, unread)
                tokens [N] at cache index [N] ──► next tokens [N]
                              │
    EOS / max_tokens / end of context / cancel ──► the slot is free for the next request at once

The cache is `{"k","v"}: [layers, N, S, kv_heads, head_dim]` (N = `max_batch` slots, S =
`max_context`); a row only ever attends its own slots `0..index`, so a row never sees what an
earlier tenant of its slot left behind. Compiles: one decode step, and one prefill per (prompt
bucket, pixel shape); `warmup` compiles and runs them all ahead, so no request of those shapes
compiles afterwards. Sampling parameters (temperature, top-p, seed) are per-slot arrays, not compile
keys: a greedy row produces the tokens `generate` produces for that request alone, a sampled row the
tokens of `generate(..., rng=seed)`, whatever else shares the batch.

The engine runs in its own thread (`start` / `stop`, or `with Engine(...)`); `submit` may be called
from any thread and reports through a callback (`on_event`, called on the engine thread: keep it
short) or, without one, through `Handle.events` / `Handle.result`.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import queue
import threading
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .config import IMAGE_TOKEN_INDEX
from .generate import bucket_length, chunked_prefill, filter_top_p, init_kv_cache
from .model import LlavaMini
from .splice import spliced_length

log = logging.getLogger(__name__)

STOP, LENGTH, CANCELLED, ERROR = "stop", "length", "cancelled", "error"


class QueueFull(RuntimeError):
    """The pending queue holds `max_queue` requests already."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Per request: at most `max_tokens` new tokens (an EOS included); `temperature` 0 is greedy;
    `top_p` < 1 samples from the nucleus; `seed` fixes the draws (int32); a token of
    `eos_token_ids` ends the answer (it is reported, then the slot is freed)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "eos_token_ids", tuple(int(i) for i in self.eos_token_ids))
        if int(self.max_tokens) < 1:
            raise ValueError(f"max_tokens={self.max_tokens}: expected >= 1")
        if not 0.0 <= float(self.temperature) < float("inf"):
            raise ValueError(f"temperature={self.temperature}: expected a finite value >= 0")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise ValueError(f"top_p={self.top_p}: expected 0 < top_p <= 1")
        if not -2 ** 31 <= int(self.seed) < 2 ** 31:
            raise ValueError(f"seed={self.seed}: expected a 32-bit signed integer")


@dataclasses.dataclass(frozen=True, eq=False)
class Request:
    """`input_ids [L]` (at most one -200, where the image or video goes), `pixels` `[P, 3, H, W]`
    (image) or `[T, P, 3, H, W]` (video) or None, as `chat.prompt_ids` / `chat.media_pixels` give."""

    input_ids: np.ndarray
    pixels: Optional[np.ndarray] = None
    sampling: SamplingParams = SamplingParams()


@dataclasses.dataclass(frozen=True)
class Event:
    """New tokens of one request; `finish_reason` (`stop`: an EOS id, `length`: max_tokens or the
    end of the context, `cancelled`, `error` with `error` text) on its last event."""

    tokens: tuple[int, ...]
    finish_reason: Optional[str] = None
    error: Optional[str] = None


class Handle:
    """A submitted request. `prompt_tokens`: its length in the LLM (vision tokens counted);
    `max_tokens`: what it may generate (max_tokens, cut to the room left in the context)."""

    def __init__(self, engine: "Engine", request: Request, prompt_tokens: int, max_tokens: int,
                 on_event: Optional[Callable[[Event], None]]):
        self.request, self.prompt_tokens, self.max_tokens = request, prompt_tokens, max_tokens
        self._engine = engine
        self._events: Optional[queue.Queue] = None if on_event is not None else queue.Queue()
        self._on_event = on_event if on_event is not None else self._events.put
        self.finished = threading.Event()

    def cancel(self) -> None:
        """Stops the request: its slot (or queue place) is freed before the next decode step."""
        self._engine.cancel(self)

    def events(self, timeout: Optional[float] = None):
        """Yields the events (only without `on_event`); `queue.Empty` after `timeout` s of silence."""
        while True:
            event = self._events.get(timeout=timeout)
            yield event
            if event.finish_reason is not None:
                return

    def result(self, timeout: Optional[float] = None) -> tuple[list[int], str]:
        """`(tokens, finish_reason)` once finished (only without `on_event`)."""
        tokens: list[int] = []
        for event in self.events(timeout):
            tokens.extend(event.tokens)
            if event.finish_reason == ERROR:
                raise RuntimeError(event.error)
            if event.finish_reason is not None:
                return tokens, event.finish_reason
        raise AssertionError("unreachable")

    def _emit(self, event: Event) -> None:
        if event.finish_reason is not None:
            self.finished.set()
        try:
            self._on_event(event)
        except Exception:  # a consumer's failure must not stop the engine
            log.exception("on_event callback failed")


@dataclasses.dataclass
class _Slot:
    handle: Handle
    generated: int = 0


# -- compiled pieces (cached per model and cache geometry, shared by engines) -------------------------
def sample_rows(logits, seeds, steps, temperature, top_p):
    """One token per row with the row's own parameters: logits `[N, V]`, seeds / steps int32 `[N]`,
    temperature / top_p float32 `[N]` -> `[N]` int32. Row i draws exactly what `generate.next_token`
    draws for it alone with key `fold_in(key(seeds[i]), steps[i])` (argmax where temperature is 0)."""
    def one(row, seed, step, temp, p):
        key = jax.random.fold_in(jax.random.key(seed), step)
        scaled = row.astype(jnp.float32)[None] / jnp.where(temp > 0, temp, 1.0)
        scaled = jnp.where(p < 1.0, filter_top_p(scaled, p), scaled)
        drawn = jax.random.categorical(key, scaled, axis=-1)[0]
        return jnp.where(temp > 0, drawn, jnp.argmax(row)).astype(jnp.int32)
    return jax.vmap(one)(logits, seeds, steps, temperature, top_p)


@functools.lru_cache(maxsize=8)
def _compiled(model: LlavaMini, context: int, chunk: Optional[int]):
    def prefill(params, cache, ids, mask, images, slot, seed, temp, top_p):
        """ids / mask `[1, Lb]`, images `[1, ...]` or None -> (first token [1], cache with the row in `slot`)."""
        embeds, m, _ = model.apply({"params": params}, ids, mask, images, method="splice_inputs")
        length = m.shape[1]
        size = length if chunk is None or length <= chunk else -(-length // chunk) * chunk
        row = init_kv_cache(model.config, 1, size, cache["k"].dtype)
        if size == length:
            logits, row = model.apply({"params": params}, embeds, m, row, method="prefill")
        else:
            logits, row = chunked_prefill(model, params, embeds, m, row, chunk)
        keep = min(size, context)
        cache = {k: jax.lax.dynamic_update_slice(cache[k], row[k][:, :, :keep], (0, slot, 0, 0, 0)) for k in cache}
        token = sample_rows(logits, seed[None], jnp.zeros((1,), jnp.int32), temp[None], top_p[None])
        return token, cache

    def step(params, cache, tokens, index, seeds, steps, temps, top_p):
        logits, cache = model.apply({"params": params}, tokens, index, cache, method="decode_step")
        return sample_rows(logits, seeds, steps, temps, top_p), cache

    return jax.jit(prefill, donate_argnums=(1,)), jax.jit(step, donate_argnums=(1,))


class Engine:
    """Continuous batching over `max_batch` KV-cache slots of `max_context` tokens each.

    Args:
      model, params: as `load_pretrained` returns them.
      max_batch: slots N (requests decoded together).
      max_context: S, cache slots per request: prompt (vision tokens counted) + answer.
      max_queue: requests that may wait for a slot; `submit` raises `QueueFull` beyond.
      prefill_chunk: spliced prompts longer than this prefill in chunks (as `generate`).
      min_bucket: the shortest prompt bucket (`bucket_length`).
      max_prefills_per_step: requests admitted between two decode steps (None: as many as free slots).
    """

    def __init__(self, model: LlavaMini, params, max_batch: int = 8, max_context: int = 2048,
                 max_queue: int = 256, prefill_chunk: Optional[int] = 2048, min_bucket: int = 16,
                 max_prefills_per_step: Optional[int] = None):
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: expected >= 1")
        limit = model.config.llm.max_position_embeddings
        if not 2 <= max_context <= limit:
            raise ValueError(f"max_context={max_context}: expected 2..{limit} (the model's max_position_embeddings)")
        if max_queue < 0:
            raise ValueError(f"max_queue={max_queue}: expected >= 0")
        self.model, self.params = model, params
        self.max_batch, self.max_context, self.max_queue = max_batch, max_context, max_queue
        self.prefill_chunk, self.min_bucket = prefill_chunk, min_bucket
        self.max_prefills_per_step = max_prefills_per_step or max_batch
        self._prefill, self._step = _compiled(model, max_context, prefill_chunk)
        self._cache = init_kv_cache(model.config, max_batch, max_context, model.dtype)
        self._slots: list[Optional[_Slot]] = [None] * max_batch
        self._reset_rows(range(max_batch))
        self._pending: collections.deque[Handle] = collections.deque()
        self._cancels: set[Handle] = set()
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._stopping = self._paused = False
        self.tokens_generated = 0  # counters, read by metrics
        self.steps = 0
        self.prefills = 0

    # -- public ---------------------------------------------------------------------------------
    def prompt_length(self, input_ids, pixels=None) -> int:
        """Tokens the request puts into the LLM: text, with the placeholder replaced by Q*T vision
        tokens (cut to the checkpoint's `max_length`)."""
        cfg = self.model.config
        ids = np.asarray(input_ids)
        if pixels is None or not (ids == IMAGE_TOKEN_INDEX).any():
            return int(ids.size)
        frames = pixels.shape[0] if np.ndim(pixels) == 5 else 1
        parts = 1 if cfg.is_mini else pixels.shape[-4]
        return spliced_length(int(ids.size), cfg.tokens_per_frame * parts * frames, cfg.max_length)

    def submit(self, request: Request, on_event: Optional[Callable[[Event], None]] = None) -> Handle:
        """Queues `request`. Raises ValueError for a request that cannot run (naming what is wrong),
        `QueueFull` when `max_queue` requests wait already, RuntimeError when stopped."""
        n, room = self._validate(request)
        handle = Handle(self, request, n, min(request.sampling.max_tokens, room), on_event)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the engine is stopped")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests wait already (max_queue={self.max_queue})")
            self._pending.append(handle)
            self._cond.notify()
        return handle

    def pause(self) -> None:
        """Holds admission and decoding after the current step (queued and running requests keep
        their places; cancellations are still honoured) until `resume`."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify()

    def cancel(self, handle: Handle) -> None:
        with self._cond:
            if not handle.finished.is_set():
                self._cancels.add(handle)
                self._cond.notify()

    def run(self, requests: Sequence[Request], timeout: Optional[float] = None) -> list[tuple[list[int], str]]:
        """Runs `requests` through the (started) engine; `[(tokens, finish_reason)]` in order."""
        handles: list[Handle] = []
        for r in requests:
            while True:
                try:
                    handles.append(self.submit(r))
                    break
                except QueueFull:
                    time.sleep(0.005)
        return [h.result(timeout) for h in handles]

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def active(self) -> int:
        return sum(s is not None for s in self._slots)

    def start(self) -> "Engine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="llava-mini-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: Optional[float] = 60.0) -> None:
        """Stops the loop; what is still queued or decoding finishes as `cancelled`."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def warmup(self, pixel_shapes: Sequence[Optional[tuple]] = (None,), buckets: Optional[Sequence[int]] = None) -> int:
        """Compiles and runs the decode step and a prefill per prompt bucket for each pixel shape
        (None = text only; `(P, 3, H, W)` an image; `(T, P, 3, H, W)` a T-frame video). Buckets
        default to every one a prompt that fits the context can have. Call before `start`. Returns
        how many prefill shapes ran."""
        if self._thread is not None:
            raise RuntimeError("warmup runs before start()")
        count = 0
        for shape in pixel_shapes:
            pixels = None if shape is None else np.zeros(shape, np.float32)
            vision = 0 if pixels is None else self.prompt_length([0, IMAGE_TOKEN_INDEX], pixels) - 1
            for b in buckets or self._buckets(self.max_context - 1 - vision):
                ids = np.zeros(max(2, min(b, self.max_context - 1 - vision)), np.int32)
                if pixels is not None:
                    ids[1] = IMAGE_TOKEN_INDEX
                self._prefill_into(0, Request(ids, pixels), 0)
                count += 1
        self._decode()
        self._reset_rows(range(self.max_batch))
        return count

    # -- loop -----------------------------------------------------------------------------------
    def _validate(self, request: Request) -> tuple[int, int]:
        ids = np.asarray(request.input_ids)
        if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
            raise ValueError(f"input_ids: expected a non-empty 1-D integer array, got {ids.dtype} {ids.shape}")
        placeholders = int((ids == IMAGE_TOKEN_INDEX).sum())
        px = request.pixels
        if placeholders > 1:
            raise ValueError(f"input_ids hold {placeholders} image placeholders; one image or video per request")
        if px is None and placeholders:
            raise ValueError("input_ids hold an image placeholder (-200) but pixels is None")
        if px is not None:
            size = self.model.config.vision.image_size
            if np.ndim(px) not in (4, 5) or tuple(px.shape[-3:]) != (3, size, size) or 0 in px.shape:
                raise ValueError(f"pixels shape {tuple(np.shape(px))}: expected [P, 3, {size}, {size}] or "
                                 f"[T, P, 3, {size}, {size}]")
            if not placeholders:
                raise ValueError("pixels given but input_ids hold no image placeholder (-200)")
        n = self.prompt_length(ids, px)
        if ids.size >= self.max_context or n >= self.max_context:
            raise ValueError(f"the prompt is {n} tokens (vision tokens counted); the context holds "
                             f"{self.max_context}, leaving no room for an answer")
        return n, self.max_context - n + 1

    def _buckets(self, longest: int) -> list[int]:
        out, n = [], 1
        while True:
            b = bucket_length(n, self.min_bucket)
            out.append(b)
            if b >= longest:
                return out
            n = b + 1

    def _reset_rows(self, rows) -> None:
        if not hasattr(self, "_tokens"):
            n = self.max_batch
            self._tokens, self._index, self._seeds, self._t = (np.zeros(n, np.int32) for _ in range(4))
            self._temps, self._top_p = np.zeros(n, np.float32), np.ones(n, np.float32)
        for r in rows:
            self._tokens[r] = self._index[r] = self._seeds[r] = self._t[r] = 0
            self._temps[r], self._top_p[r] = 0.0, 1.0

    @property
    def running(self) -> bool:
        """Whether the loop thread is alive (False before `start`, after `stop` or a crash)."""
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        try:
            self._serve()
        except Exception:  # a bug: fail what is in flight rather than hang the callers
            log.exception("the engine loop crashed")
            with self._cond:
                self._stopping = True
            self._shutdown(ERROR)

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._cancels or not self._paused and (self._pending or self.active)):
                    self._cond.wait()
                if self._stopping:
                    break
                cancels, self._cancels = self._cancels, set()
                for h in cancels:
                    if h in self._pending:
                        self._pending.remove(h)
                        h._emit(Event((), CANCELLED))
                paused = self._paused
            for slot, s in enumerate(self._slots):
                if s is not None and s.handle in cancels:
                    self._finish(slot, CANCELLED)
            if paused:
                continue
            admit = []
            with self._cond:
                free = [i for i, s in enumerate(self._slots) if s is None]
                while free and self._pending and len(admit) < self.max_prefills_per_step:
                    admit.append((free.pop(0), self._pending.popleft()))
                for slot, h in admit:  # claimed now, so `active` counts them
                    self._slots[slot] = _Slot(h)
            for slot, h in admit:
                self._admit(slot, h)
            if self.active:
                self._decode_and_emit()
        self._shutdown(CANCELLED)

    def _shutdown(self, reason: str) -> None:
        error = "the engine stopped" if reason == ERROR else None
        for slot, s in enumerate(self._slots):
            if s is not None:
                self._finish(slot, reason, error)
        with self._cond:
            while self._pending:
                self._pending.popleft()._emit(Event((), reason, error))

    def _admit(self, slot: int, handle: Handle) -> None:
        p = handle.request.sampling
        try:
            token = self._prefill_into(slot, handle.request, p.seed, p.temperature, p.top_p)
        except Exception as e:  # noqa: BLE001 - the request fails, the engine keeps serving
            log.exception("prefill failed")
            self._slots[slot] = None
            self._reset_rows([slot])
            handle._emit(Event((), ERROR, f"prefill failed: {e}"))
            self._recover()
            return
        self.prefills += 1
        self._seeds[slot], self._temps[slot], self._top_p[slot] = p.seed, p.temperature, p.top_p
        self._index[slot], self._t[slot] = handle.prompt_tokens, 1
        self._advance(slot, token)

    def _prefill_into(self, slot: int, request: Request, seed: int, temperature: float = 0.0,
                      top_p: float = 1.0) -> int:
        ids = np.asarray(request.input_ids, np.int32)
        width = bucket_length(ids.size, self.min_bucket)
        padded, mask = np.zeros((1, width), np.int32), np.zeros((1, width), np.int32)
        padded[0, :ids.size], mask[0, :ids.size] = ids, 1
        images = None if request.pixels is None else np.asarray(request.pixels, np.float32)[None]
        token, self._cache = self._prefill(self.params, self._cache, padded, mask, images, np.int32(slot),
                                           np.int32(seed), np.float32(temperature), np.float32(top_p))
        return int(np.asarray(token)[0])

    def _decode(self) -> np.ndarray:
        tokens, self._cache = self._step(self.params, self._cache, self._tokens, self._index, self._seeds, self._t,
                                         self._temps, self._top_p)
        self.steps += 1
        return np.asarray(tokens)

    def _decode_and_emit(self) -> None:
        try:
            tokens = self._decode()
        except Exception as e:  # noqa: BLE001
            log.exception("decode step failed")
            for slot, s in enumerate(self._slots):
                if s is not None:
                    self._finish(slot, ERROR, f"decode step failed: {e}")
            self._recover()
            return
        for slot, s in enumerate(self._slots):
            if s is not None:
                self._index[slot] += 1
                self._t[slot] += 1
                self._advance(slot, int(tokens[slot]))

    def _advance(self, slot: int, token: int) -> None:
        s = self._slots[slot]
        s.generated += 1
        self.tokens_generated += 1
        self._tokens[slot] = token
        p = s.handle.request.sampling
        reason = STOP if token in p.eos_token_ids else LENGTH if s.generated >= s.handle.max_tokens else None
        if reason is None:
            s.handle._emit(Event((token,)))
        else:
            self._finish(slot, reason, tokens=(token,))

    def _finish(self, slot: int, reason: str, error: Optional[str] = None, tokens: tuple = ()) -> None:
        s = self._slots[slot]
        self._slots[slot] = None
        self._reset_rows([slot])
        s.handle._emit(Event(tokens, reason, error))

    def _recover(self) -> None:
        """After a failed call the donated cache may be gone: a fresh one (rows in use fail)."""
        if not any(self._cache[k].is_deleted() for k in self._cache):
            return
        for slot, s in enumerate(self._slots):
            if s is not None:
                self._finish(slot, ERROR, "the KV cache was lost to a failed call")
        self._cache = init_kv_cache(self.model.config, self.max_batch, self.max_context, self.model.dtype)
