"""Image benchmark readers on synthetic benchmarks in their real layouts, run end to end."""

import json
import zipfile

import pytest

import eval_synthetic as syn
from llava_mini_jax.eval import evaluate, image_readers, multiple_choice, registry

SHORT = syn.SHORT
LETTER = "Answer with the option's letter from the given choices directly."


def run(bench, root, answers, split=None, **kwargs):
    return evaluate(
        bench, root, syn.CannedModel(answers), split=split, progress=False, batch_size=2, **kwargs
    )


def test_vqav2_test_dev_writes_the_upload_with_every_test_question(tmp_path):
    root = syn.vqav2(tmp_path)
    items = image_readers.read_vqav2(root, "test-dev")
    assert [(i.question_id, i.query) for i in items] == [
        (1, f"Question 1?\n{SHORT}"),
        (2, f"Question 2?\n{SHORT}"),
    ]
    assert items[0].image == str(root / "test2015" / "COCO_test2015_000000000001.jpg")
    row = run("vqav2", root, {1: "Two.", 2: "yes"})
    assert row["ours"] is None and row["paper"] == 79.0 and "server-scored" in row["note"]
    upload = json.loads(open(row["files"]["EvalAI upload"]).read())
    assert upload == [
        {"question_id": 1, "answer": "2"},
        {"question_id": 2, "answer": "yes"},
        {"question_id": 3, "answer": ""},
    ]


def test_vqav2_val_from_the_official_files(tmp_path):
    root = syn.vqav2(tmp_path)
    [item] = image_readers.read_vqav2(root, "val")
    assert item.query == f"How many?\n{SHORT}"
    assert item.image.endswith("val2014/COCO_val2014_000000000042.jpg")
    row = run("vqav2", root, {10: "two"}, split="val")
    assert row["ours"] == pytest.approx(60.0)  # 2 of 10 humans said '2' -> 0.6
    assert row["paper"] is None  # the paper's number is test-dev


def test_gqa(tmp_path):
    root = syn.gqa(tmp_path)
    row = run("gqa", root, {"201": "Yes.", "202": "chair"})
    assert row["metrics"] == {"accuracy": 50.0, "binary": 100.0, "open": 0.0, "count": 2}
    assert row["ours"] == 50.0 and row["paper"] == 61.3
    predictions = json.loads(open(row["files"]["GQA eval.py predictions"]).read())
    assert predictions == [
        {"questionId": "201", "prediction": "yes"},
        {"questionId": "202", "prediction": "chair"},
    ]


def test_vizwiz_test_upload_and_val_accuracy(tmp_path):
    root = syn.vizwiz(tmp_path)
    row = run("vizwiz", root, {0: "Unanswerable"})
    assert json.loads(open(row["files"]["EvalAI upload"]).read()) == [
        {"image": "VizWiz_test_00000000.jpg", "answer": "unanswerable"}
    ]
    [item] = image_readers.read_vizwiz(root, "val")
    assert item.query == (
        "What colour?\nWhen the provided information is insufficient, respond "
        f"with 'Unanswerable'.\n{SHORT}"
    )
    row = run("vizwiz", root, {"VizWiz_val_00000001.jpg": "Blue."}, split="val")
    assert row["ours"] == pytest.approx(90.0)  # 3 humans -> 0.9


@pytest.mark.parametrize(
    "prompt, question",
    [
        (f"What is it?\n{SHORT}", "what is it?"),
        (f"What is it?\nReference OCR token: A, B\n{SHORT}", "what is it?"),
        (f"Reference OCR token: A\nWhat is it?\n{SHORT}", "what is it?"),
        ("OCR tokens: a b Question: What is it? Short answer:", "what is it?"),
    ],
)
def test_textvqa_question_extraction(prompt, question):
    assert image_readers.textvqa_question(prompt) == question


def test_textvqa_two_questions_share_an_image_id(tmp_path):
    root = syn.textvqa(tmp_path)
    items = image_readers.read_textvqa(root, "val")
    assert [i.question_id for i in items] == ["img1", "img1"] and items[0].key != items[1].key
    row = run("textvqa", root, {"img1": {"say": "STOP", "colour": "red"}})
    assert row["ours"] == pytest.approx(80.0)  # 1.0 and 0.6 (2 of 10 said red)


