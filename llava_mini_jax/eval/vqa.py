"""VQA-style answer normalisation and soft accuracy (VQAv2, VizWiz, TextVQA).

`normalize_answer` follows the EvalAI answer processor that the reference applies before
scoring (TextVQA) and before writing server submissions (VQAv2, VizWiz):

1. lower-case; drop ',' and '?'; "'s" becomes " 's"; newlines and tabs become spaces; strip;
2. each punctuation mark of `PUNCTUATION` is deleted where it touches a space (or where the text
   has a digit-comma-digit group), otherwise replaced by a space; the text tested is the one
   entering this step;
3. a '.' not followed by a digit is deleted (at most 32 of them: the reference passes
   `re.UNICODE`, which is 32, as the `count` argument of `re.sub`);
4. words: number words 'none', 'zero'..'ten' become digits, articles 'a', 'an', 'the' are
   dropped, apostrophe-less contractions ('dont') get their apostrophe back ('don't').

`strip_punctuation` and `normalize_words` are shared with the official VQAv2 and VizWiz evaluators'
processing (`vqa_official`, which scores those two benchmarks); `score` is TextVQA's scorer
(`m4c_evaluator.py`: EvalAI processing of the prediction and of every human answer).

`vqa_accuracy` is the standard soft score: for each of the n human answers, the fraction
min(1, #other humans giving the prediction / 3), averaged over the n leave-one-out subsets
(with 10 answers: 1 match -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from llava_mini_jax.eval.item import EvalItem, Key

PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

# The official VQA table of contractions written without their apostrophe. Its capitalised keys
# (Im, Ive, Id've) can never match the lower-cased words and are left out; 'somebody'd' really
# maps to 'somebodyd' there.
_CONTRACTION_PAIRS = """
aint ain't|arent aren't|cant can't|couldve could've|couldnt couldn't|couldn'tve couldn't've
couldnt've couldn't've|didnt didn't|doesnt doesn't|dont don't|hadnt hadn't|hadnt've hadn't've
hadn'tve hadn't've|hasnt hasn't|havent haven't|hed he'd|hed've he'd've|he'dve he'd've|hes he's
howd how'd|howll how'll|hows how's|I'dve I'd've|isnt isn't|itd it'd|itd've it'd've
it'dve it'd've|itll it'll|let's let's|maam ma'am|mightnt mightn't|mightnt've mightn't've
mightn'tve mightn't've|mightve might've|mustnt mustn't|mustve must've|neednt needn't
notve not've|oclock o'clock|oughtnt oughtn't|ow's'at 'ow's'at|'ows'at 'ow's'at|'ow'sat 'ow's'at
shant shan't|shed've she'd've|she'dve she'd've|she's she's|shouldve should've
shouldnt shouldn't|shouldnt've shouldn't've|shouldn'tve shouldn't've|somebody'd somebodyd
somebodyd've somebody'd've|somebody'dve somebody'd've|somebodyll somebody'll
somebodys somebody's|someoned someone'd|someoned've someone'd've|someone'dve someone'd've
someonell someone'll|someones someone's|somethingd something'd|somethingd've something'd've
something'dve something'd've|somethingll something'll|thats that's|thered there'd
thered've there'd've|there'dve there'd've|therere there're|theres there's|theyd they'd
theyd've they'd've|they'dve they'd've|theyll they'll|theyre they're|theyve they've|twas 'twas
wasnt wasn't|wed've we'd've|we'dve we'd've|weve we've|werent weren't|whatll what'll
whatre what're|whats what's|whatve what've|whens when's|whered where'd|wheres where's
whereve where've|whod who'd|whod've who'd've|who'dve who'd've|wholl who'll|whos who's
whove who've|whyll why'll|whyre why're|whys why's|wont won't|wouldve would've
wouldnt wouldn't|wouldnt've wouldn't've|wouldn'tve wouldn't've|yall y'all|yall'll y'all'll
y'allll y'all'll|yall'd've y'all'd've|y'alld've y'all'd've|y'all'dve y'all'd've|youd you'd
youd've you'd've|you'dve you'd've|youll you'll|youre you're|youve you've
"""
CONTRACTIONS = dict(pair.split(" ") for pair in re.split(r"[|\n]", _CONTRACTION_PAIRS) if pair.strip())

# EvalAI's digit-comma-digit test (one or more commas); the official VQA/VizWiz evaluators' is
# exactly one comma between two digits.
EVALAI_DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d),+(?=\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_MAX_PERIODS_REMOVED = 32  # re.UNICODE passed as `count` in the reference


def strip_punctuation(text: str, digit_comma_digit=EVALAI_DIGIT_COMMA_DIGIT) -> str:
    """Steps 2-3 of the module docstring: every mark of `PUNCTUATION` deleted where it touches a
    space in `text` (or everywhere when `text` has a digit-comma-digit group), else replaced by a
    space; then at most 32 periods not followed by a digit deleted."""
    has_number_group = digit_comma_digit.search(text) is not None
    out = text
    for p in PUNCTUATION:
        touches_space = (p + " ") in text or (" " + p) in text
        out = out.replace(p, "" if touches_space or has_number_group else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_MAX_PERIODS_REMOVED)


def normalize_words(text: str, contractions: Mapping[str, str] = CONTRACTIONS) -> str:
    """Step 4: lower-case, split on whitespace, number words to digits, articles dropped,
    `contractions` applied word by word, joined with single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(contractions.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """The EvalAI/VQA normalised form of `answer` (see the module docstring for the rules)."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return normalize_words(strip_punctuation(text))


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Soft VQA accuracy in [0, 1] of one prediction against the human answers (both normalised)."""
    if not human_answers:
        raise ValueError("vqa_accuracy needs at least one human answer, got none")
    pred = normalize_answer(prediction)
    humans = [normalize_answer(a) for a in human_answers]
    per_subset = []
    for left_out in range(len(humans)):
        matches = sum(1 for j, h in enumerate(humans) if j != left_out and h == pred)
        per_subset.append(min(1.0, matches / 3))
    return sum(per_subset) / len(per_subset)


def score(items: Sequence[EvalItem], answers: Mapping[Key, str]) -> Dict[str, float]:
    """TextVQA accuracy (percent) over `items`, whose `meta["answers"]` are the human answers.

    A question without an answer in `answers` scores as the empty answer.
    """
    scores = [vqa_accuracy(answers.get(item.key, ""), item.meta["answers"]) for item in items]
    return {"accuracy": 100.0 * sum(scores) / max(len(scores), 1), "count": len(scores)}


def write_vqav2_submission(
    items: Sequence[EvalItem],
    answers: Mapping[Key, str],
    path: Path,
    all_question_ids: Optional[Iterable[int]] = None,
) -> Path:
    """EvalAI VQAv2 upload: `[{"question_id", "answer"}]`, answers normalised.

    The server wants every question of test2015 even for a test-dev submission: ids in
    `all_question_ids` that were not asked get the empty answer, as in the reference.
    """
    by_id = {item.question_id: normalize_answer(answers.get(item.key, "")) for item in items}
    ids: List = list(all_question_ids) if all_question_ids is not None else list(by_id)
    rows = [{"question_id": qid, "answer": by_id.get(qid, "")} for qid in ids]
    return _dump(rows, path)


def write_vizwiz_submission(items: Sequence[EvalItem], answers: Mapping[Key, str], path: Path) -> Path:
    """EvalAI VizWiz upload: `[{"image", "answer"}]` for every question, answers normalised."""
    missing = [item.question_id for item in items if item.key not in answers]
    if missing:
        raise ValueError(
            f"VizWiz submission needs an answer to every question; "
            f"{len(missing)} have none, e.g. question_id {missing[0]!r}"
        )
    rows = [
        {"image": item.meta["image_name"], "answer": normalize_answer(answers[item.key])} for item in items
    ]
    return _dump(rows, path)


def _dump(rows, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f)
    return path
