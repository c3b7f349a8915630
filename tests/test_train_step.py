"""train.step / train.trainer: sharded steps equal one device, sharding follows the rules, gradient
accumulation equals one larger batch, frozen params stay bit-identical, non-finite steps drop.

Everything runs the tiny LLaVA-Mini of `train.tiny` on the synthetic image-question set, float32,
from the same initial params and batches. Tolerances (float32, different reduction orders):
losses rtol 1e-5, params atol 2e-6 (3 AdamW steps at lr <= 1e-3).
"""
import functools
import tempfile

import jax
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from llava_mini_jax.sharding import place_with_shardings
from train.data import make_pipeline
from train.model_setup import model_config
from train.state import axis_rules
from train.tiny import tiny_train_config, write_tiny_model
from train.trainer import build_trainer

TOTAL = 6  # schedule length shared by every test (one compiled step per configuration)
STEPS = 3
LOSS_TOL = dict(rtol=1e-5, atol=1e-6)
PARAM_TOL = dict(rtol=0, atol=2e-6)
STAGE1_OPT = {"groups": [{"name": "projector", "match": ["mm_projector"], "lr": 1e-3}], "max_grad_norm": 1.0}


@functools.lru_cache(maxsize=None)
def _model_json(mode):
    return write_tiny_model(tempfile.mkdtemp(prefix=f"tiny_{mode}_"), mode)


def config(mode="mini", mesh=(1, 1, 1), **train):
    d, f, t = mesh
    opt = STAGE1_OPT if mode == "baseline" else {}
    return tiny_train_config(_model_json(mode), mesh={"data": d, "fsdp": f, "tensor": t, "devices": d * f * t},
                             train={"max_steps": TOTAL, **train}, optimizer=opt)


@functools.lru_cache(maxsize=None)
def host_setup(mode="mini"):
    """(initial params as numpy, STEPS process-local batches) shared by all runs of a mode."""
    cfg = config(mode)
    mc, _ = model_config(cfg.model)
    trainer = build_trainer(cfg, mc, TOTAL)
    params = jax.tree.map(np.asarray, trainer.random_params(cfg.model.init_seed))
    it, _ = make_pipeline(cfg, mc, 0, 1, num_steps=STEPS)
    return params, [next(it) for _ in range(STEPS)]


def run(cfg, mode="mini", batches=None):
    """`(losses, final params numpy, trainer, final state, metrics)` of STEPS steps."""
    params, default_batches = host_setup(mode)
    mc, _ = model_config(cfg.model)
    trainer = build_trainer(cfg, mc, TOTAL)
    state = trainer.init_state(place_with_shardings(params, trainer.param_shardings, np.float32))
    losses, metrics = [], []
    for b in batches or default_batches:
        state, m = trainer.step(state, trainer.put_batch(b))
        m = jax.device_get(m)
        losses.append(float(m["loss"]))
        metrics.append(m)
    return np.asarray(losses), jax.tree.map(np.asarray, state.params), trainer, state, metrics


@functools.lru_cache(maxsize=None)
def single(mode="mini"):
    return run(config(mode), mode)


def assert_params_close(got, want, **tol):
    fg, fw = traverse_util.flatten_dict(got), traverse_util.flatten_dict(want)
    assert fg.keys() == fw.keys()
    for k in fw:
        np.testing.assert_allclose(fg[k], fw[k], err_msg="/".join(k), **(tol or PARAM_TOL))


@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 2, 2), (1, 8, 1), (1, 1, 8)])
def test_mesh_matches_single_device(mesh):
    """With every activation constraint on (the step traces under the mesh and the rules); tensor = 8 splits
    the tiny model's 4 heads unevenly (XLA pads), which must not change the numbers either."""
    losses1, params1, *_ = single()
    losses, params, trainer, state, _ = run(config(mesh=mesh))
    np.testing.assert_allclose(losses, losses1, **LOSS_TOL)
    assert_params_close(params, params1)
    assert losses[-1] < losses[0]  # it trains


def test_step_constrains_activations():
    """The lowered (2, 2, 2) step carries the rules' activation constraints: the residual stream on the
    batch axes only, heads, MLP columns and one loss chunk's logits also on `tensor`."""
    cfg = config(mesh=(2, 2, 2))
    trainer = build_trainer(cfg, model_config(cfg.model)[0], TOTAL)
    text = trainer.step_fn.lower(trainer.abstract_state, trainer.put_batch(host_setup()[1][0])).as_text()
    # 8 rows; LLM sequence 10 (one loss chunk), pre-fusion 16 + 1 + 10 = 27; width 32, 4 heads of 8, MLP 64,
    # vocabulary 64 (so the MLP and logit lines are one spec and shape), vision 17 tokens
    residual, heads, columns = '[{"data", "fsdp"}, {}, {}]', '[{"data", "fsdp"}, {}, {"tensor"}, {}]', \
        '[{"data", "fsdp"}, {}, {"tensor"}]'
    for spec, shape in [(residual, "8x10x32"), (heads, "8x10x4x8"), (columns, "8x10x64"),
                        (residual, "8x27x32"), (heads, "8x27x4x8"), (residual, "8x17x32"), (columns, "8x17x64")]:
        assert f"<@mesh, {spec}> : tensor<{shape}xf32>" in text, (spec, shape)