def test_pope_labels_by_position_per_split(tmp_path):
    root = syn.pope(tmp_path)
    items = image_readers.read_pope(root, "test")
    assert [(i.meta["category"], i.meta["label"]) for i in items] == [
        ("adversarial", "yes"),
        ("adversarial", "no"),
        ("random", "yes"),
        ("random", "no"),
    ]
    row = run("pope", root, {1: "Yes", 2: "Yes", 3: "Yes, there is a dog.", 4: "No."})
    # adversarial: TP 1, FP 1 -> F1 2/3; random: perfect -> F1 1
    assert row["ours"] == pytest.approx((200 / 3 + 100) / 2)
    assert row["metrics"]["splits"]["adversarial"]["yes_ratio"] == pytest.approx(100.0)


def test_pope_misaligned_labels_are_named(tmp_path):
    root = syn.pope(tmp_path)
    path = root / "coco" / "coco_pope_random.json"
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    syn.write_jsonl(path, rows[::-1])
    with pytest.raises(ValueError, match="coco_pope_random.json, line 1"):
        image_readers.read_pope(root, "test")


def test_mme_pairs_and_ground_truth_matching(tmp_path):
    root = syn.mme(tmp_path)
    items = image_readers.read_mme(root, "test")
    assert [i.meta["label"] for i in items] == ["Yes", "No", "Yes", "No"]
    assert items[2].meta["category"] == "code_reasoning"
    row = run(
        "mme",
        root,
        {
            "artwork/10002.jpg": {"painting": "Yes", "photo": "Yes"},
            "code_reasoning/0020.png": {"output 3": "yes", "output 4": "No"},
        },
    )
    # artwork: 1 of 2 right, no image fully right -> 50 + 0; code_reasoning: 100 + 100
    assert row["metrics"]["perception"] == pytest.approx(50.0)
    assert row["metrics"]["cognition"] == pytest.approx(200.0)
    assert row["ours"] == pytest.approx(50.0) and row["paper"] == 1522.7


def test_scienceqa_queries_and_img_accuracy(tmp_path):
    root = syn.scienceqa(tmp_path)
    with_image, text_only = image_readers.read_scienceqa(root, "test")
    assert with_image.query == ("Context: A map.\nWhich is north?\nOptions: (A) up (B) down\n" + LETTER)
    assert with_image.prompt == "<image>\n" + with_image.query  # as the reference records it
    assert text_only.image is None and text_only.prompt == text_only.query
    row = run("scienceqa", root, {"10": "A", "11": "A"})
    assert row["metrics"]["accuracy"] == pytest.approx(50.0)
    assert row["ours"] == pytest.approx(100.0)  # the paper's SQA is on questions with an image


def test_mmbench_rows_asked_once_as_the_reference_and_upload(tmp_path):
    root = syn.mmbench(tmp_path)
    items = image_readers.read_mmbench(root, "dev")
    assert [i.question_id for i in items] == [0, 1]  # no --all-rounds in the reference's script
    assert items[0].query == ("A zoo photo.\nWhat animal?\nA. cat\nB. dog\nC. bird\nD. fish\n" + LETTER)
    # the answers file records the question block without the instruction, as model_vqa_mmbench.py
    assert items[0].prompt == "A zoo photo.\nWhat animal?\nA. cat\nB. dog\nC. bird\nD. fish"
    assert items[1].query == f"Is it day?\nA. yes\nB. no\n{LETTER}"  # 'nan' hint and options
    assert open(items[0].image, "rb").read() == syn.png_bytes()
    row = run("mmbench", root, {0: "B", 1: "Cannot determine the answer"})
    assert row["ours"] == pytest.approx(50.0)  # a refusal reads as 'Z': wrong
    with zipfile.ZipFile(row["files"]["MMBench server upload"]) as z:
        assert z.read("xl/worksheets/sheet1.xml").decode().count("<row ") == 3  # header + 2


