"""Reading the chosen option out of a free-form answer, as each official scorer does.

Each function follows one scorer's rule exactly (written from the rule, hand-checked in
`tests/test_eval_answer_parsing.py`); `None` means "no answer read" (always wrong).

* `sqa_letter`: ScienceQA (`eval_science_qa.py`): the answer is a letter A-E; or starts with
  "X. "; or contains exactly one match of `The answer is ([A-Z]).` (the '.' is any character).
* `vlmevalkit_letter`: MMBench's rule-based matcher (VLMEvalKit `can_infer`, `vlmeval/utils/
  matching_util.py` at commit 2cf2a36c), without the GPT fallback:
  1. an answer containing "Failed to obtain answer via API" skips step 2;
  2. a refusal phrase ("Cannot determine the answer", "I can't process this file.", ...) reads as
     'Z' (no option); otherwise `.()[],:;!*#{}` become spaces and the text is split into words:
     exactly one option letter among the words, and among its last 5 words -> that letter; no
     option letter but a lone word 'Z' -> 'Z'; then "[correct] answer is [**]X[**]" (any case,
     X in A-D and an option) -> X;
  3. else the option whose text (lower-cased) appears in the lower-cased answer, if exactly one
     does and the answer is at most twice as long as all option texts together.
  'Z' is never an option letter, so it counts as wrong.
* `check_ans_letter`: MVBench and MLVU (the reference's `check_ans`): the answer is credited only
  when, after keeping the single character before its first ')' (if it has one), it is exactly
  the right letter: "B", "(B)", "B) dog", "The answer is (B)" read B; "B.", "(B", "The answer is
  B" and the option text alone read nothing.
* `first_letter_a_to_e`: EgoSchema (the reference's `first_char_as_answer`): the first character
  of the answer in A-E, anywhere ("I think C" reads C, "Based on ..." reads B).

Lenient readings (`--answer-parsing lenient`, never the headline):

* `infer_letter`: one option letter standing as a word, else one option text contained.
* `leading_letter`: a leading option letter ('B', '(B) dog', 'B.'), else `infer_letter`; an answer
  naming two or more option letters ("C or D") is never credited.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

_SQA_LETTERS = ("A", "B", "C", "D", "E")
_SQA_PATTERN = re.compile(r"The answer is ([A-Z]).")
_SEPARATORS = ".()[],:;!*#{}"

_API_FAILURE = "Failed to obtain answer via API"
REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
NO_OPTION = "Z"
_ANSWER_IS = re.compile(r"(?:correct\s+)?answer\s+is\s+\**([ABCD])\**", re.IGNORECASE)
_EGOSCHEMA_LETTERS = "ABCDE"


def sqa_letter(text: str) -> Optional[str]:
    """The option letter ScienceQA's scorer reads from an answer, or None."""
    if text in _SQA_LETTERS:
        return text
    if len(text) >= 3 and text[0] in _SQA_LETTERS and text[1:3] == ". ":
        return text[0]
    found = _SQA_PATTERN.findall(text)
    return found[0] if len(found) == 1 else None


def _words(text: str) -> list:
    for ch in _SEPARATORS:
        text = text.replace(ch, " ")
    return text.split()


def _option_letter(text: str, letters) -> Optional[str]:
    """Step 2 of `vlmevalkit_letter`: a letter, 'Z' (refusal / lone Z) or None."""
    if any(phrase in text for phrase in REFUSALS):
        return NO_OPTION
    words = _words(text)
    present = [letter for letter in letters if letter in words]
    if len(present) == 1:
        if words.index(present[0]) > len(words) - 5:
            return present[0]
    elif not present and NO_OPTION in words:
        return NO_OPTION
    match = _ANSWER_IS.search(text)
    if match and match.group(1).upper() in letters:
        return match.group(1).upper()
    return None


def _option_text(text: str, options: Mapping[str, object]) -> Optional[str]:
    """Step 3 of `vlmevalkit_letter`: the one option whose text the answer contains."""
    lowered = text.lower()
    if len(lowered) > 2 * sum(len(str(v)) for v in options.values()):
        return None
    found = [letter for letter, option in options.items() if str(option).lower() in lowered]
    return found[0] if len(found) == 1 else None


def vlmevalkit_letter(text: str, options: Mapping[str, object]) -> Optional[str]:
    """MMBench's rule-based letter (VLMEvalKit `can_infer`): a letter of `options`, 'Z' (no
    option) or None (nothing read). `options`: letter -> option text."""
    text = str(text)
    letter = None if _API_FAILURE in text else _option_letter(text, list(options))
    return letter or _option_text(text, options)


def check_ans_letter(text: str) -> str:
    """What MVBench/MLVU's `check_ans` compares with the right letter: the character before the
    first ')' when there is one, else the whole answer."""
    close = text.find(")")
    return text[close - 1 : close] if close >= 0 else text


def first_letter_a_to_e(text: str) -> Optional[str]:
    """EgoSchema's letter: the first character of the answer that is one of A-E, or None."""
    return next((ch for ch in text if ch in _EGOSCHEMA_LETTERS), None)


def infer_letter(text: str, options: Mapping[str, object]) -> Optional[str]:
    """Lenient: one option letter as a word (after `.()[],:;!*#{}` become spaces), else the one
    option whose text is contained (case-insensitively); else None."""
    words = _words(text)
    letters = [letter for letter in options if letter in words]
    if len(letters) == 1:
        return letters[0]
    if len(letters) > 1:
        return None
    lowered = text.lower()
    matches = [letter for letter, option in options.items() if str(option).lower() in lowered]
    return matches[0] if len(matches) == 1 else None


def leading_letter(text: str, options: Mapping[str, object]) -> Optional[str]:
    """Lenient video multiple choice: a leading option letter ('B', '(B) dog', 'B.') unless the
    answer names another option letter too; else `infer_letter`."""
    if len({letter for letter in options if letter in _words(text)}) > 1:
        return None
    stripped = text.strip().lstrip("(").lstrip()
    if stripped and stripped[0] in options and (len(stripped) == 1 or not stripped[1].isalpha()):
        return stripped[0]
    return infer_letter(text, options)
