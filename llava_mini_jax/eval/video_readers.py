"""Readers for the video benchmarks, in each benchmark's released file layout (and the reference's).

Videos are passed to the model as paths; frame sampling (about one frame per second, MVBench and
MLVU capped at 1000 frames: meta `max_frames`) and chunked encoding of long videos belong to the
model side. Queries are the reference scripts' (`prompts`):

* MVBench, MLVU: `prompts.choice_query` ('Question:', 'Options:', '(A) ...', 'Answer with one
  letter.'); the answers file records the question block without the last line, as the reference;
* EgoSchema: `prompts.egoschema_query`;
* MSVD-QA, MSRVTT-QA, ActivityNet-QA: the reference's instruction with worked examples, then the
  question (the answers file records the bare question);
* Video-ChatGPT: the bare question.

Task names are the reference's (`MVBENCH_TASKS`, `MLVU_TASKS`), so per-task numbers line up with
the ones its scripts print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

from llava_mini_jax.eval import files
from llava_mini_jax.eval.item import EvalItem
from llava_mini_jax.eval.prompts import (
    ACTIVITYNET_QA_INSTRUCTION,
    LETTERS,
    ONE_LETTER,  # re-exported: the MVBench/MLVU answer-format line
    VIDEO_QA_INSTRUCTION,
    choice_block,
    choice_query,
    egoschema_query,
)

LONG_VIDEO_MAX_FRAMES = 1000
# The reference's video scripts look for `<name><ext>` with these extensions, in this order.
REFERENCE_VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")

# MVBench task files -> (the reference's task name, video folder under video/, 'video' or 'frame').
MVBENCH_TASKS = {
    "action_sequence.json": ("Action Sequence", "star/Charades_v1_480", "video"),
    "action_prediction.json": ("Action Prediction", "star/Charades_v1_480", "video"),
    "action_antonym.json": ("Action Antonym", "ssv2_video", "video"),
    "fine_grained_action.json": ("Fine-grained Action", "Moments_in_Time_Raw/videos", "video"),
    "unexpected_action.json": ("Unexpected Action", "FunQA_test/test", "video"),
    "object_existence.json": ("Object Existence", "clevrer/video_validation", "video"),
    "object_interaction.json": ("Object Interaction", "star/Charades_v1_480", "video"),
    "object_shuffle.json": ("Object Shuffle", "perception/videos", "video"),
    "moving_direction.json": ("Moving Direction", "clevrer/video_validation", "video"),
    "action_localization.json": ("Action Localization", "sta/sta_video", "video"),
    "scene_transition.json": ("Scene Transition", "scene_qa/video", "video"),
    "action_count.json": ("Action Count", "perception/videos", "video"),
    "moving_count.json": ("Moving Count", "clevrer/video_validation", "video"),
    "moving_attribute.json": ("Moving Attribute", "clevrer/video_validation", "video"),
    "state_change.json": ("State Change", "perception/videos", "video"),
    "fine_grained_pose.json": ("Fine-grained Pose", "nturgbd", "video"),
    "character_order.json": ("Character Order", "perception/videos", "video"),
    "egocentric_navigation.json": ("Egocentric Navigation", "vlnqa", "video"),
    "episodic_reasoning.json": ("Episodic Reasoning", "tvqa/frames_fps3_hq", "frame"),
    "counterfactual_inference.json": ("Counterfactual Inference", "clevrer/video_validation", "video"),
}

# MLVU's multiple-choice task files (json/<stem>.json, videos in video/<stem>/) -> the reference's
# task name, in the reference's order; its generation tasks (sub-scene, summary) are not read.
MLVU_TASKS = {
    "4_count": "count",
    "3_ego": "ego",
    "2_needle": "needle",
    "5_order": "order",
    "1_plotQA": "plotQA",
    "6_anomaly_reco": "anomaly_reco",
    "7_topic_reasoning": "topic_reasoning",
}


def _check_split(benchmark: str, split: str, known) -> None:
    if split not in known:
        raise ValueError(f"{benchmark}: unknown split {split!r}, expected one of {sorted(known)}")


def _answer_letter(options: Sequence[str], answer: str, where: str) -> str:
    if answer not in options:
        raise ValueError(f"{where}: answer {answer!r} is not one of the candidates {list(options)}")
    return LETTERS[list(options).index(answer)]


def _require_videos(items: Sequence[EvalItem], what: str) -> None:
    files.require_images((item.video for item in items), what)


def _choice_item(question_id: str, row: dict, video: str, task: str, where: str, **meta) -> EvalItem:
    """An MVBench/MLVU question: the reference's query, its recorded question block as prompt."""
    files.require_keys(row, ("video", "question", "candidates", "answer"), where)
    return EvalItem(
        question_id,
        choice_query(row["question"], row["candidates"]),
        video=video,
        answer_prompt=choice_block(row["question"], row["candidates"]),
        meta=dict(
            meta,
            task=task,
            options=dict(zip(LETTERS, row["candidates"])),
            answer=_answer_letter(row["candidates"], row["answer"], where),
            max_frames=LONG_VIDEO_MAX_FRAMES,
        ),
    )


