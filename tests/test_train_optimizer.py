"""train.optimizer: parameter groups, frozen params, decay mask; AdamW + clipping equal torch."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train.config import ConfigError, OptimizerConfig, ParamGroup, ScheduleConfig
from train.optimizer import make_optimizer, model_no_gradient_params, no_gradient_params, plan_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PATHS = [("vision_tower", "layers", "q_proj", "kernel"), ("compressor", "pos_embed"), ("compressor", "query"),
         ("compressor", "ln_q", "scale"), ("mm_projector", "linear_0", "kernel"), ("mm_projector", "linear_0", "bias"),
         ("prefusion", "layers", "mlp", "up_proj", "kernel"), ("llm", "embed_tokens", "embedding"),
         ("llm", "norm", "scale"), ("llm", "lm_head")]

STAGE2 = OptimizerConfig(groups=(ParamGroup("projector", ("mm_projector",), 1e-5),
                                 ParamGroup("default", (".*",), 1e-4)),
                         max_grad_norm=0.5)
STAGE1 = OptimizerConfig(groups=(ParamGroup("projector", ("mm_projector",), 1e-3),))


NO_GRADIENT = frozenset({("vision_tower", "layers", "q_proj", "kernel"), ("llm", "embed_tokens", "embedding")})


def test_stage2_groups_and_params_without_gradient():
    plan = plan_params(PATHS, STAGE2, NO_GRADIENT)
    g = plan.groups
    assert g[("vision_tower", "layers", "q_proj", "kernel")] is None
    assert g[("llm", "embed_tokens", "embedding")] is None  # no gradient path: no state, no decay
    assert g[("mm_projector", "linear_0", "kernel")] == g[("mm_projector", "linear_0", "bias")] == "projector"
    for p in [("compressor", "query"), ("compressor", "pos_embed"), ("prefusion", "layers", "mlp", "up_proj", "kernel"),
              ("llm", "lm_head"), ("llm", "norm", "scale")]:
        assert g[p] == "default", p  # pos_embed trains as in the reference (SPEC D15)
    # decay mask as the reference: not biases, not norms
    assert not plan.decay[("mm_projector", "linear_0", "bias")]
    assert not plan.decay[("llm", "norm", "scale")] and not plan.decay[("compressor", "ln_q", "scale")]
    assert plan.decay[("llm", "lm_head")] and plan.decay[("compressor", "query")]


def test_pos_embed_freeze_is_config():
    cfg = OptimizerConfig(groups=STAGE2.groups, freeze=("^compressor/pos_embed$",))
    plan = plan_params(PATHS, cfg, NO_GRADIENT)
    assert plan.groups[("compressor", "pos_embed")] is None and plan.groups[("compressor", "query")] == "default"


def test_no_gradient_params_on_hand_built_losses():
    """stop_gradient, an unused input and a multiplication by a literal zero give no gradient path; a
    path through a scan or a slice does."""
    shapes = {"a": jax.ShapeDtypeStruct((3,), jnp.float32), "b": jax.ShapeDtypeStruct((2, 3), jnp.float32),
              "c": jax.ShapeDtypeStruct((), jnp.float32), "d": jax.ShapeDtypeStruct((4,), jnp.float32),
              "e": {"f": jax.ShapeDtypeStruct((3,), jnp.float32)}}

    def loss(p):
        carry, _ = jax.lax.scan(lambda c, row: (c + row * p["a"], None), jnp.zeros(3), p["b"])
        return (carry.sum() + jax.lax.stop_gradient(p["c"]) * p["d"][:2].sum()
                + 0.0 * jax.lax.stop_gradient(p["e"]["f"]).sum())
    assert no_gradient_params(loss, shapes) == {("c",), ("e", "f")}


@pytest.mark.parametrize("mode,tied,want", [
    ("mini", False, {"vision_tower", "llm/embed_tokens/embedding"}),
    ("mini", True, {"vision_tower"}),  # the tied LM head reaches the embedding
    ("baseline", False, {"vision_tower"}),  # raw text embeddings carry gradients
])
def test_model_params_without_gradient(mode, tied, want):
    import dataclasses
    from flax import linen as nn
    from llava_mini_jax.loading import abstract_params
    from llava_mini_jax.model import LlavaMini
    from train.tiny import tiny_model_config
    mc = tiny_model_config(mode)
    mc = dataclasses.replace(mc, llm=dataclasses.replace(mc.llm, tie_word_embeddings=tied))
    model = LlavaMini(mc)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nn.unbox(abstract_params(model)))
    got = model_no_gradient_params(model, abstract)
    vision = {p for p in got if p[0] == "vision_tower"}
    assert len(vision) == len(jax.tree.leaves(abstract["vision_tower"]))  # the whole tower
    assert {"/".join(p) for p in got - vision} | {"vision_tower"} == want


def test_stage1_trains_only_the_projector():
    plan = plan_params(PATHS, STAGE1, NO_GRADIENT)
    assert {p for p in plan.trainable} == {("mm_projector", "linear_0", "kernel"), ("mm_projector", "linear_0", "bias")}


def test_freeze_and_errors():
    cfg = OptimizerConfig(groups=STAGE2.groups, freeze=("^llm/",))
    plan = plan_params(PATHS, cfg)
    assert plan.groups[("llm", "lm_head")] is None and plan.groups[("compressor", "query")] == "default"
    with pytest.raises(ConfigError, match="no parameter is trainable"):
        plan_params(PATHS, OptimizerConfig(groups=(ParamGroup("x", ("nothing",), 1.0),)))
    with pytest.raises(ConfigError, match="bad regex"):
        plan_params(PATHS, OptimizerConfig(groups=(ParamGroup("x", ("(",), 1.0),)))


def test_adamw_groups_clipping_schedule_equal_torch():
    """Several updates of clip -> per-group AdamW (decay mask) -> warmup-cosine equal torch.optim.AdamW
    + clip_grad_norm_ + get_cosine_schedule_with_warmup on the same params and grads (1e-6)."""
    rng = np.random.default_rng(0)
    paths = [("mm_projector", "linear_0", "kernel"), ("mm_projector", "linear_0", "bias"), ("llm", "lm_head"),
             ("llm", "norm", "scale")]
    shapes = {paths[0]: (4, 3), paths[1]: (3,), paths[2]: (3, 5), paths[3]: (3,)}
    cfg = OptimizerConfig(groups=STAGE2.groups, weight_decay=0.1, max_grad_norm=0.5)
    sched = ScheduleConfig(warmup_ratio=0.3)
    total = 6
    plan = plan_params(paths, cfg)
    tx, _ = make_optimizer(cfg, sched, plan, total)
    init = {p: rng.normal(size=s).astype(np.float32) for p, s in shapes.items()}
    nest = lambda flat: {"mm_projector": {"linear_0": {"kernel": flat[paths[0]], "bias": flat[paths[1]]}},  # noqa: E731
                         "llm": {"lm_head": flat[paths[2]], "norm": {"scale": flat[paths[3]]}}}
    params = jax.tree.map(jnp.asarray, nest(init))
    state = tx.init(params)
    update = jax.jit(lambda g, s, p: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)))
    tparams = {p: torch.nn.Parameter(torch.tensor(a)) for p, a in init.items()}
    groups = [{"params": [tparams[paths[0]]], "lr": 1e-5, "weight_decay": 0.1},
              {"params": [tparams[paths[1]]], "lr": 1e-5, "weight_decay": 0.0},
              {"params": [tparams[paths[2]]], "lr": 1e-4, "weight_decay": 0.1},
              {"params": [tparams[paths[3]]], "lr": 1e-4, "weight_decay": 0.0}]
    topt = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)
    tsched = transformers.get_cosine_schedule_with_warmup(topt, sched.warmup(total), total)
    for step in range(total):
        grads = {p: (rng.normal(size=s) * (3.0 if step % 2 else 0.1)).astype(np.float32) for p, s in shapes.items()}
        params, state = update(jax.tree.map(jnp.asarray, nest(grads)), state, params)
        for p in paths:
            tparams[p].grad = torch.tensor(grads[p])
        torch.nn.utils.clip_grad_norm_(list(tparams.values()), 0.5)
        topt.step()
        tsched.step()
        proj = params["mm_projector"]["linear_0"]
        ours = {paths[0]: proj["kernel"], paths[1]: proj["bias"],
                paths[2]: params["llm"]["lm_head"], paths[3]: params["llm"]["norm"]["scale"]}
        for p in paths:
            np.testing.assert_allclose(np.asarray(ours[p]), tparams[p].detach().numpy(), rtol=1e-6, atol=1e-6,
                                       err_msg=f"step {step} {p}")


def test_frozen_params_have_no_optimizer_state():
    cfg = STAGE1
    paths = [("mm_projector", "linear_0", "kernel"), ("llm", "lm_head")]
    plan = plan_params(paths, cfg)
    tx, _ = make_optimizer(cfg, ScheduleConfig(), plan, 10)
    trainable = {"mm_projector": {"linear_0": {"kernel": jnp.zeros((4, 3))}}}
    state = tx.init(trainable)
    sizes = [x.size for x in jax.tree.leaves(state)]
    assert sum(sizes) == 2 * 12 + 2  # mu, nu of the projector kernel, the Adam and schedule counts; nothing else
