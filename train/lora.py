"""LoRA / QLoRA in a training run (the `lora` section): the adapted model, the optimiser groups, the
initial params.

- `adapted_model(model, section)`: `llava_mini_jax.lora.lora_model` over the run's float model (the
  same instance for the same inputs, so compiled steps are reused).
- `optimizer_config(optimizer, section)`: the adapters first, in a group `lora` at `lora.lr`; every
  other param under `llm/` and `prefusion/` frozen (no gradient, no optimiser state); the config's
  groups train the rest (e.g. the projector at 2e-5 in LLaVA's recipe).
- `initial_params(...)`: the configured source's float params (placed in the float model's
  shardings), the base quantized leaf by leaf into the adapted model's shardings under QLoRA (each
  float leaf freed once quantized), and fresh adapters (`A` He-uniform, `B` zero: the adapted
  model starts at the base model's outputs).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
from flax import linen as nn
from flax import traverse_util

from llava_mini_jax import lora as llora
from llava_mini_jax import quantize as quantization
from llava_mini_jax.loading import abstract_params

from .config import LoraSection, OptimizerConfig, ParamGroup
from .model_setup import build_model, initial_params as float_params
from .state import param_shardings

# Frozen under LoRA: the base's params under llm/ and prefusion/ (everything but the adapters).
FROZEN_BASE = r"^(llm|prefusion)/(?!.*" + llora.LORA_LEAF + ")"


def lora_config(section: LoraSection) -> llora.LoraConfig:
    return llora.LoraConfig(rank=section.rank, alpha=section.alpha, dropout=section.dropout,
                            targets=tuple(section.targets))


def base_quantization(section: LoraSection) -> Optional[quantization.QuantizeConfig]:
    if section.quantize_base is None:
        return None
    return quantization.QuantizeConfig(section.quantize_base, section.group_size)


@functools.lru_cache(maxsize=16)
def adapted_model(model: nn.Module, section: LoraSection) -> nn.Module:
    """The run's model with adapters (and a quantized base under QLoRA); `model` itself when
    `section.rank` is 0."""
    if not section.enabled:
        return model
    return llora.lora_model(model, lora_config(section), base_quantization(section))


def optimizer_config(optimizer: OptimizerConfig, section: LoraSection) -> OptimizerConfig:
    """`optimizer` with the adapters' group first and the base frozen (unchanged without LoRA)."""
    if not section.enabled:
        return optimizer
    group = ParamGroup("lora", (llora.LORA_LEAF,), section.lr)
    return dataclasses.replace(optimizer, groups=(group,) + tuple(optimizer.groups),
                               freeze=tuple(optimizer.freeze) + (FROZEN_BASE,))


def initial_params(cfg, trainer, run_dir: Optional[str] = None) -> dict:
    """The adapted model's initial params in the trainer's param shardings: the float source's params
    (`model_setup.initial_params` of the float model, in its own shardings), the base quantized leaf
    by leaf under QLoRA, plus fresh adapters drawn with `model.init_seed`. `cfg`: the TrainConfig;
    `trainer`: `trainer.build_trainer`'s."""
    base_model = build_model(trainer.model.config, cfg.model)
    base = float_params(cfg.model, base_model, param_shardings(abstract_params(base_model), trainer.mesh,
                                                                trainer.rules), run_dir=run_dir)
    shardings = trainer.param_shardings
    if quantization.model_quantize_config(trainer.model) is not None:
        base = quantization.quantize_params(base, abstract_params(trainer.model), shardings, consume=True)
    flat_sh = traverse_util.flatten_dict(shardings)
    adapter_sh = traverse_util.unflatten_dict({p: s for p, s in flat_sh.items() if llora.is_adapter(p)})
    adapters = llora.adapter_init_fn(trainer.model, adapter_sh)(jax.random.key(cfg.model.init_seed))
    return llora.with_adapters(base, adapters)
