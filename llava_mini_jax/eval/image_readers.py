"""Readers for the image benchmarks, in the file layout of LLaVA's evaluation docs.

Each reader takes the benchmark's folder (LLaVA's `playground/data/eval/<benchmark>` after
extracting its eval.zip and the benchmark's own downloads) and a split name, and returns the
questions as `EvalItem`s. Where the reference reads a LLaVA question file (`text` already holds
the answer-format suffix) the text is passed through unchanged; where it builds the question
itself (ScienceQA, MMBench, the official VQAv2/VizWiz validation files) the same text is built
here. Ground truth goes into `meta` for the scorers.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from llava_mini_jax.eval import files
from llava_mini_jax.eval.item import EvalItem
from llava_mini_jax.eval.multiple_choice import CIRCULAR_STRIDE
from llava_mini_jax.eval.prompts import (
    LETTERS,
    OPTION_LETTER,
    SHORT_ANSWER,
    VIZWIZ_UNANSWERABLE,
    mmbench_query,
    mmbench_question,
)


def _check_split(benchmark: str, split: str, known) -> None:
    if split not in known:
        raise ValueError(f"{benchmark}: unknown split {split!r}, expected one of {sorted(known)}")


def llava_questions(
    question_file: Path, image_folder: Path, what: str, meta_keys: Tuple[str, ...] = ("category",)
) -> List[EvalItem]:
    """Items of a LLaVA question jsonl: `{"question_id", "image", "text", ...}` lines.

    `text` becomes the query unchanged; the listed extra keys, where present, go into meta.
    """
    items = []
    for number, row in enumerate(files.read_jsonl(question_file, what), start=1):
        files.require_keys(row, ("question_id", "image", "text"), f"{question_file}, line {number}")
        meta = {k: row[k] for k in meta_keys if k in row}
        items.append(
            EvalItem(row["question_id"], row["text"], image=str(Path(image_folder) / row["image"]), meta=meta)
        )
    files.require_images((item.image for item in items), f"{what} images in {image_folder}")
    return items


# --- VQA-style ---------------------------------------------------------------------------------


def read_vqav2(root: Path, split: str) -> List[EvalItem]:
    """VQAv2. 'test-dev': `llava_vqav2_mscoco_test-dev2015.jsonl` + `test2015/` (server-scored).

    'val': the official `v2_OpenEnded_mscoco_val2014_questions.json`,
    `v2_mscoco_val2014_annotations.json` and `val2014/` images, asked with the short-answer suffix;
    meta `answer_records` keeps each question's answer dicts whole (the official evaluator's
    leave-one-out compares whole records).
    """
    root = Path(root)
    _check_split("vqav2", split, ("test-dev", "val"))
    if split == "test-dev":
        return llava_questions(
            root / "llava_vqav2_mscoco_test-dev2015.jsonl", root / "test2015", "VQAv2 test-dev questions"
        )
    questions = files.read_json(root / "v2_OpenEnded_mscoco_val2014_questions.json", "VQAv2 val questions")[
        "questions"
    ]
    annotations = files.read_json(root / "v2_mscoco_val2014_annotations.json", "VQAv2 val annotations")[
        "annotations"
    ]
    records = {a["question_id"]: a["answers"] for a in annotations}
    items = []
    for q in questions:
        if q["question_id"] not in records:
            raise ValueError(f"VQAv2 val question {q['question_id']!r} has no entry in the annotations")
        items.append(
            EvalItem(
                q["question_id"],
                f"{q['question']}\n{SHORT_ANSWER}",
                image=str(root / "val2014" / f"COCO_val2014_{q['image_id']:012d}.jpg"),
                meta={"answer_records": records[q["question_id"]]},
            )
        )
    files.require_images((item.image for item in items), "VQAv2 val images")
    return items


def vqav2_test_ids(root: Path) -> Optional[List[int]]:
    """Every question id of test2015 (for the submission), when its question file is there."""
    path = Path(root) / "llava_vqav2_mscoco_test2015.jsonl"
    if not path.is_file():
        return None
    return [row["question_id"] for row in files.read_jsonl(path, "VQAv2 test2015 questions")]


def read_vizwiz(root: Path, split: str) -> List[EvalItem]:
    """VizWiz. 'test': `llava_test.jsonl` + `test/` (server-scored).

    'val': the official `val.json` and `val/` images, asked with LLaVA's VizWiz suffixes.
    """
    root = Path(root)
    _check_split("vizwiz", split, ("test", "val"))
    if split == "test":
        items = llava_questions(root / "llava_test.jsonl", root / "test", "VizWiz test questions")
        return [
            EvalItem(i.question_id, i.query, image=i.image, meta={"image_name": Path(i.image).name})
            for i in items
        ]
    rows = files.read_json(root / "val.json", "VizWiz val annotations")
    items = [
        EvalItem(
            row["image"],
            f"{row['question']}\n{VIZWIZ_UNANSWERABLE}\n{SHORT_ANSWER}",
            image=str(root / "val" / row["image"]),
            meta={"answers": [a["answer"] for a in row["answers"]], "image_name": row["image"]},
        )
        for row in rows
    ]
    files.require_images((item.image for item in items), "VizWiz val images")
    return items


def textvqa_question(prompt: str) -> str:
    """The bare question inside a TextVQA query, lower-cased (the reference's prompt_processor)."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        start = prompt.find("Question: ")
        end = prompt.find(" Short answer:", start)
        if start < 0 or end < 0:
            raise ValueError(f"TextVQA query {prompt!r:.120}: no 'Question: ... Short answer:' part")
        question = prompt[start + len("Question: ") : end]
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ValueError(
            f"TextVQA query {prompt!r:.120}: expected 'question\\nsuffix' or an OCR "
            f"token line as in llava_textvqa_val_v051_ocr.jsonl"
        )
    return question.lower()


def read_textvqa(root: Path, split: str) -> List[EvalItem]:
    """TextVQA val: `llava_textvqa_val_v051_ocr.jsonl`, `train_images/`, `TextVQA_0.5.1_val.json`.

    Answers are matched to the question file by (image id = question_id, lower-cased question).
    """
    root = Path(root)
    _check_split("textvqa", split, ("val",))
    items = llava_questions(
        root / "llava_textvqa_val_v051_ocr.jsonl", root / "train_images", "TextVQA val questions"
    )
    data = files.read_json(root / "TextVQA_0.5.1_val.json", "TextVQA annotations")["data"]
    truth = {(a["image_id"], a["question"].lower()): a["answers"] for a in data}
    out = []
    for item in items:
        key = (item.question_id, textvqa_question(item.query))
        if key not in truth:
            raise ValueError(f"TextVQA question {key!r} has no entry in TextVQA_0.5.1_val.json")
        out.append(EvalItem(item.question_id, item.query, image=item.image, meta={"answers": truth[key]}))
    return out


def read_gqa(root: Path, split: str) -> List[EvalItem]:
    """GQA testdev-balanced: `llava_gqa_testdev_balanced.jsonl`, `data/images/`, and
    `data/testdev_balanced_questions.json` (gold answers and question types)."""
    root = Path(root)
    _check_split("gqa", split, ("testdev",))
    items = llava_questions(
        root / "llava_gqa_testdev_balanced.jsonl", root / "data" / "images", "GQA testdev questions"
    )
    truth = files.read_json(root / "data" / "testdev_balanced_questions.json", "GQA testdev ground truth")
    out = []
    for item in items:
        q = truth.get(str(item.question_id))
        if q is None:
            raise ValueError(f"GQA question {item.question_id!r} is not in testdev_balanced_questions")
        out.append(
            EvalItem(
                item.question_id,
                item.query,
                image=item.image,
                meta={"answer": q["answer"], "structural": q["types"]["structural"]},
            )
        )
    return out


# --- yes/no ------------------------------------------------------------------------------------


def read_pope(root: Path, split: str) -> List[EvalItem]:
    """POPE: `llava_pope_test.jsonl`, `val2014/`, labels `coco/coco_pope_<split>.json`.

    As in the reference, the k-th question of a split in the question file takes the label of the
    k-th line of that split's label file; the label line's question must begin the query.
    (`coco/annos/` is also searched, the layout of LLaVA-Mini's script.)
    """
    root = Path(root)
    _check_split("pope", split, ("test",))
    items = llava_questions(root / "llava_pope_test.jsonl", root / "val2014", "POPE questions")
    label_dir = files.first_existing([root / "coco", root / "coco" / "annos"], "POPE label folder")
    if not list(label_dir.glob("coco_pope_*.json")) and (label_dir / "annos").is_dir():
        label_dir = label_dir / "annos"
    by_category: Dict[str, List[EvalItem]] = {}
    for item in items:
        by_category.setdefault(item.meta.get("category"), []).append(item)
    out = []
    for category, group in by_category.items():
        label_file = label_dir / f"coco_pope_{category}.json"
        labels = files.read_jsonl(label_file, f"POPE labels of split {category!r}")
        if len(labels) != len(group):
            raise ValueError(
                f"{label_file}: {len(labels)} labels for {len(group)} questions of "
                f"split {category!r} in llava_pope_test.jsonl"
            )
        for number, (item, label) in enumerate(zip(group, labels), start=1):
            if not item.query.startswith(label["text"].strip()):
                raise ValueError(
                    f"{label_file}, line {number}: label question {label['text']!r} does "
                    f"not start query {item.query!r} (question {item.question_id!r})"
                )
            out.append(
                EvalItem(
                    item.question_id,
                    item.query,
                    image=item.image,
                    meta={"category": category, "label": label["label"]},
                )
            )
    return out


def mme_ground_truth(release: Path) -> Dict[Tuple[str, str, str], str]:
    """(subtask, txt file name, question) -> 'Yes'/'No' from MME_Benchmark_release_version."""
    truth = {}
    for category_dir in sorted(files.require_dir(release, "MME images and answers").iterdir()):
        if not category_dir.is_dir():
            continue
        qa_dir = category_dir / "questions_answers_YN"
        if not (category_dir / "images").is_dir():
            qa_dir = category_dir
        for txt in sorted(qa_dir.glob("*.txt")):
            for line in txt.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    question, answer = line.strip().split("\t")
                    truth[(category_dir.name, txt.name, question)] = answer
    return truth


def _mme_key(question_id: str, query: str, truth) -> Tuple[str, str, str]:
    category = question_id.split("/")[0]
    txt = question_id.split("/")[-1].split(".")[0] + ".txt"
    question = query.replace(SHORT_ANSWER, "").strip()
    if "Please answer yes or no." not in question:
        question += " Please answer yes or no."
        if (category, txt, question) not in truth:
            question = question.replace(" Please answer yes or no.", "  Please answer yes or no.")
    return (category, txt, question)


def read_mme(root: Path, split: str) -> List[EvalItem]:
    """MME: `llava_mme.jsonl` and `MME_Benchmark_release_version/` (images and the official
    `*.txt` question/answer files, matched as the reference's convert_answer_to_mme.py does)."""
    root = Path(root)
    _check_split("mme", split, ("test",))
    release = root / "MME_Benchmark_release_version"
    items = llava_questions(root / "llava_mme.jsonl", release, "MME questions")
    truth = mme_ground_truth(release)
    out = []
    for item in items:
        key = _mme_key(str(item.question_id), item.query, truth)
        if key not in truth:
            raise ValueError(
                f"MME question {item.question_id!r} ({key[2]!r}) has no answer in " f"{release / key[0]}"
            )
        out.append(
            EvalItem(
                item.question_id, item.query, image=item.image, meta={"category": key[0], "label": truth[key]}
            )
        )
    return out


# --- multiple choice ---------------------------------------------------------------------------


def read_scienceqa(root: Path, split: str) -> List[EvalItem]:
    """ScienceQA test: `llava_test_CQM-A.json`, `images/test/`, `problems.json`.

    Query: the first human turn without `<image>`, stripped, plus the option-letter instruction
    (`--single-pred-prompt`); questions without an image are text-only.
    """
    root = Path(root)
    _check_split("scienceqa", split, ("test",))
    questions = files.read_json(root / "llava_test_CQM-A.json", "ScienceQA questions")
    problems = files.read_json(root / "problems.json", "ScienceQA problems")
    items = []
    for row in questions:
        problem = problems.get(row["id"])
        if problem is None:
            raise ValueError(f"ScienceQA question {row['id']!r} is not in problems.json")
        text = row["conversations"][0]["value"].replace("<image>", "").strip()
        query = f"{text}\n{OPTION_LETTER}"
        image = str(root / "images" / "test" / row["image"]) if "image" in row else None
        items.append(
            EvalItem(
                row["id"],
                query,
                image=image,
                answer_prompt=f"<image>\n{query}" if image else None,
                meta={"answer": problem["answer"], "num_choices": len(problem["choices"])},
            )
        )
    files.require_images((item.image for item in items), "ScienceQA images")
    return items


# pandas' default NA strings: the reference reads MMBench with pandas, so these cells are empty.
_NA_STRINGS = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    }
)
_MMBENCH_FILES = {
    ("mmbench", "dev"): "mmbench_dev_20230712.tsv",
    ("mmbench", "test"): "mmbench_test_20230712.tsv",
    ("mmbench_cn", "dev"): "mmbench_dev_cn_20231003.tsv",
    ("mmbench_cn", "test"): "mmbench_test_cn_20231003.tsv",
}
_MMBENCH_DROPPED = ("hint", "category", "source", "image", "comment", "l2-category")


