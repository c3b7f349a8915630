"""The user turns of the reference's evaluation scripts, written out by hand."""

import pytest

from llava_mini_jax.eval import prompts


def test_mmbench_question_block_and_instructions():
    block = "A zoo photo.\nWhat animal?\nA. cat\nB. dog"
    assert prompts.mmbench_question("What animal?", "A zoo photo.", ["cat", "dog"]) == block
    assert prompts.mmbench_query("What animal?", "A zoo photo.", ["cat", "dog"]) == (
        block + "\nAnswer with the option's letter from the given choices directly."
    )
    assert prompts.mmbench_query("Q?", None, ["x"], lang="cn") == "Q?\nA. x\n请直接回答选项字母。"
    with pytest.raises(ValueError, match="'zh'"):
        prompts.mmbench_query("Q?", None, ["x"], lang="zh")


@pytest.mark.parametrize(
    "question, options, block",
    [
        ("Why?", ["x", "y"], "Question: Why?\nOptions:\n(A) x\n(B) y"),
        ("Why? ", ["x ", "y  "], "Question: Why? \nOptions:\n(A) x \n(B) y"),  # only the end is stripped
        ("Why?", ["x", " "], "Question: Why?\nOptions:\n(A) x\n(B)"),  # a blank last option
        ("Why?\n", [], "Question: Why?\n\nOptions:"),
    ],
)
def test_mvbench_mlvu_block_strips_only_its_end(question, options, block):
    assert prompts.choice_block(question, options) == block
    assert prompts.choice_query(question, options) == block + "\nAnswer with one letter."


def test_egoschema_query():
    assert prompts.egoschema_query("Why?", ["a", "b", "c", "d", "e "]) == (
        "You are a helpful expert in first person view video analysis. Please provide a single-letter "
        "answer (A, B, C, D, E) to the following multiple-choice question based on this video.\n"
        "Why?\nChoices:\nA: a\nB: b\nC: c\nD: d\nE: e \n\nAnswer with one letter."
    )
    with pytest.raises(ValueError, match="5 options, got 4"):
        prompts.egoschema_query("Why?", ["a", "b", "c", "d"])


def test_open_ended_video_instructions():
    msvd, anet = prompts.VIDEO_QA_INSTRUCTION, prompts.ACTIVITYNET_QA_INSTRUCTION
    head = (
        "Answer the question based on the video. Provide a complete sentence that directly mirrors the "
        "phrasing of the question and focuses on giving a clear, relevant answer.\n\nFor example:\n"
    )
    tail = (
        "For the question 'What does the woman who is standing next to the window do before picking up "
        "the phone?', answer with 'The woman who is standing next to the window looks outside before "
        "picking up the phone.' or 'The woman who is standing next to the window adjusts the curtains "
        "before picking up the phone.'\n\nAnswer the question with one complete sentence:\n"
    )
    for text in (msvd, anet):
        assert text.startswith(head) and text.endswith(tail)
    assert msvd[len(head) :].startswith(
        "For the question 'Who is driving a car?', answer with 'A man is driving a car.' or "
        "'A person without clear face is driving a car.'\n"
    )
    assert anet[len(head) :].startswith(
        "For the question 'How challenging is the game being played?', answer with 'The game being "
        "played is secondary.' or 'The game being played is simple.'\n"
    )
    # 8 worked examples (MSVD/MSRVTT) and 10 (ActivityNet), no full stop after the quotes
    assert msvd.count("For the question") == 8 and anet.count("For the question") == 10
    assert "'The man evade the clutches of gangster.'" in msvd
    assert (len(msvd), len(anet)) == (1569, 2120)
