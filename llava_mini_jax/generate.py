"""KV-cache generation: splice and prefill once, then decode on the device.

    prompt ids + images ──splice──► [B, L'] embeds ──prefill──► cache slots 0..n_b-1, first token
    token t ──raw embedding──► decode_step at slot/position n_b + t - 1 ──► token t+1   (SPEC A §12)

Static shapes, bucketed so that what a caller varies rarely compiles a new program:

- the prompt is right-padded to `bucket_length(L)` columns;
- the output has `bucket_length(max_new_tokens)` columns; `max_new_tokens` itself is a device value,
  so every count up to the bucket runs the same programs;
- the KV cache has `L' + that bucket` slots (L' the spliced length, rounded up to 128) and is
  updated in place (donated, carried through the layers); `static_shapes` says all of them;
- a video of T frames is padded to `frame_bucket(T, video_chunk_size)` frames: the frames stream
  from the host a chunk at a time (uint8 when the caller passes uint8, CLIP-normalised on the
  device) through CLIP, compressor and pre-fusion into a buffer of vision tokens; only the T real
  frames are spliced and averaged (masked padding: the numbers of the unpadded video).

Decoding without `stream` is one `lax.while_loop` on the device that stops once every row has
emitted an EOS, or after `max_new_tokens` (the host reads the tokens once, at the end). With
`stream`, one jitted step per token, dispatched before the host reads the previous token, so the
device computes token t+1 while Python handles token t.

Each row writes its own cache slot and reads its own last real token, so batches of different
lengths are exact (library decision D5; the reference reads padding for short rows, SPEC Q9).

Context: a prompt whose spliced length exceeds `max_prompt_tokens(config, max_new_tokens)` raises
ValueError before anything is allocated, unless `truncation` asks for a cut: `"left"` drops each
long row's oldest text tokens (the history; the newest turn and the assistant header at the end
stay, and so does the image placeholder), `"right"` cuts the end of the spliced prompt as the
reference does (SPEC Q17).
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .config import IMAGE_TOKEN_INDEX, LlavaMiniConfig
from .image_processing import DEFAULT_CONFIG, ImageProcessorConfig, normalization_table, pixels_from_uint8
from .model import LlavaMini, validate_inputs
from .sharding import activation_sharding, mesh_of
from .splice import splice, spliced_length

TRUNCATIONS = ("left", "right")


def bucket_length(n: int, minimum: int = 16) -> int:
    """Next power of two >= n (at least `minimum`), then multiples of 1024: bounds the compiles."""
    if n <= 1024:
        return max(minimum, 1 << max(0, (n - 1).bit_length()))
    return -(-n // 1024) * 1024


def frame_bucket(frames: int, chunk: int) -> tuple[int, int]:
    """`(frames per chunk, padded frame count)` for a video of `frames` frames streamed at most `chunk`
    frames at a time: `bucket_length(frames, 1)` rounded up to a whole number of chunks."""
    bucket = bucket_length(frames, 1)
    c = min(chunk, bucket)
    return c, -(-bucket // c) * c


def max_prompt_tokens(config: LlavaMiniConfig, max_new_tokens: int) -> int:
    """The longest prompt `generate` takes, counted after splicing (vision tokens included): the
    LLM's context (`max_position_embeddings`) less `max_new_tokens`, and at most
    `tokenizer_model_max_length` (`config.max_length`) when the checkpoint sets it."""
    room = config.llm.max_position_embeddings - int(max_new_tokens)
    return room if config.max_length is None else min(room, config.max_length)


def init_kv_cache(config: LlavaMiniConfig, batch: int, size: int, dtype=jnp.float32) -> dict:
    """Zero KV cache `{"k","v"}: [layers, B, size, kv_heads, head_dim]` of `dtype`."""
    c = config.llm
    shape = (c.num_layers, batch, size, c.num_kv_heads, c.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


# -- sampling ---------------------------------------------------------------------------------------
def filter_top_k(logits: jnp.ndarray, k: int) -> jnp.ndarray:
    """Keeps logits >= the k-th largest (ties kept, as HF), others -inf. logits `[B, V]`."""
    k = min(int(k), logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def filter_top_p(logits: jnp.ndarray, p: float) -> jnp.ndarray:
    """Nucleus: keeps the smallest set of most likely tokens whose probability reaches p (at least
    one), others -inf. logits `[B, V]`."""
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
    keep_sorted = before < p
    keep_sorted = keep_sorted.at[..., 0].set(True)
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    return jnp.where(keep, logits, -jnp.inf)


def next_token(logits: jnp.ndarray, rng, temperature: float, top_k: Optional[int], top_p: Optional[float]):
    """Greedy (`temperature == 0`) or sampled token per row: temperature, then top-k, then top-p (HF order)."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = filter_top_p(logits, top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


