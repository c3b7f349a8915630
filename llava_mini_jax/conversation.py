"""Conversation templates, prompt strings, and training samples -> `input_ids` / `labels`.

A LLaVA-format sample holds `conversations`: turns `{"from": "human" | "gpt", "value": str}`.
This module turns them into the prompt string of a template (SPEC part B §1), into token ids with
`-200` for every `<image>` (§3), and into labels with `-100` on everything that is not supervised
(§4).

Templates (`TEMPLATES`; aliases `v1` -> `vicuna_v1`, `llava_llama_3_1_correct` ->
`llava_llama_3_1`):

* `vicuna_v1`, `llava_v1` ("two" style): `SYSTEM USER: q ASSISTANT: a</s>USER: ...`;
* `llava_v0` ("single" style): `SYSTEM###Human: q###Assistant: a###...` (inference only);
* `plain`: stage-1 captions, `<image>` + answer + `"\\n"`;
* `llava_llama_3_1` ("chat" style): the tokenizer's own chat template.

Training supervision (`tokenize_conversation`):

* `plain`, `vicuna_v1` / `llava_v1`: the reference algorithm with all its quirks, including the
  mismatch rule that masks a whole sample (`fully_masked`);
* `llava_llama_3_1`: library decision D10. The reference's arithmetic masks every sample with
  Meta's template; here every assistant message's tokens and its closing end-of-turn token are
  supervised, nothing else, and no sample is ever fully masked. A chat template that appends the
  assistant header even without `add_generation_prompt` (the released checkpoint's; fixture
  `llama31_alwaysgen`) trains identically: the trailing header is dropped from the prompt.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from llava_mini_jax.config import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava_mini_jax.tokenizer import Tokenizer

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
IMAGE_PLACEHOLDER = "<image-placeholder>"

# Typed text that must stay text (a chat user's `<image>`): `escape_media_tags` swaps the tags for
# private sentinels before a prompt is built, and `tokenizer_image_token` swaps them back inside each
# chunk it encodes, so they are tokenized as the characters typed, never as a media position.
_LITERAL_TAGS = {IMAGE_TOKEN: "\x00literal:image\x00", IMAGE_PLACEHOLDER: "\x00literal:image-placeholder\x00"}

USER, ASSISTANT = "user", "assistant"
_SPEAKERS = {"human": USER, "gpt": ASSISTANT}  # LLaVA data's "from" values
_STYLES = ("two", "single", "plain", "chat")

Message = tuple[str, "str | None"]  # (USER | ASSISTANT, text); None = an open slot


@dataclasses.dataclass(frozen=True)
class Template:
    """A conversation template.

    Attributes:
      name: registry name.
      style: "two" (v1: separators alternate `sep`, `sep2`), "single" (v0: `sep` after every
        message), "plain" (messages glued with `sep`, `sep2`), "chat" (the tokenizer's chat
        template renders system + messages).
      system: system prompt.
      roles: the (user, assistant) names written into the prompt.
      sep, sep2: separators (`sep2` None: a second message cannot be rendered).
      stop: the string that ends an answer in generation.
      generation_header: "chat" style: the assistant header a chat template emits for
        `add_generation_prompt`; a training prompt that ends with it (a template that always
        appends it, like the released LLaVA-Mini Llama-3.1 checkpoint's) has it dropped.
    """

    name: str
    style: str
    system: str
    roles: tuple[str, str]
    sep: str
    sep2: str | None
    stop: str
    generation_header: str | None = None

    def __post_init__(self):
        if self.style not in _STYLES:
            raise ValueError(f"template {self.name!r}: style={self.style!r}, expected one of "
                             f"{_STYLES}")


_VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The "
                  "assistant gives helpful, detailed, and polite answers to the user's questions.")
_LLAVA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The "
                 "assistant gives helpful, detailed, and polite answers to the human's questions.")
_LLAMA31_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand "
                   "the visual content that the user provides, and assist the user with a variety "
                   "of tasks using natural language.")

TEMPLATES: dict[str, Template] = {
    t.name: t for t in (
        Template("vicuna_v1", "two", _VICUNA_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>", "</s>"),
        Template("llava_v1", "two", _LLAVA_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>", "</s>"),
        Template("llava_v0", "single", _LLAVA_SYSTEM, ("Human", "Assistant"), "###", None, "###"),
        Template("plain", "plain", "", ("", ""), "\n", None, "\n"),
        Template("llava_llama_3_1", "chat", _LLAMA31_SYSTEM, ("user", "assistant"), "", None,
                 "<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    )
}
ALIASES = {"v1": "vicuna_v1", "llava_llama_3_1_correct": "llava_llama_3_1"}


def get_template(name: str | Template) -> Template:
    """The template called `name` (aliases allowed); a `Template` is returned unchanged."""
    if isinstance(name, Template):
        return name
    key = ALIASES.get(name, name)
    if key not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; known: "
                         f"{sorted(TEMPLATES) + sorted(ALIASES)}")
    return TEMPLATES[key]


def stop_strings(template: str | Template) -> tuple[str, ...]:
    """Strings that end a generated answer: `</s>` (v1), `###` (v0), `<|eot_id|>` (Llama 3.1).

    Differs from the reference eval scripts for `llava_llama_3_1`, which stop on its unused
    `sep` `###` (SPEC B §1); `<|eot_id|>` is the token the model actually emits.
    """
    return (get_template(template).stop,)


# ------------------------------------------------------------------------------------------------
# Prompt strings
# ------------------------------------------------------------------------------------------------
def render_prompt(template: str | Template, messages: Sequence[Message],
                  tokenizer: Tokenizer | None = None, *, system: str | None = None,
                  add_generation_prompt: bool = False) -> str:
    """The prompt string of `messages` under `template` (SPEC B §1).

    Args:
      template: template or its name.
      messages: `(role, text)` pairs, roles alternating `"user"`, `"assistant"` from the first.
        In "two"/"single" styles a text that is None or empty renders as `ROLE:` with no
        separator (the open assistant slot of inference prompts). In "chat" style None messages
        are left out and empty ones are kept (the reference leaves out empty ones too, which
        breaks its labels; D10).
      tokenizer: needed by "chat" style (its chat template renders the prompt).
      system: replaces the template's system prompt.
      add_generation_prompt: "chat" style only: ask the chat template for the assistant header.

    Raises:
      ValueError: roles that do not alternate, a second "plain" message, a "chat" template
        without a tokenizer that has a chat template.
    """
    tpl = get_template(template)
    system = tpl.system if system is None else system
    for i, (role, _) in enumerate(messages):
        expected = (USER, ASSISTANT)[i % 2]
        if role != expected:
            raise ValueError(f"message {i} has role {role!r}, expected {expected!r} (messages must "
                             f"alternate user/assistant, starting with user)")
    if tpl.style == "chat":
        _check_chat_tokenizer(tpl, tokenizer)
        chat = [{"role": "system", "content": system}]
        chat += [{"role": role, "content": text} for role, text in messages if text is not None]
        return tokenizer.apply_chat_template(chat, add_generation_prompt=add_generation_prompt)
    if tpl.style == "plain":
        return system + "".join(_plain_message(tpl, i, text, (tpl.sep, tpl.sep2)[i % 2])
                                for i, (_, text) in enumerate(messages))
    separators = (tpl.sep, tpl.sep2) if tpl.style == "two" else (tpl.sep, tpl.sep)
    prompt = system + tpl.sep
    for i, (_, text) in enumerate(messages):
        name = tpl.roles[i % 2]
        prompt += f"{name}: {text}{separators[i % 2]}" if text else f"{name}:"
    return prompt


def _plain_message(tpl: Template, i: int, text: str | None, sep: str | None) -> str:
    if not text:
        return ""
    if sep is None:
        raise ValueError(f"template {tpl.name!r} cannot render a non-empty message {i} (it has no "
                         f"separator for it)")
    return text + sep


def _check_chat_tokenizer(tpl: Template, tokenizer: Tokenizer | None) -> None:
    if tokenizer is None or tokenizer.chat_template is None:
        where = "no tokenizer" if tokenizer is None else f"tokenizer {tokenizer.path}"
        raise ValueError(f"template {tpl.name!r} renders with the tokenizer's chat template, but "
                         f"{where} has none")


def format_query(query: str, with_image: bool = True) -> str:
    """The user text of an inference query (run_llava_mini.py, model_vqa_loader.py).

    Every `<image-placeholder>` becomes `<image>` in place; without one, `"<image>\\n"` is put in
    front. With `with_image=False` the query is returned unchanged.
    """
    if not with_image:
        return query
    if IMAGE_PLACEHOLDER in query:
        return query.replace(IMAGE_PLACEHOLDER, IMAGE_TOKEN)
    return IMAGE_TOKEN + "\n" + query


def build_inference_prompt(question: str, template: str | Template,
                           tokenizer: Tokenizer | None = None,
                           history: Sequence[tuple[str, str]] = (), *,
                           with_image: bool = True, system: str | None = None) -> str:
    """The prompt the model answers `question` from, with an open assistant slot.

    The first user turn (the first question of `history`, else `question`) goes through
    `format_query` (the image goes there); later questions are used as given, like serve/cli.py.

    Args:
      question: the new user question.
      template: template or its name.
      tokenizer: needed by "chat" templates.
      history: earlier `(question, answer)` pairs, oldest first.
      with_image: whether the conversation carries an image / video.
      system: replaces the template's system prompt (None: the template's).

    Returns:
      v1: `SYSTEM USER: <image>\\nQ ASSISTANT:`; v0: `SYSTEM###Human: <image>\\nQ###Assistant:`.
      `llava_llama_3_1`: the tokenizer's chat template with `add_generation_prompt=True`, so the
      prompt ends with the assistant header. **Differs from the reference**, which never asks for
      the header: with Meta's Llama-3.1 template its prompt ends with `<|eot_id|>` and no header
      (the ICTNLP checkpoint's template appends the header unconditionally, which this matches).
    """
    tpl = get_template(template)
    messages: list[Message] = []
    for q, a in history:
        messages += [(USER, q), (ASSISTANT, a)]
    messages.append((USER, question))
    first_role, first_text = messages[0]
    messages[0] = (first_role, format_query(first_text, with_image))
    if tpl.style == "chat":
        return render_prompt(tpl, messages, tokenizer, system=system, add_generation_prompt=True)
    return render_prompt(tpl, messages + [(ASSISTANT, None)], tokenizer, system=system)


def tokenize_inference_prompt(question: str, template: str | Template, tokenizer: Tokenizer,
                              history: Sequence[tuple[str, str]] = (), *,
                              with_image: bool = True) -> list[int]:
    """Token ids of `build_inference_prompt(...)`, `<image>` -> -200, exactly one BOS.

    For v1/v0 templates these are the reference's ids. For `llava_llama_3_1` the reference has
    two BOS (the template's and the tokenizer's); here the duplicate is dropped.
    """
    prompt = build_inference_prompt(question, template, tokenizer, history, with_image=with_image)
    return _single_bos(tokenizer_image_token(prompt, tokenizer), tokenizer)


# ------------------------------------------------------------------------------------------------
# Tokens
# ------------------------------------------------------------------------------------------------
def escape_media_tags(text: str) -> str:
    """`text` with every `<image>` / `<image-placeholder>` marked as literal text: it goes through
    prompt building untouched and `tokenizer_image_token` encodes it as the characters."""
    for tag, literal in _LITERAL_TAGS.items():
        text = text.replace(tag, literal)
    return text


def literal_tag(tag: str) -> str:
    """The escaped form of `tag` inside `escape_media_tags` output."""
    return _LITERAL_TAGS[tag]


def _unescape(text: str) -> str:
    for tag, literal in _LITERAL_TAGS.items():
        text = text.replace(literal, tag)
    return text


def tokenizer_image_token(prompt: str, tokenizer: Tokenizer,
                          image_token_index: int = IMAGE_TOKEN_INDEX) -> list[int]:
    """Token ids of `prompt` with `image_token_index` for every `<image>` (SPEC B §3).

    Every chunk between tags is encoded on its own (with its own BOS and, for SentencePiece, its
    own leading `▁`); one BOS is kept in front, the chunks' BOS are dropped. `"<image>x"` gives
    `[BOS, -200, x...]`. No truncation, no padding. Tags escaped by `escape_media_tags` are
    encoded as text.
    """
    chunks = [tokenizer.encode(_unescape(chunk)) for chunk in prompt.split(IMAGE_TOKEN)]
    bos = tokenizer.bos_id
    ids: list[int] = []
    offset = 0
    if bos is not None and chunks[0] and chunks[0][0] == bos:
        ids.append(bos)
        offset = 1
    for k, chunk in enumerate(chunks):
        if k:
            ids.append(image_token_index)
        ids.extend(chunk[offset:])
    return ids


def _single_bos(ids: list[int], tokenizer: Tokenizer) -> list[int]:
    """Drops the first of two leading BOS (a chat template's BOS + the tokenizer's)."""
    bos = tokenizer.bos_id
    if bos is not None and len(ids) > 1 and ids[0] == ids[1] == bos:
        return ids[1:]
    return ids


# ------------------------------------------------------------------------------------------------
# Multimodal tags
# ------------------------------------------------------------------------------------------------
def _move_tag_to_front(text: str, tag: str) -> str:
    if tag not in text:
        return text
    return (tag + "\n" + text.replace(tag, "").strip()).strip()


def preprocess_multimodal(conversations: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Moves `<image>` to the front of every turn that holds it (SPEC B §4).

    In such a turn all tags are removed, the text is stripped and becomes `"<image>\\n" + text`
    (stripped again: a turn that was only `<image>` stays `<image>`; two tags become one). Turns
    without the tag are untouched. Returns new dicts; idempotent.
    """
    return [{**turn, "value": _move_tag_to_front(turn["value"], IMAGE_TOKEN)}
            for turn in conversations]


def preprocess_multimodal_video(conversations: Sequence[Mapping[str, Any]]) -> list[dict]:
    """`preprocess_multimodal` for `<video>`, which then becomes `<image>`.

    Turns written with `<image>` (and no `<video>`) are left untouched. Idempotent.
    """
    out = []
    for turn in conversations:
        value = _move_tag_to_front(turn["value"], VIDEO_TOKEN).replace(VIDEO_TOKEN, IMAGE_TOKEN)
        out.append({**turn, "value": value})
    return out


# ------------------------------------------------------------------------------------------------
# Training samples
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class TokenizedSample:
    """One tokenized training sample.

    Attributes:
      input_ids: `[L]` int64, `-200` per image.
      labels: `[L]` int64, `-100` where not supervised.
      fully_masked: the reference's mismatch rule fired and set every label to -100.
      prompt: the conversation string that was tokenized.
    """

    input_ids: np.ndarray
    labels: np.ndarray
    fully_masked: bool
    prompt: str


def conversation_messages(conversations: Sequence[Mapping[str, Any]]) -> list[Message]:
    """LLaVA turns -> `(role, text)` messages, checked as the reference checks them.

    A first turn from "gpt" is dropped (once); the rest must alternate "human"/"gpt".

    Raises:
      ValueError: an empty list, an unknown "from", or turns that do not alternate (the message
        names the turn's index in `conversations`).
    """
    if not conversations:
        raise ValueError("conversations is empty")
    start = 0
    for i, turn in enumerate(conversations):
        speaker = turn.get("from")
        if speaker not in _SPEAKERS:
            raise ValueError(f"turn {i}: unknown 'from' {speaker!r}, expected 'human' or 'gpt'")
        if not isinstance(turn.get("value"), str):
            raise ValueError(f"turn {i}: 'value' must be a string, got {turn.get('value')!r}")
    if _SPEAKERS[conversations[0]["from"]] != USER:
        start = 1
    messages = []
    for i in range(start, len(conversations)):
        role = _SPEAKERS[conversations[i]["from"]]
        expected = (USER, ASSISTANT)[(i - start) % 2]
        if role != expected:
            raise ValueError(f"turn {i}: from {conversations[i]['from']!r} where a "
                             f"{'human' if expected == USER else 'gpt'} turn was expected (turns "
                             f"must alternate human/gpt)")
        messages.append((role, conversations[i]["value"]))
    return messages


def tokenize_conversation(conversations: Sequence[Mapping[str, Any]], tokenizer: Tokenizer,
                          template: str | Template = "vicuna_v1",
                          has_image: bool = True, *, truncate: bool = True) -> TokenizedSample:
    """`input_ids` and `labels` of one training sample (SPEC B §4).

    Args:
      conversations: LLaVA turns. With `has_image`, `preprocess_multimodal` is applied first
        (idempotent, so turns already moved are fine).
      tokenizer: from `load_tokenizer`.
      template: "plain", "vicuna_v1" (alias "v1"), "llava_v1" or "llava_llama_3_1" (alias
        "llava_llama_3_1_correct").
      has_image: tokenize `<image>` as -200 (else as text, and truncate to
        `tokenizer.model_max_length`, as the reference does for text-only samples).
      truncate: False keeps text-only samples whole (the training pipeline skips samples that
        are too long instead of training on a cut one).

    Returns:
      `TokenizedSample`; `labels` has -100 on unsupervised positions:
      * plain: `[BOS, -200, answer + "\\n"]`, the first two masked (the question is discarded);
      * v1: each answer's tokens + its `</s>`; the reference's round arithmetic and its mismatch
        rule (`fully_masked`) are reproduced exactly;
      * llava_llama_3_1 (D10, differs from the reference): Meta chat template over system + all
        turns (empty answers kept), one BOS, every assistant message's tokens + its closing
        `<|eot_id|>` supervised; never fully masked. A chat template that always appends the
        assistant header (the released checkpoint's) gives the same result: the trailing header
        is dropped.

    Raises:
      ValueError: bad turns (see `conversation_messages`), "plain" without exactly two turns and
        an image tag in the first, a template the tokenizer cannot serve.
    """
    tpl = get_template(template)
    if has_image:
        conversations = preprocess_multimodal(conversations)
    if tpl.style == "plain":
        return _tokenize_plain(conversations, tokenizer, tpl)
    messages = conversation_messages(conversations)
    if tpl.style == "two":
        if tokenizer.kind != "sentencepiece":
            raise ValueError(f"template {tpl.name!r} masks labels with Llama-2 SentencePiece "
                             f"arithmetic; tokenizer {tokenizer.path} is {tokenizer.kind!r}")
        return _tokenize_two(messages, tokenizer, tpl, has_image, truncate)
    if tpl.style == "chat":
        return _tokenize_chat(messages, tokenizer, tpl, has_image, truncate)
    raise ValueError(f"template {tpl.name!r} has no training tokenization; use one of "
                     f"'plain', 'vicuna_v1', 'llava_v1', 'llava_llama_3_1'")


def _encoder(tokenizer: Tokenizer, has_image: bool):
    if has_image:
        return lambda text: tokenizer_image_token(text, tokenizer)
    return tokenizer.encode


def _sample(ids, labels, fully_masked, prompt) -> TokenizedSample:
    return TokenizedSample(np.asarray(ids, np.int64), np.asarray(labels, np.int64),
                           bool(fully_masked), prompt)


def _tokenize_plain(conversations, tokenizer: Tokenizer, tpl: Template) -> TokenizedSample:
    """Stage 1: the human text is discarded; `<image>` + answer + sep, image part masked."""
    if len(conversations) != 2 or IMAGE_TOKEN not in conversations[0]["value"]:
        first = conversations[0]["value"] if conversations else None
        raise ValueError(f"template 'plain' needs exactly 2 turns with {IMAGE_TOKEN!r} in the "
                         f"first; got {len(conversations)} turns, the first {first!r}")
    prompt = IMAGE_TOKEN + conversations[1]["value"] + tpl.sep
    ids = tokenizer_image_token(prompt, tokenizer)
    n_masked = len(tokenizer_image_token(IMAGE_TOKEN, tokenizer))
    labels = [IGNORE_INDEX] * n_masked + ids[n_masked:]
    return _sample(ids, labels, False, prompt)


def _tokenize_two(messages, tokenizer: Tokenizer, tpl: Template, has_image: bool,
                  truncate: bool) -> TokenizedSample:
    """The reference's `preprocess_v1` round arithmetic (SPEC B §4.2), quirks included."""
    prompt = render_prompt(tpl, messages)
    enc = _encoder(tokenizer, has_image)
    ids = enc(prompt)
    if truncate and not has_image:
        ids = ids[:tokenizer.model_max_length]
    labels = list(ids)
    total = sum(1 for i in ids if i != tokenizer.pad_id)
    answer_sep = tpl.sep + tpl.roles[1] + ": "  # " ASSISTANT: "
    labels[:1] = [IGNORE_INDEX]
    cur = 1
    for i, round_text in enumerate(prompt.split(tpl.sep2)):
        if not round_text:
            break
        parts = round_text.split(answer_sep)
        if len(parts) != 2:
            break
        # Each round's own BOS stands for the `</s>` the split removed; -2 drops that BOS and
        # the `▁` of "ASSISTANT: " that merges into the answer in context.
        round_len = len(enc(round_text))
        instruction_len = len(enc(parts[0] + answer_sep)) - 2
        if i > 0 and not tokenizer.legacy:  # `▁USER` (2 pieces) vs in-context `USER` (1)
            round_len -= 1
            instruction_len -= 1
        labels[cur:cur + instruction_len] = [IGNORE_INDEX] * len(labels[cur:cur + instruction_len])
        cur += round_len
    labels[cur:] = [IGNORE_INDEX] * len(labels[cur:])
    fully_masked = cur < tokenizer.model_max_length and cur != total
    if fully_masked:  # the reference's "tokenization mismatch"
        labels = [IGNORE_INDEX] * len(labels)
    return _sample(ids, labels, fully_masked, prompt)


def _training_prompt(tpl: Template, messages, tokenizer: Tokenizer,
                     add_generation_prompt: bool) -> str:
    """`render_prompt` for training: a trailing assistant header that a chat template appends
    although `add_generation_prompt` is False (it follows the last message) is dropped."""
    text = render_prompt(tpl, messages, tokenizer, add_generation_prompt=add_generation_prompt)
    header = tpl.generation_header
    if not add_generation_prompt and header and messages and text.endswith(header):
        text = text[:-len(header)]
    return text


def _tokenize_chat(messages, tokenizer: Tokenizer, tpl: Template, has_image: bool,
                   truncate: bool) -> TokenizedSample:
    """Correct chat-template supervision (D10): each assistant message + its closing token.

    An assistant message's tokens are located by rendering prefixes of the conversation: the
    ids of `render(messages[:k], add_generation_prompt=True)` end at its header, those of
    `render(messages[:k + 1])` at its closing `<|eot_id|>`. Both must be prefixes of the full
    ids, which holds for templates that append one block per message (Meta's Llama 3.x).

    A template that appends the assistant header even without `add_generation_prompt` (the
    released LLaVA-Mini Llama-3.1 tokenizer, fixture `llama31_alwaysgen`) gives the same ids and
    labels: its trailing header (`Template.generation_header`) is dropped from training prompts.
    """
    _check_chat_tokenizer(tpl, tokenizer)
    enc = _encoder(tokenizer, has_image)

    def render_ids(msgs, add_generation_prompt):
        text = _training_prompt(tpl, msgs, tokenizer, add_generation_prompt)
        return text, _single_bos(enc(text), tokenizer)

    prompt, ids = render_ids(messages, False)
    if messages and render_prompt(tpl, messages, tokenizer, add_generation_prompt=True) == prompt:
        raise ValueError(f"the chat template of tokenizer {tokenizer.path} ends every prompt with "
                         f"the same text whether add_generation_prompt is True or False, and that "
                         f"text is not the assistant header {tpl.generation_header!r}, so where "
                         f"answers end cannot be told; use a template that honours "
                         f"add_generation_prompt (Meta's Llama-3.1 template) or always appends "
                         f"exactly that header")
    labels = [IGNORE_INDEX] * len(ids)
    for k, (role, _) in enumerate(messages):
        if role != ASSISTANT:
            continue
        before_text, before = render_ids(messages[:k], True)
        through_text, through = render_ids(messages[:k + 1], False)
        if not (prompt.startswith(before_text) and prompt.startswith(through_text)
                and ids[:len(before)] == before and ids[:len(through)] == through):
            raise ValueError(f"cannot locate assistant message {k} (0-based) in the chat template "
                             f"of tokenizer {tokenizer.path}: rendering the conversation up to it "
                             f"does not give a prefix of the full prompt")
        labels[len(before):len(through)] = ids[len(before):len(through)]
    if truncate and not has_image:
        ids, labels = ids[:tokenizer.model_max_length], labels[:tokenizer.model_max_length]
    return _sample(ids, labels, False, prompt)
