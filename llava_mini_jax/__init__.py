"""llava-mini-jax: LLaVA-Mini (one vision token per image) in JAX/Flax.

Public API: `load_pretrained`, `generate`, `load_tokenizer`, `tokenize_conversation`, the model
class `LlavaMini` and the config classes. Everything else is internal.
"""
from .config import ClipVisionConfig, LlamaConfig, LlavaMiniConfig, RopeScaling, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from .loading import load_pretrained
from .model import LlavaMini, LlavaMiniOutput

__all__ = [
    "ClipVisionConfig", "LlamaConfig", "LlavaMiniConfig", "RopeScaling", "IGNORE_INDEX", "IMAGE_TOKEN_INDEX",
    "LlavaMini", "LlavaMiniOutput", "load_pretrained",
]
