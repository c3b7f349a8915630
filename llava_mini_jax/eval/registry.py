"""The benchmarks: name -> reader, scorer, answer/submission files, paper number, modality.

`BENCHMARKS` lists every benchmark `evaluate` knows. The paper numbers are the row of the
released LLaVA-Mini checkpoint (Llama-3.1-8B) in the paper's image table; they are compared with
the metric named `headline` of the split named `paper_split`.

Three kinds of split:
* scored here with the reference's (or the official) rule, answer by answer (SPEC D17); the
  benchmarks with `lenient=True` also have a more forgiving reading of answers
  (`parsing="lenient"`), reported beside the official number, never as it;
* server-scored (`server_splits`): only the submission file is written, there is no local score;
* GPT-judged (`judged`): the judge's input files are written and an offline proxy is computed,
  which is never reported as the official number.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from llava_mini_jax.eval import gqa, image_readers, mme, multiple_choice, open_ended, pope
from llava_mini_jax.eval import video_readers, vqa, vqa_official
from llava_mini_jax.eval.item import EvalItem, Key

Reader = Callable[[Path, str], List[EvalItem]]
Scorer = Callable[[Sequence[EvalItem], Mapping[Key, str]], Dict[str, object]]
# (items, answers, output folder, benchmark folder, split) -> {label: written file}
Writer = Callable[[Sequence[EvalItem], Mapping[Key, str], Path, Path, str], Dict[str, Path]]


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """How to read, ask, score and report one benchmark.

    `max_new_tokens` is the generation budget of the reference script for it (model_vqa_loader,
    egoschema_mc: 128; model_vqa_science, model_vqa_mmbench, mvbench_mc, mlvu_mc and the video QA
    / Video-ChatGPT scripts: 1024), for `answer_fn` to use. `conv_mode` is the conversation
    template the reference's script uses whatever the checkpoint (None: the checkpoint's own).
    `reference_quirk` says what the reference's script does that looks like an omission and is
    reproduced by default; `read_fixed` (and the checkpoint's own template instead of `conv_mode`)
    is the sensible variant, used with `fix_reference_prompts=True`.
    """

    name: str
    title: str
    modality: str  # 'image' or 'video'
    splits: Tuple[str, ...]
    read: Reader
    score: Optional[Scorer]
    headline: str
    layout: str
    write: Optional[Writer] = None
    server_splits: Tuple[str, ...] = ()
    judged: bool = False
    paper: Optional[float] = None
    paper_split: Optional[str] = None
    max_new_tokens: int = 128
    lenient: bool = False
    conv_mode: Optional[str] = None
    reference_quirk: str = ""
    read_fixed: Optional[Reader] = None

    @property
    def default_split(self) -> str:
        return self.paper_split or self.splits[0]

    def is_server_scored(self, split: str) -> bool:
        return split in self.server_splits

    def reader(self, fix_reference_prompts: bool = False) -> Reader:
        """The reader: the reference's prompts, or with `fix_reference_prompts` the sensible variant."""
        return self.read_fixed if fix_reference_prompts and self.read_fixed is not None else self.read

    def template(self, checkpoint_template: str, fix_reference_prompts: bool = False) -> str:
        """The conversation template to ask with, given the checkpoint's own."""
        if self.conv_mode is None or fix_reference_prompts:
            return checkpoint_template
        return self.conv_mode


def _writer(fn, filename: str, label: str) -> Writer:
    """A Writer calling `fn(items, answers, out / filename)`."""

    def write(items, answers, out, root, split):
        return {label: fn(items, answers, Path(out) / filename.format(split=split))}

    return write


def _write_vqav2(items, answers, out, root, split):
    if split != "test-dev":
        return {}
    path = Path(out) / "vqav2-test-dev.json"
    ids = image_readers.vqav2_test_ids(root)
    return {"EvalAI upload": vqa.write_vqav2_submission(items, answers, path, ids)}


def _write_vizwiz(items, answers, out, root, split):
    if split != "test":
        return {}
    return {"EvalAI upload": vqa.write_vizwiz_submission(items, answers, Path(out) / "vizwiz-test.json")}


def _write_egoschema(items, answers, out, root, split):
    return {
        "Kaggle upload": multiple_choice.write_egoschema_submission(
            items, answers, Path(out) / f"egoschema-{split}.csv"
        )
    }


PAPER_MODEL = "LLaVA-Mini, Llama-3.1-8B (paper)"
_LLAVA_EVAL = "LLaVA's playground/data/eval/{} (eval.zip + the benchmark's own download)"

BENCHMARKS: Dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark(
            "vqav2",
            "VQAv2",
            "image",
            ("test-dev", "val"),
            image_readers.read_vqav2,
            vqa_official.score_vqav2,
            "accuracy",
            _LLAVA_EVAL.format("vqav2") + ": test-dev: "
            "llava_vqav2_mscoco_test-dev2015.jsonl (+ llava_vqav2_mscoco_test2015.jsonl), "
            "test2015/; val: the official v2_OpenEnded_mscoco_val2014_questions.json, "
            "v2_mscoco_val2014_annotations.json, val2014/",
            write=_write_vqav2,
            server_splits=("test-dev",),
            lenient=True,
            paper=79.0,
            paper_split="test-dev",
        ),
        Benchmark(
            "gqa",
            "GQA",
            "image",
            ("testdev",),
            image_readers.read_gqa,
            gqa.score,
            "accuracy",
            _LLAVA_EVAL.format("gqa") + ": llava_gqa_testdev_balanced.jsonl, "
            "data/images/, data/testdev_balanced_questions.json",
            write=_writer(
                gqa.write_predictions, "gqa-testdev_balanced_predictions.json", "GQA eval.py predictions"
            ),
            paper=61.3,
            paper_split="testdev",
        ),
        Benchmark(
            "vizwiz",
            "VizWiz",
            "image",
            ("test", "val"),
            image_readers.read_vizwiz,
            vqa_official.score_vizwiz,
            "accuracy",
            _LLAVA_EVAL.format("vizwiz") + ": test: llava_test.jsonl, "
            "test/; val: the official val.json and val/",
            write=_write_vizwiz,
            server_splits=("test",),
            lenient=True,
            paper=57.4,
            paper_split="test",
        ),
        Benchmark(
            "scienceqa",
            "SQA (IMG)",
            "image",
            ("test",),
            image_readers.read_scienceqa,
            multiple_choice.score_sqa,
            "img_accuracy",
            _LLAVA_EVAL.format("scienceqa") + ": llava_test_CQM-A.json, problems.json, images/test/",
            paper=83.1,
            paper_split="test",
            max_new_tokens=1024,
        ),
        Benchmark(
            "textvqa",
            "TextVQA",
            "image",
            ("val",),
            image_readers.read_textvqa,
            vqa.score,
            "accuracy",
            _LLAVA_EVAL.format("textvqa") + ": llava_textvqa_val_v051_ocr.jsonl, "
            "TextVQA_0.5.1_val.json, train_images/",
            paper=58.5,
            paper_split="val",
        ),
        Benchmark(
            "pope",
            "POPE (F1)",
            "image",
            ("test",),
            image_readers.read_pope,
            pope.score,
            "f1",
            _LLAVA_EVAL.format("pope") + ": llava_pope_test.jsonl, "
            "coco/coco_pope_{adversarial,popular,random}.json, val2014/",
            paper=85.3,
            paper_split="test",
        ),
        Benchmark(
            "mme",
            "MME (perception)",
            "image",
            ("test",),
            image_readers.read_mme,
            mme.score,
            "perception",
            _LLAVA_EVAL.format("MME") + ": llava_mme.jsonl, "
            "MME_Benchmark_release_version/ (images and the official *.txt answers)",
            paper=1522.7,
            paper_split="test",
        ),
        Benchmark(
            "mmbench",
            "MMBench",
            "image",
            ("dev", "test"),
            functools.partial(image_readers.read_mmbench, benchmark="mmbench"),
            multiple_choice.score_mmbench,
            "circular_accuracy",
            _LLAVA_EVAL.format("mmbench") + ": mmbench_dev_20230712.tsv "
            "(mmbench_test_20230712.tsv for test)",
            write=_writer(
                multiple_choice.write_mmbench_submission, "mmbench-{split}.xlsx", "MMBench server upload"
            ),
            server_splits=("test",),
            paper=71.6,
            paper_split="dev",
            max_new_tokens=1024,
            lenient=True,
        ),
        Benchmark(
            "mmbench_cn",
            "MMBench-CN",
            "image",
            ("dev", "test"),
            functools.partial(image_readers.read_mmbench, benchmark="mmbench_cn", lang="en"),
            multiple_choice.score_mmbench,
            "circular_accuracy",
            _LLAVA_EVAL.format("mmbench") + ": mmbench_dev_cn_20231003.tsv "
            "(mmbench_test_cn_20231003.tsv for test)",
            write=_writer(
                multiple_choice.write_mmbench_submission, "mmbench_cn-{split}.xlsx", "MMBench server upload"
            ),
            server_splits=("test",),
            max_new_tokens=1024,
            lenient=True,
            reference_quirk="asked with the English letter instruction (its script passes no --lang cn)",
            read_fixed=functools.partial(image_readers.read_mmbench, benchmark="mmbench_cn", lang="cn"),
        ),
        Benchmark(
            "seed",
            "SEED-Bench",
            "image",
            ("test",),
            image_readers.read_seed,
            multiple_choice.score_seed,
            "accuracy",
            _LLAVA_EVAL.format("seed_bench")
            + ": llava-seed-bench.jsonl, SEED-Bench.json, SEED-Bench-image/, "
            "SEED-Bench-video-image/ (middle frames), directly or under SEED-Bench/",
            write=_writer(
                multiple_choice.write_seed_submission, "seed-{split}.jsonl", "SEED-Bench leaderboard upload"
            ),
            paper=63.0,
            paper_split="test",
        ),
        Benchmark(
            "llava_bench",
            "LLaVA-W",
            "image",
            ("test",),
            image_readers.read_llava_bench,
            open_ended.score_proxy,
            "proxy_contains",
            _LLAVA_EVAL.format("llava-bench-in-the-wild") + ": questions.jsonl, images/, "
            "answers_gpt4.jsonl, context.jsonl (the answers file is the GPT review's input)",
            judged=True,
            paper=70.2,
            paper_split="test",
        ),
        Benchmark(
            "mmvet",
            "MM-Vet",
            "image",
            ("test",),
            image_readers.read_mmvet,
            open_ended.score_proxy,
            "proxy_contains",
            _LLAVA_EVAL.format("mm-vet")
            + ": llava-mm-vet.jsonl, images/ (mm-vet.json for the offline proxy)",
            write=_writer(open_ended.write_mmvet_results, "mmvet-results.json", "MM-Vet evaluator input"),
            judged=True,
            paper=37.2,
            paper_split="test",
        ),
        Benchmark(
            "mvbench",
            "MVBench",
            "video",
            ("test",),
            video_readers.read_mvbench,
            functools.partial(multiple_choice.score_choice, rule="check_ans"),
            "task_mean",
            "HF OpenGVLab/MVBench: json/*.json, video/<source folders>/",
            max_new_tokens=1024,
            lenient=True,
        ),
        Benchmark(
            "mlvu",
            "MLVU (M-Avg)",
            "video",
            ("dev",),
            video_readers.read_mlvu,
            functools.partial(multiple_choice.score_choice, rule="check_ans"),
            "task_mean",
            "MLVU dev: json/<n>_<task>.json, video/<n>_<task>/",
            max_new_tokens=1024,
            lenient=True,
        ),
        Benchmark(
            "egoschema",
            "EgoSchema",
            "video",
            ("subset", "full"),
            video_readers.read_egoschema,
            functools.partial(multiple_choice.score_choice, rule="first_letter"),
            "accuracy",
            "EgoSchema: questions.json + subset_answers.json (or the reference's mc.json), "
            "good_clips_git/<q_uid>.mp4 (or videos/)",
            write=_write_egoschema,
            server_splits=("full",),
            lenient=True,
            conv_mode="vicuna_v1",
            reference_quirk="asked with vicuna_v1 whatever the checkpoint "
            "(its script passes no conversation mode)",
        ),
        Benchmark(
            "msvd_qa",
            "MSVD-QA",
            "video",
            ("test",),
            functools.partial(video_readers.read_video_qa, benchmark="msvd_qa"),
            open_ended.score_proxy,
            "proxy_contains",
            "MSVD_Zero_Shot_QA: test_q.json, test_a.json, videos/",
            max_new_tokens=1024,
            write=_writer(open_ended.write_video_qa_predictions, "msvd_qa-{split}.json", "GPT judge input"),
            judged=True,
        ),
        Benchmark(
            "msrvtt_qa",
            "MSRVTT-QA",
            "video",
            ("test",),
            functools.partial(video_readers.read_video_qa, benchmark="msrvtt_qa"),
            open_ended.score_proxy,
            "proxy_contains",
            "MSRVTT_Zero_Shot_QA: test_q.json, test_a.json, videos/all/",
            max_new_tokens=1024,
            write=_writer(open_ended.write_video_qa_predictions, "msrvtt_qa-{split}.json", "GPT judge input"),
            judged=True,
        ),
        Benchmark(
            "activitynet_qa",
            "ActivityNet-QA",
            "video",
            ("test",),
            functools.partial(video_readers.read_video_qa, benchmark="activitynet_qa"),
            open_ended.score_proxy,
            "proxy_contains",
            "ActivityNet-QA: test_q.json, test_a.json, test_videos/v_<id>.mp4 (or all_test/, videos/)",
            max_new_tokens=1024,
            write=_writer(
                open_ended.write_video_qa_predictions, "activitynet_qa-{split}.json", "GPT judge input"
            ),
            judged=True,
        ),
        Benchmark(
            "vcgbench",
            "Video-ChatGPT",
            "video",
            ("generic", "temporal", "consistency"),
            video_readers.read_vcgbench,
            open_ended.score_proxy,
            "proxy_contains",
            "Video-ChatGPT benchmark: Benchmarking_QA/{generic,temporal,consistency}_qa.json, "
            "Test_Videos/",
            max_new_tokens=1024,
            write=_writer(open_ended.write_vcgbench_predictions, "vcgbench-{split}.json", "GPT judge input"),
            judged=True,
        ),
    ]
}


def get(name: str) -> Benchmark:
    """The benchmark called `name`; ValueError listing the known names otherwise."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}, expected one of {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]