def read_mvbench(root: Path, split: str) -> List[EvalItem]:
    """MVBench (HF OpenGVLab/MVBench): `json/<task>.json` and `video/<source folders>/`.

    Each entry `{"video", "question", "candidates", "answer"[, "start", "end"]}`; the answer is the
    candidate text. Start/end bounds are kept in meta but, as in the reference's loop, not applied.
    """
    root = Path(root)
    _check_split("mvbench", split, ("test",))
    items = []
    for task_file, (task, folder, kind) in MVBENCH_TASKS.items():
        path = root / "json" / task_file
        if not path.is_file():
            continue
        stem = task_file[: -len(".json")]
        for i, row in enumerate(files.read_json(path, f"MVBench task {stem}")):
            where = f"{path}, entry {i}"
            meta = {"data_type": kind}
            if "start" in row and "end" in row:
                meta["bound"] = (row["start"], row["end"])
            video = str(root / "video" / folder / str(row.get("video", "")))
            items.append(_choice_item(f"{stem}/{i}", row, video, task, where, **meta))
    if not items:
        raise FileNotFoundError(f"MVBench: no task file of {sorted(MVBENCH_TASKS)} in {root / 'json'}")
    _require_videos(items, "MVBench videos")
    return items


def read_mlvu(root: Path, split: str) -> List[EvalItem]:
    """MLVU dev: the multiple-choice task files `json/<n>_<task>.json` of `MLVU_TASKS` and videos
    `video/<n>_<task>/` (the generation tasks are not read, as in the reference)."""
    root = Path(root)
    _check_split("mlvu", split, ("dev",))
    json_dir = files.require_dir(root / "json", "MLVU question files")
    items = []
    for stem, task in MLVU_TASKS.items():
        path = json_dir / f"{stem}.json"
        if not path.is_file():
            continue
        for i, row in enumerate(files.read_json(path, f"MLVU task {stem}")):
            video = str(root / "video" / stem / str(row.get("video", "")))
            items.append(_choice_item(f"{stem}/{i}", row, video, task, f"{path}, entry {i}"))
    if not items:
        raise FileNotFoundError(f"MLVU: no task file of {[s + '.json' for s in MLVU_TASKS]} in {json_dir}")
    _require_videos(items, "MLVU videos")
    return items


def _find_reference_video(folder: Path, name: str) -> Optional[Path]:
    """`<folder>/<name><ext>` for the reference's extensions in turn, then `<folder>/<name>`."""
    for ext in REFERENCE_VIDEO_EXTENSIONS + ("",):
        path = Path(folder) / f"{name}{ext}"
        if path.is_file():
            return path
    return None


def read_egoschema(root: Path, split: str) -> List[EvalItem]:
    """EgoSchema: the official `questions.json` (`q_uid`, `question`, `option 0`..`option 4`) with
    `subset_answers.json` (q_uid -> index), or the reference's `mc.json` (the same entries with
    their `answer` index); videos `good_clips_git/<q_uid>.mp4` or the reference's `videos/`.

    'subset' is the questions with a public answer (scored here); 'full' is every question,
    written as the Kaggle submission.
    """
    root = Path(root)
    _check_split("egoschema", split, ("subset", "full"))
    if (root / "questions.json").is_file() or not (root / "mc.json").is_file():
        questions = files.read_json(root / "questions.json", "EgoSchema questions")
        answers: Dict[str, int] = {}
        if split == "subset":
            answers = files.read_json(root / "subset_answers.json", "EgoSchema subset answers")
    else:
        questions = files.read_json(root / "mc.json", "EgoSchema questions (the reference's mc.json)")
        answers = {q["q_uid"]: q["answer"] for q in questions if q.get("answer") is not None}
    if split == "subset":
        questions = [q for q in questions if q["q_uid"] in answers]
    video_dir = files.first_existing([root / "good_clips_git", root / "videos"], "EgoSchema videos")
    items = []
    for number, q in enumerate(questions):
        keys = ["q_uid", "question"] + [f"option {k}" for k in range(5)]
        files.require_keys(q, keys, f"EgoSchema entry {number}")
        options = [q[f"option {k}"] for k in range(5)]
        answer = answers.get(q["q_uid"])
        video = _find_reference_video(video_dir, q["q_uid"])
        items.append(
            EvalItem(
                q["q_uid"],
                egoschema_query(q["question"], options),
                video=str(video if video is not None else video_dir / f"{q['q_uid']}.mp4"),
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
        [root / name for name in ("videos/all", "videos", "test_videos", "all_test", "all_videos")],
        "video folder",
    )


def read_video_qa(root: Path, split: str, benchmark: str = "msvd_qa") -> List[EvalItem]:
    """MSVD-QA / MSRVTT-QA / ActivityNet-QA: `test_q.json` (`video_name`, `question`,
    `question_id`), `test_a.json` (`answer`, `question_id`), and a video folder (`videos/all/`,
    `videos/`, `test_videos/` (the reference's ActivityNet folder) or `all_test/`; ActivityNet's
    files carry a `v_` prefix; extensions are tried).

    Query: the reference's instruction (ActivityNet-QA: its own worked examples) followed by the
    question; the answers file records the bare question."""
    root = Path(root)
    _check_split(benchmark, split, ("test",))
    questions = files.read_json(root / "test_q.json", f"{benchmark} questions")
    answer_rows = files.read_json(root / "test_a.json", f"{benchmark} answers")
    by_id = {str(a["question_id"]): a["answer"] for a in answer_rows if "question_id" in a}
    folder = _video_qa_folder(root)
    prefixes = ("", "v_") if benchmark == "activitynet_qa" else ("",)
    instruction = ACTIVITYNET_QA_INSTRUCTION if benchmark == "activitynet_qa" else VIDEO_QA_INSTRUCTION
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
            EvalItem(
                qid,
                instruction + q["question"],
                video=str(video),
                answer_prompt=q["question"],
                meta={"question": q["question"], "answer": answer},
            )
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
