"""Tests for llava_mini_jax.conversation.

Reference behaviour is pinned by the fixtures (outputs of the PyTorch reference under transformers
4.43): every sample of expected_{plain,vicuna_v1,vicuna_v1_maxlen48,llama31_correct}.json and every
prompt of inference_prompts.json, compared exactly. The Llama-3.1 layout is also checked by hand on
a byte-level tokenizer built in the test (token id = byte value), so expectations are written out
byte by byte rather than computed with the library.
"""

import json
import pathlib

import numpy as np
import pytest

from llava_mini_jax import conversation as conv
from llava_mini_jax.tokenizer import load_tokenizer
from test_tokenizer import build_byte_tokenizer

HERE = pathlib.Path(__file__).parent
PREPROCESS = HERE / "fixtures" / "preprocess"
TOKENIZERS = PREPROCESS / "tokenizers"
IGNORE, IMAGE = -100, -200


def read(name):
    return json.loads((PREPROCESS / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer_cache():
    cache = {}

    def get(rel_path):
        if rel_path not in cache:
            cache[rel_path] = load_tokenizer(PREPROCESS / rel_path)
        return cache[rel_path]
    return get


@pytest.fixture(scope="module")
def vicuna(tokenizer_cache):
    return tokenizer_cache("tokenizers/vicuna")


@pytest.fixture(scope="module")
def llama31(tokenizer_cache):
    return tokenizer_cache("tokenizers/llama31")


# ------------------------------------------------------------------------------------------------
# Training samples against the reference fixtures
# ------------------------------------------------------------------------------------------------
EXPECTED = {  # fixture file -> template the library is called with
    "expected_plain.json": "plain",
    "expected_vicuna_v1.json": "vicuna_v1",
    "expected_vicuna_v1_maxlen48.json": "vicuna_v1",
    "expected_llama31_correct.json": "llava_llama_3_1",
}
CASES = [(name, sid) for name in EXPECTED for sid in read(name)["samples"]]


@pytest.mark.parametrize("name, sample_id", CASES, ids=[f"{n[9:-5]}/{s}" for n, s in CASES])
def test_matches_fixture(tokenizer_cache, name, sample_id):
    data = read(name)
    expected = data["samples"][sample_id]
    tok = tokenizer_cache(data["meta"]["tokenizer"])
    out = conv.tokenize_conversation(expected["conversations"], tok, template=EXPECTED[name],
                                     has_image=expected["has_image"])
    assert out.input_ids.dtype == np.int64 and out.labels.dtype == np.int64
    assert out.input_ids.tolist() == expected["input_ids"]
    assert out.labels.tolist() == expected["labels"]
    assert out.fully_masked == expected["fully_masked"]
    assert out.prompt == expected["prompt"]


def test_fixture_counts():
    assert len(CASES) == 21 + 30 + 30 + 30
    masked = [s for s, e in read("expected_vicuna_v1.json")["samples"].items() if e["fully_masked"]]
    assert sorted(masked) == ["adv_eos_in_question", "adv_role_in_question", "img_empty_answer"]


def _raw_samples():
    return {s["id"]: s for s in read("samples.json")}


def test_moving_tags_reproduces_the_fixture_turns():
    """preprocess_multimodal(_video) on the raw samples gives the turns the reference passed on."""
    expected = read("expected_vicuna_v1.json")["samples"]
    for sid, sample in _raw_samples().items():
        if "image" in sample:
            moved = conv.preprocess_multimodal(sample["conversations"])
        elif "video" in sample:
            moved = conv.preprocess_multimodal_video(sample["conversations"])
        else:
            moved = sample["conversations"]
        assert moved == expected[sid]["conversations"], sid
        # Idempotent.
        assert conv.preprocess_multimodal(moved) == moved or "image" not in sample
        assert conv.preprocess_multimodal_video(moved) == moved


def test_raw_image_samples_are_moved_by_tokenize_conversation(vicuna):
    expected = read("expected_vicuna_v1.json")["samples"]
    for sid, sample in _raw_samples().items():
        if "image" in sample:
            out = conv.tokenize_conversation(sample["conversations"], vicuna, "vicuna_v1")
            assert out.input_ids.tolist() == expected[sid]["input_ids"], sid
            assert out.labels.tolist() == expected[sid]["labels"], sid


def test_preprocess_multimodal_hand_worked():
    turns = [{"from": "human", "value": "  Look <image> here <image>  "},
             {"from": "gpt", "value": " no tag "}]
    assert conv.preprocess_multimodal(turns) == [
        {"from": "human", "value": "<image>\nLook  here"}, {"from": "gpt", "value": " no tag "}]
    assert conv.preprocess_multimodal([{"from": "human", "value": " <image> "}])[0]["value"] == (
        "<image>")
    assert conv.preprocess_multimodal_video([{"from": "human", "value": "Q?\n<video>"}]) == [
        {"from": "human", "value": "<image>\nQ?"}]
    assert turns[0]["value"] == "  Look <image> here <image>  "  # input not modified


def test_llama31_correct_agrees_with_alwaysgen_reference(llama31):
    """Where the reference works (always-header template), our labels are its labels.

    The reference ids end with one extra assistant header (4 tokens, all -100) that ours lack.
    """
    reference = read("expected_llava_llama_3_1_alwaysgen.json")["samples"]
    correct = read("expected_llama31_correct.json")["samples"]
    agreeing = [s for s, e in correct.items() if e["alwaysgen_reference_agrees"]]
    assert len(agreeing) == 28
    for sid in agreeing:
        ref = reference[sid]
        out = conv.tokenize_conversation(ref["conversations"], llama31, "llava_llama_3_1",
                                         has_image=ref["has_image"])
        assert out.input_ids.tolist() == ref["input_ids"][:-4], sid
        assert out.labels.tolist() == ref["labels"][:-4], sid
        assert ref["labels"][-4:] == [IGNORE] * 4


def test_reference_llama31_masks_everything_but_we_do_not(llama31):
    """D10: with Meta's template the reference supervises nothing; the library does."""
    reference = read("expected_llava_llama_3_1.json")["samples"]
    assert all(e["fully_masked"] for e in reference.values())
    for sid, e in reference.items():
        out = conv.tokenize_conversation(e["conversations"], llama31, "llava_llama_3_1",
                                         has_image=e["has_image"])
        assert not out.fully_masked
        assert (out.labels != IGNORE).any()
        if sid != "img_empty_answer":  # the reference drops the empty answer from the prompt
            assert out.input_ids.tolist() == e["input_ids"], sid  # same ids, other labels


# ------------------------------------------------------------------------------------------------
# Llama-3.1 by hand, on a byte tokenizer (id = byte value) built in the test
# ------------------------------------------------------------------------------------------------
BOS, SOH, EOH, EOT = 256, 258, 259, 260  # <|begin_of_text|> <|start_header_id|> ... <|eot_id|>


def b(text):
    return list(text.encode("utf-8"))


def header(role):
    return [SOH] + b(role) + [EOH] + b("\n\n")


SYSTEM_BLOCK = (header("system") + b("Cutting Knowledge Date: December 2023\nToday Date: 26 Jul "
                                     "2024\n\n") + b(conv.TEMPLATES["llava_llama_3_1"].system)
                + [EOT])


@pytest.fixture(scope="module")
def byte_tok(tmp_path_factory):
    path = build_byte_tokenizer(tmp_path_factory.mktemp("byte") / "meta", template="llama31.jinja")
    return load_tokenizer(path)


def test_llama31_hand_worked_training_sample(byte_tok):
    turns = [{"from": "human", "value": "What is it? <image>"},
             {"from": "gpt", "value": " A cat. "},
             {"from": "human", "value": "Sure?"},
             {"from": "gpt", "value": ""}]
    out = conv.tokenize_conversation(turns, byte_tok, "llava_llama_3_1")
    answer1 = b("A cat.") + [EOT]
    answer2 = [EOT]  # an empty answer supervises just its closing <|eot_id|>
    expected_ids = ([BOS] + SYSTEM_BLOCK
                    + header("user") + [IMAGE] + b("\nWhat is it?") + [EOT]
                    + header("assistant") + answer1
                    + header("user") + b("Sure?") + [EOT]
                    + header("assistant") + answer2)
    expected_labels = ([IGNORE] * (1 + len(SYSTEM_BLOCK) + len(header("user")) + 1 + 12 + 1
                                   + len(header("assistant")))
                       + answer1
                       + [IGNORE] * (len(header("user")) + 6 + len(header("assistant")))
                       + answer2)
    assert out.input_ids.tolist() == expected_ids
    assert out.labels.tolist() == expected_labels
    assert not out.fully_masked
    assert out.prompt.count("<|begin_of_text|>") == 1


def test_llama31_hand_worked_text_only_truncation(byte_tok):
    turns = [{"from": "human", "value": "<image> is text here"}, {"from": "gpt", "value": "ok"}]
    out = conv.tokenize_conversation(turns, byte_tok, "llava_llama_3_1", has_image=False)
    assert byte_tok.model_max_length == 64
    assert out.input_ids.tolist() == ([BOS] + SYSTEM_BLOCK)[:64]  # truncated to 64
    assert out.labels.tolist() == [IGNORE] * 64


def test_llama31_hand_worked_inference_prompt(byte_tok):
    ids = conv.tokenize_inference_prompt("Describe.", "llava_llama_3_1", byte_tok,
                                         history=[("What is it?", "A cat.")])
    assert ids == ([BOS] + SYSTEM_BLOCK + header("user") + [IMAGE] + b("\nWhat is it?") + [EOT]
                   + header("assistant") + b("A cat.") + [EOT]
                   + header("user") + b("Describe.") + [EOT] + header("assistant"))


def test_llama31_alias_and_template_errors(byte_tok, vicuna, tmp_path):
    turns = [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Yo"}]
    a = conv.tokenize_conversation(turns, byte_tok, "llava_llama_3_1_correct")
    b_ = conv.tokenize_conversation(turns, byte_tok, "llava_llama_3_1")
    assert a.input_ids.tolist() == b_.input_ids.tolist()
    assert a.labels.tolist() == b_.labels.tolist()
    with pytest.raises(ValueError, match=r"llava_llama_3_1.*tokenizers/vicuna.*has none"):
        conv.tokenize_conversation(turns, vicuna, "llava_llama_3_1")
    no_template = load_tokenizer(build_byte_tokenizer(tmp_path / "plain_bpe"))
    with pytest.raises(ValueError, match="plain_bpe has none"):
        conv.build_inference_prompt("Hi", "llava_llama_3_1", no_template)
    with pytest.raises(ValueError, match="vicuna_v1.*'bpe'"):
        conv.tokenize_conversation(turns, byte_tok, "vicuna_v1")


@pytest.mark.parametrize("tok_name", ["llama31", "llama31_alwaysgen"])
def test_llama31_both_templates_give_the_correct_labels(tokenizer_cache, tok_name):
    """Meta's template and the always-header one (the released checkpoint's) train identically:
    the always-gen trailing header is dropped, every sample equals expected_llama31_correct."""
    tok = tokenizer_cache(f"tokenizers/{tok_name}")
    for sid, e in read("expected_llama31_correct.json")["samples"].items():
        out = conv.tokenize_conversation(e["conversations"], tok, "llava_llama_3_1",
                                         has_image=e["has_image"])
        assert out.input_ids.tolist() == e["input_ids"], sid
        assert out.labels.tolist() == e["labels"], sid
        assert not out.fully_masked
        assert not out.prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_llama31_always_header_hand_worked(tmp_path):
    """A byte tokenizer whose template always ends with the assistant header: same as Meta's."""
    meta = load_tokenizer(build_byte_tokenizer(tmp_path / "meta", template="llama31.jinja"))
    always_dir = build_byte_tokenizer(tmp_path / "always", template="llama31.jinja")
    jinja = (always_dir / "chat_template.jinja").read_text()
    assert "{%- if add_generation_prompt %}" in jinja
    (always_dir / "chat_template.jinja").write_text(
        jinja.replace("{%- if add_generation_prompt %}", "{%- if true %}"))
    always = load_tokenizer(always_dir)
    turns = [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Yo"},
             {"from": "human", "value": "More"}, {"from": "gpt", "value": "No"}]
    a = conv.tokenize_conversation(turns, meta, "llava_llama_3_1")
    b_ = conv.tokenize_conversation(turns, always, "llava_llama_3_1")
    assert a.input_ids.tolist() == b_.input_ids.tolist()
    assert a.labels.tolist() == b_.labels.tolist()
    assert a.input_ids.tolist()[-3:] == b("No") + [EOT]
    assert a.labels.tolist()[-3:] == b("No") + [EOT]


def test_llama31_template_with_other_unconditional_ending_is_refused(tmp_path):
    """A template that ends every prompt with something other than the header cannot be used."""
    d = build_byte_tokenizer(tmp_path / "odd", template="llama31.jinja")
    jinja = (d / "chat_template.jinja").read_text()
    (d / "chat_template.jinja").write_text(
        jinja.replace("{%- if add_generation_prompt %}", "{%- if true %}")
        .replace("<|start_header_id|>assistant<|end_header_id|>\\n\\n", "ASSISTANT:"))
    tok = load_tokenizer(d)
    turns = [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Yo"}]
    with pytest.raises(ValueError, match="add_generation_prompt"):
        conv.tokenize_conversation(turns, tok, "llava_llama_3_1")


def test_text_only_truncation_can_be_turned_off(vicuna):
    turns = [{"from": "human", "value": "word " * 1200}, {"from": "gpt", "value": "ok"}]
    cut = conv.tokenize_conversation(turns, vicuna, "vicuna_v1", has_image=False)
    whole = conv.tokenize_conversation(turns, vicuna, "vicuna_v1", has_image=False,
                                       truncate=False)
    assert len(cut.input_ids) == vicuna.model_max_length < len(whole.input_ids)
    assert whole.input_ids[:len(cut.input_ids)].tolist() == cut.input_ids.tolist()


# ------------------------------------------------------------------------------------------------
# Turn validation
# ------------------------------------------------------------------------------------------------
def test_first_gpt_turn_is_dropped_once():
    turns = [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"},
             {"from": "gpt", "value": "b"}]
    assert conv.conversation_messages(turns) == [("user", "q"), ("assistant", "b")]
    with pytest.raises(ValueError, match="turn 1"):
        conv.conversation_messages([{"from": "gpt", "value": "a"}, {"from": "gpt", "value": "b"}])


@pytest.mark.parametrize("turns, message", [
    ([{"from": "system", "value": "s"}, {"from": "human", "value": "q"}], "turn 0: unknown"),
    ([{"from": "human", "value": "q"}, {"from": "human", "value": "q"}], "turn 1"),
    ([{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
      {"from": "gpt", "value": "a"}], "turn 2"),
    ([{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}], "turn 1: unknown"),
    ([{"from": "human", "value": None}], "turn 0: 'value'"),
    ([], "empty"),
])
def test_bad_turns_raise(vicuna, turns, message):
    with pytest.raises(ValueError, match=message):
        conv.tokenize_conversation(turns, vicuna, "vicuna_v1", has_image=False)


def test_plain_needs_two_turns_with_an_image(vicuna):
    with pytest.raises(ValueError, match="exactly 2 turns"):
        conv.tokenize_conversation([{"from": "human", "value": "<image>"}], vicuna, "plain")
    with pytest.raises(ValueError, match="exactly 2 turns"):
        conv.tokenize_conversation([{"from": "human", "value": "no tag"},
                                    {"from": "gpt", "value": "a"}], vicuna, "plain")


def test_unknown_and_inference_only_templates(vicuna):
    turns = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    with pytest.raises(ValueError, match="unknown conversation template 'nope'"):
        conv.tokenize_conversation(turns, vicuna, "nope")
    with pytest.raises(ValueError, match="llava_v0.*no training tokenization"):
        conv.tokenize_conversation(turns, vicuna, "llava_v0")


def test_v1_alias_and_llava_v1(vicuna):
    turns = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A dog."}]
    v1 = conv.tokenize_conversation(turns, vicuna, "v1")
    vicuna_v1 = conv.tokenize_conversation(turns, vicuna, "vicuna_v1")
    assert v1.input_ids.tolist() == vicuna_v1.input_ids.tolist()
    llava_v1 = conv.tokenize_conversation(turns, vicuna, "llava_v1")
    assert "curious human" in llava_v1.prompt and not llava_v1.fully_masked
    # Same answer supervision, whatever the system prompt.
    answer = lambda s: s.input_ids[s.labels != IGNORE].tolist()  # noqa: E731
    assert answer(llava_v1) == answer(vicuna_v1) == vicuna.encode("A dog.</s>", add_bos=False)


# ------------------------------------------------------------------------------------------------
# Prompt strings and inference prompts
# ------------------------------------------------------------------------------------------------
def test_render_prompt_hand_worked():
    msgs = [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", None)]
    assert conv.render_prompt("vicuna_v1", msgs, system="S") == (
        "S USER: q1 ASSISTANT: a1</s>USER: q2 ASSISTANT:")
    assert conv.render_prompt("llava_v0", msgs, system="S") == (
        "S###Human: q1###Assistant: a1###Human: q2###Assistant:")
    assert conv.render_prompt("plain", [("user", "<image>\nq"), ("assistant", None)]) == (
        "<image>\nq\n")
    with pytest.raises(ValueError, match="'plain' cannot render a non-empty message 1"):
        conv.render_prompt("plain", [("user", "q"), ("assistant", "a")])
    with pytest.raises(ValueError, match="message 1 has role 'user'"):
        conv.render_prompt("vicuna_v1", [("user", "q"), ("user", "q")])


def test_empty_v1_answer_renders_without_separator():
    """QUIRK kept: an empty training answer renders `ASSISTANT:` with no `</s>`."""
    assert conv.render_prompt("vicuna_v1", [("user", "q"), ("assistant", "")], system="S") == (
        "S USER: q ASSISTANT:")


def _inference_cases():
    prompts = read("inference_prompts.json")["prompts"]
    for mode in ("vicuna_v1", "llava_v1", "llava_v0", "llava_llama_3_1",
                 "llava_llama_3_1_alwaysgen"):
        for key, entry in prompts[mode]["entries"].items():
            yield mode, key, prompts[mode], entry


def _question_and_history(entry):
    if "turns" in entry:  # serve/cli.py: second question, first turn already holds the image
        first, answer, question = entry["turns"]
        assert first.startswith("<image>\n")
        return question, [(first[len("<image>\n"):], answer)]
    return entry["query"] + entry["suffix"], ()


@pytest.mark.parametrize("mode, key, block, entry",
                         [c for c in _inference_cases() if not c[0].startswith("llava_llama")],
                         ids=lambda x: x if isinstance(x, str) else "")
def test_inference_prompts_match_reference(tokenizer_cache, mode, key, block, entry):
    tok = tokenizer_cache(block["tokenizer"])
    question, history = _question_and_history(entry)
    template = block["conv_mode"]
    assert conv.build_inference_prompt(question, template, tok, history) == entry["prompt"]
    assert conv.tokenize_inference_prompt(question, template, tok, history) == entry["input_ids"]
    assert conv.stop_strings(template) == (block["stop_str (eval scripts)"],)


@pytest.mark.parametrize("mode, key, block, entry",
                         [c for c in _inference_cases() if c[0].startswith("llava_llama")],
                         ids=lambda x: x if isinstance(x, str) else "")
def test_llama31_inference_prompts_single_bos_with_header(tokenizer_cache, mode, key, block,
                                                          entry):
    """The library asks the template for the header and keeps one BOS (documented difference).

    With Meta's template the reference prompt has no header; the always-header template's
    reference prompt is exactly ours, and its ids are ours with a second leading BOS.
    """
    tok = tokenizer_cache(block["tokenizer"])
    question, history = _question_and_history(entry)
    prompt = conv.build_inference_prompt(question, "llava_llama_3_1", tok, history)
    ids = conv.tokenize_inference_prompt(question, "llava_llama_3_1", tok, history)
    header_ids = [2006] + tok.encode("assistant", add_bos=False) + [2007] + tok.encode(
        "\n\n", add_bos=False)
    assert ids[:2] == [2000, 2006] and ids.count(2000) == 1
    assert ids[-len(header_ids):] == header_ids and len(header_ids) == 4
    always = read("inference_prompts.json")["prompts"]["llava_llama_3_1_alwaysgen"]["entries"][key]
    assert prompt == always["prompt"]
    assert always["input_ids"][:2] == [2000, 2000] and ids == always["input_ids"][1:]
    if mode == "llava_llama_3_1":  # reference with Meta's template: same text minus the header
        assert prompt == entry["prompt"] + "<|start_header_id|>assistant<|end_header_id|>\n\n"
        assert ids == entry["input_ids"][1:] + header_ids


def test_stop_strings():
    assert conv.stop_strings("v1") == ("</s>",)
    assert conv.stop_strings("llava_v1") == ("</s>",)
    assert conv.stop_strings("llava_v0") == ("###",)
    assert conv.stop_strings("llava_llama_3_1") == ("<|eot_id|>",)


def test_format_query():
    assert conv.format_query("Q") == "<image>\nQ"
    assert conv.format_query("A <image-placeholder> B <image-placeholder>") == (
        "A <image> B <image>")
    assert conv.format_query("Q", with_image=False) == "Q"


def test_text_only_inference_prompt(vicuna):
    prompt = conv.build_inference_prompt("Hi", "vicuna_v1", with_image=False)
    assert prompt.endswith(" USER: Hi ASSISTANT:")
    assert IMAGE not in conv.tokenize_inference_prompt("Hi", "vicuna_v1", vicuna,
                                                       with_image=False)


def test_inference_prompt_system_override():
    prompt = conv.build_inference_prompt("Hi", "vicuna_v1", history=[("Q", "A")], system="Be terse.")
    assert prompt == "Be terse. USER: <image>\nQ ASSISTANT: A</s>USER: Hi ASSISTANT:"


# ------------------------------------------------------------------------------------------------
# tokenizer_image_token
# ------------------------------------------------------------------------------------------------
def test_tokenizer_image_token_hand_worked(vicuna, byte_tok):
    assert conv.tokenizer_image_token("<image>", vicuna) == [1, IMAGE]
    assert conv.tokenizer_image_token("<image>xy<image>", byte_tok) == [BOS, IMAGE, 120, 121,
                                                                      IMAGE]
    # Each chunk gets its own leading `▁` with the SentencePiece tokenizer.
    text = vicuna.encode("USER:", add_bos=False)
    assert conv.tokenizer_image_token("USER:<image>USER:", vicuna) == [1] + text + [IMAGE] + text
    assert conv.tokenizer_image_token("no image", vicuna) == vicuna.encode("no image")


def test_escaped_media_tags_are_tokenized_as_text(vicuna):
    from llava_mini_jax.conversation import escape_media_tags, tokenizer_image_token
    text = "look: <image> and <image-placeholder>"
    escaped = escape_media_tags(text)
    assert "<image>" not in escaped and "<image-placeholder>" not in escaped
    assert tokenizer_image_token(escaped, vicuna) == vicuna.encode(text)  # the characters, no -200
    assert tokenizer_image_token("<image>\n" + escaped, vicuna).count(IMAGE) == 1  # real tags still split
