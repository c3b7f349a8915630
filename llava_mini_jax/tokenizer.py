"""Tokenizers: one small wrapper over two backends, with a uniform interface.

`load_tokenizer(path)` reads a Hugging Face tokenizer directory and returns a `Tokenizer`.

**SentencePiece** (Vicuna / Llama-2: `tokenizer.model` + `tokenizer_config.json` with
`tokenizer_class: LlamaTokenizer`) encodes exactly like the *slow* transformers-4.43
`LlamaTokenizer(legacy=False)` the reference trains with (SPEC part B §2), using the
`sentencepiece` package directly:

1. empty text -> no tokens; else every `▁` becomes a space and one `▁` is prepended;
2. the special tokens `<unk>`, `<s>`, `</s>` written in the text are split out literally
   (no whitespace is stripped around them);
3. each text chunk is encoded *without* SentencePiece's dummy prefix, except that a chunk that
   starts with `▁` or a space is encoded behind the text `<unk>`, whose pieces are then removed
   (the leading mark stays glued to the first word; a leading space gives `▁▁`);
4. a lone leading `▁` directly followed by a special token is dropped;
5. `<s>` is prepended when `add_bos`.

transformers 5 and every `tokenizers` conversion differ on text that starts with a space, so
neither is used. `legacy: true` configs get the old behaviour: the model's own dummy prefix on
every chunk between special tokens, no `▁` handling. Differences from the reference object:
`pad_id` is always the `<unk>` id (what train.py sets); `decode` is a plain SentencePiece decode
of the non-special runs (minus the one leading space the encoder adds).

**Byte-level BPE** (Llama-3 / 3.1: `tokenizer.json`) goes through the `tokenizers` library. The BOS
is the leading special token of the post-processor's template; `pad_id` is
`<|finetune_right_pad_id|>` when the vocabulary has it (train.py's 128004), else the config's
`pad_token`; `unk_id = pad_id` (train.py sets `unk_token = pad_token`). `decode` does not apply
transformers' `clean_up_tokenization_spaces`.

Both expose the chat template (`chat_template.jinja` first, else `tokenizer_config.json`'s
`chat_template`), rendered with jinja2 configured as transformers configures it (`trim_blocks`,
`lstrip_blocks`, loop controls, `raise_exception`, `strftime_now`, a non-escaping `tojson`).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import logging
import os
import re
from typing import Any, Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)

SPIECE_UNDERLINE = "\u2581"  # "▁", SentencePiece's word-start mark
_NO_MAX_LENGTH = int(1e30)  # transformers' value for "no model_max_length"
_LLAMA3_PAD_TOKEN = "<|finetune_right_pad_id|>"
_KINDS = ("sentencepiece", "bpe")


# ------------------------------------------------------------------------------------------------
# Chat templates (jinja2, set up as transformers sets it up)
# ------------------------------------------------------------------------------------------------
class ChatTemplateError(ValueError):
    """Raised when a chat template calls its `raise_exception(message)` helper."""


def _raise_exception(message: str):
    raise ChatTemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=32)
def compile_chat_template(source: str):
    """Compiles chat template `source` into a sandboxed jinja2 `Template` (cached by source)."""
    import jinja2.ext
    import jinja2.sandbox

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


# ------------------------------------------------------------------------------------------------
# Backends: text <-> ids, no BOS
# ------------------------------------------------------------------------------------------------
class _SentencePieceBackend:
    """Slow `LlamaTokenizer` semantics (legacy False or True) over the sentencepiece package.

    `added` maps tokenizer_config.json's added tokens (`added_tokens_decoder`) to their ids; they
    and `unk_token` / `bos_token` / `eos_token` are the special tokens split out of the text.
    """

    def __init__(self, model_file: str, unk_token: str, specials: Sequence[str],
                 added: Mapping[str, int], legacy: bool, add_prefix_space: bool):
        import sentencepiece

        with open(model_file, "rb") as f:
            proto = f.read()
        if not legacy:
            proto = _without_dummy_prefix(proto, model_file)
        self.sp = sentencepiece.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(proto)
        self.legacy = legacy
        self.add_prefix_space = add_prefix_space
        self.special_ids = dict(added)
        for token in (unk_token, *specials):
            if token not in self.special_ids:
                i = self._piece_id(token)
                if i is None:
                    raise ValueError(f"special token {token!r} is neither a piece of {model_file} "
                                     f"nor an added token of its tokenizer_config.json")
                self.special_ids[token] = i
        self.special_tokens = {i: t for t, i in self.special_ids.items()}
        longest_first = sorted(self.special_ids, key=len, reverse=True)
        self.special_re = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")")
        self.underline_id = self.sp.piece_to_id(SPIECE_UNDERLINE)
        self.unk_token = unk_token
        self.unk_token_len = len(self.sp.encode(unk_token))

    def _piece_id(self, piece: str) -> int | None:
        i = self.sp.piece_to_id(piece)
        return i if self.sp.id_to_piece(i) == piece else None

    def _encode_chunk(self, text: str) -> list[int]:
        if self.legacy or not text.startswith((SPIECE_UNDERLINE, " ")):
            return self.sp.encode(text)
        ids = self.sp.encode(self.unk_token + text)
        return ids[self.unk_token_len:] if len(ids) >= self.unk_token_len else ids

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        if not self.legacy:
            text = text.replace(SPIECE_UNDERLINE, " ")
            if self.add_prefix_space:
                text = SPIECE_UNDERLINE + text
        # (id, is_special) pairs; re.split with a group puts the special tokens at odd positions.
        tokens: list[tuple[int, bool]] = []
        for k, part in enumerate(self.special_re.split(text)):
            if k % 2:
                tokens.append((self.special_ids[part], True))
            elif part:
                tokens.extend((i, False) for i in self._encode_chunk(part))
        if (not self.legacy and len(tokens) > 1 and tokens[0] == (self.underline_id, False)
                and tokens[1][1]):
            tokens = tokens[1:]
        return [i for i, _ in tokens]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        parts: list[str] = []
        run: list[int] = []
        drop_mark = self.add_prefix_space and not self.legacy  # the `▁` that `encode` prepends
        for i in [*ids, None]:  # None flushes the last run
            if i is not None and i not in self.special_tokens:
                run.append(i)
                continue
            if run:
                text = self.sp.decode(run)
                parts.append(text[1:] if drop_mark and text.startswith(" ") else text)
                drop_mark, run = False, []
            if i is not None and not skip_special_tokens:
                parts.append(self.special_tokens[i])
        return "".join(parts)

    def token_to_id(self, token: str) -> int | None:
        return self.special_ids[token] if token in self.special_ids else self._piece_id(token)

    @property
    def vocab_size(self) -> int:
        return max(self.sp.get_piece_size(), max(self.special_tokens) + 1)


def _without_dummy_prefix(proto: bytes, model_file: str) -> bytes:
    """`proto` with `normalizer_spec.add_dummy_prefix = False`, as slow LlamaTokenizer loads it."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as e:  # the generated module needs the protobuf package
        raise ImportError(f"loading {model_file} with legacy=False needs the 'protobuf' package: "
                          f"{e}") from e
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(proto)
    model.normalizer_spec.add_dummy_prefix = False
    return model.SerializeToString()


