"""Analytic FLOPs of one request, from the config alone (cross-checked against XLA's cost
analysis by `benchmarks/flops.py`: within 0.25% at the real sizes), and the real-size presets.

Counted: `2 x tokens x matmul weights` per layer plus `4 x (query, key) pairs x width` for
attention (all pairs: what a masked dense kernel computes; `causal=True` counts the causal half).
"""
from __future__ import annotations

from .config import ClipVisionConfig, LlamaConfig, LlavaMiniConfig, RopeScaling, projector_layers

VICUNA_7B = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
                        num_kv_heads=32, rms_norm_eps=1e-5, rope_theta=1e4, max_position_embeddings=4096,
                        pad_token_id=0)
LLAMA31_8B = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                         num_kv_heads=8, rms_norm_eps=1e-5, rope_theta=5e5,
                         rope_scaling=RopeScaling("llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                                  original_max_position_embeddings=8192),
                         max_position_embeddings=131072, pad_token_id=128004)


def real_size_config(llm: LlamaConfig = VICUNA_7B, mode: str = "mini", compressor_size: int = 1,
                     resolution_ratio: int = 1, **overrides) -> LlavaMiniConfig:
    """CLIP-L/336 + `llm`, mlp2x_gelu projector, select -2 `patch`, 4 pre-fusion layers (the paper's setup)."""
    return LlavaMiniConfig(llm=llm, vision=ClipVisionConfig(), mode=mode, projector_type="mlp2x_gelu",
                           vision_select_layer=-2, compressor_size=compressor_size, prefusion_layers=4,
                           resolution_ratio=resolution_ratio, **overrides)


def llama_layer_flops(c: LlamaConfig, tokens: int, keys: int, causal: bool = False) -> float:
    """One decoder layer over `tokens` queries and `keys` keys."""
    q_width, kv_width = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    weights = c.hidden_size * (2 * q_width + 2 * kv_width) + 3 * c.hidden_size * c.intermediate_size
    pairs = tokens * (tokens + 1) / 2 if causal else tokens * keys
    return 2.0 * tokens * weights + 4.0 * pairs * q_width


def vision_tokens(cfg: LlavaMiniConfig, parts: int = 1, frames: int = 1) -> int:
    """Tokens one request splices into the LLM: Q*T (LLaVA-Mini) or every patch of every view."""
    if cfg.is_mini:
        return cfg.tokens_per_frame * frames
    return cfg.tokens_per_frame * parts * frames


def request_flops(cfg: LlavaMiniConfig, parts: int = 1, text_tokens: int = 65, causal: bool = False) -> dict:
    """Prefill FLOPs of one image request by component (`clip`, `compressor`, `projector`,
    `prefusion`, `llm_prefill`): `text_tokens` input ids (prompt + the placeholder), `parts` views
    (1, or r*r tiles + global for HD); the first answer token's logits included."""
    v, c = cfg.vision, cfg.llm
    d, dm, n = v.hidden_size, c.hidden_size, v.num_patches
    t = n + 1
    clip_layer = 2.0 * t * (4 * d * d + 2 * d * v.intermediate_size) + 4.0 * t * t * d
    patch_embed = 2.0 * n * v.num_channels * v.patch_size ** 2 * d
    out = {"clip": parts * (patch_embed + cfg.num_vision_layers_used * clip_layer)}
    k = projector_layers(cfg.projector_type)
    per_token_projector = 2.0 * (d * dm + (k - 1) * dm * dm)
    spliced = text_tokens - 1 + vision_tokens(cfg, parts)
    if cfg.is_mini:
        q = cfg.compressor_size ** 2
        tiles = (parts - 1) * n
        keys = tiles if parts > 1 else n
        out["compressor"] = 2.0 * q * d * d * 2 + 2.0 * 2 * keys * d * d + 4.0 * q * keys * d
        out["projector"] = per_token_projector * (tiles + n + q)
        seq = tiles + n + q + text_tokens
        out["prefusion"] = cfg.prefusion_layers * llama_layer_flops(c, seq, seq, causal)
    else:
        out["projector"] = per_token_projector * parts * n
    out["llm_prefill"] = c.num_layers * llama_layer_flops(c, spliced, spliced + 1, causal) + 2.0 * dm * c.vocab_size
    return out


def decode_flops(cfg: LlavaMiniConfig, cache: int) -> float:
    """One decode step over a cache of `cache` slots."""
    c = cfg.llm
    return c.num_layers * llama_layer_flops(c, 1, cache) + 2.0 * c.hidden_size * c.vocab_size
