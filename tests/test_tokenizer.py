"""Tests for llava_mini_jax.tokenizer.

Expected ids come from (a) the reference fixtures (slow transformers-4.43 LlamaTokenizer outputs),
(b) piece strings of the fixture vocabulary looked up by hand, (c) the raw `sentencepiece` /
`tokenizers` libraries, and (d) a byte-level tokenizer built in the test whose ids are byte values.
All comparisons are exact.
"""

import json
import pathlib
import shutil

import pytest
import sentencepiece
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors

from llava_mini_jax.tokenizer import ChatTemplateError, load_tokenizer

HERE = pathlib.Path(__file__).parent
PREPROCESS = HERE / "fixtures" / "preprocess"
TOKENIZERS = PREPROCESS / "tokenizers"
CHAT_TEMPLATES = HERE / "data" / "chat_templates"


@pytest.fixture(scope="module")
def vicuna():
    return load_tokenizer(TOKENIZERS / "vicuna")


@pytest.fixture(scope="module")
def llama31():
    return load_tokenizer(TOKENIZERS / "llama31")


@pytest.fixture(scope="module")
def vicuna_fast():
    """transformers 4.43's fast conversion of the same model: NOT what the reference uses."""
    return tokenizers.Tokenizer.from_file(str(TOKENIZERS / "vicuna_fast" / "tokenizer.json"))


def pieces(tok, *names):
    ids = [tok.token_to_id(n) for n in names]
    assert None not in ids, names
    return ids


# ------------------------------------------------------------------------------------------------
# SentencePiece (Vicuna / Llama-2), slow LlamaTokenizer(legacy=False) semantics
# ------------------------------------------------------------------------------------------------
def test_vicuna_attributes(vicuna):
    assert vicuna.kind == "sentencepiece"
    assert (vicuna.unk_id, vicuna.bos_id, vicuna.eos_id, vicuna.pad_id) == (0, 1, 2, 0)
    assert (vicuna.bos_token, vicuna.eos_token, vicuna.unk_token) == ("<s>", "</s>", "<unk>")
    assert vicuna.model_max_length == 2048
    assert vicuna.vocab_size == 2000
    assert vicuna.legacy is False
    assert vicuna.chat_template is None
    assert vicuna.path == str(TOKENIZERS / "vicuna")


@pytest.mark.parametrize("text, expected_pieces", [
    # SPEC B §2: alone "USER:" gets the word-start mark (fixture vocabulary: `▁`, `USER`)...
    ("USER:", ["▁", "USER", ":"]),
    # ...but not right after a special token.
    ("</s>USER:", ["</s>", "USER", ":"]),
    # A leading space keeps the prepended mark: two marks (the slow-only behaviour).
    (" ASSISTANT:", ["▁▁", "A", "S", "SIS", "TANT", ":"]),
    # A `▁` in the text is a space.
    ("\u2581x", ["▁▁", "x"]),
    # The lone `▁` before a special token is dropped.
    ("<s>hi", ["<s>", "h", "i"]),
    ("<unk>", ["<unk>"]),
    ("hello world", ["▁hel", "lo", "▁world"]),
    ("a\n\tb  c", ["▁a", "<0x0A>", "<0x09>", "b", "▁▁", "c"]),
])
def test_vicuna_hand_worked_pieces(vicuna, text, expected_pieces):
    assert vicuna.encode(text) == [1] + pieces(vicuna, *expected_pieces)
    assert vicuna.encode(text, add_bos=False) == pieces(vicuna, *expected_pieces)


def test_vicuna_empty_text(vicuna):
    assert vicuna.encode("") == [1]
    assert vicuna.encode("", add_bos=False) == []


def test_vicuna_matches_reference_inference_ids(vicuna):
    """Whole prompts of the reference (tokenizer_image_token = chunks around `<image>`)."""
    prompts = json.loads((PREPROCESS / "inference_prompts.json").read_text())["prompts"]
    checked = 0
    for mode in ("vicuna_v1", "llava_v1", "llava_v0"):
        for entry in prompts[mode]["entries"].values():
            chunks = entry["prompt"].split("<image>")
            ids = vicuna.encode(chunks[0])
            for chunk in chunks[1:]:
                ids += [-200] + vicuna.encode(chunk)[1:]
            assert ids == entry["input_ids"]
            checked += 1
    assert checked == 21


def test_vicuna_is_not_the_fast_tokenizer(vicuna, vicuna_fast):
    """`cap_img_only_digits`: after `USER: <image>` comes " ASSISTANT: ...", starting with a space.

    The reference (slow) ids have `▁▁ A S SIS TANT`; the `tokenizers` conversion gives
    `▁ASSISTANT`, 4 tokens shorter. We must be the slow one.
    """
    sample = json.loads((PREPROCESS / "expected_vicuna_v1.json").read_text())["samples"][
        "cap_img_only_digits"]
    before, after = sample["prompt"].split("<image>")
    assert after.startswith(" ASSISTANT: ")
    expected = sample["input_ids"]
    image_at = expected.index(-200)
    assert vicuna.encode(before) == expected[:image_at]
    assert vicuna.encode(after, add_bos=False) == expected[image_at + 1:]
    fast = vicuna_fast.encode(after, add_special_tokens=False).ids
    assert fast != expected[image_at + 1:]
    assert len(fast) == len(expected[image_at + 1:]) - 4
    assert fast[0] == vicuna.token_to_id("▁ASSISTANT")


