"""Loading benchmark: peak host memory and throughput of `load_pretrained` on an HF directory.

    python -m benchmarks.loading [--tiny] [--gb 3.5] [--shards 4] [--dtype bfloat16]
        [--workdir DIR] [--keep] [--json PATH]

Builds the synthetic LLaVA-Mini HF checkpoint of `benchmarks.conversion` (float16, about `--gb`
GB in `--shards` safetensors shards), then loads it with `load_pretrained(dir, dtype=--dtype)` in
a fresh subprocess that reports its resident memory before the call (imports done), its peak
(`VmHWM`) and after, the bytes of the loaded params, the bytes read from the safetensors and
the wall time.

On the CPU backend the loaded params themselves live in host memory, so the figure the bound
applies to is the loader's own overhead: `peak - before - params bytes`, which must stay within
the largest single tensor + 1 GB (issue 14 item 5; on a GPU the params leave the host and the
peak is the overhead alone). One JSON line (also written to `--json`, default
`benchmarks/results/loading.json` except with `--tiny`, which finishes in seconds and is run by
the test suite).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.common import ROOT, machine
from benchmarks.conversion import build_checkpoint, sized_config
from convert.dtypes import DTYPES

GB = 1e9


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """This process's peak resident memory: `VmHWM` (per address space, so a parent's larger peak
    does not leak in through fork + exec as it does into `ru_maxrss`), else `ru_maxrss`."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(directory: str, dtype: str) -> dict:
    """Runs in the measured subprocess: one `load_pretrained`, its memory and time."""
    import jax
    import jax.numpy as jnp

    from llava_mini_jax import loading
    reads = []
    close = loading.HFSource.close

    def counting_close(self):
        reads.append(self.bytes_read)
        close(self)
    loading.HFSource.close = counting_close  # the source's own count of the bytes it read
    before = _rss_bytes()
    t0 = time.perf_counter()
    _, params = loading.load_pretrained(directory, dtype=jnp.dtype(dtype))
    jax.block_until_ready(params)
    seconds = time.perf_counter() - t0
    peak = _peak_rss_bytes()
    return dict(before=before, peak=peak, after=_rss_bytes(), seconds=seconds, bytes_read=sum(reads),
                params_bytes=sum(a.nbytes for a in jax.tree.leaves(params)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a few-MB checkpoint (seconds)")
    ap.add_argument("--gb", type=float, default=3.5, help="checkpoint size in GB (default 3.5)")
    ap.add_argument("--shards", type=int, default=4, help="number of safetensors shards (default 4)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="param dtype to load into")
    ap.add_argument("--workdir", help="where to build (default: a temporary directory, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint")
    ap.add_argument("--json", help="results file (default benchmarks/results/loading.json; none with --tiny)")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: the measured load of this directory
    args = ap.parse_args(argv)
    if args.child:
        print("CHILD " + json.dumps(child(args.child, args.dtype)))
        return 0
    work = args.workdir or tempfile.mkdtemp(prefix="loading-bench-")
    hf = os.path.join(work, "hf")
    try:
        if not (args.keep and os.path.isfile(os.path.join(hf, "config.json"))):
            shutil.rmtree(hf, ignore_errors=True)
            sizes = build_checkpoint(hf, sized_config(args.gb, args.tiny), 2 if args.tiny else args.shards,
                                     DTYPES["float16"])
        else:  # reuse a kept checkpoint
            with open(os.path.join(work, "sizes.json")) as f:
                sizes = json.load(f)
        if args.keep:
            with open(os.path.join(work, "sizes.json"), "w") as f:
                json.dump(sizes, f)
        cmd = [sys.executable, "-m", "benchmarks.loading", "--child", hf, "--dtype", args.dtype]
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"the measured load failed:\n{p.stdout[-2000:]}{p.stderr[-4000:]}")
        m = json.loads(next(line for line in p.stdout.splitlines() if line.startswith("CHILD "))[6:])
    finally:
        if not args.keep:
            shutil.rmtree(work if not args.workdir else hf, ignore_errors=True)
    overhead = m["peak"] - m["before"] - m["params_bytes"]
    bound = sizes["largest_tensor_bytes"] + GB
    result = {
        "benchmark": "loading", "tiny": args.tiny, "stored_dtype": "float16", "dtype": args.dtype,
        "checkpoint_gb": round(sizes["total_bytes"] / GB, 4), "shards": sizes["shards"],
        "tensors": sizes["tensors"], "largest_tensor_gb": round(sizes["largest_tensor_bytes"] / GB, 4),
        "params_gb": round(m["params_bytes"] / GB, 4), "read_gb": round(m["bytes_read"] / GB, 4),
        "rss_before_gb": round(m["before"] / GB, 3), "peak_rss_gb": round(m["peak"] / GB, 3),
        "rss_after_gb": round(m["after"] / GB, 3), "overhead_gb": round(overhead / GB, 3),
        "bound_gb": round(bound / GB, 3), "within_bound": overhead <= bound,
        "seconds": round(m["seconds"], 2), "gb_per_s": round(sizes["total_bytes"] / GB / m["seconds"], 3),
        "command": "python -m benchmarks.loading" + (" --tiny" if args.tiny else f" --gb {args.gb}"),
    }
    print(f"checkpoint {result['checkpoint_gb']:.2f} GB float16 in {result['shards']} shards, largest tensor "
          f"{result['largest_tensor_gb']:.3f} GB; loaded as {args.dtype} in {result['seconds']:.1f} s "
          f"({result['gb_per_s']:.2f} GB/s), {result['read_gb']:.2f} GB read")
    print(f"RSS before {result['rss_before_gb']:.2f} GB, peak {result['peak_rss_gb']:.2f} GB, params "
          f"{result['params_gb']:.2f} GB (host memory on CPU): loader overhead {result['overhead_gb']:.3f} GB "
          f"({'within' if result['within_bound'] else 'OVER'} the bound largest tensor + 1 GB = "
          f"{result['bound_gb']:.2f} GB)")
    print(json.dumps(result))
    path = args.json or (None if args.tiny else os.path.join(ROOT, "benchmarks", "results", "loading.json"))
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump({**result, "machine": machine()}, f, indent=1)
            f.write("\n")
    return 0 if result["within_bound"] else 1


if __name__ == "__main__":
    sys.exit(main())
