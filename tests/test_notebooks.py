"""The notebooks (issue 9) execute end to end, offline and on the CPU.

Each notebook runs in a fresh `python3` kernel of this environment through `nbclient`, in memory
(nothing is written back: the committed notebooks stay without outputs), with its working directory
set to `notebooks/`. A cell errors -> `CellExecutionError`. One toy checkpoint is trained for the
whole session and handed to every kernel through `LLAVA_MINI_TOY_DIR`, as a user would share it.

To check a meaningful result per notebook, the test appends one cell that prints a JSON summary of
the notebook's own variables (so renaming `attn` in 02 means updating `CHECKS` here).
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
TOY_STEPS = 300  # the notebooks' own default, so they see the model they were written for
CELL_TIMEOUT = 300
MARK = "NOTEBOOK-CHECK "

# notebook -> the expression (over its variables) whose JSON the appended cell prints
CHECKS = {
    "01_quickstart": """{
        "prompt_len": len(ids), "positions": int(logits.shape[1]), "tokens_per_frame": cfg.tokens_per_frame,
        "pieces": pieces, "generated": new[0].tolist(), "answers": answers}""",
    "02_compression_attention": """{
        "shape": list(attn.shape), "grid": g, "sum_error": float(np.abs(attn.sum(-1) - 1).max()),
        "hd_shape": list(hd_attn.shape), "hd_sum_error": float(np.abs(hd_attn.sum(-1) - 1).max()),
        "peak": float((attn.max(-1) * attn.shape[-1]).mean()), "standard": standard, "hd": hd}""",
    "03_efficiency": """{
        "reduction": {"/".join(k): v for k, v in reduction.items()},
        "analytic": {m: tflops(m, 65) for m in configs},
        "json_analytic": {m: prefill[("vicuna-7b", "336px", m)]["analytic_tflops"] for m in configs},
        "ttft": ttft}""",
    "04_training": """{
        "devices": jax.device_count(), "first_step": first.step, "first_stopped": first.stopped,
        "full": {str(k): v for k, v in full.losses.items()},
        "resumed": {str(k): v for k, v in resumed.losses.items()},
        "embedding_spec": list(embedding.sharding.spec),
        "per_device": list(embedding.addressable_shards[0].data.shape)}""",
    "05_video": """{
        "picked": picked, "pixels": list(pixels.shape), "prompt_len": len(ids), "positions": int(logits.shape[1]),
        "sum_error": float(np.abs(attn.reshape(T, -1).sum(-1) - 1).max()), "peak_column": peak_column}""",
}


@pytest.fixture(scope="session")
def kernel_name() -> str:
    """ipykernel's `python3` kernel of this environment; installed into its prefix if missing."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        from ipykernel.kernelspec import install
        install(prefix=sys.prefix, kernel_name="python3")
    return "python3"


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory) -> str:
    """The toy checkpoint a notebook trains when `LLAVA_MINI_TOY_DIR` is unset, trained once. In a
    subprocess with XLA's default flags (not this suite's), so the notebooks see the model they were
    written for (the 300-step toy's attention differs visibly with XLA's optimisation level)."""
    directory = str(tmp_path_factory.mktemp("toy"))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    code = ("import sys; from demo.toy import toy_checkpoint; "
            "toy_checkpoint(sys.argv[1], steps=int(sys.argv[2]))")
    subprocess.run([sys.executable, "-c", code, directory, str(TOY_STEPS)], env=env, check=True)
    return directory


