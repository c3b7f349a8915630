"""`make_answer_fn` through a real `ChatSession` with a recording stand-in for the model: the user
turn, the conversation template, the token ids and the generation budget each benchmark gets."""

import types

import numpy as np
import pytest

import eval_synthetic as syn
from llava_mini_jax import chat
from llava_mini_jax.config import GenerationConfig
from llava_mini_jax.conversation import get_template, tokenizer_image_token
from llava_mini_jax.eval import registry
from llava_mini_jax.eval.model_answers import make_answer_fn
from llava_mini_jax.tokenizer import load_tokenizer
from conftest import FIXTURES

TOKENIZERS = FIXTURES / "preprocess" / "tokenizers"
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions."
)


@pytest.fixture(scope="module")
def llama31():
    return load_tokenizer(TOKENIZERS / "llama31_alwaysgen")


@pytest.fixture
def recorded(monkeypatch):
    """Replaces `generate` in the chat layer: records each call's prompt rows and budget."""
    calls = []

    def fake_generate(model, params, ids, attention_mask=None, max_new_tokens=32, **kwargs):
        rows = [list(map(int, r[m.astype(bool)])) for r, m in zip(np.asarray(ids), np.asarray(attention_mask))]
        calls.append({"ids": rows, "max_new_tokens": max_new_tokens})
        return np.full((len(rows), 1), -1, np.int32)

    monkeypatch.setattr(chat, "generate", fake_generate)
    return calls


def llama31_ids(tokenizer, query):
    """The Llama-3.1 chat prompt of a one-image query, rendered by the tokenizer's chat template."""
    system = get_template("llava_llama_3_1").system
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "<image>\n" + query}]
    return tokenizer_image_token(tokenizer.apply_chat_template(messages, add_generation_prompt=True), tokenizer)


def stand_in_session(tokenizer, tmp_path):
    config = types.SimpleNamespace(
        vision=types.SimpleNamespace(image_size=336), eos_token_ids=[], image_aspect_ratio="pad", resolution_ratio=1,
        llm=types.SimpleNamespace(vocab_size=tokenizer.vocab_size),
    )
    model = types.SimpleNamespace(config=config, generation=GenerationConfig())
    session = chat.ChatSession(tmp_path, model=model, params={}, tokenizer=tokenizer)

    def pixels(image=None, video=None, max_frames=None):  # no decoding: shapes only
        return np.zeros((1, 3, 4, 4), np.float32) if image else np.zeros((2, 1, 3, 4, 4), np.float32)

    session.load_pixels = pixels
    return session


BUDGETS = {
    "vqav2": 128, "gqa": 128, "vizwiz": 128, "textvqa": 128, "pope": 128, "mme": 128, "seed": 128,
    "llava_bench": 128, "mmvet": 128, "egoschema": 128,
    "scienceqa": 1024, "mmbench": 1024, "mmbench_cn": 1024, "mvbench": 1024, "mlvu": 1024,
    "msvd_qa": 1024, "msrvtt_qa": 1024, "activitynet_qa": 1024, "vcgbench": 1024,
}


def test_every_benchmark_has_the_reference_budget():
    assert {name: b.max_new_tokens for name, b in registry.BENCHMARKS.items()} == BUDGETS


@pytest.mark.parametrize("bench, builder", [("pope", syn.pope), ("mvbench", syn.mvbench), ("mmbench", syn.mmbench)])
def test_checkpoint_template_user_turn_and_budget(bench, builder, llama31, recorded, tmp_path):
    session = stand_in_session(llama31, tmp_path)
    assert session.template == "llava_llama_3_1"
    items = registry.get(bench).read(builder(tmp_path), registry.get(bench).default_split)
    make_answer_fn(session, registry.get(bench))(items)
    [call] = recorded  # one pixel shape: one padded generate call
    assert call["max_new_tokens"] == BUDGETS[bench]
    # the answer_fn may reorder nothing: one row per item, in order, each its own query
    assert call["ids"] == [llama31_ids(llama31, item.query) for item in items]


def test_egoschema_is_asked_in_vicuna_v1_even_with_a_llama31_checkpoint(llama31, recorded, tmp_path):
    session = stand_in_session(llama31, tmp_path)
    bench = registry.get("egoschema")
    items = bench.read(syn.egoschema(tmp_path), "subset")
    make_answer_fn(session, bench, max_new_tokens=None)(items[:1])
    query = items[0].query
    assert query.startswith("You are a helpful expert in first person view video analysis.")
    prompt = f"{VICUNA_SYSTEM} USER: <image>\n{query} ASSISTANT:"
    assert recorded[0]["ids"] == [tokenizer_image_token(prompt, llama31)]
    assert recorded[0]["max_new_tokens"] == 128
    assert session.template == "llava_llama_3_1"  # the session itself is untouched
    # the sensible variant: the checkpoint's own template
    make_answer_fn(session, bench, fix_reference_prompts=True)(items[:1])
    assert recorded[1]["ids"] == [llama31_ids(llama31, query)]


def test_explicit_budget_overrides_the_reference(llama31, recorded, tmp_path):
    session = stand_in_session(llama31, tmp_path)
    bench = registry.get("msvd_qa")
    items = bench.read(syn.msvd_qa(tmp_path), "test")
    assert make_answer_fn(session, bench, max_new_tokens=5)(items) == ["", ""]
    assert recorded[0]["max_new_tokens"] == 5
