"""Tokenizer, processor and generation-config files that travel with a checkpoint."""
from __future__ import annotations

import fnmatch
import logging
import os
import shutil

log = logging.getLogger(__name__)

SIDE_FILE_PATTERNS = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "tokenizer.model.v*", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "chat_template.json",
    "chat_template.jinja", "generation_config.json", "preprocessor_config.json", "processor_config.json",
    "image_processor_config.json", "video_preprocessor_config.json",
)


def side_files(directory: str) -> list[str]:
    """Names of the side files directly in `directory`."""
    if not directory or not os.path.isdir(directory):
        return []
    return sorted(f for f in os.listdir(directory) if os.path.isfile(os.path.join(directory, f))
                  and any(fnmatch.fnmatch(f, p) for p in SIDE_FILE_PATTERNS))


def copy_side_files(sources: list, dst: str, only: tuple = ()) -> list[str]:
    """Copies side files from each directory of `sources` into `dst`; an earlier source wins a name.
    `only` (file names) restricts what later sources contribute, e.g. the CLIP tower's
    `preprocessor_config.json`. Returns the names copied."""
    copied: list[str] = []
    for i, src in enumerate(sources):
        for name in side_files(src):
            if name in copied or (i > 0 and only and name not in only):
                continue
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
            copied.append(name)
    log.info("copied %s", copied)
    return copied
