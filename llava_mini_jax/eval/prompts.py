"""The user turns the reference's evaluation scripts build, benchmark by benchmark.

These strings are what the model is fed, so they must equal the reference's byte for byte
(ictnlp/LLaVA-Mini `llavamini/eval/*.py`, `llavamini/eval/video/*.py`, run by its
`scripts/llavamini/eval_*/*.sh`). Each builder returns the query without the `<image>\\n` prefix,
which the prompt builder adds (`conversation.format_query`).

* LLaVA question files (VQAv2, GQA, VizWiz, TextVQA, POPE, MME, SEED, LLaVA-Bench, MM-Vet): the
  file's `text`, unchanged.
* ScienceQA, MMBench: question (MMBench: hint first) and options, then `OPTION_LETTER`. The
  reference's MMBench-CN script passes no `--lang cn`, so it ends with the English instruction
  too (`mmbench_query(..., lang="cn")` is the Chinese variant).
* MVBench, MLVU: `choice_query`: 'Question:' / 'Options:' / '(A) ...' lines with the trailing
  whitespace of the whole block stripped, then `ONE_LETTER`.
* EgoSchema: `egoschema_query`, its own instruction with 'A: ...' choices.
* MSVD-QA, MSRVTT-QA: `VIDEO_QA_INSTRUCTION` + question; ActivityNet-QA: its own worked examples
  (`ACTIVITYNET_QA_INSTRUCTION`); the Video-ChatGPT benchmark: the bare question.
"""

from __future__ import annotations

from typing import Optional, Sequence

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

SHORT_ANSWER = "Answer the question using a single word or phrase."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."
OPTION_LETTER_CN = "请直接回答选项字母。"
VIZWIZ_UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."
ONE_LETTER = "Answer with one letter."

EGOSCHEMA_INSTRUCTION = (
    "You are a helpful expert in first person view video analysis. Please provide a single-letter "
    "answer (A, B, C, D, E) to the following multiple-choice question based on this video."
)


def _examples(pairs) -> str:
    return "".join(f"For the question '{q}', answer with '{a}' or '{b}'\n" for q, a, b in pairs)


_SHARED_EXAMPLES = (
    (
        "Who is the man talking to while driving?",
        "The man is talking to a woman while driving.",
        "The man is talking to a friend while driving.",
    ),
    (
        "Where is the boy standing when the cat jumps onto the table?",
        "The boy is standing next to the door when the cat jumps onto the table.",
        "The boy is standing in the kitchen when the cat jumps onto the table.",
    ),
    ("What is the dog in?", "The dog is in a box.", "The dog is in the car."),
    (
        "what does the man evade the clutches of?",
        "The man evade the clutches of gangster.",
        "The man evade the clutches of an eagle.",
    ),
    ("What does the man do 2 times?", "The man jumps 2 times.", "The man waves 2 times."),
    (
        "What does the woman who is standing next to the window do before picking up the phone?",
        "The woman who is standing next to the window looks outside before picking up the phone.",
        "The woman who is standing next to the window adjusts the curtains before picking up the phone.",
    ),
)
_MSVD_EXAMPLES = (
    (
        "Who is driving a car?",
        "A man is driving a car.",
        "A person without clear face is driving a car.",
    ),
    ("What is the man doing?", "The man is driving a car.", "The man is walking."),
)
_ACTIVITYNET_EXAMPLES = (
    (
        "How challenging is the game being played?",
        "The game being played is secondary.",
        "The game being played is simple.",
    ),
    (
        "How risky is it to practice gymnastics indoors?",
        "Practicing gymnastics indoors can be dangerous if safety mats are not used.",
        "It is somewhat risky to practice gymnastics indoors because of hard surfaces.",
    ),
    (
        "What did the girl experience after finishing her dessert?",
        "The girl felt a sugar rush after finishing her dessert.",
        "The girl felt satisfied after finishing her dessert.",
    ),
    (
        "Is the runner wearing a jacket?",
        "The runner is wearing a lightweight shirt instead of a jacket.",
        "The runner is not wearing a jacket, but has on a tank top.",
    ),
)


def _open_video_instruction(examples) -> str:
    return (
        "Answer the question based on the video. Provide a complete sentence that directly mirrors "
        "the phrasing of the question and focuses on giving a clear, relevant answer.\n\n"
        "For example:\n" + _examples(examples) + "\nAnswer the question with one complete sentence:\n"
    )


# MSVD-QA and MSRVTT-QA (run_inference_video_qa.py) / ActivityNet-QA (run_inference_video_qa_act.py):
# the instruction is put in front of the question with nothing in between.
VIDEO_QA_INSTRUCTION = _open_video_instruction(_MSVD_EXAMPLES + _SHARED_EXAMPLES)
ACTIVITYNET_QA_INSTRUCTION = _open_video_instruction(_ACTIVITYNET_EXAMPLES + _SHARED_EXAMPLES)


def option_lines(options: Sequence[str], style: str) -> list:
    """Option lines 'A. text' (style 'dot') or '(A) text' (style 'paren')."""
    if style == "dot":
        return [f"{LETTERS[i]}. {text}" for i, text in enumerate(options)]
    if style == "paren":
        return [f"({LETTERS[i]}) {text}" for i, text in enumerate(options)]
    raise ValueError(f"option style {style!r}: expected 'dot' or 'paren'")


def mmbench_question(question: str, hint: Optional[str], options: Sequence[str]) -> str:
    """MMBench's question block (hint line, question, 'A. option' lines): what the reference
    records as the answer line's `prompt` (model_vqa_mmbench.py)."""
    text = question if hint is None else f"{hint}\n{question}"
    return "\n".join([text] + option_lines(options, "dot"))


def mmbench_query(question: str, hint: Optional[str], options: Sequence[str], lang: str = "en") -> str:
    """MMBench's user turn: the question block and the letter instruction ('cn': the Chinese one)."""
    if lang not in ("en", "cn"):
        raise ValueError(f"MMBench instruction language {lang!r}: expected 'en' or 'cn'")
    instruction = OPTION_LETTER_CN if lang == "cn" else OPTION_LETTER
    return mmbench_question(question, hint, options) + "\n" + instruction


def choice_block(question: str, options: Sequence[str]) -> str:
    """MVBench/MLVU's question block ('Question:', 'Options:', '(A) ...'), trailing whitespace of the
    whole block stripped (qa_template): an option ending in spaces loses them only when last."""
    lines = "".join(f"{line}\n" for line in option_lines(options, "paren"))
    text = f"Question: {question}\nOptions:\n" + lines
    return text.rstrip()


def choice_query(question: str, options: Sequence[str]) -> str:
    """MVBench/MLVU's user turn: `choice_block` then `ONE_LETTER` on its own line."""
    return choice_block(question, options) + "\n" + ONE_LETTER


def egoschema_query(question: str, options: Sequence[str]) -> str:
    """EgoSchema's user turn (egoschema_mc.py): instruction, question, 'Choices:', 'A: ...' lines,
    a blank line, `ONE_LETTER`."""
    if len(options) != 5:
        raise ValueError(f"EgoSchema questions have 5 options, got {len(options)}")
    choices = [f"{LETTERS[i]}: {option}" for i, option in enumerate(options)]
    lines = [EGOSCHEMA_INSTRUCTION, question, "Choices:"] + choices
    return "\n".join(lines) + "\n\n" + ONE_LETTER