# -- prefill ------------------------------------------------------------------------------------------
def chunked_prefill(model: LlavaMini, params, embeds, mask, cache, chunk: int):
    """The LLM prefill in chunks of `chunk` tokens (a loop filling the KV cache in place), so attention
    holds `chunk x S` scores instead of `S x S`: long videos fit. Same numbers as one pass. Only the
    chunks up to the longest row's last real token run (a prompt padded to a bucket costs what its
    real tokens cost). The cache needs `ceil(T / chunk) * chunk` slots at least. embeds `[B, T, D]`,
    mask `[B, T]` -> `(logits at each row's last real token [B, V], cache)`."""
    b, t, d = embeds.shape
    n = -(-t // chunk)
    size = cache["k"].shape[2]
    if n * chunk > size:
        raise ValueError(f"chunked prefill needs {n * chunk} cache slots, the cache has {size}")
    lengths = mask.sum(axis=1).astype(jnp.int32)
    key_valid = jnp.zeros((b, size), bool).at[:, :t].set(mask)
    padded = jnp.pad(embeds, [(0, 0), (0, n * chunk - t), (0, 0)])
    last = lengths - 1
    rows = jnp.arange(b)

    def body(i, state):
        cache, h_last = state
        start = i * chunk
        piece = jax.lax.dynamic_slice_in_dim(padded, start, chunk, axis=1)
        h, cache = model.apply({"params": params}, piece, key_valid, cache, start, method="prefill_chunk")
        here = (last >= start) & (last < start + chunk)
        h_last = jnp.where(here[:, None], h[rows, jnp.clip(last - start, 0, chunk - 1)], h_last)
        return cache, h_last

    needed = jnp.maximum((jnp.max(lengths) + chunk - 1) // chunk, 1)
    h0 = jnp.zeros((b, d), model.dtype)
    cache, h_last = jax.lax.fori_loop(0, needed, body, (cache, h0))
    return model.apply({"params": params}, h_last, method="logits_of"), cache


def _prefill_embeds(model: LlavaMini, params, embeds, mask, cache_size: int, chunk: Optional[int]):
    """`(logits [B, V], cache)` of the prompt `embeds [B, L', D]` in a fresh cache of `cache_size` slots."""
    cache = init_kv_cache(model.config, mask.shape[0], cache_size, model.dtype)
    if chunk is None:
        return model.apply({"params": params}, embeds, mask, cache, method="prefill")
    return chunked_prefill(model, params, embeds, mask, cache, chunk)


# -- the compiled programs (cached per model and sampling settings) ------------------------------------
class Programs(NamedTuple):
    """The jitted programs of `generate` for one model and sampling setting (see their docstrings in
    `programs`); `benchmarks/video_memory.py` lowers them at abstract shapes to plan memory."""

    encode_chunk: Callable
    prefill: Callable
    decode: Callable
    step: Callable


@functools.lru_cache(maxsize=32)
def programs(model: LlavaMini, temperature: float = 0.0, top_k: Optional[int] = None,
             top_p: Optional[float] = None) -> Programs:
    cfg = model.config

    def encode_chunk(params, vision, text_sum, frames, table, ids, valid, offset):
        """One chunk of a streamed video into the buffers (both donated): vision `[B, F*M, D]` gets the
        chunk's tokens at token `offset`, text_sum `[B, L, D]` float32 its fused text. frames `[B, c, P,
        3, H, W]` float (normalised) or uint8 `[B, c, P, H, W, 3]` with `table` `[3, 256]`; valid bool `[c]`."""
        pixels = frames.astype(jnp.float32) if table is None else pixels_from_uint8(frames, table)
        tokens, text = model.apply({"params": params}, pixels, ids, valid, method="encode_video_chunk")
        vision = jax.lax.dynamic_update_slice(vision, tokens.astype(vision.dtype), (0, offset, 0))
        return vision, text_sum + text

    def prefill(params, ids, mask, pixels, table, vision, text_sum, num_frames, rng, cache_size, chunk, cut,
                per_frame=0):
        """Splice, prefill, first token. Media: `pixels` (an image batch, float, or uint8 with `table`),
        or a streamed video's buffers (`vision`, `text_sum`, `num_frames` real frames of `per_frame`
        tokens each), or none. Returns `(first token [B], real lengths [B], cache)`."""
        if vision is not None:
            if cfg.is_mini:
                text = (text_sum / num_frames.astype(jnp.float32)).astype(model.dtype)
            else:
                text = model.apply({"params": params}, ids, method="embed_text")
            embeds, m, _ = splice(text, vision, ids, mask, None, cut, num_vision=num_frames * per_frame)
        elif pixels is not None:
            pixels = pixels.astype(jnp.float32) if table is None else pixels_from_uint8(pixels, table)
            vision, text = model.apply({"params": params}, pixels, ids, mask, method="encode_images")
            embeds, m, _ = splice(text, vision, ids, mask, None, cut)
        else:
            embeds, m = model.apply({"params": params}, ids, method="embed_text"), mask.astype(bool)
        logits, cache = _prefill_embeds(model, params, embeds, m, cache_size, chunk)
        token = next_token(logits, jax.random.fold_in(rng, 0), temperature, top_k, top_p)
        return token, m.sum(axis=1).astype(jnp.int32), cache

    def step(params, token, lengths, cache, rng, t):
        """Token t `[B]` from token t-1 (`token`), written at slot `lengths + t - 1`; cache donated."""
        logits, cache = model.apply({"params": params}, token, lengths + t - 1, cache, method="decode_step")
        return next_token(logits, jax.random.fold_in(rng, t), temperature, top_k, top_p), cache

    def decode(params, token, lengths, cache, rng, max_new, eos, pad, steps):
        """The whole decode loop on the device: `([B, steps] tokens from the first one, pad after a row's
        EOS (`eos` bool `[V]`); how many tokens were produced; cache)`, stopping after `max_new` tokens
        or once every row has finished."""
        out = jnp.full((token.shape[0], steps), pad, jnp.int32).at[:, 0].set(token)

        def cond(state):
            t, _, _, _, done = state
            return (t < max_new) & ~jnp.all(done)

        def body(state):
            t, token, cache, out, done = state
            nxt, cache = step(params, token, lengths, cache, rng, t)
            out = jax.lax.dynamic_update_slice(out, jnp.where(done, pad, nxt)[:, None], (0, t))
            return t + 1, nxt, cache, out, done | eos[nxt]

        state = (jnp.ones((), jnp.int32), token, cache, out, eos[token])
        produced, _, cache, out, _ = jax.lax.while_loop(cond, body, state)
        return out, produced, cache

    return Programs(
        encode_chunk=jax.jit(encode_chunk, donate_argnums=(1, 2)),
        prefill=jax.jit(prefill, static_argnames=("cache_size", "chunk", "cut", "per_frame")),
        decode=jax.jit(decode, static_argnames=("steps",), donate_argnums=(3,)),
        step=jax.jit(step, donate_argnums=(3,)))


# -- inputs -------------------------------------------------------------------------------------------
class _Media:
    """What `generate` was given as `images`: kind (None, "image", "video"), uint8 or float, frames,
    vision tokens per row (per frame and in all)."""

    def __init__(self, cfg: LlavaMiniConfig, images, processor: Optional[ImageProcessorConfig]):
        self.pixels, self.table, self.kind, self.frames = images, None, None, 0
        self.per_frame = self.tokens = 0
        if images is None:
            return
        shape = tuple(np.shape(images))
        self.uint8 = np.dtype(images.dtype) == np.uint8
        if self.uint8:
            if len(shape) not in (5, 6) or shape[-1] != cfg.vision.num_channels:
                raise ValueError(f"uint8 images must be [B, P, H, W, {cfg.vision.num_channels}] or "
                                 f"[B, T, P, H, W, {cfg.vision.num_channels}] (resized, cropped, not normalised), "
                                 f"got shape {shape}")
            self.table = normalization_table(processor or DEFAULT_CONFIG)
        elif len(shape) == 4:
            self.pixels = np.asarray(images)[:, None]
            shape = self.pixels.shape
        parts = shape[-4]
        self.per_frame = cfg.tokens_per_frame * (1 if cfg.is_mini else parts)
        self.kind = "video" if len(shape) == 6 else "image"
        self.frames = shape[1] if self.kind == "video" else 1
        self.tokens = self.per_frame * self.frames


def _spliced_lengths(ids: np.ndarray, mask: np.ndarray, vision_tokens: int) -> np.ndarray:
    """Each row's real length after splicing `vision_tokens` at its placeholder (if it has one)."""
    real = mask.astype(bool)
    has = ((ids == IMAGE_TOKEN_INDEX) & real).any(axis=1)
    return real.sum(axis=1) - has + has * vision_tokens


def truncate_left(ids: np.ndarray, mask: np.ndarray, excess: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drops row b's `excess[b]` oldest text tokens (ids/mask `[B, L]`, right-padded); the image
    placeholder is kept (ahead of what remains of the text if it was among them). ValueError when a
    row would keep no text token."""
    out_ids, out_mask = np.zeros_like(ids), np.zeros_like(mask)
    for b in range(ids.shape[0]):
        row = ids[b, :int(mask[b].sum())]
        drop = int(max(excess[b], 0))
        text = np.nonzero(row != IMAGE_TOKEN_INDEX)[0]
        if drop >= len(text):
            raise ValueError(f"row {b}: truncation='left' would drop all {len(text)} text tokens (the prompt is "
                             f"{drop} tokens too long with its vision tokens alone); use fewer frames or a shorter "
                             "max_new_tokens")
        keep = np.ones(len(row), bool)
        keep[text[:drop]] = False
        kept = row[keep]
        out_ids[b, :len(kept)], out_mask[b, :len(kept)] = kept, 1
    return out_ids, out_mask


def _check_context(cfg: LlavaMiniConfig, ids, mask, media: _Media, max_new_tokens: int, truncation):
    """`(ids, mask, cut)` after the context rule (see the module docstring); cut: the static length the
    spliced prompt is cut to ("right"), else None."""
    limit = max_prompt_tokens(cfg, max_new_tokens)
    context = (f"max_position_embeddings {cfg.llm.max_position_embeddings}" +
               ("" if cfg.max_length is None else f", tokenizer_model_max_length {cfg.max_length}"))
    if limit < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's context "
                         f"({context})")
    n = _spliced_lengths(ids, mask, media.tokens)
    if not (n > limit).any():
        return ids, mask, None
    b = int(np.argmax(n > limit))
    if truncation is None:
        vision = f" ({media.tokens} of them vision tokens)" if media.tokens else ""
        raise ValueError(f"row {b}: the prompt has {int(n[b])} tokens{vision}, more than the {limit} the model's "
                         f"context allows with max_new_tokens={max_new_tokens} ({context}); shorten it, lower "
                         "max_new_tokens, or pass truncation='left' (drop the oldest tokens) or 'right' (cut the "
                         "end, as the reference)")
    if truncation == "left":
        ids, mask = truncate_left(ids, mask, n - limit)
        width = max(int(mask.sum(axis=1).max()), 1)
        return ids[:, :width], mask[:, :width], None
    if media.kind is None:
        return ids[:, :limit], mask[:, :limit], None
    return ids, mask, limit


class Shapes(NamedTuple):
    """The static shapes of one `generate` call (what keys its compiled programs)."""

    width: int  # prompt columns: bucket_length(L)
    steps: int  # output columns: bucket_length(max_new_tokens)
    frames: int  # video frames after padding (0 without video)
    chunk_frames: int  # frames streamed per chunk (0 without video)
    prompt_len: int  # the static spliced length L'
    cache_size: int  # KV-cache slots
    prefill_chunk: Optional[int]  # tokens per prefill chunk, None: one pass


def static_shapes(model: LlavaMini, seq_len: int, kind: Optional[str] = None, frames: int = 0, per_frame: int = 0,
                  max_new_tokens: int = 32, prefill_chunk: Optional[int] = 2048, cut: Optional[int] = None) -> Shapes:
    """The static shapes `generate` runs a prompt of `seq_len` columns with: media `kind` (None,
    "image", "video") of `frames` frames and `per_frame` vision tokens each. Every size a caller
    varies is bucketed, so the KV cache is sized exactly for the buckets (`L' + steps` slots,
    rounded up to 128, and whole prefill chunks): it needs no bucket of its own."""
    width, steps = bucket_length(seq_len), bucket_length(max_new_tokens)
    chunk_frames, padded = frame_bucket(frames, model.video_chunk_size) if kind == "video" else (0, 0)
    tokens = padded * per_frame if kind == "video" else frames * per_frame
    prompt_len = width if kind is None else spliced_length(width, tokens, cut)
    cache_size = -(-(prompt_len + steps) // 128) * 128
    chunk = prefill_chunk if prefill_chunk is not None and prompt_len > prefill_chunk else None
    if chunk is not None:
        cache_size = max(cache_size, -(-prompt_len // chunk) * chunk)
    return Shapes(width, steps, padded, chunk_frames, prompt_len, cache_size, chunk)


def _as_key(rng):
    if rng is None:
        return jax.random.key(0)
    if isinstance(rng, (int, np.integer)):
        return jax.random.key(int(rng))
    return rng


def _pad_columns(a: np.ndarray, width: int, value) -> np.ndarray:
    return np.pad(a, [(0, 0), (0, width - a.shape[1])], constant_values=value)


def _stream_video(progs: Programs, model: LlavaMini, params, media: _Media, ids) -> tuple:
    """Sends the video to the device a chunk at a time (the host slices the next chunk while the device
    encodes this one). Returns the buffers `(vision [B, F*M, D], text_sum [B, L, D] float32)`."""
    pixels = media.pixels
    b, t = pixels.shape[:2]
    c, padded = frame_bucket(t, model.video_chunk_size)
    d = model.config.llm.hidden_size
    vision = jnp.zeros((b, padded * media.per_frame, d), model.dtype)
    text_sum = jnp.zeros(ids.shape + (d,), jnp.float32)
    table = None if media.table is None else jnp.asarray(media.table)
    for i in range(0, t, c):
        piece = np.asarray(pixels[:, i:i + c])
        n = piece.shape[1]
        if n < c:
            piece = np.concatenate([piece, np.zeros((b, c - n) + piece.shape[2:], piece.dtype)], axis=1)
        vision, text_sum = progs.encode_chunk(params, vision, text_sum, piece, table, ids, np.arange(c) < n,
                                              np.int32(i * media.per_frame))
    return vision, text_sum


def generate(model: LlavaMini, params, input_ids, attention_mask=None, images=None, max_new_tokens: int = 32,
             temperature: float = 0.0, top_p: Optional[float] = None, top_k: Optional[int] = None,
             eos_token_ids: Optional[Sequence[int]] = None, pad_token_id: Optional[int] = None, rng=None,
             stream: Optional[Callable[[np.ndarray], None]] = None, prefill_chunk: Optional[int] = 2048,
             truncation: Optional[str] = None, processor: Optional[ImageProcessorConfig] = None) -> np.ndarray:
    """Generates `[B, max_new_tokens]` int32 new tokens (prompt not included).

    - `input_ids [B, L]` right-padded (at most one -200 per row), `attention_mask [B, L]` (default:
      all real).
    - `images`: CLIP-normalised float pixels as for the model call (`[B, P, 3, H, W]` images,
      `[B, T, P, 3, H, W]` video), or uint8 pixels resized and cropped but not normalised (`[B, P, H,
      W, 3]`, `[B, T, P, H, W, 3]`; `process_image(..., as_uint8=True)`), normalised on the device as
      `processor` says (default: CLIP's constants) to the same numbers; or None. Videos stream to
      the device `model.video_chunk_size` frames at a time.
    - `temperature == 0`: greedy; otherwise sampling with optional `top_k`, then `top_p`.
    - `eos_token_ids`: a row that emits one of them gets `pad_token_id` afterwards (the EOS itself
      is kept); generation stops early when every row has finished. None reads the checkpoint's
      generation settings (`model.generation`, a `GenerationConfig` that keys no compile).
      `pad_token_id` None -> `model.generation.pad_token_id`, else 0.
    - `rng`: a `jax.random` key or an int seed (same seed, same samples).
    - `stream(tokens)`: called after every step with that step's `[B]` tokens (numpy), one step
      behind the device; without it the decode loop runs on the device.
    - `prefill_chunk`: spliced prompts longer than this prefill in chunks (attention memory `chunk
      x S` instead of `S x S`, e.g. for thousands of video frames); None: always one pass.
    - `truncation`: None (a prompt longer than `max_prompt_tokens(model.config, max_new_tokens)`
      raises ValueError), `"left"` (drop the oldest text tokens of long rows) or `"right"` (cut the
      spliced prompt's end, as the reference).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: expected >= 1")
    if temperature < 0:
        raise ValueError(f"temperature={temperature}: expected >= 0")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k}: expected >= 1")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p}: expected 0 < top_p <= 1")
    if truncation is not None and truncation not in TRUNCATIONS:
        raise ValueError(f"truncation={truncation!r}: expected None, 'left' or 'right'")
    if prefill_chunk is not None and prefill_chunk < 1:
        raise ValueError(f"prefill_chunk={prefill_chunk}: expected >= 1 or None")
    cfg, gen = model.config, model.generation
    eos = tuple(gen.eos_token_ids if eos_token_ids is None else eos_token_ids)
    if pad_token_id is None:
        pad_token_id = gen.pad_token_id if gen.pad_token_id is not None else 0

    ids = np.asarray(input_ids).astype(np.int32)
    if ids.ndim == 1:
        ids = ids[None]
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask).astype(np.int32)
    validate_inputs(ids, mask, images)
    media = _Media(cfg, images, processor)
    ids, mask, cut = _check_context(cfg, ids, mask, media, max_new_tokens, truncation)

    b = ids.shape[0]
    shapes = static_shapes(model, ids.shape[1], media.kind, media.frames, media.per_frame, max_new_tokens,
                           prefill_chunk, cut)
    ids, mask = _pad_columns(ids, shapes.width, 0), _pad_columns(mask, shapes.width, 0)
    steps, cache_size, chunk = shapes.steps, shapes.cache_size, shapes.prefill_chunk

    progs = programs(model, float(temperature), top_k, top_p)
    key = _as_key(rng)
    mesh = mesh_of(params)  # params sharded over a mesh: activations follow the logical rules too
    with activation_sharding(mesh):
        ids_d, mask_d = jnp.asarray(ids), jnp.asarray(mask)
        kw = dict(cache_size=cache_size, chunk=chunk, cut=cut)
        if media.kind == "video":
            vision, text_sum = _stream_video(progs, model, params, media, ids_d)
            token, lengths, cache = progs.prefill(params, ids_d, mask_d, None, None, vision, text_sum,
                                                  jnp.int32(media.frames), key, per_frame=media.per_frame, **kw)
            del vision, text_sum
        else:
            table = None if media.table is None else jnp.asarray(media.table)
            pixels = None if media.pixels is None else jnp.asarray(media.pixels)
            token, lengths, cache = progs.prefill(params, ids_d, mask_d, pixels, table, None, None, None, key, **kw)
        eos_table = np.zeros(cfg.llm.vocab_size, bool)
        eos_table[[e for e in eos if 0 <= e < cfg.llm.vocab_size]] = True
        if stream is None:
            out, _, cache = progs.decode(params, token, lengths, cache, key, jnp.int32(max_new_tokens),
                                         jnp.asarray(eos_table), jnp.int32(pad_token_id), steps=steps)
            del cache
            return np.asarray(out)[:, :max_new_tokens]
        return _streamed_decode(progs, params, token, lengths, cache, key, max_new_tokens, eos_table,
                                pad_token_id, stream, b)


def _streamed_decode(progs: Programs, params, token, lengths, cache, key, max_new_tokens, eos_table, pad, stream,
                     b) -> np.ndarray:
    """One jitted step per token; step t+1 is dispatched before the host reads token t."""
    out = np.full((b, max_new_tokens), pad, np.int32)
    done = np.zeros(b, bool)
    for t in range(max_new_tokens):
        nxt = None
        if t + 1 < max_new_tokens:
            nxt, cache = progs.step(params, token, lengths, cache, key, np.int32(t + 1))
        host = np.asarray(token)
        finished = eos_table[host]
        host = np.where(done, pad, host).astype(np.int32)
        out[:, t] = host
        stream(host.copy())
        done |= finished
        if done.all():
            break
        token = nxt
    return out