def test_params_and_optimizer_state_are_sharded_by_the_rules():
    *_, trainer, state, _ = run(config(mesh=(2, 2, 2)), batches=host_setup()[1][:1])
    from llava_mini_jax.loading import abstract_params
    boxed = abstract_params(trainer.model)
    want = nn.logical_to_mesh(nn.get_partition_spec(boxed), axis_rules())
    flat_want = traverse_util.flatten_dict(want)
    flat_params = traverse_util.flatten_dict(state.params)
    for path, spec in flat_want.items():
        got = flat_params[path].sharding.spec
        assert tuple(got) + (None,) * (len(spec) - len(got)) == tuple(spec) + (None,) * (len(got) - len(spec)), path
    p = state.params
    kernel = p["llm"]["decoder"]["layers"]["mlp"]["gate_proj"]["kernel"]  # [layers, embed, mlp]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (2, 32 // 2, 64 // 2)
    assert p["llm"]["embed_tokens"]["embedding"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    # Adam moments follow their param
    mu = [x for path, x in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
          if "gate_proj" in jax.tree_util.keystr(path) and "mu" in jax.tree_util.keystr(path)]
    assert mu and all(m.sharding.spec == kernel.sharding.spec for m in mu)


@pytest.mark.parametrize("reduction", ["token", "reference"])
def test_accumulation_equals_one_larger_batch(reduction):
    """4 micro-batches of 2 rows vs one batch of 8 rows, same reduction (reference: 2 rows per mean)."""
    rows = {"reference_rows": 2} if reduction == "reference" else {}
    if reduction == "token":
        losses1, params1, *_ = single()
    else:
        losses1, params1, *_ = run(config(loss_reduction=reduction, **rows))
    losses, params, *_ = run(config(grad_accum_steps=4, loss_reduction=reduction, **rows))
    np.testing.assert_allclose(losses, losses1, **LOSS_TOL)
    assert_params_close(params, params1)


def test_reductions_differ_when_rows_supervise_different_token_counts():
    """`reference` (mean of per-device means) is not the token mean: colour rows supervise 2 tokens,
    brightness rows 3."""
    losses_ref, *_ = run(config(loss_reduction="reference", reference_rows=2))
    losses_tok, *_ = single()
    assert abs(losses_ref[0] - losses_tok[0]) > 1e-4


def test_frozen_params_bit_identical_stage2():
    params0, _ = host_setup("mini")
    _, params, trainer, _, _ = single("mini")
    flat0, flat = traverse_util.flatten_dict(params0), traverse_util.flatten_dict(params)
    frozen = [p for p in flat if p not in trainer.plan.trainable]
    # no gradient path: the vision tower and (LLaVA-Mini mode, SPEC Q5) the token embedding
    assert ("llm", "embed_tokens", "embedding") in frozen and any(p[0] == "vision_tower" for p in frozen)
    assert all(p[0] == "vision_tower" or p == ("llm", "embed_tokens", "embedding") for p in frozen)
    for p in frozen:
        assert np.array_equal(flat[p], flat0[p]), p
    changed = [p for p in trainer.plan.trainable if not np.array_equal(flat[p], flat0[p])]
    # every trained param moves, the compressor's pos_embed included (SPEC D15)
    assert set(changed) == set(trainer.plan.trainable) and ("compressor", "pos_embed") in changed


def test_stage1_trains_only_the_projector():
    params0, _ = host_setup("baseline")
    losses, params, trainer, state, _ = single("baseline")
    assert "compressor" not in params and "prefusion" not in params
    flat0, flat = traverse_util.flatten_dict(params0), traverse_util.flatten_dict(params)
    for p in flat:
        same = np.array_equal(flat[p], flat0[p])
        assert same == (p[0] != "mm_projector"), p
    opt_leaves = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]]
    assert all("mm_projector" in k for k in opt_leaves if "mu" in k or "nu" in k)


def test_nonfinite_step_is_dropped_and_counted():
    params0, batches = host_setup("mini")
    bad = dict(batches[0], images=np.full_like(batches[0]["images"], np.nan))
    _, params, _, state, metrics = run(config(), batches=[bad])
    assert not metrics[0]["finite"] and int(metrics[0]["skipped"]) == 1
    assert int(state.step) == 1 and int(state.skipped) == 1
    assert_params_close(params, params0, rtol=0, atol=0)
