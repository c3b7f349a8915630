"""OpenAI's chat-completions format: the request checked field by field, errors as OpenAI writes them.

    {"model": "...", "messages": [{"role": "system", "content": "..."},          (optional, first)
                                  {"role": "user", "content": [{"type": "text", "text": "..."},
                                                               {"type": "image_url", "image_url": {"url": "data:..."}}]},
                                  {"role": "assistant", "content": "..."}, {"role": "user", ...}],
     "max_tokens": 64, "temperature": 0, "top_p": 1, "seed": 0, "stop": ["\\n"], "n": 1, "stream": true}

A conversation carries at most one image or video (`video_url` parts, vLLM's name); like
`llava-mini-jax chat` it goes into the first user turn. Every error names the field (`param`) and
what was expected; fields this server does not use (penalties, `user`, ...) are ignored.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional


class ApiError(Exception):
    """An HTTP error with OpenAI's JSON body `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def bad_request(param: Optional[str], message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}" if param else message, param)


@dataclasses.dataclass(frozen=True)
class MediaRef:
    """An `image_url` or `video_url` part: `url` (a data URL or a local path) and where it was (`param`)."""

    kind: str  # "image" | "video"
    url: str
    param: str


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """A checked request: the conversation as `(question, history, system, media)`, sampling options
    (None: the server's default)."""

    model: str
    question: str
    history: tuple[tuple[str, str], ...] = ()
    system: Optional[str] = None
    media: Optional[MediaRef] = None
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: float = 1.0
    seed: Optional[int] = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False


_SYSTEM_ROLES = ("system", "developer")


def _type_name(v: Any) -> str:
    return "null" if v is None else {bool: "boolean", int: "integer", float: "number", str: "string",
                                     list: "array", dict: "object"}.get(type(v), type(v).__name__)


def _expect(value: Any, types: tuple, param: str, what: str):
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise bad_request(param, f"expected {what}, got {_type_name(value)}")
    return value


def _number(body: dict, key: str, lo: float, hi: float) -> Optional[float]:
    v = body.get(key)
    if v is None:
        return None
    _expect(v, (int, float), key, "a number")
    if not lo <= v <= hi:
        raise bad_request(key, f"{v} is out of range: expected {lo} <= {key} <= {hi}")
    return float(v)


def _integer(body: dict, key: str, lo: int, hi: int) -> Optional[int]:
    v = body.get(key)
    if v is None:
        return None
    _expect(v, (int,), key, "an integer")
    if not lo <= v <= hi:
        raise bad_request(key, f"{v} is out of range: expected {lo} <= {key} <= {hi}")
    return v


def _content(content: Any, param: str, media: list, allow_media: bool) -> str:
    """The text of a message's `content` (string or parts); image / video parts go to `media`."""
    if isinstance(content, str):
        return content
    _expect(content, (list,), param, "a string or an array of content parts")
    texts = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        _expect(part, (dict,), where, "a content part object")
        kind = part.get("type")
        if kind == "text":
            texts.append(_expect(part.get("text"), (str,), f"{where}.text", "a string"))
        elif kind in ("image_url", "video_url"):
            if not allow_media:
                raise bad_request(where, f"{kind} parts are only allowed in user messages")
            ref = part.get(kind)
            url_param = f"{where}.{kind}"
            if isinstance(ref, dict):
                ref, url_param = ref.get("url"), f"{url_param}.url"
            _expect(ref, (str,), url_param, "a URL string")
            media.append(MediaRef(kind[:5], ref, url_param))
        else:
            raise bad_request(f"{where}.type", f"unknown content part type {kind!r}; expected 'text', "
                                               "'image_url' or 'video_url'")
    return "\n".join(texts)


def parse_chat_request(body: Any) -> ChatRequest:
    """Checks a decoded JSON body. Raises `ApiError` (400) naming the first bad field."""
    _expect(body, (dict,), None, "a JSON object")
    model = _expect(body.get("model"), (str,), "model", "a string (see GET /v1/models)")
    messages = _expect(body.get("messages"), (list,), "messages", "an array of messages")
    if not messages:
        raise bad_request("messages", "expected at least one message")
    media: list[MediaRef] = []
    system = None
    turns: list[tuple[str, str]] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        _expect(msg, (dict,), where, "a message object")
        role = msg.get("role")
        if role in _SYSTEM_ROLES:
            if i:
                raise bad_request(f"{where}.role", "a system message may only come first")
            system = _content(msg.get("content"), f"{where}.content", media, False)
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role not in ("user", "assistant"):
            raise bad_request(f"{where}.role", f"unsupported role {role!r}; expected 'system', 'user' or 'assistant'")
        if role != expected:
            raise bad_request(f"{where}.role", f"got {role!r}, expected {expected!r}: after an optional system "
                                               "message, user and assistant messages alternate, from user")
        text = _content(msg.get("content"), f"{where}.content", media, role == "user")
        if "<image>" in text:
            raise bad_request(f"{where}.content", "text must not contain '<image>'; send the image as an "
                                                  "image_url part")
        turns.append((role, text))
    if not turns or turns[-1][0] != "user":
        raise bad_request("messages", "the last message must be a user message")
    if len(media) > 1:
        raise bad_request(media[1].param, f"the conversation holds {len(media)} images / videos; this server "
                                          "takes at most one per conversation")
    if body.get("n", 1) != 1 or isinstance(body.get("n"), bool):
        raise bad_request("n", f"{body.get('n')!r}: only n=1 is supported")
    max_tokens = _integer(body, "max_completion_tokens", 1, 2 ** 31 - 1)
    if body.get("max_tokens") is not None:
        max_tokens = _integer(body, "max_tokens", 1, 2 ** 31 - 1)
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p == 0.0:
        raise bad_request("top_p", "0 keeps no token: expected 0 < top_p <= 1")
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    else:
        _expect(stop, (list,), "stop", "a string or an array of strings")
        for k, s in enumerate(stop):
            _expect(s, (str,), f"stop[{k}]", "a string")
        if len(stop) > 4:
            raise bad_request("stop", f"{len(stop)} stop strings: at most 4")
        stop = tuple(stop)
    stream = body.get("stream", False)
    _expect(stream, (bool,), "stream", "a boolean")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        _expect(options, (dict,), "stream_options", "an object")
        include_usage = _expect(options.get("include_usage", False), (bool,), "stream_options.include_usage",
                                "a boolean")
    history = tuple((turns[k][1], turns[k + 1][1]) for k in range(0, len(turns) - 1, 2))
    return ChatRequest(model=model, question=turns[-1][1], history=history, system=system,
                       media=media[0] if media else None, max_tokens=max_tokens,
                       temperature=_number(body, "temperature", 0.0, 2.0), top_p=1.0 if top_p is None else top_p,
                       seed=_integer(body, "seed", -2 ** 31, 2 ** 31 - 1), stop=tuple(s for s in stop if s),
                       stream=stream, include_usage=include_usage)