class _TokenizersBackend:
    """A `tokenizers.Tokenizer`; special tokens written in the text are always recognised."""

    def __init__(self, tokenizer_file: str):
        import tokenizers

        self.tk = tokenizers.Tokenizer.from_file(tokenizer_file)

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tk.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def bos_token(self) -> str | None:
        """The special token the post-processor puts in front of a single sequence, if any."""
        return _leading_special_token(json.loads(self.tk.to_str()).get("post_processor"))


def _leading_special_token(processor: Mapping[str, Any] | None) -> str | None:
    if not processor:
        return None
    kind = processor.get("type")
    if kind == "Sequence":
        found = (_leading_special_token(p) for p in processor.get("processors", []))
        return next((t for t in found if t is not None), None)
    if kind == "TemplateProcessing":
        single = processor.get("single") or [{}]
        return single[0].get("SpecialToken", {}).get("id")
    if kind in ("BertProcessing", "RobertaProcessing"):
        return processor["cls"][0]
    return None


# ------------------------------------------------------------------------------------------------
# The public wrapper
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Tokenizer:
    """A loaded tokenizer with the interface the whole library uses (make it with `load_tokenizer`).

    Attributes:
      path: the directory it was loaded from.
      kind: "sentencepiece" (Vicuna / Llama-2) or "bpe" (Llama-3 byte-level BPE).
      bos_id, eos_id, pad_id, unk_id: special ids (None where the tokenizer has none).
      bos_token, eos_token, pad_token, unk_token: their strings; `eos_token` is what the
        conversation code splits turns on (`</s>`, `<|eot_id|>`).
      model_max_length: training / truncation length.
      chat_template: jinja source of the chat template, or None.
      legacy: the LlamaTokenizer `legacy` flag (always False for "bpe").
    """

    path: str
    kind: str
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    unk_id: int | None
    bos_token: str | None
    eos_token: str | None
    pad_token: str | None
    unk_token: str | None
    model_max_length: int
    chat_template: str | None = dataclasses.field(repr=False)
    legacy: bool
    _backend: Any = dataclasses.field(repr=False)

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"Tokenizer kind={self.kind!r}: expected one of {_KINDS}")

    @property
    def vocab_size(self) -> int:
        """Number of ids, added and special tokens included."""
        return self._backend.vocab_size

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of `text`; special tokens written in `text` become their ids.

        With `add_bos` the BOS id is prepended, also to the empty string (`[bos_id]`).
        """
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        ids = self._backend.encode(text)
        return [self.bos_id] + ids if add_bos and self.bos_id is not None else ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`. Negative ids (image placeholder -200, ignore index -100) are skipped."""
        ids = [int(i) for i in ids]
        return self._backend.decode([i for i in ids if i >= 0], skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """The id of one token (piece) string, or None when the vocabulary lacks it."""
        return self._backend.token_to_id(token)

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]],
                            add_generation_prompt: bool = False, **variables) -> str:
        """Renders `messages` (`[{"role": ..., "content": ...}, ...]`) with the chat template.

        The template sees `messages`, `add_generation_prompt`, `bos_token`, `eos_token`,
        `pad_token`, `unk_token` and the extra `variables`. Raises ValueError when the tokenizer
        has no chat template, `ChatTemplateError` (a ValueError) when the template rejects the
        messages.
        """
        if self.chat_template is None:
            raise ValueError(f"tokenizer {self.path} has no chat template (neither "
                             f"chat_template.jinja nor 'chat_template' in tokenizer_config.json)")
        context = dict(bos_token=self.bos_token, eos_token=self.eos_token,
                       pad_token=self.pad_token, unk_token=self.unk_token)
        context.update(variables)
        template = compile_chat_template(self.chat_template)
        return template.render(messages=[dict(m) for m in messages],
                               add_generation_prompt=add_generation_prompt, **context)


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
def load_tokenizer(path: str | os.PathLike, model_max_length: int | None = None) -> Tokenizer:
    """Loads the tokenizer stored in directory `path`.

    Args:
      path: a Hugging Face tokenizer directory: `tokenizer.model` + `tokenizer_config.json` with
        tokenizer_class LlamaTokenizer (SentencePiece), or `tokenizer.json` (BPE).
      model_max_length: overrides the config's value (the reference passes its training argument).

    Raises:
      FileNotFoundError: `path`, or every file a tokenizer could be read from, is missing.
      ValueError: a config that cannot be understood.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    config_file = os.path.join(path, "tokenizer_config.json")
    config = _read_json(config_file) if os.path.isfile(config_file) else {}
    sp_file = os.path.join(path, "tokenizer.model")
    json_file = os.path.join(path, "tokenizer.json")
    wants_slow_llama = config.get("tokenizer_class") in ("LlamaTokenizer", "LlamaTokenizerFast")
    if os.path.isfile(sp_file) and (wants_slow_llama or not os.path.isfile(json_file)):
        return _load_sentencepiece(path, sp_file, config, model_max_length)
    if os.path.isfile(json_file):
        return _load_bpe(path, json_file, config, model_max_length)
    raise FileNotFoundError(f"no tokenizer in {path}: expected {sp_file} or {json_file}")


def check_vocabulary(tokenizer: Tokenizer, model_vocab_size: int, where: str = "the model") -> None:
    """ValueError when `tokenizer` can produce ids the model has no embedding for (its vocabulary,
    added tokens included, is larger than `model_vocab_size`). A model vocabulary larger than the
    tokenizer's (padded embedding tables) is fine."""
    if tokenizer.vocab_size > model_vocab_size:
        raise ValueError(f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} ids (added tokens included) but "
                         f"{where} has a vocabulary of {model_vocab_size} (config vocab_size): ids "
                         f"{model_vocab_size}..{tokenizer.vocab_size - 1} have no embedding. Use the tokenizer the "
                         f"model was trained with")


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e


