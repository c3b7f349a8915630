"""Readers for the video benchmarks, in each benchmark's released file layout.

Videos are passed to the model as paths; frame sampling (about one frame per second, MVBench and
MLVU capped at 1000 frames: meta `max_frames`) and chunked encoding of long videos belong to the
model side. Multiple-choice queries are built as:

    Question: <question>
    Options:
    (A) <option>
    (B) <option>
    Answer with one letter.

(the last line is the suffix the reference's MVBench/MLVU scripts append; EgoSchema is asked with
LLaVA's option-letter instruction instead). Open-ended video QA asks the bare question.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

from llava_mini_jax.eval import files
from llava_mini_jax.eval.image_readers import OPTION_LETTER
from llava_mini_jax.eval.item import EvalItem
from llava_mini_jax.eval.multiple_choice import LETTERS, option_lines

ONE_LETTER = "Answer with one letter."
LONG_VIDEO_MAX_FRAMES = 1000

# MVBench task files -> (video folder under video/, 'video' or 'frame' folder), as released.
MVBENCH_TASKS = {
    "action_sequence.json": ("star/Charades_v1_480", "video"),
    "action_prediction.json": ("star/Charades_v1_480", "video"),
    "action_antonym.json": ("ssv2_video", "video"),
    "fine_grained_action.json": ("Moments_in_Time_Raw/videos", "video"),
    "unexpected_action.json": ("FunQA_test/test", "video"),
    "object_existence.json": ("clevrer/video_validation", "video"),
    "object_interaction.json": ("star/Charades_v1_480", "video"),
    "object_shuffle.json": ("perception/videos", "video"),
    "moving_direction.json": ("clevrer/video_validation", "video"),
    "action_localization.json": ("sta/sta_video", "video"),
    "scene_transition.json": ("scene_qa/video", "video"),
    "action_count.json": ("perception/videos", "video"),
    "moving_count.json": ("clevrer/video_validation", "video"),
    "moving_attribute.json": ("clevrer/video_validation", "video"),
    "state_change.json": ("perception/videos", "video"),
    "fine_grained_pose.json": ("nturgbd", "video"),
    "character_order.json": ("perception/videos", "video"),
    "egocentric_navigation.json": ("vlnqa", "video"),
    "episodic_reasoning.json": ("tvqa/frames_fps3_hq", "frame"),
    "counterfactual_inference.json": ("clevrer/video_validation", "video"),
}


def _check_split(benchmark: str, split: str, known) -> None:
    if split not in known:
        raise ValueError(f"{benchmark}: unknown split {split!r}, expected one of {sorted(known)}")


def choice_query(question: str, options: Sequence[str], suffix: str = ONE_LETTER) -> str:
    """'Question: ...', 'Options:', '(A) ...' lines, then the answer-format suffix."""
    return "\n".join([f"Question: {question}", "Options:"] + option_lines(options, "paren") + [suffix])


def _answer_letter(options: Sequence[str], answer: str, where: str) -> str:
    if answer not in options:
        raise ValueError(f"{where}: answer {answer!r} is not one of the candidates {list(options)}")
    return LETTERS[list(options).index(answer)]


def _require_videos(items: Sequence[EvalItem], what: str) -> None:
    files.require_images((item.video for item in items), what)


def read_mvbench(root: Path, split: str) -> List[EvalItem]:
    """MVBench (HF OpenGVLab/MVBench): `json/<task>.json` and `video/<source folders>/`.

    Each entry `{"video", "question", "candidates", "answer"[, "start", "end"]}`; the answer is the
    candidate text. Start/end bounds are kept in meta but, as in the reference's loop, not applied.
    """
    root = Path(root)
    _check_split("mvbench", split, ("test",))
    items = []
    for task_file, (folder, kind) in MVBENCH_TASKS.items():
        path = root / "json" / task_file
        if not path.is_file():
            continue
        task = task_file[: -len(".json")]
        for i, row in enumerate(files.read_json(path, f"MVBench task {task}")):
            where = f"{path}, entry {i}"
            files.require_keys(row, ("video", "question", "candidates", "answer"), where)
            meta = {
                "task": task,
                "options": dict(zip(LETTERS, row["candidates"])),
                "answer": _answer_letter(row["candidates"], row["answer"], where),
                "data_type": kind,
                "max_frames": LONG_VIDEO_MAX_FRAMES,
            }
            if "start" in row and "end" in row:
                meta["bound"] = (row["start"], row["end"])
            items.append(
                EvalItem(
                    f"{task}/{i}",
                    choice_query(row["question"], row["candidates"]),
                    video=str(root / "video" / folder / row["video"]),
                    meta=meta,
                )
            )
    if not items:
        raise FileNotFoundError(f"MVBench: no task file of {sorted(MVBENCH_TASKS)} in {root / 'json'}")
    _require_videos(items, "MVBench videos")
    return items


def read_mlvu(root: Path, split: str) -> List[EvalItem]:
    """MLVU dev: `json/<n>_<task>.json` and `video/<n>_<task>/` (multiple-choice tasks only:
    entries with `candidates`; the generation tasks are skipped)."""
    root = Path(root)
    _check_split("mlvu", split, ("dev",))
    json_dir = files.require_dir(root / "json", "MLVU question files")
    items = []
    for path in sorted(json_dir.glob("*.json")):
        for i, row in enumerate(files.read_json(path, f"MLVU task {path.stem}")):
            if "candidates" not in row:
                continue
            where = f"{path}, entry {i}"
            files.require_keys(row, ("video", "question", "answer"), where)
            task = row.get("question_type", path.stem.split("_", 1)[-1])
            items.append(
                EvalItem(
                    f"{path.stem}/{i}",
                    choice_query(row["question"], row["candidates"]),
                    video=str(root / "video" / path.stem / row["video"]),
                    meta={
                        "task": task,
                        "options": dict(zip(LETTERS, row["candidates"])),
                        "answer": _answer_letter(row["candidates"], row["answer"], where),
                        "max_frames": LONG_VIDEO_MAX_FRAMES,
                    },
                )
            )
    _require_videos(items, "MLVU videos")
    return items


def read_egoschema(root: Path, split: str) -> List[EvalItem]:
    """EgoSchema: `questions.json` (`q_uid`, `question`, `option 0`..`option 4`), videos
    `good_clips_git/<q_uid>.mp4`, and for the 'subset' split `subset_answers.json` (q_uid -> index).

    'subset' is the 500 questions with public answers (scored here); 'full' is every question,
    written as the Kaggle submission.
    """
    root = Path(root)
    _check_split("egoschema", split, ("subset", "full"))
    questions = files.read_json(root / "questions.json", "EgoSchema questions")
    answers: Dict[str, int] = {}
    if split == "subset":
        answers = files.read_json(root / "subset_answers.json", "EgoSchema subset answers")
        questions = [q for q in questions if q["q_uid"] in answers]
    video_dir = files.first_existing([root / "good_clips_git", root / "videos"], "EgoSchema videos")
    items = []
    for q in questions:
        options = [q[f"option {k}"] for k in range(5)]
        answer = answers.get(q["q_uid"])
        items.append(
            EvalItem(
                q["q_uid"],
                choice_query(q["question"], options, OPTION_LETTER),
                video=str(video_dir / f"{q['q_uid']}.mp4"),
                meta={
                    "task": "egoschema",
                    "options": dict(zip(LETTERS, options)),
                    "answer": None if answer is None else LETTERS[int(answer)],
                },
            )
        )
    _require_videos(items, "EgoSchema videos")
    return items


def _video_qa_folder(root: Path) -> Path:
    return files.first_existing(
        [root / "videos" / "all", root / "videos", root / "all_test", root / "all_videos"], "video folder"
    )


def read_video_qa(root: Path, split: str, benchmark: str = "msvd_qa") -> List[EvalItem]:
    """MSVD-QA / MSRVTT-QA / ActivityNet-QA: `test_q.json` (`video_name`, `question`,
    `question_id`), `test_a.json` (`answer`, `question_id`), and a video folder (`videos/all/`,
    `videos/` or `all_test/`; ActivityNet's files carry a `v_` prefix; extensions are tried)."""
    root = Path(root)
    _check_split(benchmark, split, ("test",))
    questions = files.read_json(root / "test_q.json", f"{benchmark} questions")
    answer_rows = files.read_json(root / "test_a.json", f"{benchmark} answers")
    by_id = {str(a["question_id"]): a["answer"] for a in answer_rows if "question_id" in a}
    folder = _video_qa_folder(root)
    prefixes = ("", "v_") if benchmark == "activitynet_qa" else ("",)
    items = []
    for i, q in enumerate(questions):
        qid = q.get("question_id", i)
        answer = by_id.get(str(qid), answer_rows[i]["answer"] if i < len(answer_rows) else None)
        video = files.find_video(folder, str(q["video_name"]), prefixes)
        if video is None:
            raise FileNotFoundError(
                f"{benchmark}: no video {q['video_name']!r} (any of " f"{files.VIDEO_EXTENSIONS}) in {folder}"
            )
        items.append(
            EvalItem(qid, q["question"], video=str(video), meta={"question": q["question"], "answer": answer})
        )
    return items


_VCG_FILES = {
    "generic": "generic_qa.json",
    "temporal": "temporal_qa.json",
    "consistency": "consistency_qa.json",
}


def read_vcgbench(root: Path, split: str) -> List[EvalItem]:
    """Video-ChatGPT benchmark: `Benchmarking_QA/<split>_qa.json` and `Test_Videos/`.

    'generic' and 'temporal' entries are `{"video_name", "Q", "A"}`; 'consistency' entries
    `{"video_name", "Q1", "Q2", "A"}` become two questions sharing meta `group`.
    """
    root = Path(root)
    _check_split("vcgbench", split, tuple(_VCG_FILES))
    qa_dir = files.first_existing([root / "Benchmarking_QA", root], "Video-ChatGPT QA folder")
    rows = files.read_json(qa_dir / _VCG_FILES[split], f"Video-ChatGPT {split} questions")
    folder = files.first_existing([root / "Test_Videos", root / "videos"], "Video-ChatGPT videos")
    items = []
    for i, row in enumerate(rows):
        video = files.find_video(folder, str(row["video_name"]))
        if video is None:
            raise FileNotFoundError(f"Video-ChatGPT: no video {row['video_name']!r} in {folder}")
        base = {"video_name": row["video_name"], "answer": row["A"]}
        if split != "consistency":
            items.append(
                EvalItem(f"{split}/{i}", row["Q"], video=str(video), meta=dict(base, question=row["Q"]))
            )
            continue
        for pair in (1, 2):
            question = row[f"Q{pair}"]
            items.append(
                EvalItem(
                    f"consistency/{i}/{pair}",
                    question,
                    video=str(video),
                    meta=dict(base, question=question, pair=pair, group=i),
                )
            )
    return items
