"""One evaluation question: what the model is asked and what the scorer needs.

A benchmark reader turns a benchmark's files into a list of `EvalItem`s; the runner hands batches of
them to the model (`answer_fn`) and appends the answers to a jsonl file; a scorer compares the
answers with the ground truth kept in `meta`.

Items are identified by `key` = (question_id as text, recorded prompt). The question id alone is
not unique in the reference's own question files (MME and TextVQA give both questions about one
image the same id), the pair is.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Tuple, Union

QuestionId = Union[int, str]
Key = Tuple[str, str]


@dataclasses.dataclass(frozen=True)
class EvalItem:
    """One question of a benchmark.

    Attributes:
      question_id: the id the benchmark (or the reference's question file) gives the question; it is
        written unchanged into the answers file.
      query: the user text exactly as the reference evaluation script hands it to the conversation
        template: question plus the answer-format suffix or the option lines, without the
        `<image>\\n` prefix (the prompt builder adds that when `image` or `video` is set).
      image: path of the image file, or None.
      video: path of the video file (or, for MVBench's frame-folder tasks, of the frame folder), or
        None.
      meta: what the scorer and the answer-file writers need (ground truth, category, options, ...).
      answer_prompt: the `prompt` field the reference writes into its answers file when it is not
        `query` (ScienceQA records `"<image>\\n" + query` for questions with an image). None means
        `query`.
    """

    question_id: QuestionId
    query: str
    image: Optional[str] = None
    video: Optional[str] = None
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    answer_prompt: Optional[str] = None

    def __post_init__(self):
        if self.image is not None and self.video is not None:
            raise ValueError(
                f"question {self.question_id!r}: an item has an image or a video, not both "
                f"(image={self.image!r}, video={self.video!r})"
            )

    @property
    def prompt(self) -> str:
        """The `prompt` field of this item's line in the answers file."""
        return self.query if self.answer_prompt is None else self.answer_prompt

    @property
    def key(self) -> Key:
        """(question id as text, recorded prompt): unique within a benchmark split."""
        return item_key(self.question_id, self.prompt)


def item_key(question_id: QuestionId, prompt: str) -> Key:
    """The key of an answer-file line or an item: ids 7 and "7" are the same question."""
    return (str(question_id), prompt)