def test_vicuna_agrees_with_fast_without_leading_space(vicuna, vicuna_fast):
    """Away from the leading-space case the two conversions agree (a broad sanity check)."""
    samples = json.loads((PREPROCESS / "expected_vicuna_v1.json").read_text())["samples"]
    for sample in samples.values():
        for chunk in sample["prompt"].split("<image>"):
            if not chunk.startswith(" "):
                assert vicuna.encode(chunk) == vicuna_fast.encode(chunk).ids, chunk


def test_vicuna_decode(vicuna):
    for text in ["hello world", "A bowl of fruit with 3 apples.", "Qu'est-ce que c'est ? 🤔",
                 "line one\nline two", "猫が好きです"]:
        assert vicuna.decode(vicuna.encode(text)) == text
    ids = vicuna.encode("hi</s>")
    assert vicuna.decode(ids) == "hi"
    assert vicuna.decode(ids, skip_special_tokens=False) == "<s>hi</s>"
    assert vicuna.decode([-200] + ids) == "hi"  # image placeholders are skipped


def test_vicuna_token_to_id(vicuna):
    assert vicuna.token_to_id("</s>") == 2
    assert vicuna.token_to_id("▁") == 1901
    assert vicuna.token_to_id("no-such-piece") is None


def test_legacy_config_uses_the_models_dummy_prefix(tmp_path):
    """legacy=True: every chunk between special tokens is encoded by the model as shipped."""
    shutil.copytree(TOKENIZERS / "vicuna", tmp_path / "tok")
    config_file = tmp_path / "tok" / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["legacy"] = True
    config_file.write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.legacy is True
    sp = sentencepiece.SentencePieceProcessor(model_file=str(TOKENIZERS / "vicuna" /
                                                             "tokenizer.model"))
    assert tok.encode("</s>USER: hi") == [1, 2] + sp.encode("USER: hi")
    assert tok.encode("USER:</s> x") == [1] + sp.encode("USER:") + [2] + sp.encode(" x")
    # Here "USER:" after </s> gets the mark, unlike legacy=False.
    assert tok.encode("</s>USER:") == [1, 2] + pieces(tok, "▁", "USER", ":")


def test_added_token_beyond_the_sentencepiece_vocabulary(tmp_path):
    """An added token of tokenizer_config.json (e.g. a `<pad>` at id 2000) is split out too."""
    shutil.copytree(TOKENIZERS / "vicuna", tmp_path / "tok")
    config_file = tmp_path / "tok" / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["added_tokens_decoder"]["2000"] = {"content": "<pad>", "special": True}
    config_file.write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.vocab_size == 2001 and tok.token_to_id("<pad>") == 2000
    assert tok.encode("hi<pad>") == [1] + pieces(tok, "▁h", "i") + [2000]
    assert tok.encode("<pad>hi") == [1, 2000] + pieces(tok, "h", "i")  # lone `▁` dropped
    assert tok.decode(tok.encode("hi<pad>"), skip_special_tokens=False) == "<s>hi<pad>"


def test_model_max_length_override():
    tok = load_tokenizer(TOKENIZERS / "vicuna", model_max_length=48)
    assert tok.model_max_length == 48
    assert load_tokenizer(TOKENIZERS / "vicuna_maxlen48").model_max_length == 48
    with pytest.raises(ValueError, match="model_max_length"):
        load_tokenizer(TOKENIZERS / "vicuna", model_max_length=0)


# ------------------------------------------------------------------------------------------------
# Byte-level BPE (Llama-3.1 layout)
# ------------------------------------------------------------------------------------------------
def test_llama31_attributes(llama31):
    assert llama31.kind == "bpe"
    assert llama31.bos_id == 2000  # <|begin_of_text|>, from the post-processor
    assert llama31.eos_id == 2009 and llama31.eos_token == "<|eot_id|>"
    assert llama31.pad_id == 2004 and llama31.unk_id == 2004  # <|finetune_right_pad_id|>
    assert llama31.model_max_length == 4096
    assert llama31.vocab_size == 2256
    assert llama31.legacy is False
    assert llama31.chat_template == (TOKENIZERS / "llama31" / "chat_template.jinja").read_text()


def test_llama31_encode_matches_tokenizers(llama31):
    raw = tokenizers.Tokenizer.from_file(str(TOKENIZERS / "llama31" / "tokenizer.json"))
    for text in ["Hello there!", " leading space", "a<|eot_id|>b", "", "数字 123456\n\n"]:
        assert llama31.encode(text) == raw.encode(text, add_special_tokens=True).ids
        assert llama31.encode(text, add_bos=False) == raw.encode(text,
                                                                 add_special_tokens=False).ids
    assert llama31.encode("x<|start_header_id|>")[-1] == 2006


