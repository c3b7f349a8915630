"""`llava-mini-jax train --config FILE [key=value ...]` (also `python -m train ...`).

    python -m train --config stage2 model.path=/ckpt/llava-mini data.data_path=/data/665k.json \
        data.image_folder=/data/images checkpoint.dir=/runs/stage2 train.global_batch_size=256

`--config` is a YAML/JSON file or a preset (`stage1`, `stage2`); each `section.key=value` overrides
one field (YAML values: `mesh.rules={embed: null}`, `optimizer.groups.0.lr=2e-5`, lists
`data.data_path=[a.json,b.json]`). `--print-config` shows the resolved config, `--list-keys` every
key. Exit codes: 0 done, 1 another error, 2 bad config (or a resume whose config the run directory's
does not allow, or a missing file), 3 non-finite loss/gradients, 4 bad data (no supervised tokens),
5 the run directory is in use by another run, 130 / 143 stopped by Ctrl-C / SIGTERM after saving a
checkpoint (resume by running the same command again). Errors print one line; `--debug` (or
`LLAVA_MINI_JAX_DEBUG=1`) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("train")

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_NONFINITE, EXIT_DATA, EXIT_BUSY = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED, EXIT_PREEMPTED = 130, 143
PROG = "llava-mini-jax train"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llava-mini-jax train", description="Train LLaVA-Mini (stage 1 or 2) on a mesh.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Presets: stage1 (projector pretraining), stage2 (instruction tuning).")
    p.add_argument("--config", help="YAML/JSON config file, or a preset name (stage1, stage2)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. train.global_batch_size=64")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--list-keys", action="store_true", help="list every config key and exit")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an error (also: environment variable LLAVA_MINI_JAX_DEBUG=1)")
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
    from llava_mini_jax.user_errors import debug_requested
    debug = args.debug or debug_requested()
    try:
        return _main(args)
    except Exception as e:  # noqa: BLE001  one line per error unless --debug
        if debug:
            raise
        return _report(e)


def _report(e: Exception) -> int:
    from llava_mini_jax.user_errors import report
    from .config import ConfigError
    from .loop import DataError, NonFiniteError
    from .run_lock import RunDirectoryBusy
    print(report(PROG, e, (NonFiniteError, DataError, RunDirectoryBusy)), file=sys.stderr)
    for kind, code in ((ConfigError, EXIT_CONFIG), (FileNotFoundError, EXIT_CONFIG), (NonFiniteError, EXIT_NONFINITE),
                       (DataError, EXIT_DATA), (RunDirectoryBusy, EXIT_BUSY)):
        if isinstance(e, kind):
            return code
    return EXIT_ERROR


def _main(args) -> int:
    from .config import config_keys, load_config, to_yaml
    if args.list_keys:
        print("\n".join(config_keys()))
        return EXIT_OK
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return EXIT_OK
    _setup_logging(cfg.logging.level)
    from .loop import train
    result = train(cfg)
    if result.stopped == "preempted":
        return EXIT_PREEMPTED
    if result.stopped == "interrupted":
        return EXIT_INTERRUPTED
    log.info("done: step %d (%s), last checkpoint %s", result.step, result.stopped, result.last_checkpoint)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
