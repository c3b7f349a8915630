"""Option letters read from free-form answers, each case worked by hand from the scorer's rule."""

import pytest

from llava_mini_jax.eval import answer_parsing as ap

OPTIONS = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A", "A"),
        ("E", "E"),
        ("B. The cat", "B"),  # 'X. ' prefix
        ("The answer is C.", "C"),
        ("So, The answer is D!", "D"),  # the regex's '.' matches any character
        ("The answer is C", None),  # ... but needs one after the letter
        ("The answer is A. The answer is B.", None),  # two matches: failed
        ("AB", None),
        ("", None),
        ("F", None),
        ("b", None),
        ("B.", None),  # 'X. ' needs the space
    ],
)
def test_sqa_letter(text, expected):
    assert ap.sqa_letter(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("B.", "B"),  # '.' becomes a space
        ("(B", "B"),
        ("B)", "B"),
        ("(B) dog", "B"),
        ("The answer is B", "B"),
        ("The correct answer is **C**", "C"),  # '*' becomes a space: C is the 5th of 5 words
        # one letter, but not among the last 5 words, and no "answer is": then the option text,
        # which a 46-character answer is too long for (limit 2 x 14 option characters)
        ("B is right because the dog on the left is barking", None),
        # ... while "answer is X" is read wherever it stands
        ("The answer is B because the dog on the left is clearly barking loudly", "B"),
        ("the answer is a dog", "A"),  # the "answer is" pattern ignores case: 'a' reads A
        ("dog", "B"),  # the option text alone
        ("It is a dog", "B"),  # no letter word, one option text contained
        ("DOG!", "B"),  # option text compared lower-cased
        ("C or D", None),  # two option letters
        ("cat or dog", None),  # two option texts
        ("Cannot determine the answer", "Z"),  # refusal: no option
        ("I can't process this file.", "Z"),
        ("Z", "Z"),  # a lone Z: no option
        ("Z.", "Z"),
        ("Z or B", "B"),  # an option letter wins over Z
        ("E", None),  # not an option
        ("", None),
        ("   ", None),
        ("Failed to obtain answer via API", None),
        ("ＢＩＲＤ", None),  # full-width letters are other characters
    ],
)
def test_vlmevalkit_letter(text, expected):
    assert ap.vlmevalkit_letter(text, OPTIONS) == expected


def test_vlmevalkit_letter_two_options_and_numbers():
    options = {"A": "yes", "B": "no"}
    assert ap.vlmevalkit_letter("No", options) == "B"  # option text, case-insensitive
    assert ap.vlmevalkit_letter("know", options) == "B"  # 'no' is inside 'know'
    assert ap.vlmevalkit_letter("I don't know", options) is None  # 12 characters > 2 x 5
    assert ap.vlmevalkit_letter("C", options) is None  # C is not an option here
    assert ap.vlmevalkit_letter("7", {"A": 7, "B": 8}) == "A"  # option values read as text
    long = {"A": "a black cat sitting", "B": "a brown dog"}
    failed = "Failed to obtain answer via API"
    assert ap.vlmevalkit_letter(f"{failed}: B", long) is None  # letters are not read then ...
    assert ap.vlmevalkit_letter(f"{failed}: a brown dog", long) == "B"  # ... option texts are


@pytest.mark.parametrize(
    "text, credited",
    [
        ("B", True),
        ("(B)", True),
        ("B) dog", True),
        ("(B) dog", True),
        ("The answer is (B).", True),  # the character before the first ')'
        ("B.", False),
        ("(B", False),
        ("The answer is B", False),
        ("dog", False),  # the option text alone
        ("b", False),
        (" B", False),
        ("C or D", False),
        ("(A) or (B)", False),  # the first ')' follows A
        (")B", False),  # nothing before the ')'
        ("", False),
    ],
)
def test_check_ans_letter(text, credited):
    assert (ap.check_ans_letter(text) == "B") is credited


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("(E)", "E"),
        ("I think C", "C"),  # 'I' is not one of A-E
        ("Based on the video, D", "B"),  # the first capital A-E wins, wherever it is
        ("the answer is d", None),  # lower case never counts
        ("F", None),
        ("", None),
        ("Option (C) or (D)", "C"),
    ],
)
def test_first_letter_a_to_e(text, expected):
    assert ap.first_letter_a_to_e(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("(C) dog", "C"),
        ("The answer is A.", "A"),
        ("A dog", "A"),  # a lone 'A' word counts as the letter
        ("It is a dog", "C"),  # no letter word: the one option text contained
        ("A or B", None),  # two letters: never credited
        ("cat or dog", None),  # two option texts
        ("E", None),  # not an option
        ("", None),
    ],
)
def test_infer_letter(text, expected):
    assert ap.infer_letter(text, {"A": "cat", "B": "bird", "C": "dog"}) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("(B) dog", "B"),
        ("B.", "B"),
        (" C) bird", "C"),
        ("Dog", "B"),  # 'D' followed by a letter is a word: falls back to option text
        ("Best option: (A)", "A"),
        ("The answer is B", "B"),
        ("C or D", None),  # names two options: never credited
        ("C, not D", None),
        ("(C) or (D)", None),
        ("Cannot determine the answer", None),
    ],
)
def test_leading_letter(text, expected):
    assert ap.leading_letter(text, OPTIONS) == expected