def test_llama31_decode(llama31):
    ids = llama31.encode("A cat on a mat.<|eot_id|>")
    assert llama31.decode(ids) == "A cat on a mat."
    assert llama31.decode(ids, skip_special_tokens=False) == (
        "<|begin_of_text|>A cat on a mat.<|eot_id|>")


def test_chat_template_from_config_when_no_jinja_file(tmp_path):
    shutil.copytree(TOKENIZERS / "llama31", tmp_path / "tok")
    (tmp_path / "tok" / "chat_template.jinja").unlink()
    tok = load_tokenizer(tmp_path / "tok")
    config = json.loads((TOKENIZERS / "llama31" / "tokenizer_config.json").read_text())
    assert tok.chat_template == config["chat_template"]


def _byte_to_char():
    """A reversible map byte -> printable character (the byte-level BPE alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + k) for k, b in enumerate(extra)}}


SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>"]


def build_byte_tokenizer(directory: pathlib.Path, template: str | None = None,
                         config: dict | None = None, pad_token: bool = False) -> pathlib.Path:
    """Byte-level BPE without merges: the id of every byte is its value; specials from 256 on.

    So `encode(text)` is `[256] + list(text.encode())` with specials written in the text
    replaced by their ids, which makes every expectation computable by hand.
    """
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {char: byte for byte, char in _byte_to_char().items()}
    tk = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(SPECIALS + (["<|finetune_right_pad_id|>"] if pad_token else []))
    tk.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 256)])
    tk.save(str(directory / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|eot_id|>",
           "model_max_length": 64, **(config or {})}
    (directory / "tokenizer_config.json").write_text(json.dumps(cfg))
    if template is not None:
        shutil.copy(CHAT_TEMPLATES / template, directory / "chat_template.jinja")
    return directory


def test_byte_tokenizer_hand_worked(tmp_path):
    tok = load_tokenizer(build_byte_tokenizer(tmp_path / "tok", config={"pad_token": "<|eot_id|>"}))
    assert tok.kind == "bpe"
    assert (tok.bos_id, tok.eos_id) == (256, 260)
    assert tok.pad_id == 260  # no <|finetune_right_pad_id|>: the config's pad_token
    assert tok.encode("Hi <|eot_id|>é") == [256, 72, 105, 32, 260, 0xC3, 0xA9]
    assert tok.decode([256, 72, 105, 32, 260, 0xC3, 0xA9]) == "Hi é"
    assert tok.vocab_size == 256 + len(SPECIALS)


def test_byte_tokenizer_prefers_finetune_pad(tmp_path):
    tok = load_tokenizer(build_byte_tokenizer(tmp_path / "tok", pad_token=True,
                                              config={"pad_token": "<|eot_id|>"}))
    assert tok.pad_id == tok.unk_id == 256 + len(SPECIALS)


def test_chat_template_rendering(tmp_path):
    tok = load_tokenizer(build_byte_tokenizer(tmp_path / "tok", template="llama31.jinja"))
    messages = [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "Hi\n"}]
    header = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge "
              "Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>")
    assert tok.apply_chat_template(messages) == header
    assert tok.apply_chat_template(messages, add_generation_prompt=True) == (
        header + "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert tok.apply_chat_template(messages, date_string="1 Jan 2025").count("1 Jan 2025") == 1


def test_chat_template_helpers(tmp_path):
    tok = load_tokenizer(build_byte_tokenizer(tmp_path / "tok", template="strict_roles.jinja"))
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": 'say "é"'}]
    assert tok.apply_chat_template(messages, add_generation_prompt=True) == (
        'user="say \\"é\\""\nassistant=')
    with pytest.raises(ChatTemplateError, match="unsupported role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])


def test_no_chat_template_raises(vicuna):
    with pytest.raises(ValueError, match="has no chat template"):
        vicuna.apply_chat_template([{"role": "user", "content": "hi"}])


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
def test_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_tokenizer(missing)


def test_directory_without_tokenizer_files(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        load_tokenizer(tmp_path)


def test_unknown_special_token(tmp_path):
    build_byte_tokenizer(tmp_path / "tok", config={"eos_token": "<|nope|>"})
    with pytest.raises(ValueError, match=r"<\|nope\|>"):
        load_tokenizer(tmp_path / "tok")


def test_bad_json(tmp_path):
    build_byte_tokenizer(tmp_path / "tok")
    (tmp_path / "tok" / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        load_tokenizer(tmp_path / "tok")


def test_encode_rejects_non_strings(vicuna):
    with pytest.raises(ValueError, match="str"):
        vicuna.encode([1, 2])


def test_check_vocabulary(vicuna):
    from llava_mini_jax.tokenizer import check_vocabulary
    check_vocabulary(vicuna, vicuna.vocab_size)
    check_vocabulary(vicuna, vicuna.vocab_size + 64)  # a padded embedding table is fine
    with pytest.raises(ValueError, match=rf"has {vicuna.vocab_size} ids .* the model has a vocabulary of 100 "
                                         rf".*ids 100..{vicuna.vocab_size - 1} have no embedding"):
        check_vocabulary(vicuna, 100)
