"""Streamed text: pieces add up to what `ChatSession.ask` answers (cut at a stop string, stripped),
and nothing shown is ever taken back."""
from __future__ import annotations

from serve.service import TextStream


class CharTokenizer:
    """Token i decodes to chr(i); token 0 is a broken byte (U+FFFD) on its own."""

    def decode(self, ids):
        return "".join("\ufffd" if i == 0 else chr(i) for i in ids)


def run(text, stops, broken_at=()):
    s = TextStream(CharTokenizer(), stops)
    pieces = []
    for k, ch in enumerate(text):
        pieces.append(s.push([0] if k in broken_at else [ord(ch)]))
        if s.stopped:
            break
    pieces.append(s.finish())
    return pieces, s


def test_pieces_add_up_and_stop_strings_never_leak():
    pieces, s = run("  Hello wor###ld", ["###"])
    assert "".join(pieces) == s.shown == "Hello wor" and s.stopped
    assert all("#" not in p for p in pieces)  # the '#' were held back until they could not start '###'
    pieces, s = run("a#b##c", ["###"])
    assert "".join(pieces) == "a#b##c" and not s.stopped


def test_whitespace_and_partial_characters_wait():
    pieces, s = run("ab  cd  ", [])
    assert pieces[2] == "" and "".join(pieces) == "ab  cd"  # trailing spaces only once followed by text
    s = TextStream(CharTokenizer(), [])
    assert s.push([ord("x")]) == "x" and s.push([0]) == ""
