#!/usr/bin/env bash
# Every GPU figure of the project in one prepared run: under 8 minutes on one H100.
#
#   OUT=/some/folder bash benchmarks/gpu_run.sh          # GPU: the real sizes
#   OUT=/some/folder bash benchmarks/gpu_run.sh --tiny   # CPU stand-in: the same steps on tiny models
#
# Run from anywhere (it changes to the repository root; PYTHONPATH=. is set). Needs only what the
# GPU machine has: Python 3.12, jax with CUDA, flax, optax, orbax, transformers, torch, einops,
# safetensors, tokenizers, sentencepiece (no grain, tensorflow-datasets, PyAV; no package index).
#
# Steps, in priority order, each under `timeout` within the overall budget GPU_RUN_BUDGET_S
# (default 450 s of the 480; a step that would start with < 20 s left is skipped):
#   machine      jax / torch versions, the device (machine.json, nvidia-smi.csv)
#   latency      TTFT, decode tokens/s at batch 1/16/64 as a fraction of the measured bandwidth,
#                images/s; JAX vs PyTorch and LLaVA-Mini vs LLaVA-v1.5, one run (latency.json)
#   train_step   the training step's MFU at the 1B-class shape, stage 2, 2048 tokens (train_step.json)
#   video        device memory and seconds for 1k-20k frames, frames in 24 GiB (video_memory.json)
#   quantized    decode tokens/s at batch 1 for bf16 / int8 / int4 (`benchmarks.quantization --decode`,
#                quantization_decode.json); skipped, saying why, where benchmarks/quantization.py or
#                qwix is missing
# Each step writes OUT/<step>.log (every figure is also a JSON line there, so a step cut by its
# timeout still leaves its finished figures) and a line in OUT/steps.jsonl (status, seconds).
# Last, `python -m benchmarks.gpu_table OUT` writes OUT/results_table.md, the README table; copy it
# into README with `python -m benchmarks.gpu_table OUT --readme README.md`.
#
# Knobs (environment): GPU_RUN_LLM (llama-3.1-8b | vicuna-7b), GPU_RUN_BUDGET_S, PYTHON, GPU_RUN_WHEELS.
#
# qwix (the quantized step) is pure Python but not on the GPU machine, which has no package index.
# Fetch its wheel where there is one and put it in a folder the run carries:
#   pip download qwix==0.1.8 --no-deps -d gpu_wheels
# Every *.whl in GPU_RUN_WHEELS (default: gpu_wheels/ at the repository root) is unpacked into a
# temporary folder put on PYTHONPATH (a wheel itself on PYTHONPATH does not work: zipimport cannot
# import qwix's namespace subpackages). qwix needs absl-py, flax, jax, numpy and opt_einsum, which
# the machine has.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder for the results}
TINY=0
if [ "${1:-}" = "--tiny" ]; then TINY=1; fi
LLM=${GPU_RUN_LLM:-llama-3.1-8b}
BUDGET_S=${GPU_RUN_BUDGET_S:-450}
PY=${PYTHON:-python}
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # the torch side and the JAX side share the device
WHEELS=${GPU_RUN_WHEELS:-gpu_wheels}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  SITE=$(mktemp -d)
  trap 'rm -rf "$SITE"' EXIT
  for wheel in "$WHEELS"/*.whl; do "$PY" -m zipfile -e "$wheel" "$SITE"; done
  export PYTHONPATH="$PYTHONPATH:$SITE"
  echo "== wheels from $WHEELS on PYTHONPATH: $(cd "$WHEELS" && ls *.whl | tr '\n' ' ')"
fi
START=$(date +%s)
STEPS="$OUT/steps.jsonl"
: > "$STEPS"

record() {  # name status seconds [note]
  printf '{"step": "%s", "status": "%s", "seconds": %s, "note": "%s"}\n' "$1" "$2" "$3" "${4:-}" >> "$STEPS"
}

step() {  # name cap_seconds command...: runs the command under min(cap, what is left of the budget)
  local name=$1 cap=$2
  shift 2
  local left=$((BUDGET_S - ($(date +%s) - START)))
  if [ $TINY -eq 1 ]; then cap=$left; fi  # the stand-in: only the overall budget (CPU speed varies)
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 20 ]; then
    record "$name" skipped 0 "budget spent"
    echo "== $name: skipped (budget spent)"
    return
  fi
  echo "== $name (up to ${limit}s): $*"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local took=$(($(date +%s) - t0))
  local status=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status=timeout; elif [ $rc -ne 0 ]; then status=failed; fi
  record "$name" "$status" "$took" "exit $rc"
  echo "   $status in ${took}s"
  if [ "$status" = failed ]; then tail -5 "$OUT/$name.log"; fi
}

if [ $TINY -eq 1 ]; then
  LATENCY=(-m benchmarks.latency --tiny --no-parity --repeats 1 --decode-steps 2 --decode-batches 1 --image-batch 1
           --out "$OUT/latency.json")
  TRAIN=(-m benchmarks.train_step --tiny --out "$OUT/train_step.json")
  VIDEO=(-m benchmarks.video_memory --tiny --frames 4 --baseline-frames "" --strategies generate
         --out "$OUT/video_memory.json")
  QUANT_FLAGS=(--tiny)
else
  LATENCY=(-m benchmarks.latency --llm "$LLM" --decode-batches 1,16,64 --decode-steps 32 --repeats 3
           --out "$OUT/latency.json")
  TRAIN=(-m benchmarks.train_step --shape 1b --batch 16 --seq-len 2048 --steps 6 --warmup 2
         --out "$OUT/train_step.json")
  VIDEO=(-m benchmarks.video_memory --llm "$LLM" --frames 1000,5000,10000,20000 --baseline-frames 16
         --strategies generate --out "$OUT/video_memory.json")
  QUANT_FLAGS=(--decode-steps 128)
fi

step machine 60 "$PY" -c "
import json, subprocess
from benchmarks.common import machine
m = machine()
try:
    import torch
    m['torch'] = torch.__version__
    m['torch_cuda'] = torch.cuda.is_available()
except ImportError:
    m['torch'] = None
json.dump(m, open('$OUT/machine.json', 'w'), indent=1)
print(json.dumps(m))
"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>/dev/null || true

step latency 210 "$PY" "${LATENCY[@]}"
step train_step 90 "$PY" "${TRAIN[@]}"
step video 120 "$PY" "${VIDEO[@]}"

# -- quantized decode (issue 16): bf16 / int8 / int4 at batch 1, Llama-3.1-8B (tiny in the stand-in) --------
if [ ! -f benchmarks/quantization.py ]; then
  record quantized skipped 0 "benchmarks/quantization.py is missing (quantization has not been merged)"
  echo "== quantized: skipped (benchmarks/quantization.py is missing: quantization has not been merged)"
elif ! "$PY" -c "import qwix" > /dev/null 2>&1; then
  record quantized skipped 0 "qwix is not importable (put its wheel in GPU_RUN_WHEELS, see the top of this script)"
  echo "== quantized: skipped (qwix is not importable: pip download qwix==0.1.8 --no-deps -d gpu_wheels, see the top)"
else
  step quantized 60 "$PY" -m benchmarks.quantization --decode "${QUANT_FLAGS[@]}" \
    --out "$OUT/quantization_decode.json"
fi

"$PY" -m benchmarks.gpu_table "$OUT" > "$OUT/results_table.md"
echo "== table: $OUT/results_table.md ($(($(date +%s) - START))s in all)"
