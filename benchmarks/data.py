"""Training-data throughput: samples/s of `make_train_pipeline` with 0, 1 and 2 worker processes.

A synthetic LLaVA set (random JPEG images around 500x375 plus text-only samples, vicuna_v1
template, full 336x336 CLIP processing with padding) is written to a temporary directory and
read for a fixed number of batches per setting. The first batch (start-up, worker spawn) is not
timed. Prints one JSON line per figure and writes all of them to `--out`.

    python -m benchmarks.data            # 2000 images, results in benchmarks/results/data.json
    python -m benchmarks.data --tiny     # seconds; for the test suite
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

from llava_mini_jax.data import DataConfig, make_train_pipeline
from llava_mini_jax.data.synthetic import write_synthetic_dataset
from llava_mini_jax.image_processing import ImageProcessorConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_TOKENIZER = ROOT / "tests" / "fixtures" / "preprocess" / "tokenizers" / "vicuna"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "data.json"


@dataclasses.dataclass(frozen=True)
class Setting:
    """One benchmark size: data, processing and how many batches to time."""

    num_images: int
    num_text: int
    image_size: tuple[int, int]
    crop: int
    batch_size: int
    timed_batches: int
    workers: tuple[int, ...] = (0, 1, 2)


FULL = Setting(num_images=2000, num_text=0, image_size=(500, 375), crop=336, batch_size=16,
               timed_batches=60)
TINY = Setting(num_images=48, num_text=8, image_size=(64, 48), crop=32, batch_size=4,
               timed_batches=4)


def measure(config: DataConfig, timed_batches: int) -> dict:
    """Samples/s over `timed_batches` batches after the first one (and the time to the first)."""
    begin = time.perf_counter()
    it, steps = make_train_pipeline(config)
    try:
        next(it)
        start = time.perf_counter()
        n = 0
        for _ in range(min(timed_batches, steps - 1)):
            next(it)
            n += 1
        seconds = time.perf_counter() - start
    finally:
        it.close()
    rows = n * config.batch_size
    return {"startup_s": round(start - begin, 3), "samples": rows, "seconds": round(seconds, 4),
            "samples_per_s": round(rows / seconds, 2) if seconds > 0 else None}


def run(setting: Setting, tokenizer: str, workdir: str) -> list[dict]:
    path = write_synthetic_dataset(workdir, setting.num_images, setting.num_text, seed=0,
                                   image_size=setting.image_size, image_format="jpg",
                                   progress=setting is FULL)
    processor = ImageProcessorConfig(shortest_edge=setting.crop, crop_height=setting.crop,
                                     crop_width=setting.crop)
    results = []
    for workers in setting.workers:
        config = DataConfig(data_path=path, image_folder=workdir, tokenizer_path=tokenizer,
                            image_processor=processor, batch_size=setting.batch_size,
                            num_workers=workers, read_threads=1, process_index=0,
                            process_count=1, model_max_length=2048)
        figure = {"benchmark": "data", "figure": f"samples_per_s_workers_{workers}",
                  "workers": workers, "images": setting.num_images, "text": setting.num_text,
                  "image_size": list(setting.image_size), "crop": setting.crop,
                  "batch_size": setting.batch_size, **measure(config, setting.timed_batches),
                  "cpus": os.cpu_count(), "python": platform.python_version()}
        print(json.dumps(figure), flush=True)
        results.append(figure)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few small images; seconds")
    parser.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER))
    parser.add_argument("--out", default=None,
                        help=f"results JSON (default {DEFAULT_OUT}; none with --tiny)")
    args = parser.parse_args(argv)
    setting = TINY if args.tiny else FULL
    out = args.out if args.out is not None else (None if args.tiny else str(DEFAULT_OUT))
    with tempfile.TemporaryDirectory() as workdir:
        results = run(setting, args.tokenizer, workdir)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump({"setting": dataclasses.asdict(setting), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
