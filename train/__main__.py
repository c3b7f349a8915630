"""`llava-mini-jax train --config FILE [key=value ...]` (also `python -m train ...`).

    python -m train --config stage2 model.path=/ckpt/llava-mini data.data_path=/data/665k.json \
        data.image_folder=/data/images checkpoint.dir=/runs/stage2 train.global_batch_size=256

`--config` is a YAML/JSON file or a preset (`stage1`, `stage2`); each `section.key=value` overrides
one field (YAML values: `mesh.rules={embed: null}`, `optimizer.groups.0.lr=2e-5`, lists
`data.data_path=[a.json,b.json]`). `--print-config` shows the resolved config, `--list-keys` every
key. Exit codes: 0 done, 2 bad config, 3 non-finite loss/gradients, 143 stopped by SIGTERM after
saving a checkpoint (resume by running the same command again).
"""
from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("train")

EXIT_OK, EXIT_CONFIG, EXIT_NONFINITE, EXIT_PREEMPTED = 0, 2, 3, 143


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llava-mini-jax train", description="Train LLaVA-Mini (stage 1 or 2) on a mesh.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Presets: stage1 (projector pretraining), stage2 (instruction tuning).")
    p.add_argument("--config", help="YAML/JSON config file, or a preset name (stage1, stage2)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. train.global_batch_size=64")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--list-keys", action="store_true", help="list every config key and exit")
    return p


def _setup_logging(level: str) -> None:
    from .logging_utils import PrimaryOnly
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(PrimaryOnly())  # only process 0 logs (warnings and errors: every process)
    try:  # orbax logs every file it writes through absl at INFO
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:
        pass


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from .config import ConfigError, config_keys, load_config, to_yaml
    if args.list_keys:
        print("\n".join(config_keys()))
        return EXIT_OK
    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as e:
        print(f"llava-mini-jax train: error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.print_config:
        print(to_yaml(cfg), end="")
        return EXIT_OK
    _setup_logging(cfg.logging.level)
    from .loop import NonFiniteError, train
    try:
        result = train(cfg)
    except ConfigError as e:
        print(f"llava-mini-jax train: error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except NonFiniteError as e:
        log.error("%s", e)
        return EXIT_NONFINITE
    if result.stopped == "preempted":
        return EXIT_PREEMPTED
    log.info("done: step %d (%s), last checkpoint %s", result.step, result.stopped, result.last_checkpoint)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
