"""Frozen configuration dataclasses: CLIP vision tower, Llama decoder, and the LLaVA-Mini model.

Each config reads and writes the Hugging Face `config.json` dictionaries of the PyTorch original
(`from_hf_dict` / `to_hf_dict`), so a checkpoint directory converts both ways without loss.
`LlavaMiniConfig` is the architecture only (it keys compiled programs); runtime choices (scan over
layers, remat, video chunk size) are fields of the `LlavaMini` module, and the generation settings
a checkpoint carries (EOS and pad ids) are a `GenerationConfig`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100

MINI = "mini"
BASELINE = "baseline"  # LLaVA-v1.5: every projected patch token goes to the LLM


def _replace_known(cls, d: dict, **fixed):
    """Builds `cls` from the keys of `d` that are fields of `cls`, plus `fixed`."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in names}
    kwargs.update(fixed)
    return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class ClipVisionConfig:
    """CLIP ViT vision tower. Defaults: openai/clip-vit-large-patch14-336."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    patch_size: int = 14
    image_size: int = 336
    num_channels: int = 3
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.hidden_act not in ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"CLIP hidden_act={self.hidden_act!r}: expected 'quick_gelu' or 'gelu'")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"CLIP hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"CLIP image_size {self.image_size} is not divisible by patch_size {self.patch_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid(self) -> int:
        """Patches per side, `g = image_size / patch_size`."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """`N = g * g` patch tokens per view (the CLS token not counted)."""
        return self.grid * self.grid

    @classmethod
    def from_hf_dict(cls, d: dict) -> "ClipVisionConfig":
        """From a `CLIPVisionConfig` dict or a full `CLIPModel` dict (its `vision_config`)."""
        if "vision_config" in d and isinstance(d["vision_config"], dict):
            d = d["vision_config"]
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads") if k not in d]
        if missing:
            raise ValueError(f"CLIP vision config lacks {missing}; keys present: {sorted(d)}")
        return cls(
            hidden_size=d["hidden_size"],
            intermediate_size=d.get("intermediate_size", 4 * d["hidden_size"]),
            num_layers=d["num_hidden_layers"],
            num_heads=d["num_attention_heads"],
            patch_size=d.get("patch_size", 14),
            image_size=d.get("image_size", 224),
            num_channels=d.get("num_channels", 3),
            hidden_act=d.get("hidden_act", "quick_gelu"),
            layer_norm_eps=d.get("layer_norm_eps", 1e-5),
        )

    def to_hf_dict(self) -> dict:
        return {
            "architectures": ["CLIPVisionModel"],
            "model_type": "clip_vision_model",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "patch_size": self.patch_size,
            "image_size": self.image_size,
            "num_channels": self.num_channels,
            "hidden_act": self.hidden_act,
            "layer_norm_eps": self.layer_norm_eps,
            "attention_dropout": 0.0,
        }


# The hub id the released checkpoints name in `mm_vision_tower`; its architecture is built in so
# nothing needs downloading (SPEC A §1; library decision D12).
BUILTIN_VISION_CONFIGS = {
    "openai/clip-vit-large-patch14-336": ClipVisionConfig(),
    "openai/clip-vit-large-patch14": ClipVisionConfig(image_size=224),
}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """`rope_scaling` of a Llama config: `default`, `linear` or `llama3`."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        if self.rope_type not in ("default", "linear", "llama3"):
            raise ValueError(f"rope_scaling type {self.rope_type!r}: expected 'default', 'linear' or 'llama3'")

    @classmethod
    def from_hf_dict(cls, d: Optional[dict]) -> Optional["RopeScaling"]:
        if d is None:
            return None
        kind = d.get("rope_type", d.get("type", "default"))
        return _replace_known(cls, d, rope_type=kind)

    def to_hf_dict(self) -> dict:
        if self.rope_type == "linear":
            return {"rope_type": "linear", "factor": self.factor}
        if self.rope_type == "default":
            return {"rope_type": "default"}
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """A Llama decoder: the LLM and (same sizes, separate weights) the pre-fusion layers."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: Optional[int] = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    pad_token_id: Optional[int] = None

    def __post_init__(self):
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                                 f"{self.num_heads}")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_attention_heads {self.num_heads} is not a multiple of num_key_value_heads "
                             f"{self.num_kv_heads}")

    @classmethod
    def from_hf_dict(cls, d: dict) -> "LlamaConfig":
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act={d['hidden_act']!r}: only 'silu' Llama MLPs are supported")
        for flag in ("attention_bias", "mlp_bias"):
            if d.get(flag):
                raise ValueError(f"{flag}=true is not supported (Llama/LLaVA-Mini use no biases)")
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if k not in d]
        if missing:
            raise ValueError(f"config.json lacks Llama fields {missing}")
        # transformers >= 5 writes `rope_parameters` (with rope_theta inside) instead of rope_theta/rope_scaling
        rope = d["rope_parameters"] if isinstance(d.get("rope_parameters"), dict) else {}
        scaling = d.get("rope_scaling")
        if scaling is None and rope.get("rope_type", rope.get("type", "default")) != "default":
            scaling = rope
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=d["num_attention_heads"],
            num_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            head_dim=d.get("head_dim"),
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=d.get("rope_theta", rope.get("rope_theta", 10000.0)),
            rope_scaling=RopeScaling.from_hf_dict(scaling),
            max_position_embeddings=d.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            pad_token_id=d.get("pad_token_id"),
        )

    def to_hf_dict(self) -> dict:
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None if self.rope_scaling is None else self.rope_scaling.to_hf_dict(),
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "pad_token_id": self.pad_token_id,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
        }


@dataclasses.dataclass(frozen=True)
class LlavaMiniConfig:
    """The whole model. `mode="mini"` is LLaVA-Mini; `mode="baseline"` is LLaVA-v1.5 (no compressor,
    no pre-fusion, all projected patch tokens spliced), used for stage-1 training and as the
    efficiency baseline.

    Numbers that matter: `compressor_size` C gives Q = C*C vision tokens per frame; the compressor
    width is the vision width (`vision.hidden_size`, library decision D1) with `compressor_heads`
    heads. `max_length` is the reference's `tokenizer_model_max_length` (spliced sequences are cut to
    it; None = no cut).

    Runtime settings (`scan_layers`, `remat_policy`, `video_chunk_size`) are fields of the
    `LlavaMini` module and generation settings a `GenerationConfig`: neither is part of this config.
    """

    llm: LlamaConfig = dataclasses.field(default_factory=LlamaConfig)
    vision: ClipVisionConfig = dataclasses.field(default_factory=ClipVisionConfig)
    mode: str = MINI
    projector_type: str = "mlp2x_gelu"
    vision_select_layer: int = -2
    vision_select_feature: str = "patch"
    compressor_size: int = 1
    compressor_heads: int = 8
    prefusion_layers: int = 4
    max_length: Optional[int] = None
    resolution_ratio: int = 1
    image_aspect_ratio: str = "pad"
    vision_tower: str = "openai/clip-vit-large-patch14-336"

    def __post_init__(self):
        if self.mode not in (MINI, BASELINE):
            raise ValueError(f"mode={self.mode!r}: expected {MINI!r} (LLaVA-Mini) or {BASELINE!r} (LLaVA-v1.5)")
        if self.vision_select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"mm_vision_select_feature={self.vision_select_feature!r}: expected 'patch' or "
                             "'cls_patch'")
        if self.mode == MINI and self.vision_select_feature != "patch":
            raise ValueError("mm_vision_select_feature='cls_patch' cannot feed the compressor (N+1 keys are not a "
                             "square grid; the reference crashes, SPEC Q2); use 'patch', or mode='baseline'")
        n = self.vision.num_layers
        if not -(n + 1) <= self.vision_select_layer <= n:
            raise ValueError(f"mm_vision_select_layer={self.vision_select_layer} out of range for a {n}-layer CLIP "
                             f"(hidden states -{n + 1}..{n})")
        projector_layers(self.projector_type)  # validates
        if self.mode == MINI:
            if self.compressor_size < 1:
                raise ValueError(f"compressor_size={self.compressor_size}: expected >= 1")
            if self.vision.hidden_size % self.compressor_heads or (self.vision.hidden_size // 4) * 4 != \
                    self.vision.hidden_size:
                raise ValueError(f"compressor width {self.vision.hidden_size} must be divisible by "
                                 f"{self.compressor_heads} heads and by 4 (sin-cos pos-embed)")

    @property
    def is_mini(self) -> bool:
        return self.mode == MINI

    @property
    def tokens_per_frame(self) -> int:
        """Vision tokens each frame (or image) puts into the LLM: Q = C*C, or every patch in baseline mode."""
        if self.is_mini:
            return self.compressor_size ** 2
        return self.vision.num_patches + (self.vision_select_feature == "cls_patch")

    @property
    def num_vision_layers_used(self) -> int:
        """CLIP layers that run: the hidden state `hs[select_layer]` needs this many."""
        s = self.vision_select_layer
        return s if s >= 0 else self.vision.num_layers + 1 + s

    @classmethod
    def from_hf_dict(cls, d: dict, vision: Optional[ClipVisionConfig] = None, **overrides) -> "LlavaMiniConfig":
        """From an HF LLaVA-Mini (`llava_mini_llama`) or LLaVA (`llava_llama`) `config.json` dict.

        `vision` is the resolved CLIP config (the HF config only names the tower); when None, a
        `vision_config` entry of `d` (written by our converter) is used.
        """
        model_type = d.get("model_type")
        if model_type not in ("llava_mini_llama", "llava_llama"):
            raise ValueError(f"model_type={model_type!r}: expected 'llava_mini_llama' (LLaVA-Mini) or 'llava_llama' "
                             "(LLaVA-v1.5)")
        if vision is None:
            if "vision_config" not in d:
                raise ValueError("no vision config: pass `vision=` or add a `vision_config` entry")
            vision = ClipVisionConfig.from_hf_dict(d["vision_config"])
        if d.get("mm_hidden_size") not in (None, vision.hidden_size):
            raise ValueError(f"mm_hidden_size={d['mm_hidden_size']} disagrees with the vision tower width "
                             f"{vision.hidden_size}")
        mini = d.get("compressor_size") is not None
        kw: dict[str, Any] = dict(
            llm=LlamaConfig.from_hf_dict(d),
            vision=vision,
            mode=MINI if mini else BASELINE,
            projector_type=d.get("mm_projector_type", "linear"),
            vision_select_layer=d.get("mm_vision_select_layer", -1),
            vision_select_feature=d.get("mm_vision_select_feature", "patch"),
            max_length=d.get("tokenizer_model_max_length"),
            resolution_ratio=d.get("resolution_ratio", 1) or 1,
            image_aspect_ratio=d.get("image_aspect_ratio", "square") or "square",
            vision_tower=d.get("mm_vision_tower", ""),
        )
        if mini:
            kw.update(compressor_size=d["compressor_size"], prefusion_layers=d.get("prefusion_layer_num", 4))
        if d.get("tokenizer_padding_side", "right") != "right":
            raise ValueError(f"tokenizer_padding_side={d['tokenizer_padding_side']!r}: only 'right' is supported "
                             "(library decision D4)")
        kw.update(overrides)
        return cls(**kw)

    def to_hf_dict(self) -> dict:
        """The transformers-4.x `config.json` the reference reads (plus `vision_config`)."""
        d = self.llm.to_hf_dict()
        d.update({
            "architectures": ["LlavaMiniLlamaForCausalLM" if self.is_mini else "LlavaLlamaForCausalLM"],
            "model_type": "llava_mini_llama" if self.is_mini else "llava_llama",
            "mm_hidden_size": self.vision.hidden_size,
            "mm_projector_type": self.projector_type,
            "mm_vision_select_layer": self.vision_select_layer,
            "mm_vision_select_feature": self.vision_select_feature,
            "mm_vision_tower": self.vision_tower,
            "mm_patch_merge_type": "flat",
            "mm_use_im_start_end": False,
            "mm_use_im_patch_token": False,
            "use_mm_proj": True,
            "image_aspect_ratio": self.image_aspect_ratio,
            "tokenizer_model_max_length": self.max_length,
            "tokenizer_padding_side": "right",
            "vision_config": self.vision.to_hf_dict(),
        })
        if self.is_mini:
            d.update(compressor_size=self.compressor_size, prefusion_layer_num=self.prefusion_layers,
                     resolution_ratio=self.resolution_ratio)
        return d


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """What a checkpoint says about generating: `eos_token_ids` (a row ends at any of them) and
    `pad_token_id` (what fills a finished row; None: the LLM's pad id, else 0). Read from
    `generation_config.json`, else `config.json` (as HF `generate`); not part of the model config,
    so changing it never recompiles."""

    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: Optional[int] = None

    def __post_init__(self):
        object.__setattr__(self, "eos_token_ids", tuple(int(i) for i in self.eos_token_ids))

    @classmethod
    def from_hf_dict(cls, d: dict) -> "GenerationConfig":
        """From a `generation_config.json` or `config.json` dict (`eos_token_id`: an id or a list)."""
        eos = d.get("eos_token_id")
        return cls(eos_token_ids=() if eos is None else tuple(eos if isinstance(eos, (list, tuple)) else [eos]),
                   pad_token_id=d.get("pad_token_id"))

    def add_to(self, hf_config: dict) -> dict:
        """`hf_config` (a `config.json` dict) with these settings where it has none (its own
        `pad_token_id`, the LLM's, stays)."""
        return {**hf_config, **{k: v for k, v in self.to_hf_dict().items() if hf_config.get(k) is None}}

    def to_hf_dict(self) -> dict:
        """The `eos_token_id` / `pad_token_id` entries (for `generation_config.json` or `config.json`)."""
        d: dict[str, Any] = {}
        if self.eos_token_ids:
            d["eos_token_id"] = self.eos_token_ids[0] if len(self.eos_token_ids) == 1 else list(self.eos_token_ids)
        if self.pad_token_id is not None:
            d["pad_token_id"] = self.pad_token_id
        return d


def projector_layers(projector_type: str) -> int:
    """Number of Linear layers of an `mm_projector_type`: `linear` -> 1, `mlp{k}x_gelu` -> k, `identity` -> 0."""
    if projector_type == "linear":
        return 1
    if projector_type == "identity":
        return 0
    if projector_type.startswith("mlp") and projector_type.endswith("x_gelu"):
        k = projector_type[3:-len("x_gelu")]
        if k.isdigit() and int(k) >= 1:
            return int(k)
    raise ValueError(f"mm_projector_type={projector_type!r}: expected 'linear', 'identity' or 'mlp<k>x_gelu'")
