"""OpenAI chat requests -> `ChatRequest`: the conversation split as `ChatSession` takes it, and
errors that name the field."""
from __future__ import annotations

import pytest

from serve.protocol import ApiError, parse_chat_request


def test_conversation_becomes_question_history_system_and_media():
    req = parse_chat_request({
        "model": "m", "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": "###", "stream": True,
        "stream_options": {"include_usage": True}, "frequency_penalty": 0, "user": "ignored",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "What"}, {"type": "text", "text": "is it?"},
                                                  {"type": "image_url", "image_url": {"url": "data:x"}}]},
                     {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
                     {"role": "user", "content": "Colour?"}]})
    assert (req.question, req.history, req.system) == ("Colour?", (("What\nis it?", "A cat."),), "Be brief.")
    assert (req.media.kind, req.media.url) == ("image", "data:x")
    assert req.media.param == "messages[1].content[2].image_url.url"
    assert (req.max_tokens, req.temperature, req.top_p, req.seed, req.stop) == (5, 0.5, 0.9, 3, ("###",))
    assert req.stream and req.include_usage


def test_defaults_and_aliases():
    req = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": "clip.mp4"}]}], "max_completion_tokens": 7})
    assert (req.question, req.media.kind, req.media.url, req.max_tokens) == ("", "video", "clip.mp4", 7)
    assert (req.temperature, req.top_p, req.seed, req.stop, req.stream) == (None, 1.0, None, (), False)


@pytest.mark.parametrize("body,param,words", [
    ({"messages": []}, "model", "expected a string"),
    ({"model": "m", "messages": []}, "messages", "at least one"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content", "got integer"),
    ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "unsupported role"),
    ({"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]},
     "messages[1].role", "only come first"),
    ({"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     "messages", "last message must be a user"),
    ({"model": "m", "messages": [{"role": "user", "content": "see <image> here"}]}, "messages[0].content", "<image>"),
    ({"model": "m", "messages": [{"role": "system", "content": [{"type": "image_url", "image_url": "x"}]},
                                 {"role": "user", "content": "a"}]}, "messages[0].content[0]", "only allowed in user"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 3}}]}]},
     "messages[0].content[0].image_url.url", "URL string"),
    ({"model": "m", "messages": [{"role": "user", "content": "a"}], "stop": ["a", 1]}, "stop[1]", "a string"),
    ({"model": "m", "messages": [{"role": "user", "content": "a"}], "stop": list("abcde")}, "stop", "at most 4"),
    ({"model": "m", "messages": [{"role": "user", "content": "a"}], "top_p": 0}, "top_p", "keeps no token"),
    ({"model": "m", "messages": [{"role": "user", "content": "a"}], "max_tokens": 0}, "max_tokens", "out of range"),
    ({"model": "m", "messages": [{"role": "user", "content": "a"}], "seed": 2 ** 40}, "seed", "out of range"),
    ({"model": "m", "messages": [{"role": "user", "content": "a"}], "stream": "yes"}, "stream", "a boolean"),
    ({"model": "m", "messages": [{"role": "user", "content": "a"}], "n": True}, "n", "n=1"),
])
def test_errors_name_the_field(body, param, words):
    with pytest.raises(ApiError) as e:
        parse_chat_request(body)
    assert e.value.status == 400 and e.value.param == param and words in e.value.message
    assert e.value.body()["error"]["type"] == "invalid_request_error"