def execute(name: str, kernel: str) -> tuple[dict, float]:
    """Runs notebooks/<name>.ipynb with the check cell appended; returns (check JSON, seconds)."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    check = f"import json as _j, sys as _s\nprint({MARK!r} + _j.dumps(dict({CHECKS[name]}, prefix=_s.prefix)))"
    nb.cells.append(nbformat.v4.new_code_cell(check))
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name=kernel,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    seconds = time.perf_counter() - start
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    line = next(x for x in text.splitlines() if x.startswith(MARK))
    out = json.loads(line[len(MARK):])
    assert os.path.realpath(out.pop("prefix")) == os.path.realpath(sys.prefix), "the kernel runs another Python"
    print(f"{name}: {seconds:.1f} s")
    return out, seconds


@pytest.fixture
def run(kernel_name, toy_dir, monkeypatch):
    monkeypatch.setenv("LLAVA_MINI_TOY_DIR", toy_dir)
    monkeypatch.delenv("LLAVA_MINI_CHECKPOINT", raising=False)  # the toy, even where a real one is configured
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # headless (Agg-based)
    return lambda name: execute(name, kernel_name)[0]


def test_notebooks_are_committed_without_outputs():
    names = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == sorted(CHECKS)
    for name in names:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        assert nb.cells[0].cell_type == "markdown"
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs not stripped"


def test_01_quickstart(run):
    from demo import shapes
    out = run("01_quickstart")
    assert out["tokens_per_frame"] == 1
    assert out["positions"] == out["prompt_len"] - 1 + 1  # the image is one position in the LLM
    assert out["pieces"] and out["pieces"] == out["generated"][:len(out["pieces"])]  # streamed = returned
    words = set(shapes.COLOURS) | set(shapes.SHAPES) | set(shapes.COUNTS) | {"left", "right"}
    assert all(a and a.split()[0].strip(".").lower() in words for a in out["answers"]), out["answers"]


def test_02_compression_attention(run):
    out = run("02_compression_attention")
    g = out["grid"]
    assert out["shape"] == [64, 1, g * g] and out["hd_shape"] == [16, 1, (2 * g) ** 2]
    assert out["sum_error"] < 1e-4 and out["hd_sum_error"] < 1e-4  # a softmax over the patches per query
    assert out["peak"] > 2  # far from uniform: the largest weight is over twice 1/K
    std = out["standard"]
    assert std["top1"] > std["area"]  # the peak is on a shape more often than a random patch would be


def test_03_efficiency(run):
    """The notebook plots the committed XLA counts; they must agree with the reduction computed
    here from the configs (the analytic count, within 0.25% of XLA's at the real size)."""
    from llava_mini_jax.flops import VICUNA_7B, real_size_config, request_flops
    total = {m: sum(request_flops(real_size_config(VICUNA_7B, m)).values()) for m in ("baseline", "mini")}
    out = run("03_efficiency")
    assert out["reduction"]["vicuna-7b/336px"] == pytest.approx(1 - total["mini"] / total["baseline"], abs=0.003)
    assert out["reduction"]["vicuna-7b/672px-hd"] > out["reduction"]["vicuna-7b/336px"]
    for mode, v in out["json_analytic"].items():
        assert out["analytic"][mode] == pytest.approx(v, rel=1e-3)
    assert all(t > 0 for t in out["ttft"].values())


def test_04_training(run):
    out = run("04_training")
    assert out["devices"] == 8
    assert out["first_step"] == 20 and out["first_stopped"] == "stop_at_step"
    assert sorted(int(s) for s in out["resumed"]) == list(range(21, 31))
    assert all(out["resumed"][s] == out["full"][s] for s in out["resumed"])  # bit-exact resume
    assert np.isfinite(list(out["full"].values())).all()
    assert out["full"]["30"] < out["full"]["1"]
    assert out["embedding_spec"] == ["tensor", "fsdp"]  # replicated over `data`
    assert out["per_device"] == [32, 16]


def test_05_video(run):
    out = run("05_video")
    t = len(out["picked"])
    assert t == 10 and out["pixels"][0] == t  # 10 s at 1 frame per second
    assert out["positions"] == out["prompt_len"] - 1 + t  # one token per frame
    assert out["sum_error"] < 1e-4
    assert out["peak_column"][-1] > out["peak_column"][0]  # the attention follows the moving circle
