"""Sharded training equals one device: the mesh figures README quotes, with their command.

    python -m benchmarks.mesh_equivalence          # (8,1,1), (2,2,2), (1,8,1), (1,1,8) vs 1 device, 3 steps;
                                                   # results/mesh_equivalence.json (a few minutes, CPU)
    python -m benchmarks.mesh_equivalence --tiny   # (2,2,2), 1 step (the test suite)

The tiny LLaVA-Mini of `train.tiny` on the synthetic image-question set, float32, the same initial
params and batches on every mesh (8 simulated CPU devices unless XLA_FLAGS says otherwise). One JSON
line per mesh: the largest relative loss difference and the largest absolute parameter difference
after the steps, against the single-device run.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402  (after XLA_FLAGS: the simulated devices)
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402

from benchmarks.common import RESULTS, emit, write_results  # noqa: E402
from llava_mini_jax.sharding import place_with_shardings  # noqa: E402
from train.data import make_pipeline  # noqa: E402
from train.model_setup import model_config  # noqa: E402
from train.tiny import tiny_train_config, write_tiny_model  # noqa: E402
from train.trainer import build_trainer  # noqa: E402

TOTAL = 6  # schedule length (the steps run are fewer)


def run_mesh(model_json: str, mesh: tuple, steps: int, params=None, batches=None):
    """`(losses, params numpy, initial params, batches)` of `steps` steps on `mesh`."""
    d, f, t = mesh
    cfg = tiny_train_config(model_json, mesh={"data": d, "fsdp": f, "tensor": t, "devices": d * f * t},
                            train={"max_steps": TOTAL})
    mc, _ = model_config(cfg.model)
    trainer = build_trainer(cfg, mc, TOTAL)
    if params is None:
        params = jax.tree.map(np.asarray, trainer.random_params(cfg.model.init_seed))
        it, _ = make_pipeline(cfg, mc, 0, 1, num_steps=steps)
        batches = [next(it) for _ in range(steps)]
    state = trainer.init_state(place_with_shardings(params, trainer.param_shardings, np.float32))
    losses = []
    for b in batches:
        state, m = trainer.step(state, trainer.put_batch(b))
        losses.append(float(jax.device_get(m["loss"])))
    return np.asarray(losses), jax.tree.map(np.asarray, state.params), params, batches


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="one mesh, one step (tests)")
    ap.add_argument("--out", default=None, help="results file (default results/mesh_equivalence.json; none for --tiny)")
    args = ap.parse_args(argv)
    meshes, steps = ([(2, 2, 2)], 1) if args.tiny else ([(8, 1, 1), (2, 2, 2), (1, 8, 1), (1, 1, 8)], 3)
    model_json = write_tiny_model(tempfile.mkdtemp(prefix="mesh_eq_"), "mini")
    ref_losses, ref_params, params, batches = run_mesh(model_json, (1, 1, 1), steps)
    figures = []
    for mesh in meshes:
        losses, got, _, _ = run_mesh(model_json, mesh, steps, params, batches)
        flat_got, flat_ref = traverse_util.flatten_dict(got), traverse_util.flatten_dict(ref_params)
        emit({"benchmark": "mesh_equivalence", "mesh": list(mesh), "steps": steps,
              "max_loss_rel_diff": float(np.max(np.abs(losses - ref_losses) / np.abs(ref_losses))),
              "max_param_abs_diff": float(max(np.max(np.abs(flat_got[k] - flat_ref[k])) for k in flat_ref)),
              "losses": losses.tolist(), "single_device_losses": ref_losses.tolist()}, figures)
    path = args.out or (None if args.tiny else str(RESULTS / "mesh_equivalence.json"))
    write_results(path, "mesh_equivalence", {"model": "train.tiny mini, float32, synthetic data", "steps": steps,
                                             "meshes": [list(m) for m in meshes]}, figures,
                  command=" ".join(["python -m benchmarks.mesh_equivalence"] + argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