def _token_string(config: Mapping[str, Any], key: str) -> str | None:
    """A special token of tokenizer_config.json: a string, an AddedToken dict, or absent."""
    value = config.get(key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"tokenizer_config.json {key}={value!r}: expected a string or a dict with "
                     f"'content'")


def _chat_template(path: str, config: Mapping[str, Any]) -> str | None:
    jinja_file = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja_file):
        with open(jinja_file, encoding="utf-8") as f:
            return f.read()
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template}
        if "default" not in named:
            raise ValueError(f"{path}/tokenizer_config.json: chat_template list has no 'default' "
                             f"entry (names: {sorted(map(str, named))})")
        template = named["default"]
    return template


def _model_max_length(config: Mapping[str, Any], override: int | None) -> int:
    value = override if override is not None else config.get("model_max_length", _NO_MAX_LENGTH)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"model_max_length={value!r}: expected a positive integer")
    return int(value)


def _load_sentencepiece(path: str, sp_file: str, config: Mapping[str, Any],
                        model_max_length: int | None) -> Tokenizer:
    bos = _token_string(config, "bos_token") or "<s>"
    eos = _token_string(config, "eos_token") or "</s>"
    unk = _token_string(config, "unk_token") or "<unk>"
    if config.get("add_eos_token", False):
        raise ValueError(f"{path}/tokenizer_config.json: add_eos_token=true is not supported (the "
                         f"reference's tokenizers never append EOS)")
    legacy = config.get("legacy")
    if legacy is None:
        legacy = True  # LlamaTokenizer's default
        logger.warning("%s: tokenizer_config.json does not set 'legacy'; using legacy=True as "
                       "LlamaTokenizer does", path)
    added = {t["content"]: int(i) for i, t in config.get("added_tokens_decoder", {}).items()}
    backend = _SentencePieceBackend(sp_file, unk_token=unk, specials=(bos, eos), added=added,
                                    legacy=bool(legacy),
                                    add_prefix_space=config.get("add_prefix_space") is not False)
    ids = backend.special_ids
    return Tokenizer(
        path=path, kind="sentencepiece",
        bos_id=ids[bos] if config.get("add_bos_token", True) else None,
        eos_id=ids[eos], pad_id=ids[unk], unk_id=ids[unk],
        bos_token=bos, eos_token=eos, pad_token=unk, unk_token=unk,
        model_max_length=_model_max_length(config, model_max_length),
        chat_template=_chat_template(path, config), legacy=bool(legacy), _backend=backend)


def _load_bpe(path: str, json_file: str, config: Mapping[str, Any],
              model_max_length: int | None) -> Tokenizer:
    backend = _TokenizersBackend(json_file)
    bos = backend.bos_token()
    eos = _token_string(config, "eos_token")
    pad = _token_string(config, "pad_token")
    if backend.token_to_id(_LLAMA3_PAD_TOKEN) is not None:
        pad = _LLAMA3_PAD_TOKEN

    def id_of(token: str | None) -> int | None:
        if token is None:
            return None
        i = backend.token_to_id(token)
        if i is None:
            raise ValueError(f"{path}: special token {token!r} is not in the vocabulary of "
                             f"{json_file}")
        return i

    return Tokenizer(
        path=path, kind="bpe", bos_id=id_of(bos), eos_id=id_of(eos), pad_id=id_of(pad),
        unk_id=id_of(pad), bos_token=bos or _token_string(config, "bos_token"), eos_token=eos,
        pad_token=pad, unk_token=pad,
        model_max_length=_model_max_length(config, model_max_length),
        chat_template=_chat_template(path, config), legacy=False, _backend=backend)