def _is_na(value: Optional[str]) -> bool:
    return value is None or value in _NA_STRINGS or value.lower() in ("nan", "none")


def _image_suffix(data: bytes) -> str:
    signatures = {b"\x89PNG": ".png", b"\xff\xd8": ".jpg", b"GIF8": ".gif", b"BM": ".bmp", b"RIFF": ".webp"}
    return next((ext for sig, ext in signatures.items() if data.startswith(sig)), ".img")


def _decode_image(b64: str, cache: Path, index: int) -> str:
    data = base64.b64decode(b64)
    path = cache / f"{index}{_image_suffix(data)}"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return str(path)


def read_mmbench(
    root: Path, split: str, benchmark: str = "mmbench", lang: str = "en", all_rounds: bool = False
) -> List[EvalItem]:
    """MMBench (`mmbench_dev_20230712.tsv`, ...): one tsv of questions with base64 images.

    Every row is asked once, as the reference's scripts do (LLaVA's dev/test files already hold
    the circular copies as rows `index + k * 1,000,000`). `lang`: the instruction's language; the
    reference's MMBench-CN script passes no `--lang cn`, so 'en' is its default for both files.
    `all_rounds` (the reference's `--all-rounds`, which its scripts do not pass): each row is
    also asked with its options rotated, rotation k numbered `index + k * 1,000,000`.
    The answers file records the question block without the instruction, as the reference does,
    so answers files written by its `model_vqa_mmbench.py` can be scored here. Images are decoded
    once into `images_cache/<tsv name>/`.
    """
    root = Path(root)
    _check_split(benchmark, split, ("dev", "test"))
    tsv = root / _MMBENCH_FILES[(benchmark, split)]
    rows = files.read_tsv(tsv, f"{benchmark} {split} questions")
    cache = root / "images_cache" / tsv.stem
    images: Dict[int, str] = {}
    items = []
    for number, row in enumerate(rows, start=2):
        files.require_keys(row, ("index", "question", "A", "B", "image"), f"{tsv}, line {number}")
        index = int(row["index"])
        b64 = row["image"]
        if len(b64) < 64 and b64.strip().isdigit():  # circular copies may point to another row
            if int(b64) not in images:
                raise ValueError(f"{tsv}, line {number}: image refers to row {b64}, not read before")
            image = images[int(b64)]
        else:
            image = _decode_image(b64, cache, index)
        images[index] = image
        options = []
        for letter in "ABCD":
            if _is_na(row.get(letter)):
                break
            options.append(row[letter])
        answer = None if _is_na(row.get("answer")) else row["answer"]
        hint = None if _is_na(row.get("hint")) else row["hint"]
        submission_row = {k: ("" if _is_na(v) else v) for k, v in row.items() if k not in _MMBENCH_DROPPED}
        for r in range(len(options) if all_rounds else 1):
            rotated = options[r:] + options[:r]
            meta = {
                "index": index + r * CIRCULAR_STRIDE,
                "category": row.get("category", ""),
                "options": dict(zip(LETTERS, rotated)),
                "answer": None if answer is None else LETTERS[(LETTERS.index(answer) - r) % len(options)],
            }
            if r == 0:
                meta["row"] = submission_row
            items.append(
                EvalItem(
                    index + r * CIRCULAR_STRIDE,
                    mmbench_query(row["question"], hint, rotated, lang),
                    image=image,
                    meta=meta,
                    answer_prompt=mmbench_question(row["question"], hint, rotated),
                )
            )
    return items


