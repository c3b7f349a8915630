"""README's GPU results table from the output folder of `benchmarks/gpu_run.sh`.

    python -m benchmarks.gpu_table OUT                     # markdown on stdout
    python -m benchmarks.gpu_table OUT --readme README.md  # also replaces README's marked section

Reads `OUT/machine.json`, `OUT/steps.jsonl` and each step's results (`latency.json`,
`train_step.json`, `video_memory.json`, `quantization_decode.json`); where a step was cut by its
timeout and left no results file, the figures it printed (one JSON line each) are read from its
`.log`. Writes the device, what each step did, the latency table (both backends and modes), the
issue's goals with measured values, the training step's MFU and the video memory points. The
README section is the text between `<!-- gpu-results:begin -->` and `<!-- gpu-results:end -->`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

BEGIN, END = "<!-- gpu-results:begin -->", "<!-- gpu-results:end -->"

# issue 14's goals on one H100 (Llama-3.1-8B, bf16)
TTFT_GOAL_MS = 15.0
DECODE_FRACTION_GOAL = 0.8
TORCH_OVER_JAX_GOAL = 1.5


def figures(out: str, name: str) -> list[dict]:
    """The figures of one step: `OUT/<name>.json`'s `results`, else the JSON lines of its log."""
    path = os.path.join(out, f"{name}.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f).get("results", [])
    log = os.path.join(out, {"latency": "latency", "train_step": "train_step", "video_memory": "video",
                             "quantization_decode": "quantized"}[name] + ".log")
    found = []
    if os.path.isfile(log):
        with open(log) as f:
            for line in f:
                if line.startswith("{"):
                    try:
                        found.append(json.loads(line))
                    except ValueError:
                        pass
    return found


def _read_json(path: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _steps(out: str) -> list[dict]:
    path = os.path.join(out, "steps.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _num(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    x = float(x)
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"


def _gib(nbytes) -> str:
    return "–" if nbytes is None else f"{nbytes / 2**30:.2f}"


def latency_section(figs: list[dict]) -> list[str]:
    timed = [f for f in figs if f.get("figure") in ("ttft_ms", "decode_tokens_per_s", "images_per_s")]
    if not timed:
        return ["Latency: no figures."]
    batches = sorted({f["batch"] for f in timed if f["figure"] == "decode_tokens_per_s"})
    first = timed[0]
    lines = [f"Latency ({first['llm']}, {first['dtype']}, one image + {first['prompt_tokens']}-token prompt; "
             "decode as tokens/s and the fraction of the bandwidth limit):", "",
             "| backend | mode | TTFT ms | " + " | ".join(f"decode b={b}" for b in batches) + " | images/s |",
             "|---|---|---|" + "---|" * len(batches) + "---|"]
    for backend in ("jax", "torch"):
        for mode in ("mini", "baseline"):
            mine = {(f["figure"], f["batch"]): f for f in timed if f["backend"] == backend and f["mode"] == mode}
            if not mine:
                continue
            ttft = next((f for (fig, _), f in mine.items() if fig == "ttft_ms"), None)
            images = next((f for (fig, _), f in mine.items() if fig == "images_per_s"), None)
            cells = []
            for b in batches:
                d = mine.get(("decode_tokens_per_s", b))
                cells.append("–" if d is None else f"{_num(d['tokens_per_s'])} ({100 * d['bandwidth_fraction']:.0f}%)")
            name = "LLaVA-Mini" if mode == "mini" else "LLaVA-v1.5"
            lines.append(f"| {'JAX' if backend == 'jax' else 'PyTorch'} | {name} | "
                         f"{_num(ttft['ms']) if ttft else '–'} | " + " | ".join(cells)
                         + f" | {_num(images['images_per_s']) if images else '–'} |")
    bw = next((f for f in figs if f.get("figure") == "bandwidth"), None)
    ratios = [f for f in figs if f.get("figure") == "torch_over_jax" and f["of"] == "ttft_ms"]
    notes = []
    if bw:
        notes.append(f"measured bandwidth {_num(bw['gb_per_s'])} GB/s")
    notes += [f"PyTorch / JAX TTFT ({r['mode']}) {r['ratio']:.2f}x" for r in ratios]
    parity = next((f for f in figs if f.get("figure") == "parity"), None)
    if parity:
        notes.append(f"JAX == PyTorch logits (tiny, float32): max |diff| "
                     f"{max(parity['max_abs_diff'].values()):.1e} ({'ok' if parity['ok'] else 'FAIL'})")
    return lines + ["", "; ".join(notes) + "." if notes else ""]


def goals_section(latency: list[dict], video: list[dict]) -> list[str]:
    """Issue 14's goals next to what was measured (JAX, LLaVA-Mini)."""
    get = {(f["backend"], f["mode"], f["figure"], f["batch"]): f for f in latency
           if f.get("figure") in ("ttft_ms", "decode_tokens_per_s")}
    rows = []
    ttft = get.get(("jax", "mini", "ttft_ms", 1))
    if ttft:
        rows.append(("TTFT, one image", f"<= {TTFT_GOAL_MS:g} ms", f"{_num(ttft['ms'])} ms", ttft["ms"] <= TTFT_GOAL_MS))
    dec = get.get(("jax", "mini", "decode_tokens_per_s", 1))
    if dec:
        rows.append(("decode at batch 1", f">= {100 * DECODE_FRACTION_GOAL:.0f}% of the bandwidth limit",
                     f"{100 * dec['bandwidth_fraction']:.0f}%", dec["bandwidth_fraction"] >= DECODE_FRACTION_GOAL))
    ratio = next((f for f in latency if f.get("figure") == "torch_over_jax" and f["of"] == "ttft_ms"
                  and f["mode"] == "mini"), None)
    if ratio:
        rows.append(("TTFT vs PyTorch eager", f">= {TORCH_OVER_JAX_GOAL:g}x faster", f"{ratio['ratio']:.2f}x",
                     ratio["ratio"] >= TORCH_OVER_JAX_GOAL))
    fits = [f for f in video if f.get("figure") == "fit" and f.get("mode") == "mini" and f.get("frames_in_budget")]
    for f in fits:
        rows.append((f"frames in {f['budget_gib']:g} GiB ({f['strategy']})", ">= 15,000",
                     f"{f['frames_in_budget']:,}", f["frames_in_budget"] >= 15000))
    if not rows:
        return []
    out = ["Goals (issue 14):", "", "| goal | target | measured | met |", "|---|---|---|---|"]
    out += [f"| {g} | {t} | {m} | {'yes' if ok else 'no'} |" for g, t, m, ok in rows]
    return out


def train_section(figs: list[dict]) -> list[str]:
    by = {f["figure"]: f for f in figs if "figure" in f and "value" in f}
    if "step_time_ms" not in by:
        return ["Training step: no figures."]
    f = by["step_time_ms"]
    mfu = by.get("mfu", {}).get("value")
    peak = by.get("peak_device_bytes", {}).get("value")
    return [f"Training step ({f['shape']} shape, stage {f['stage']}, batch {f['batch']} x {f['seq_len']} tokens, "
            f"remat {f['remat']}, {f['compute_dtype']} compute, mesh {f['mesh']}):", "",
            "| step ms | tokens/s | model TFLOP/s | MFU | peak device GiB |", "|---|---|---|---|---|",
            f"| {_num(f['value'])} | {_num(by.get('tokens_per_s', {}).get('value'))} | "
            f"{_num(by.get('model_tflops_per_s', {}).get('value'))} | "
            f"{'–' if mfu is None else f'{100 * mfu:.1f}%'} | {_gib(peak)} |"]


def video_section(figs: list[dict]) -> list[str]:
    points = [f for f in figs if f.get("figure") == "point"]
    if not points:
        return ["Long video: no figures."]
    lines = [f"Long video ({points[0]['llm']}, one request = video + prompt -> first token):", "",
             "| mode | way | frames | fits | peak GiB (device) | planned GiB | seconds |", "|---|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p['mode']} | {p['strategy']} | {p['frames']:,} | {'yes' if p['fits'] else 'no'} | "
                     f"{_num(p.get('peak_gib'))} | {_num(p.get('planned_peak_gib'))} | {_num(p.get('seconds'))} |")
    fits = [f for f in figs if f.get("figure") == "fit" and f.get("frames_in_budget")]
    if fits:
        lines += ["", "; ".join(f"{f['mode']} {f['strategy']}: {f['frames_in_budget']:,} frames in "
                                f"{f['budget_gib']:g} GiB (fit over {f['points']} points)" for f in fits) + "."]
    return lines


def quantized_section(figs: list[dict], steps: list[dict]) -> list[str]:
    """`benchmarks.quantization --decode`'s figures (`kind: decode`, one per weight mode)."""
    step = next((s for s in steps if s["step"] == "quantized"), None)
    rows = [f for f in figs if f.get("kind") == "decode"]
    if not rows:
        return [f"Quantized decode (bf16 / int8 / int4): {step['status'] if step else 'not run'}"
                + (f" ({step['note']})" if step and step.get("note") else "") + "."]
    return [f"Quantized decode ({rows[0]['llm']}, batch 1, {rows[0]['steps']} steps):", "",
            "| weights | tokens/s | vs bf16 | param GiB |", "|---|---|---|---|"] + [
        f"| {f['mode']} | {_num(f['tokens_per_s'])} | {f['vs_bf16']:.2f}x | {_gib(f.get('param_bytes'))} |"
        for f in rows]


def render(out: str) -> str:
    machine = _read_json(os.path.join(out, "machine.json")) or {}
    steps = _steps(out)
    device = machine.get("device_kind") or "unknown device"
    head = [f"GPU run on **{device}** ({machine.get('devices', '?')} device(s); jax {machine.get('jax', '?')}, "
            f"torch {machine.get('torch', '?')}, Python {machine.get('python', '?')}), "
            "`OUT=... bash benchmarks/gpu_run.sh`.", ""]
    if steps:
        head += ["Steps: " + ", ".join(f"{s['step']} {s['status']} ({s['seconds']} s)" for s in steps) + ".", ""]
    latency = figures(out, "latency")
    video = figures(out, "video_memory")
    parts = [head, latency_section(latency), goals_section(latency, video), train_section(figures(out, "train_step")),
             video_section(video), quantized_section(figures(out, "quantization_decode"), steps)]
    return "\n\n".join("\n".join(p).strip() for p in parts if p).strip() + "\n"


def update_readme(path: str, table: str) -> None:
    """Replaces the text between the markers in `path` with `table` (ValueError when absent)."""
    with open(path) as f:
        text = f.read()
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{path} has no {BEGIN} ... {END} section to replace")
    before, rest = text.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(before + BEGIN + "\n" + table + END + after)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="the OUT folder of benchmarks/gpu_run.sh")
    ap.add_argument("--readme", help="also write the table into this README's marked section")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.out):
        ap.error(f"{args.out} is not a folder")
    table = render(args.out)
    print(table, end="")
    if args.readme:
        update_readme(args.readme, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
