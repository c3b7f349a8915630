"""LLaVA-Mini: CLIP -> compressor -> projector -> modality pre-fusion -> splice -> Llama.

    images ──CLIP──► F [N, d] ─┬─► compressor ─► projector ─► c [Q, D] ─┐
                               └─► projector ─► G [N, D] ───────────────┤ pre-fusion (4 Llama layers,
    input_ids ──embed──► raw [L, D] ────────────────────────────────────┘ causal: image first, then text)
                                                      │
       fused text [L, D] + compressed c' [Q, D]  ◄────┘
                                                      │
    splice c' (Q*T tokens) at the -200 placeholder ──► Llama LLM ──► logits [L - 1 + Q*T, V]

`mode="baseline"` (LLaVA-v1.5): no compressor, no pre-fusion; all projected patches are spliced
into raw text embeddings. Methods (STYLE: small, named for what they do): `encode_images`,
`embed_text`, `splice_inputs`, `__call__`, `prefill`, `decode_step`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from .clip import ClipVisionEncoder
from .compressor import Compressor
from .config import IMAGE_TOKEN_INDEX, GenerationConfig, LlavaMiniConfig
from .flops import vision_tokens
from .layers import constrain
from .llama import ACT, ATTENTION_IMPLS, AttentionMask, DecoderStack, LlamaLM, causal_by_lengths
from .loss import mean_cross_entropy
from .prefusion import prefusion_attention, prefusion_positions, stitch_tiles, text_key_mask
from .projector import Projector
from .splice import splice

Dtype = Any


@flax.struct.dataclass
class LlavaMiniOutput:
    """`logits [B, L', V]` float32; `attention_mask [B, L']` bool (True = real token: each row's
    tokens first, padding after); `loss` mean CE over supervised tokens (None without labels);
    `num_target_tokens` how many tokens the loss averaged; `labels [B, L']` the spliced labels."""

    logits: jnp.ndarray
    attention_mask: jnp.ndarray
    loss: Optional[jnp.ndarray] = None
    num_target_tokens: Optional[jnp.ndarray] = None
    labels: Optional[jnp.ndarray] = None


def _concrete(x) -> Optional[np.ndarray]:
    """x as numpy when its value is known now (not traced), else None."""
    if x is None or isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def validate_inputs(input_ids, attention_mask, images) -> None:
    """Raises ValueError for what the model cannot do right (checked only on concrete values)."""
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                         f"{tuple(input_ids.shape)}")
    if images is not None:
        if images.ndim not in (4, 5, 6):
            raise ValueError(f"images must be [B, P, 3, H, W] or [B, T, P, 3, H, W], got shape {tuple(images.shape)}")
        if images.shape[0] != input_ids.shape[0]:
            raise ValueError(f"images hold {images.shape[0]} rows but input_ids {input_ids.shape[0]}: one entry per "
                             "row (a row without placeholder ignores its entry)")
    ids, mask = _concrete(input_ids), _concrete(attention_mask)
    if ids is None:
        return
    real = np.ones(ids.shape, bool) if mask is None else mask.astype(bool)
    if mask is not None:
        prefix = np.arange(ids.shape[1])[None, :] < real.sum(1, keepdims=True)
        bad = np.nonzero((prefix != real).any(1))[0]
        if bad.size:
            raise ValueError(f"attention_mask row {int(bad[0])} is not right-padded (real tokens must come first; "
                             "left padding gives wrong results in the reference, library decision D4)")
    count = ((ids == IMAGE_TOKEN_INDEX) & real).sum(1)
    if images is None and count.any():
        raise ValueError(f"row {int(np.argmax(count > 0))} holds an image placeholder (-200) but images=None")
    if (count > 1).any():
        b = int(np.argmax(count > 1))
        raise ValueError(f"row {b} holds {int(count[b])} image placeholders (-200); at most one per row is "
                         "supported (library decision D3)")


class LlavaMini(nn.Module):
    """The LLaVA-Mini model (or LLaVA-v1.5 with `config.mode="baseline"`).

    `config` is the architecture. Runtime fields (no effect on the numbers, but each compiles its
    own program): `dtype` the compute dtype and `param_dtype` the parameter dtype (logits, softmax
    statistics, norms and the loss are float32 whatever they are); `scan_layers` stacks decoder and
    CLIP layers under a leading `layers` axis and runs them with `nn.scan`; `remat_policy` is
    `none`, `full` or `dots` (save matmul outputs); `video_chunk_size` frames go through CLIP,
    compressor and pre-fusion together; `attention_impl` is how the LLM attends: `xla`, `cudnn`
    (cuDNN's fused flash attention, GPU, bf16/fp16) or `auto` (cuDNN where it applies, else XLA;
    the LLM passes causality and per-row lengths, which both take exactly; the pre-fusion keeps its
    dense mask). `generation` (the checkpoint's EOS / pad ids, read by `generate`) is excluded from
    equality and hashing, so it never keys a compiled program.
    """

    config: LlavaMiniConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    scan_layers: bool = True
    remat_policy: str = "none"
    video_chunk_size: int = 16
    attention_impl: str = "auto"
    generation: GenerationConfig = dataclasses.field(default=GenerationConfig(), compare=False, hash=False)

    def setup(self):
        cfg = self.config
        if self.video_chunk_size < 1:
            raise ValueError(f"video_chunk_size={self.video_chunk_size}: expected >= 1")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl={self.attention_impl!r}: expected one of {ATTENTION_IMPLS}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.vision_tower = ClipVisionEncoder(cfg.vision, self.scan_layers, **kw)
        self.mm_projector = Projector(cfg.projector_type, cfg.llm.hidden_size, **kw)
        self.llm = LlamaLM(cfg.llm, self.scan_layers, self.remat_policy, attention_impl=self.attention_impl, **kw)
        if cfg.is_mini:
            self.compressor = Compressor(cfg.vision.hidden_size, cfg.compressor_size, cfg.compressor_heads, **kw)
            self.prefusion = DecoderStack(cfg.llm, cfg.prefusion_layers, self.scan_layers, self.remat_policy,
                                          attention_impl=self.attention_impl, **kw)

    # -- text -------------------------------------------------------------------------------------
    def embed_text(self, input_ids: jnp.ndarray) -> jnp.ndarray:
        """Raw token embeddings `[B, L, D]` (negative ids look up row 0)."""
        return self.llm.embed(input_ids)

    # -- vision -----------------------------------------------------------------------------------
    def vision_features(self, pixels: jnp.ndarray) -> jnp.ndarray:
        """Frozen CLIP: `[n, 3, H, W] -> [n, N, d]` (`[n, N+1, d]` for `cls_patch`), no gradient."""
        h = self.vision_tower(pixels, self.config.num_vision_layers_used)
        if self.config.vision_select_feature == "patch":
            h = h[:, 1:]
        h = constrain(h, ACT)
        self.sow("intermediates", "clip_features", h)
        return jax.lax.stop_gradient(h)

    def encode_frames(self, frames: jnp.ndarray, raw: jnp.ndarray, text_mask: jnp.ndarray):
        """One pre-fusion pass per frame. frames `[n, P, 3, H, W]` (P = 1, or r*r tiles + global),
        raw `[n, L, D]` text embeddings, text_mask `[n, L]` -> `(compressed [n, Q, D], fused [n, L, D])`."""
        n, parts = frames.shape[:2]
        feats = self.vision_features(frames.reshape((n * parts,) + frames.shape[2:]))
        feats = feats.reshape((n, parts) + feats.shape[1:])
        glob = feats[:, -1]
        projected_global = self.mm_projector(glob)
        if parts == 1:
            comp_in, prefix = glob, [projected_global]
        else:
            r = math.isqrt(parts - 1)
            if r * r + 1 != parts:
                raise ValueError(f"HD images have {parts} parts; expected r*r tiles + 1 global view")
            comp_in = stitch_tiles(feats[:, :-1], r)
            prefix = [self.mm_projector(comp_in), projected_global]
        compressed, _ = self.compressor(comp_in)
        self.sow("intermediates", "compressor_in", comp_in)
        self.sow("intermediates", "compressor_out", compressed)
        compressed = constrain(self.mm_projector(compressed), ACT)
        self.sow("intermediates", "proj_compressed", compressed)
        self.sow("intermediates", "proj_global", projected_global)
        x = constrain(jnp.concatenate(prefix + [compressed, raw.astype(self.dtype)], axis=1), ACT)
        num_image = x.shape[1] - raw.shape[1]
        positions, key_mask = prefusion_positions(num_image, text_mask)
        self.sow("intermediates", "prefusion_x", x)
        out, _ = self.prefusion(x, positions, prefusion_attention(key_mask))
        q = compressed.shape[1]
        fused = constrain(jnp.where(text_mask[..., None], raw.astype(out.dtype), out[:, num_image:]), ACT)
        return constrain(out[:, num_image - q:num_image], ACT), fused

    def _video_chunk(self, frames, raw, text_mask, valid):
        """One chunk of `c` frames for all B rows: frames `[B, c, P, 3, H, W]`, raw `[B, L, D]`,
        text_mask `[B, L]`, valid `[c]` (0 or 1: padding frames count for nothing) ->
        `(compressed [B, c, Q, D], fused text summed over the chunk's valid frames [B, L, D] float32)`."""
        b, c = frames.shape[:2]
        rep = lambda a: jnp.repeat(a, c, axis=0)  # noqa: E731  rows b-major, frames inner
        comp, fused = self.encode_frames(frames.reshape((b * c,) + frames.shape[2:]), rep(raw), rep(text_mask))
        fused = fused.reshape((b, c) + fused.shape[1:]).astype(jnp.float32) * valid.astype(jnp.float32)[None, :, None,
                                                                                                          None]
        return comp.reshape((b, c) + comp.shape[1:]), fused.sum(axis=1)

    def _encode_video_chunks(self, video, raw, text_mask):
        """video `[B, T, P, 3, H, W]` in chunks of `video_chunk_size` frames (all rows at once) ->
        `(tokens [B, T*Q, D], mean fused text [B, L, D] float32)`. Chunking changes nothing numerically."""
        b, t = video.shape[:2]
        c = min(self.video_chunk_size, t)
        chunks = -(-t // c)
        pad = chunks * c - t
        video = jnp.pad(video, [(0, 0), (0, pad)] + [(0, 0)] * (video.ndim - 2))
        video = video.reshape((b, chunks, c) + video.shape[2:]).swapaxes(0, 1)
        valid = (jnp.arange(chunks * c) < t).reshape(chunks, c).astype(jnp.float32)

        def step(mdl, text_sum, xs, raw, text_mask):
            frames, ok = xs
            comp, fused_sum = mdl._video_chunk(frames, raw, text_mask, ok)
            return text_sum + fused_sum, comp

        text_sum = jnp.zeros(raw.shape, jnp.float32)
        if chunks == 1:
            text_sum, comps = step(self, text_sum, (video[0], valid[0]), raw, text_mask)
            comps = comps[None]
        else:
            scan = nn.scan(step, variable_broadcast="params", variable_axes={"intermediates": 0},
                           split_rngs={"params": False}, in_axes=(0, nn.broadcast, nn.broadcast))
            text_sum, comps = scan(self, text_sum, (video, valid), raw, text_mask)
        comps = comps.swapaxes(0, 1).reshape((b, chunks * c) + comps.shape[3:])[:, :t]
        return comps.reshape(b, -1, comps.shape[-1]), text_sum / t

    def encode_video_chunk(self, frames, input_ids, valid):
        """One chunk of a video streamed from the host (`generate`): frames `[B, c, P, 3, H, W]`
        (CLIP-normalised), input_ids `[B, L]`, valid bool `[c]` (False: a padding frame) ->
        `(vision tokens [B, c*M, D], text [B, L, D] float32)`. LLaVA-Mini: M = Q compressed tokens per
        frame and the fused text summed over the valid frames (divide the sum over all chunks by the
        frame count: the mean of `encode_images`, same numbers). Baseline: M = P*N projected patches
        per frame and zeros (its text is the raw embedding)."""
        b, c = frames.shape[:2]
        d = self.config.llm.hidden_size
        if not self.config.is_mini:
            feats = self.vision_features(frames.reshape((-1,) + frames.shape[-3:]))
            return self.mm_projector(feats).reshape(b, -1, d), jnp.zeros(input_ids.shape + (d,), jnp.float32)
        raw = jax.lax.stop_gradient(self.embed_text(input_ids))
        comp, text_sum = self._video_chunk(frames, raw, text_key_mask(input_ids), valid)
        return comp.reshape(b, -1, d), text_sum

    def encode_images(self, images, input_ids, attention_mask=None, labels=None):
        """images `[B, P, 3, H, W]` or video `[B, T, P, 3, H, W]`, input_ids `[B, L]` ->
        `(vision tokens [B, M, D], text features [B, L, D])`.

        LLaVA-Mini: M = Q*T compressed tokens after pre-fusion (frame-major) and the fused text
        (the float32 mean over frames for video, SPEC A §6; gradients flow, library decision D6).
        Baseline: M = T*P*N projected patches and the raw text embeddings (with gradient).
        """
        del attention_mask  # the pre-fusion masks from ids, not from attention_mask (SPEC Q3)
        images = jnp.asarray(images)
        if images.ndim == 4:
            images = images[:, None]
        b = images.shape[0]
        if not self.config.is_mini:
            feats = self.vision_features(images.reshape((-1,) + images.shape[-3:]))
            tokens = self.mm_projector(feats).reshape(b, -1, self.config.llm.hidden_size)
            self.sow("intermediates", "proj_features", tokens)
            return tokens, self.embed_text(input_ids)
        raw = jax.lax.stop_gradient(self.embed_text(input_ids))  # SPEC Q5: no gradient to embed_tokens
        text_mask = text_key_mask(input_ids, labels)
        if images.ndim == 5:
            return self.encode_frames(images, raw, text_mask)
        tokens, text = self._encode_video_chunks(images, raw, text_mask)
        return tokens, text.astype(raw.dtype)

    # -- LLM --------------------------------------------------------------------------------------
    def splice_inputs(self, input_ids, attention_mask, images, labels=None):
        """`(embeds [B, L', D], mask [B, L'] bool, labels [B, L'])` for the LLM: vision tokens at
        each row's placeholder, or plain embeddings when `images is None` (L' = L)."""
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        if images is None:
            if labels is None:
                labels = jnp.full(input_ids.shape, -100, jnp.int32)
            return self.embed_text(input_ids), attention_mask.astype(bool), labels
        vision, text = self.encode_images(images, input_ids, attention_mask, labels)
        return splice(text, vision, input_ids, attention_mask, labels, self.config.max_length)

    def _llm_hidden(self, input_ids, attention_mask, images, labels):
        """`(hidden states [B, L', D] before the final norm, mask [B, L'], spliced labels [B, L'] or None)`."""
        input_ids = jnp.asarray(input_ids, jnp.int32)
        attention_mask = None if attention_mask is None else jnp.asarray(attention_mask)
        validate_inputs(input_ids, attention_mask, images)
        labels = None if labels is None else jnp.asarray(labels, jnp.int32)
        embeds, mask, spliced_labels = self.splice_inputs(input_ids, attention_mask, images, labels)
        embeds = constrain(embeds, ACT)
        self.sow("intermediates", "llm_inputs_embeds", embeds)
        positions = jnp.broadcast_to(jnp.arange(embeds.shape[1], dtype=jnp.int32), mask.shape)
        h, _ = self.llm.decoder(embeds, positions, causal_by_lengths(mask.sum(axis=1)))
        return h, mask, (None if labels is None else spliced_labels)

    def __call__(self, input_ids, attention_mask=None, images=None, labels=None) -> LlavaMiniOutput:
        """input_ids `[B, L]` (right-padded, at most one -200 per row), attention_mask `[B, L]`,
        images `[B, P, 3, H, W]` / `[B, T, P, 3, H, W]` / None, labels `[B, L]` (-100 ignored) or None.
        L' = min(L - 1 + Q*T, max_length) with images, L without."""
        h, mask, spliced_labels = self._llm_hidden(input_ids, attention_mask, images, labels)
        logits = self.llm.logits(h)
        if labels is None:
            return LlavaMiniOutput(logits=logits, attention_mask=mask)
        loss, count = mean_cross_entropy(logits, spliced_labels)
        return LlavaMiniOutput(logits=logits, attention_mask=mask, loss=loss, num_target_tokens=count,
                               labels=spliced_labels)

    def spliced_labels(self, input_ids, attention_mask, images, labels):
        """The labels `[B, L']` that `__call__` returns (and the loss reads), from the inputs' values and
        shapes alone: no vision tower and no LLM run. A training step counts each row's supervised
        tokens with it before any forward pass."""
        input_ids = jnp.asarray(input_ids, jnp.int32)
        labels = jnp.asarray(labels, jnp.int32)
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        if images is None:
            return labels
        shape = tuple(jnp.shape(images))
        frames, parts = (shape[1], shape[2]) if len(shape) == 6 else (1, shape[1] if len(shape) == 5 else 1)
        b, length = input_ids.shape
        text = jnp.zeros((b, length, 0), jnp.float32)
        vision = jnp.zeros((b, vision_tokens(self.config, parts, frames), 0), jnp.float32)
        return splice(text, vision, input_ids, jnp.asarray(attention_mask), labels, self.config.max_length)[2]

    def row_losses(self, input_ids, attention_mask, images, labels, chunk: int):
        """The training forward without `[B, L', V]` logits: the LM head and the cross-entropy run
        `chunk` positions at a time (`loss.chunked_cross_entropy`). Same inputs as `__call__` (labels
        required). Returns `(CE sum [B], supervised-token count [B], real tokens [B])`, float32."""
        h, mask, spliced_labels = self._llm_hidden(input_ids, attention_mask, images, labels)
        ce, count = self.llm.chunked_cross_entropy(h, spliced_labels, chunk)
        return ce, count, mask.sum(axis=1).astype(jnp.float32)

    # -- generation -------------------------------------------------------------------------------
    def prefill(self, embeds, mask, cache):
        """Runs the LLM over embeds `[B, T, D]` (mask `[B, T]`, real tokens first), writing keys and
        values into `cache` (`{"k","v"}: [layers, B, S, kv_heads, head_dim]`, S >= T, see
        `generate.init_kv_cache`) slots 0..T-1 in place. Attention is causal over each row's own
        length (no dense mask; the cache is only written). Returns `(logits at each row's last real
        token [B, V], cache)`: every row continues from its own last token (library decision D5)."""
        b, t = mask.shape
        size = cache["k"].shape[2]
        if t > size:
            raise ValueError(f"prefill of {t} tokens into a cache of {size} slots: expected a cache of >= {t}")
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        h, cache = self.llm.decoder(embeds, positions, causal_by_lengths(mask.sum(axis=1)), cache,
                                    jnp.zeros((), jnp.int32))
        return self.last_token_logits(h, mask), cache

    def prefill_chunk(self, embeds, key_valid, cache, start):
        """One chunk of a long prefill: embeds `[B, c, D]` at positions/slots `start..start+c-1`
        (written in place), attending every earlier slot that `key_valid [B, S]` marks real. Returns
        `(hidden states [B, c, D] before the final norm, cache)`; attention memory is `c x S`, not `S x S`."""
        b, c = embeds.shape[:2]
        size = cache["k"].shape[2]
        positions = start + jnp.arange(c, dtype=jnp.int32)
        allowed = jnp.arange(size)[None, :] <= positions[:, None]
        mask = (allowed[None] & key_valid[:, None, :])[:, None]
        return self.llm.decoder(embeds, jnp.broadcast_to(positions, (b, c)), AttentionMask(dense=mask), cache,
                                jnp.asarray(start, jnp.int32))

    def last_token_logits(self, hidden, mask):
        """Final norm + LM head at each row's last real token: hidden `[B, T, D]`, mask `[B, T]` -> `[B, V]`."""
        last = jnp.maximum(mask.sum(axis=1) - 1, 0)
        return self.llm.logits(jnp.take_along_axis(hidden, last[:, None, None], axis=1))[:, 0]

    def logits_of(self, hidden):
        """Final norm + LM head of hidden states `[B, D]` -> `[B, V]` float32."""
        return self.llm.logits(hidden[:, None])[:, 0]

    def decode_step(self, tokens, index, cache):
        """One token per row: tokens `[B]` enter as raw embeddings (SPEC A §12) at position/cache
        slot `index [B]` (each row's own length), written in place; each row attends its slots
        `0..index` (`key_lengths = index + 1`, no dense mask). Returns `(logits [B, V], cache)`."""
        index = jnp.asarray(index, jnp.int32)
        embeds = self.embed_text(tokens[:, None])
        mask = AttentionMask(key_lengths=index + 1, over_cache=True)
        h, cache = self.llm.decoder(embeds, index[:, None], mask, cache, index)
        return self.llm.logits(h)[:, 0], cache