def read_seed(root: Path, split: str) -> List[EvalItem]:
    """SEED-Bench: `llava-seed-bench.jsonl` (image paths such as `SEED-Bench-image/...` and the
    middle frames `SEED-Bench-video-image/...`) and `SEED-Bench.json`, either directly in the
    folder (LLaVA-v1.5's layout) or in its `SEED-Bench/` subfolder (LLaVA-Mini's seed.sh)."""
    root = Path(root)
    _check_split("seed", split, ("test",))
    base = root / "SEED-Bench" if (root / "SEED-Bench" / "SEED-Bench.json").is_file() else root
    items = llava_questions(root / "llava-seed-bench.jsonl", base, "SEED-Bench questions")
    data = files.read_json(base / "SEED-Bench.json", "SEED-Bench annotations")
    dimension = {type_id: name for name, type_id in data["question_type"].items()}
    truth = {str(q["question_id"]): q for q in data["questions"]}
    out = []
    for item in items:
        q = truth.get(str(item.question_id))
        if q is None:
            raise ValueError(f"SEED-Bench question {item.question_id!r} is not in SEED-Bench.json")
        out.append(
            EvalItem(
                item.question_id,
                item.query,
                image=item.image,
                meta={
                    "answer": q["answer"],
                    "data_type": q["data_type"],
                    "dimension": dimension[q["question_type_id"]],
                },
            )
        )
    return out