def test_mmbench_all_rounds_rotations_and_circular_score(tmp_path):
    items = image_readers.read_mmbench(syn.mmbench(tmp_path), "dev", all_rounds=True)
    assert [i.question_id for i in items] == [0, 1_000_000, 2_000_000, 3_000_000, 1, 1_000_001]
    assert items[1].query.endswith("A. dog\nB. bird\nC. fish\nD. cat\n" + LETTER)
    assert [i.meta["answer"] for i in items] == ["B", "A", "D", "C", "A", "B"]
    texts = ["B", "A", "D", "The dog.", "A", "A"]  # 'The dog.': option text of C in rotation 3
    m = multiple_choice.score_mmbench(items, {i.key: t for i, t in zip(items, texts)})
    assert m["circular_accuracy"] == pytest.approx(50.0)  # question 1 fails its second rotation
    assert m["single_accuracy"] == pytest.approx(100.0)


def test_mmbench_cn_asked_in_english_as_the_reference_chinese_as_the_fix(tmp_path):
    root = syn.mmbench(tmp_path)
    (root / "mmbench_dev_20230712.tsv").rename(root / "mmbench_dev_cn_20231003.tsv")
    bench = registry.get("mmbench_cn")
    [reference, _] = bench.reader()(root, "dev")
    [fixed, _] = bench.reader(fix_reference_prompts=True)(root, "dev")
    assert reference.query.endswith("D. fish\n" + LETTER)
    assert fixed.query.endswith("D. fish\n请直接回答选项字母。")
    assert reference.prompt == fixed.prompt  # the recorded question block has no instruction
    row = run("mmbench_cn", root, {0: "B", 1: "A"})
    assert row["ours"] == pytest.approx(100.0) and "no --lang cn" in row["note"]


def test_mmbench_file_with_circular_copies(tmp_path):
    root = syn.mmbench(tmp_path, with_copies=True)
    items = image_readers.read_mmbench(root, "dev")
    assert [i.question_id for i in items] == [0, 1, 1_000_000, 1_000_001]
    assert items[2].image == items[0].image  # the copy's image refers to row 0
    row = run("mmbench", root, {0: "B", 1: "A", 1_000_000: "A", 1_000_001: "B"})
    assert row["ours"] == pytest.approx(100.0)


def test_seed(tmp_path):
    root = syn.seed(tmp_path)
    items = image_readers.read_seed(root, "test")
    assert items[1].image == str(root / "SEED-Bench-video-image" / "v1.png")
    row = run("seed", root, {"101": "B", "102": "B"})
    assert row["metrics"]["image_accuracy"] == 100.0 and row["metrics"]["video_accuracy"] == 0.0
    assert row["metrics"]["dimensions"] == {"Action Recognition": 0.0, "Instance Attributes": 100.0}
    assert row["ours"] == pytest.approx(50.0)


def test_llava_bench_is_judged_with_a_proxy_only(tmp_path):
    root = syn.llava_bench(tmp_path)
    row = run("llava_bench", root, {0: "It is ramen.", 1: "A bowl."})
    assert row["ours"] is None and row["paper"] == 70.2
    assert row["proxy"] == pytest.approx(50.0)  # 'ramen' contained; 'bowl of ramen' not
    answers = [json.loads(l) for l in open(row["answers_file"])]
    assert {a["question_id"] for a in answers} == {0, 1}  # the GPT review reads this file


def test_mmvet_results_file_and_proxy(tmp_path):
    root = syn.mmvet(tmp_path)
    row = run("mmvet", root, {0: "x = -1 or -5", 1: "Hello"})
    assert row["ours"] is None and row["proxy"] == pytest.approx(50.0)
    assert json.loads(open(row["files"]["MM-Vet evaluator input"]).read()) == {
        "v1_0": "x = -1 or -5",
        "v1_1": "Hello",
    }


def test_missing_image_and_unknown_split_are_named(tmp_path):
    root = syn.gqa(tmp_path)
    (root / "data" / "images" / "n1.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="n1.jpg"):
        image_readers.read_gqa(root, "testdev")
    with pytest.raises(ValueError, match="'val'"):
        image_readers.read_gqa(root, "val")
    with pytest.raises(FileNotFoundError, match="llava_pope_test.jsonl"):
        image_readers.read_pope(tmp_path / "nowhere", "test")
