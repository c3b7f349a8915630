"""The PyTorch side of the latency comparison: LLaVA-Mini / LLaVA-v1.5 from HF transformers parts.

HF `CLIPVisionModel` (trimmed to the layers the select layer needs: the same work the JAX tower
does) and `LlamaForCausalLM`, built from our configs, plus what transformers lacks, written here in
torch after SPEC A: the compressor (`nn.MultiheadAttention`, §3), the projector (`nn.Sequential`,
§4), the pre-fusion (`LlamaDecoderLayer`s with the image-first mask and positions of §5) and the
splice (§7). `load_jax_params` copies the JAX model's parameters in through
`llava_mini_jax.hf_weights.params_to_hf`, so at tiny size the two are checked equal before any
timing compares them (tests/test_benchmarks.py).

    images ─CLIP─► F ─┬─ compressor ─ projector ─► c ─┐
                      └─ projector ─► G ──────────────┤ LlamaDecoderLayer x 4 ─► c', fused text
    input_ids ─embed─► raw ──────────────────────────┘
    splice c' at the placeholder ─► LlamaForCausalLM (SDPA, DynamicCache) ─► logits
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, DynamicCache
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from llava_mini_jax.compressor import sincos_pos_embed
from llava_mini_jax.config import IMAGE_TOKEN_INDEX, LlavaMiniConfig, projector_layers
from llava_mini_jax.hf_weights import CLIP_PREFIX, hf_to_params, params_to_hf


def hf_llama_config(cfg: LlavaMiniConfig, attn_implementation: str = "sdpa") -> HFLlamaConfig:
    """The HF `LlamaConfig` of the LLM (and of the pre-fusion layers, which share its sizes)."""
    d = cfg.llm.to_hf_dict()
    scaling = d.get("rope_scaling") or {}
    # transformers warns when the rope's original context exceeds max_position_embeddings (tiny configs)
    d["max_position_embeddings"] = max(d["max_position_embeddings"], scaling.get("original_max_position_embeddings", 0))
    return HFLlamaConfig(**d, attn_implementation=attn_implementation)


def hf_clip_config(cfg: LlavaMiniConfig, attn_implementation: str = "sdpa") -> CLIPVisionConfig:
    """CLIP with only the layers up to the selected hidden state (`hs[select_layer]` is then the
    last hidden state, before the unused `post_layernorm`)."""
    d = dict(cfg.vision.to_hf_dict(), num_hidden_layers=cfg.num_vision_layers_used)
    d.pop("architectures", None)
    d.pop("model_type", None)
    return CLIPVisionConfig(**d, attn_implementation=attn_implementation)


class TorchCompressor(nn.Module):
    """SPEC A §3: `Q = C*C` learned queries (plus the fixed sin-cos `pos_embed`) attend to the
    LayerNormed patches; keys get the bicubically resized pos-embed, values none."""

    def __init__(self, width: int, size: int, heads: int, eps: float = 1e-5):
        super().__init__()
        self.size = size
        self.query = nn.Parameter(torch.zeros(size * size, width))
        self.pos_embed = nn.Parameter(torch.from_numpy(sincos_pos_embed(width, size)), requires_grad=False)
        self.ln_q = nn.LayerNorm(width, eps=eps)
        self.ln_kv = nn.LayerNorm(width, eps=eps)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)

    def key_pos_embed(self, side: int) -> torch.Tensor:
        """`[side*side, d]`: the pos-embed grid resized (bicubic, align_corners=False, float32)."""
        if side == self.size:
            return self.pos_embed
        grid = self.pos_embed.float().reshape(1, self.size, self.size, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(side * side, -1).to(self.pos_embed.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, K, d] -> [B, Q, d]` (K a square number of patches)."""
        b, k, _ = x.shape
        side = math.isqrt(k)
        if side * side != k:
            raise ValueError(f"compressor input has {k} tokens, not a square grid")
        kv = self.ln_kv(x)
        query = (self.ln_q(self.query) + self.pos_embed).unsqueeze(0).expand(b, -1, -1)
        out, _ = self.attn(query, kv + self.key_pos_embed(side), kv, need_weights=False)
        return out