# --- open-ended (GPT-judged) -------------------------------------------------------------------


def read_llava_bench(root: Path, split: str) -> List[EvalItem]:
    """LLaVA-Bench in-the-wild: `questions.jsonl`, `images/`; `answers_gpt4.jsonl` (optional) gives
    the reference answers used by the offline proxy."""
    root = Path(root)
    _check_split("llava_bench", split, ("test",))
    items = llava_questions(root / "questions.jsonl", root / "images", "LLaVA-Bench questions")
    reference = {}
    if (root / "answers_gpt4.jsonl").is_file():
        reference = {
            r["question_id"]: r["text"]
            for r in files.read_jsonl(root / "answers_gpt4.jsonl", "LLaVA-Bench GPT-4 answers")
        }
    return [
        EvalItem(
            i.question_id,
            i.query,
            image=i.image,
            meta={"category": i.meta.get("category"), "answer": reference.get(i.question_id)},
        )
        for i in items
    ]


def read_mmvet(root: Path, split: str) -> List[EvalItem]:
    """MM-Vet: `llava-mm-vet.jsonl`, `images/`; `mm-vet.json` (optional) gives the ground truth
    used by the offline proxy."""
    root = Path(root)
    _check_split("mmvet", split, ("test",))
    items = llava_questions(root / "llava-mm-vet.jsonl", root / "images", "MM-Vet questions")
    truth = {}
    if (root / "mm-vet.json").is_file():
        truth = files.read_json(root / "mm-vet.json", "MM-Vet ground truth")
    return [
        EvalItem(
            i.question_id,
            i.query,
            image=i.image,
            meta={"answer": truth.get(f"v1_{i.question_id}", {}).get("answer")},
        )
        for i in items
    ]
