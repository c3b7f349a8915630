"""benchmarks/train_step.py and benchmarks/train_memory.py in their --tiny modes report every figure."""
import importlib.util
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _lines(capsys):
    return [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]


def test_train_step_tiny(tmp_path, capsys):
    out = tmp_path / "train_step.json"
    assert load("train_step").main(["--tiny", "--out", str(out)]) == 0
    figures = {f["figure"]: f["value"] for f in _lines(capsys)}
    assert figures["step_time_ms"] > 0 and figures["tokens_per_s"] > 0 and figures["compile_s"] > 0
    assert figures["tokens_per_step"] == 8 * 12  # LLaVA-Mini: one vision token replaces the placeholder
    assert figures["model_flops_per_step"] > 0 and figures["mfu"] is None  # no peak known for CPU
    assert 0 < figures["trainable_params"] < figures["params"]
    assert json.loads(out.read_text())["benchmark"] == "train_step"


def test_train_memory_tiny(tmp_path, capsys):
    out = tmp_path / "train_memory.json"
    assert load("train_memory").main(["--tiny", "--out", str(out)]) == 0
    rows = _lines(capsys)
    plan = [r for r in rows if r["kind"] == "plan"]
    assert [r["devices"] for r in plan] == [1, 2, 8]
    totals = [r["total_bytes"] for r in plan]
    assert totals[0] > totals[1] > totals[2]  # FSDP shards params, optimiser state and gradients
    for r in plan:
        assert r["activations_no_remat_gib"] >= r["activations_gib"]
    compiled = [r for r in rows if r["kind"] == "compiled" and "figure" not in r]
    assert [tuple(r["mesh"].values()) for r in compiled] == [(1, 1, 1), (2, 2, 2)]
    for r in compiled:  # XLA's memory_analysis next to the plan
        assert r["compiled"]["total_gib"] == r["compiled_gib"] and r["compiled_over_plan"] > 0
        assert r["compiled"]["argument_gib"] >= r["state_gib"] - 1e-3  # the state is an argument of the step
    assert compiled[1]["state_fraction_of_first_mesh"] < 0.5  # (2,2,2) shards params and AdamW state
    figures = {r["figure"]: r for r in rows if "figure" in r}
    assert figures["step_full_logits"]["compiled_full_logits_gib"] >= 0
    loss = figures["loss_full_vs_chunked"]
    assert set(loss) >= {"full_1_rows_gib", "chunked_1_rows_gib", "full_2_rows_gib", "chunked_2_rows_gib"}
    assert json.loads(out.read_text())["results"] == rows


def test_mesh_equivalence_tiny(tmp_path, capsys):
    """benchmarks/mesh_equivalence.py --tiny: a (2,2,2) mesh step equals one device's (what it
    reports is computed here, from the run)."""
    from benchmarks import mesh_equivalence
    out = tmp_path / "mesh.json"
    assert mesh_equivalence.main(["--tiny", "--out", str(out)]) == 0
    (row,) = _lines(capsys)
    assert row["mesh"] == [2, 2, 2] and row["steps"] == 1
    assert row["max_loss_rel_diff"] < 1e-5 and row["max_param_abs_diff"] < 2e-6
    assert json.loads(out.read_text())["results"] == [row]
