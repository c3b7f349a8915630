"""Tiny synthetic benchmarks in each benchmark's real file layout, for the eval tests.

Every builder writes a benchmark folder under `root` and returns it. Images are 2x2 PNGs (MMBench
embeds them as base64), videos empty files (the readers only check that they exist).
"""

import base64
import io
import json
from pathlib import Path

from PIL import Image

SHORT = "Answer the question using a single word or phrase."


def png_bytes(colour=(255, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def touch(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class CannedModel:
    """answer_fn returning canned answers by question id (and query substring when given)."""

    def __init__(self, answers, default=""):
        self.answers = answers
        self.default = default
        self.calls = 0
        self.asked = 0

    def __call__(self, batch):
        self.calls += 1
        self.asked += len(batch)
        out = []
        for item in batch:
            answer = self.answers.get(item.question_id, self.default)
            if isinstance(answer, dict):  # several questions share an id: pick by query text
                answer = next(v for k, v in answer.items() if k in item.query)
            out.append(answer)
        return out


# --- image benchmarks ----------------------------------------------------------------------------


def vqav2(root: Path) -> Path:
    d = root / "vqav2"
    rows = [
        {
            "question_id": qid,
            "image": f"COCO_test2015_{qid:012d}.jpg",
            "text": f"Question {qid}?\n{SHORT}",
            "category": "default",
        }
        for qid in (1, 2)
    ]
    write_jsonl(d / "llava_vqav2_mscoco_test-dev2015.jsonl", rows)
    write_jsonl(
        d / "llava_vqav2_mscoco_test2015.jsonl",
        rows + [dict(rows[0], question_id=3, text="Not in test-dev?")],
    )
    for r in rows:
        touch(d / "test2015" / r["image"], png_bytes())
    # val: the official question/annotation files
    write_json(
        d / "v2_OpenEnded_mscoco_val2014_questions.json",
        {"questions": [{"question_id": 10, "image_id": 42, "question": "How many?"}]},
    )
    write_json(
        d / "v2_mscoco_val2014_annotations.json",
        {
            "annotations": [
                {
                    "question_id": 10,
                    "answers": [
                        {"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                        for k, a in enumerate(["2"] * 2 + ["3"] * 8)
                    ],
                }
            ]
        },
    )
    touch(d / "val2014" / "COCO_val2014_000000000042.jpg", png_bytes())
    return d


def gqa(root: Path) -> Path:
    d = root / "gqa"
    write_jsonl(
        d / "llava_gqa_testdev_balanced.jsonl",
        [
            {"question_id": "201", "image": "n1.jpg", "text": f"Is it red?\n{SHORT}"},
            {"question_id": "202", "image": "n1.jpg", "text": f"What is it?\n{SHORT}"},
        ],
    )
    touch(d / "data" / "images" / "n1.jpg", png_bytes())
    write_json(
        d / "data" / "testdev_balanced_questions.json",
        {
            "201": {"answer": "yes", "types": {"structural": "verify"}, "isBalanced": True},
            "202": {"answer": "table", "types": {"structural": "query"}, "isBalanced": True},
        },
    )
    return d


def vizwiz(root: Path) -> Path:
    d = root / "vizwiz"
    suffix = f"When the provided information is insufficient, respond with 'Unanswerable'.\n{SHORT}"
    write_jsonl(
        d / "llava_test.jsonl",
        [{"question_id": 0, "image": "VizWiz_test_00000000.jpg", "text": f"What is this?\n{suffix}"}],
    )
    touch(d / "test" / "VizWiz_test_00000000.jpg", png_bytes())
    write_json(
        d / "val.json",
        [
            {
                "image": "VizWiz_val_00000001.jpg",
                "question": "What colour?",
                "answers": [{"answer": "blue", "answer_confidence": "yes"}] * 3
                + [{"answer": "navy", "answer_confidence": "maybe"}] * 7,
            }
        ],
    )
    touch(d / "val" / "VizWiz_val_00000001.jpg", png_bytes())
    return d


def textvqa(root: Path) -> Path:
    d = root / "textvqa"
    write_jsonl(
        d / "llava_textvqa_val_v051_ocr.jsonl",
        [
            {
                "question_id": "img1",
                "image": "img1.jpg",
                "text": f"What does the sign say?\nReference OCR token: STOP, AHEAD\n{SHORT}",
            },
            {"question_id": "img1", "image": "img1.jpg", "text": f"What colour is the sign?\n{SHORT}"},
        ],
    )
    touch(d / "train_images" / "img1.jpg", png_bytes())
    write_json(
        d / "TextVQA_0.5.1_val.json",
        {
            "data": [
                {"image_id": "img1", "question": "what does the sign say?", "answers": ["stop"] * 10},
                {
                    "image_id": "img1",
                    "question": "What colour is the sign?",
                    "answers": ["red"] * 2 + ["white"] * 8,
                },
            ]
        },
    )
    return d


def pope(root: Path) -> Path:
    d = root / "pope"
    questions, labels = [], {"adversarial": [], "random": []}
    qid = 1
    for category in ("adversarial", "random"):
        for k, (thing, label) in enumerate([("dog", "yes"), ("cat", "no")]):
            text = f"Is there a {thing} in the image?"
            questions.append(
                {
                    "question_id": qid,
                    "image": f"COCO_val2014_{k}.jpg",
                    "text": f"{text}\n{SHORT}",
                    "category": category,
                }
            )
            labels[category].append(
                {"question_id": k + 1, "image": f"COCO_val2014_{k}.jpg", "text": text, "label": label}
            )
            qid += 1
    write_jsonl(d / "llava_pope_test.jsonl", questions)
    for category, rows in labels.items():
        write_jsonl(d / "coco" / f"coco_pope_{category}.json", rows)
    for k in range(2):
        touch(d / "val2014" / f"COCO_val2014_{k}.jpg", png_bytes())
    return d


def mme(root: Path) -> Path:
    d = root / "MME"
    release = d / "MME_Benchmark_release_version"
    touch(release / "artwork" / "images" / "10002.jpg", png_bytes())
    (release / "artwork" / "questions_answers_YN").mkdir(parents=True)
    (release / "artwork" / "questions_answers_YN" / "10002.txt").write_text(
        "Is this a painting? Please answer yes or no.\tYes\n"
        "Is this a photo? Please answer yes or no.\tNo\n"
    )
    touch(release / "code_reasoning" / "0020.png", png_bytes())
    (release / "code_reasoning" / "0020.txt").write_text(
        "Is the output 3? Please answer yes or no.\tYes\n" "Is the output 4? Please answer yes or no.\tNo\n"
    )
    write_jsonl(
        d / "llava_mme.jsonl",
        [
            {
                "question_id": "artwork/10002.jpg",
                "image": "artwork/images/10002.jpg",
                "text": f"Is this a painting? Please answer yes or no.\n{SHORT}",
                "category": "artwork",
            },
            {
                "question_id": "artwork/10002.jpg",
                "image": "artwork/images/10002.jpg",
                "text": "Is this a photo? Please answer yes or no.",
                "category": "artwork",
            },
            {
                "question_id": "code_reasoning/0020.png",
                "image": "code_reasoning/0020.png",
                "text": "Is the output 3?",
                "category": "code_reasoning",
            },
            {
                "question_id": "code_reasoning/0020.png",
                "image": "code_reasoning/0020.png",
                "text": "Is the output 4?",
                "category": "code_reasoning",
            },
        ],
    )
    return d


def scienceqa(root: Path) -> Path:
    d = root / "scienceqa"
    write_json(
        d / "llava_test_CQM-A.json",
        [
            {
                "id": "10",
                "image": "10/image.png",
                "conversations": [
                    {
                        "from": "human",
                        "value": "<image>\nContext: A map.\nWhich is north?\n" "Options: (A) up (B) down",
                    },
                    {"from": "gpt", "value": "A"},
                ],
            },
            {
                "id": "11",
                "conversations": [
                    {
                        "from": "human",
                        "value": "Context: N/A\nWhich is a fruit?\n" "Options: (A) rock (B) apple (C) car",
                    },
                    {"from": "gpt", "value": "B"},
                ],
            },
        ],
    )
    write_json(
        d / "problems.json",
        {
            "10": {"answer": 0, "choices": ["up", "down"]},
            "11": {"answer": 1, "choices": ["rock", "apple", "car"]},
        },
    )
    touch(d / "images" / "test" / "10" / "image.png", png_bytes())
    return d


MMBENCH_COLUMNS = [
    "index",
    "question",
    "hint",
    "A",
    "B",
    "C",
    "D",
    "answer",
    "category",
    "image",
    "source",
    "l2-category",
    "comment",
    "split",
]


def mmbench(root: Path, with_copies: bool = False) -> Path:
    """Two questions: 0 (4 options, hint, answer B) and 1 (2 options, no hint, answer A)."""
    d = root / "mmbench"
    image = base64.b64encode(png_bytes()).decode()
    rows = [
        [
            0,
            "What animal?",
            "A zoo photo.",
            "cat",
            "dog",
            "bird",
            "fish",
            "B",
            "animals",
            image,
            "src",
            "l2",
            "nan",
            "dev",
        ],
        [1, "Is it day?", "nan", "yes", "no", "nan", "nan", "A", "time", image, "src", "l2", "nan", "dev"],
    ]
    if with_copies:  # the legacy files hold the rotated copies as index + k * 1e6 (image by ref)
        rows += [
            [
                1_000_000,
                "What animal?",
                "A zoo photo.",
                "dog",
                "bird",
                "fish",
                "cat",
                "A",
                "animals",
                "0",
                "src",
                "l2",
                "nan",
                "dev",
            ],
            [
                1_000_001,
                "Is it day?",
                "nan",
                "no",
                "yes",
                "nan",
                "nan",
                "B",
                "time",
                "1",
                "src",
                "l2",
                "nan",
                "dev",
            ],
        ]
    lines = ["\t".join(MMBENCH_COLUMNS)] + ["\t".join(str(v) for v in r) for r in rows]
    d.mkdir(parents=True, exist_ok=True)
    (d / "mmbench_dev_20230712.tsv").write_text("\n".join(lines) + "\n")
    return d


def seed(root: Path) -> Path:
    d = root / "seed_bench"
    opts = (
        "A. red\nB. blue\nC. green\nD. black\nAnswer with the option's letter from the given "
        "choices directly."
    )
    write_jsonl(
        d / "llava-seed-bench.jsonl",
        [
            {
                "question_id": "101",
                "image": "SEED-Bench-image/1.jpg",
                "text": f"Colour?\n{opts}",
                "category": "Instance Attributes",
            },
            {
                "question_id": "102",
                "image": "SEED-Bench-video-image/v1.png",
                "text": f"Action?\n{opts}",
                "category": "Action Recognition",
            },
        ],
    )
    touch(d / "SEED-Bench-image" / "1.jpg", png_bytes())
    touch(d / "SEED-Bench-video-image" / "v1.png", png_bytes())
    write_json(
        d / "SEED-Bench.json",
        {
            "question_type": {"Instance Attributes": 2, "Action Recognition": 10},
            "questions": [
                {"question_id": "101", "answer": "B", "question_type_id": 2, "data_type": "image"},
                {"question_id": "102", "answer": "C", "question_type_id": 10, "data_type": "video"},
            ],
        },
    )
    return d


def llava_bench(root: Path) -> Path:
    d = root / "llava-bench-in-the-wild"
    write_jsonl(
        d / "questions.jsonl",
        [
            {
                "question_id": 0,
                "image": "001.jpg",
                "text": "What is the name of this dish?",
                "category": "conv",
            },
            {"question_id": 1, "image": "001.jpg", "text": "Describe the image.", "category": "detail"},
        ],
    )
    write_jsonl(
        d / "answers_gpt4.jsonl",
        [{"question_id": 0, "text": "Ramen"}, {"question_id": 1, "text": "A bowl of ramen."}],
    )
    touch(d / "images" / "001.jpg", png_bytes())
    return d


def mmvet(root: Path) -> Path:
    d = root / "mm-vet"
    write_jsonl(
        d / "llava-mm-vet.jsonl",
        [
            {"question_id": 0, "image": "v1_0.png", "text": "What is x in the equation?"},
            {"question_id": 1, "image": "v1_1.png", "text": "What is written?"},
        ],
    )
    write_json(
        d / "mm-vet.json",
        {
            "v1_0": {"imagename": "v1_0.png", "question": "q", "answer": "-1<AND>-5"},
            "v1_1": {"imagename": "v1_1.png", "question": "q", "answer": "Hello"},
        },
    )
    for name in ("v1_0.png", "v1_1.png"):
        touch(d / "images" / name, png_bytes())
    return d


# --- video benchmarks ----------------------------------------------------------------------------


def mvbench(root: Path) -> Path:
    d = root / "MVBench"
    write_json(
        d / "json" / "action_sequence.json",
        [
            {
                "video": "A1.mp4",
                "question": "What did the person do first?",
                "candidates": ["Sat down.", "Opened the door."],
                "answer": "Opened the door.",
                "start": 1.5,
                "end": 8.0,
            },
            {
                "video": "A2.mp4",
                "question": "What happened last?",
                "candidates": ["Ran.", "Slept.", "Ate."],
                "answer": "Ran.",
                "start": 0,
                "end": 3,
            },
        ],
    )
    write_json(
        d / "json" / "episodic_reasoning.json",
        [
            {
                "video": "show_s01e01_seg01",
                "question": "Who spoke?",
                "candidates": ["Ann", "Bob"],
                "answer": "Bob",
                "start": 0,
                "end": 10,
            }
        ],
    )
    touch(d / "video" / "star" / "Charades_v1_480" / "A1.mp4")
    touch(d / "video" / "star" / "Charades_v1_480" / "A2.mp4")
    (d / "video" / "tvqa" / "frames_fps3_hq" / "show_s01e01_seg01").mkdir(parents=True)
    return d


def mlvu(root: Path) -> Path:
    d = root / "MLVU"
    write_json(
        d / "json" / "1_plotQA.json",
        [
            {
                "video": "movie1.mp4",
                "duration": 500,
                "question": "Who wins?",
                "candidates": ["the hero", "the villain"],
                "answer": "the hero",
                "question_type": "plotQA",
            },
            {
                "video": "movie2.mp4",
                "duration": 300,
                "question": "Where?",
                "candidates": ["sea", "city", "farm", "space"],
                "answer": "farm",
                "question_type": "plotQA",
            },
        ],
    )
    write_json(
        d / "json" / "4_count.json",
        [
            {
                "video": "count1.mp4",
                "duration": 200,
                "question": "How many cars?",
                "candidates": ["1", "2", "3", "4"],
                "answer": "3",
                "question_type": "count",
            }
        ],
    )
    write_json(
        d / "json" / "8_sub_scene.json",
        [  # generation task: skipped
            {
                "video": "sub1.mp4",
                "question": "Describe the scene.",
                "answer": "...",
                "question_type": "subPlot",
            }
        ],
    )
    for task, name in [("1_plotQA", "movie1.mp4"), ("1_plotQA", "movie2.mp4"), ("4_count", "count1.mp4")]:
        touch(d / "video" / task / name)
    return d


def egoschema(root: Path) -> Path:
    d = root / "EgoSchema"
    questions = [
        {
            "q_uid": f"uid{k}",
            "question": f"What is C doing in clip {k}?",
            **{f"option {j}": f"option text {j}" for j in range(5)},
        }
        for k in range(3)
    ]
    write_json(d / "questions.json", questions)
    write_json(d / "subset_answers.json", {"uid0": 3, "uid1": 0})
    for q in questions:
        touch(d / "good_clips_git" / f"{q['q_uid']}.mp4")
    return d


def msvd_qa(root: Path) -> Path:
    d = root / "MSVD_Zero_Shot_QA"
    write_json(
        d / "test_q.json",
        [
            {"video_name": "vid1", "question": "what is a man doing?", "question_id": "v1_0"},
            {"video_name": "vid2", "question": "who is cooking?", "question_id": "v2_0"},
        ],
    )
    write_json(
        d / "test_a.json",
        [
            {"answer": "play", "type": 3, "question_id": "v1_0"},
            {"answer": "woman", "type": 1, "question_id": "v2_0"},
        ],
    )
    touch(d / "videos" / "vid1.avi")
    touch(d / "videos" / "vid2.avi")
    return d


def activitynet_qa(root: Path) -> Path:
    d = root / "ActivityNet_QA"
    write_json(
        d / "test_q.json",
        [{"video_name": "abc", "question": "is the person outdoors", "question_id": "abc_1"}],
    )
    write_json(d / "test_a.json", [{"answer": "yes", "type": 3, "question_id": "abc_1"}])
    touch(d / "all_test" / "v_abc.mp4")
    return d


def vcgbench(root: Path) -> Path:
    d = root / "VideoChatGPT"
    write_json(
        d / "Benchmarking_QA" / "consistency_qa.json",
        [
            {
                "video_name": "v_x1",
                "Q1": "What is the man wearing?",
                "Q2": "Describe his clothes.",
                "A": "A red shirt.",
            }
        ],
    )
    write_json(
        d / "Benchmarking_QA" / "generic_qa.json",
        [{"video_name": "v_x1", "Q": "What happens?", "A": "A man dances."}],
    )
    touch(d / "Test_Videos" / "v_x1.mp4")
    return d
