"""A small SentencePiece tokenizer trained offline for the demo (Vicuna/Llama-2 layout).

Trained on the demo's own texts (the vicuna_v1 system prompt, questions, answers and captions),
written as `tokenizer.model` + `tokenizer_config.json` (slow `LlamaTokenizer`, `legacy: false`),
so `load_tokenizer` and the `vicuna_v1` / `plain` templates treat it as Vicuna's. A few hundred
pieces instead of 32000 keeps the tiny model's embedding and LM head small.
"""
from __future__ import annotations

import io
import json
import os

import sentencepiece as spm

from llava_mini_jax.conversation import get_template


def train_tokenizer(directory: str, texts: list[str], vocab_size: int = 256, seed_repeats: int = 20) -> str:
    """Writes a tokenizer directory and returns its path. Deterministic for the same texts."""
    os.makedirs(directory, exist_ok=True)
    system = get_template("vicuna_v1").system
    lines = [system] + texts
    # the prompt layouts the templates produce (`</s>` is split out before SentencePiece sees text)
    chat = [f"{system} USER: \n{t} ASSISTANT: {t}" for t in texts] + [f"\n{t}\n" for t in texts]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter((lines + chat) * seed_repeats), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=False, character_coverage=1.0, split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        add_dummy_prefix=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, num_threads=1, minloglevel=2)
    with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
        f.write(model.getvalue())
    config = {"tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": True, "add_eos_token": False,
              "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
              "model_max_length": 512, "padding_side": "right"}
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(directory, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, f, indent=2)
    return directory
