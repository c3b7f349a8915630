"""Training LLaVA-Mini: `llava-mini-jax train --config FILE [key=value ...]` / `python -m train`.

Modules, one concept each: `config` (the YAML/CLI config), `schedule`, `optimizer` (groups,
frozen params, AdamW), `state` (train state, shardings), `step` (loss and jitted step), `trainer`
(assembly), `model_setup` (weight sources), `data` (batches, synthetic set), `checkpointing`
(orbax), `multihost`, `logging_utils`, `loop` (`train(config)`), `tiny` (tiny configs). See
`train/README.md`.
"""