def projector(kind: str, width: int, hidden: int) -> nn.Sequential:
    """`linear` / `mlp{k}x_gelu` as the reference's `nn.Sequential` (GELUs at the odd indices)."""
    layers: list[nn.Module] = []
    for i in range(projector_layers(kind)):
        if i:
            layers.append(nn.GELU())
        layers.append(nn.Linear(width if i == 0 else hidden, hidden))
    if not layers:
        raise ValueError(f"mm_projector_type={kind!r}: the torch reference needs at least one Linear")
    return nn.Sequential(*layers)


def stitch_tiles(tiles: torch.Tensor, r: int) -> torch.Tensor:
    """HD tiles `[n, r*r, g*g, d]` -> one row-major `[n, (r*g)^2, d]` grid (SPEC A §5.4)."""
    n, _, k, d = tiles.shape
    g = math.isqrt(k)
    return tiles.reshape(n, r, r, g, g, d).permute(0, 1, 3, 2, 4, 5).reshape(n, r * g * r * g, d)


class TorchLlavaMini(nn.Module):
    """LLaVA-Mini (or LLaVA-v1.5 with `cfg.mode == "baseline"`) in PyTorch. Methods mirror the JAX
    model's: `encode_images`, `splice`, `forward` (all logits), `prefill` and `decode_step`."""

    def __init__(self, cfg: LlavaMiniConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.cfg = cfg
        llm_config = hf_llama_config(cfg, attn_implementation)
        self.vision_tower = CLIPVisionModel(hf_clip_config(cfg, attn_implementation))
        self.mm_projector = projector(cfg.projector_type, cfg.vision.hidden_size, cfg.llm.hidden_size)
        self.llm = LlamaForCausalLM(llm_config)
        if cfg.is_mini:
            self.compressor = TorchCompressor(cfg.vision.hidden_size, cfg.compressor_size, cfg.compressor_heads)
            self.prefusion_layers = nn.ModuleList(LlamaDecoderLayer(llm_config, i)
                                                  for i in range(cfg.prefusion_layers))
            self.prefusion_rope = LlamaRotaryEmbedding(llm_config)

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.lm_head.weight.dtype

    # -- pieces ------------------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Raw embeddings of `max(ids, 0)` (the placeholder looks up row 0)."""
        return self.llm.get_input_embeddings()(input_ids.clamp(min=0))

    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """`[n, 3, H, W] -> [n, N, d]`: the selected hidden state without CLS (`patch`)."""
        h = self.vision_tower(pixel_values=pixels.to(self.dtype)).last_hidden_state
        return h[:, 1:] if self.cfg.vision_select_feature == "patch" else h

    def prefuse(self, x: torch.Tensor, num_image: int, text_mask: torch.Tensor) -> torch.Tensor:
        """The pre-fusion layers over `[image (num_image) | text]` (SPEC A §5.7-10): masked text keys
        are never attended, positions skip them, attention is causal; no final norm."""
        b, s = x.shape[:2]
        key_mask = torch.cat([torch.zeros(b, num_image, dtype=torch.bool, device=x.device), text_mask], dim=1)
        positions = (torch.cumsum((~key_mask).long(), dim=1) - 1).masked_fill(key_mask, 1)
        causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
        allowed = causal[None, None] & ~key_mask[:, None, None, :]
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(~allowed,
                                                                                      torch.finfo(x.dtype).min)
        cos_sin = self.prefusion_rope(x, positions)
        for layer in self.prefusion_layers:
            out = layer(x, attention_mask=mask, position_ids=positions, position_embeddings=cos_sin)
            x = out[0] if isinstance(out, tuple) else out
        return x

    def encode_images(self, images: torch.Tensor, input_ids: torch.Tensor):
        """images `[B, P, 3, H, W]` -> `(vision tokens [B, M, D], text [B, L, D])`: compressed
        tokens after pre-fusion and the fused text (LLaVA-Mini), or every projected patch and the
        raw text (LLaVA-v1.5)."""
        b, parts = images.shape[:2]
        feats = self.vision_features(images.flatten(0, 1))
        feats = feats.reshape((b, parts) + feats.shape[1:])
        raw = self.embed(input_ids)
        if not self.cfg.is_mini:
            return self.mm_projector(feats.flatten(1, 2)), raw
        glob = feats[:, -1]
        if parts == 1:
            comp_in, prefix = glob, [self.mm_projector(glob)]
        else:
            comp_in = stitch_tiles(feats[:, :-1], math.isqrt(parts - 1))
            prefix = [self.mm_projector(comp_in), self.mm_projector(glob)]
        compressed = self.mm_projector(self.compressor(comp_in))
        x = torch.cat(prefix + [compressed, raw], dim=1)
        num_image = x.shape[1] - raw.shape[1]
        text_mask = input_ids <= 0
        out = self.prefuse(x, num_image, text_mask)
        fused = torch.where(text_mask[..., None], raw, out[:, num_image:])
        q = compressed.shape[1]
        return out[:, num_image - q:num_image], fused

    def splice(self, text: torch.Tensor, vision: torch.Tensor, input_ids: torch.Tensor,
               attention_mask: Optional[torch.Tensor] = None):
        """Row by row: the vision tokens replace the placeholder; rows right-padded with zeros.
        Returns `(embeds [B, L', D], mask [B, L'] long)`."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        rows = []
        for b in range(input_ids.shape[0]):
            n = int(attention_mask[b].sum())
            where = (input_ids[b, :n] == IMAGE_TOKEN_INDEX).nonzero()
            if len(where) == 0:
                rows.append(text[b, :n])
                continue
            p = int(where[0])
            rows.append(torch.cat([text[b, :p], vision[b].to(text.dtype), text[b, p + 1:n]]))
        width = max(r.shape[0] for r in rows)
        embeds = text.new_zeros((len(rows), width, text.shape[-1]))
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=text.device)
        for b, r in enumerate(rows):
            embeds[b, :r.shape[0]] = r
            mask[b, :r.shape[0]] = 1
        return embeds, mask

    def inputs(self, input_ids, images, attention_mask=None):
        """`(embeds, mask)` the LLM receives."""
        vision, text = self.encode_images(images, input_ids)
        return self.splice(text, vision, input_ids, attention_mask)

    # -- calls -------------------------------------------------------------------------------------
    def forward(self, input_ids, images, attention_mask=None):
        """`(logits [B, L', V] float32, mask [B, L'])` over the whole spliced sequence."""
        embeds, mask = self.inputs(input_ids, images, attention_mask)
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
        return out.logits.float(), mask

    def prefill(self, input_ids, images):
        """First-token step of generation: `(logits at the last token [B, V] float32, KV cache,
        spliced length)`. Rows must be of equal spliced length (the benchmark's identical prompts)."""
        embeds, mask = self.inputs(input_ids, images)
        if not bool(mask.all()):
            raise ValueError("prefill needs rows of equal spliced length (one placeholder in every row)")
        cache = DynamicCache(config=self.llm.config)
        h = self.llm.model(inputs_embeds=embeds, past_key_values=cache, use_cache=True).last_hidden_state
        return self.llm.lm_head(h[:, -1]).float(), cache, embeds.shape[1]

    def decode_step(self, tokens: torch.Tensor, cache, position: int):
        """One token per row (raw embedding) at `position`; returns `(logits [B, V] float32, cache)`."""
        pos = torch.full((tokens.shape[0], 1), position, dtype=torch.long, device=tokens.device)
        h = self.llm.model(input_ids=tokens[:, None], position_ids=pos, past_key_values=cache,
                           use_cache=True).last_hidden_state
        return self.llm.lm_head(h[:, -1]).float(), cache


# -- weights ---------------------------------------------------------------------------------------------
def torch_name(hf_name: str, cfg: LlavaMiniConfig, clip_prefix: str) -> Optional[str]:
    """Where a checkpoint tensor lives in `TorchLlavaMini` (None: not part of it, i.e. CLIP layers
    past the select layer)."""
    if hf_name.startswith(CLIP_PREFIX):
        local = hf_name[len(CLIP_PREFIX):]
        if local.startswith("encoder.layers.") and int(local.split(".")[2]) >= cfg.num_vision_layers_used:
            return None
        return clip_prefix + local
    if hf_name.startswith("model.mm_projector."):
        rest = hf_name[len("model.mm_projector."):]
        return "mm_projector." + ("0." + rest if cfg.projector_type == "linear" else rest)
    if hf_name.startswith(("model.compressor.", "model.prefusion_layers.")):
        return hf_name[len("model."):]
    return "llm." + hf_name


def _clip_prefix(names: Iterable[str]) -> str:
    """`vision_tower.` or `vision_tower.vision_model.`, whichever this transformers version uses."""
    names = set(names)
    for prefix in ("vision_tower.vision_model.", "vision_tower."):
        if prefix + "embeddings.class_embedding" in names:
            return prefix
    raise ValueError("cannot find the CLIP class embedding in the torch model's state dict")


def load_jax_params(module: TorchLlavaMini, params) -> TorchLlavaMini:
    """Copies the JAX model's `params` (any layout the config describes) into `module`, through
    the checkpoint names of `params_to_hf`; raises ValueError if any torch weight is left unset."""
    cfg = module.cfg
    state = module.state_dict()
    prefix = _clip_prefix(state)
    loaded = {}
    host = {k: np.asarray(v, np.float32) for k, v in params_to_hf(_host_tree(params), cfg)}
    for hf_name, array in host.items():
        name = torch_name(hf_name, cfg, prefix)
        if name is None:
            continue
        if name not in state:
            raise ValueError(f"{hf_name} maps to {name}, which the torch model does not have")
        if tuple(state[name].shape) != array.shape:
            raise ValueError(f"{hf_name}: shape {array.shape} != torch {name} {tuple(state[name].shape)}")
        loaded[name] = torch.from_numpy(array)
    buffers = {n for n, _ in module.named_buffers()}
    missing = sorted(set(state) - set(loaded) - buffers)
    if missing:
        raise ValueError(f"torch weights not covered by the JAX params: {missing[:10]}")
    with torch.no_grad():
        for name, value in loaded.items():
            state[name].copy_(value)
    return module


def _host_tree(params):
    import jax
    return jax.tree.map(np.asarray, params)


def random_weights(cfg: LlavaMiniConfig, seed: int = 0) -> dict:
    """JAX params (numpy, float32, the config's layer layout) with O(1) activations, so a 1e-4
    comparison means something: Linear weights N(0, 1/fan_in), biases N(0, 0.1^2), norm weights
    1 + N(0, 0.1^2), embeddings / queries / CLIP class and position embeddings N(0, 1), the
    compressor's pos_embed its fixed sin-cos table. Drawn in the checkpoint layout (`[out, in]`)."""
    import jax
    from llava_mini_jax.loading import abstract_params
    from llava_mini_jax.model import LlavaMini
    from flax import linen as nn

    shapes = jax.tree.map(lambda s: tuple(s.shape), nn.unbox(abstract_params(LlavaMini(cfg))))
    zeros = jax.tree.map(lambda s: np.zeros(s, np.float32), shapes, is_leaf=lambda x: isinstance(x, tuple))
    rng = np.random.default_rng(seed)
    weights = {}
    for name, like in params_to_hf(zeros, cfg):
        weights[name] = _draw(name, like.shape, rng, cfg)
    return hf_to_params(weights.__getitem__, cfg, shapes, dtype=np.float32)


def _draw(name: str, shape: tuple, rng: np.random.Generator, cfg: LlavaMiniConfig) -> np.ndarray:
    normal = lambda std=1.0: (std * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
    if name.endswith("pos_embed"):
        return sincos_pos_embed(cfg.vision.hidden_size, cfg.compressor_size)
    if name.endswith(("embed_tokens.weight", "compressor.query", "class_embedding", "position_embedding.weight")):
        return normal()
    if name.endswith("bias"):
        return normal(0.1)
    if len(shape) == 1:  # LayerNorm / RMSNorm weights
        return 1.0 + normal(0.1)
    fan_in = int(np.prod(shape[1:]))
    return normal(fan_in ** -0.5)
