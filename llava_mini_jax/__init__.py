"""llava-mini-jax: LLaVA-Mini (one vision token per image) in JAX/Flax.

Public API: `load_pretrained`, `generate`, `load_tokenizer`, `tokenize_conversation`, `evaluate`,
the model class `LlavaMini`, the config classes and `GenerationConfig`. Everything else is internal (importable from its
module, but not promised stable).
"""
from .config import (IGNORE_INDEX, IMAGE_TOKEN_INDEX, ClipVisionConfig, GenerationConfig, LlamaConfig, LlavaMiniConfig,
                     RopeScaling)
from .conversation import TokenizedSample, tokenize_conversation
from .eval.model_answers import evaluate_model as evaluate
from .generate import generate
from .loading import load_pretrained
from .model import LlavaMini, LlavaMiniOutput
from .tokenizer import Tokenizer, load_tokenizer
from .video import get_seq_frames

__all__ = [
    "ClipVisionConfig", "GenerationConfig", "LlamaConfig", "LlavaMiniConfig", "RopeScaling", "IGNORE_INDEX", "IMAGE_TOKEN_INDEX",
    "LlavaMini", "LlavaMiniOutput", "load_pretrained", "generate", "load_tokenizer", "Tokenizer", "tokenize_conversation",
    "TokenizedSample", "get_seq_frames", "evaluate",
]
