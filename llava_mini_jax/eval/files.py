"""Small file helpers shared by the benchmark readers: JSON/JSONL/TSV loading and path checks.

Every failure names the file (and line) and says what was expected.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def require_file(path: Path, what: str) -> Path:
    """`path` if it is a file, else FileNotFoundError naming it and `what` it should hold."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: expected a file at {path}")
    return path


def require_dir(path: Path, what: str) -> Path:
    """`path` if it is a directory, else FileNotFoundError naming it."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: expected a directory at {path}")
    return path


def first_existing(candidates: Sequence[Path], what: str) -> Path:
    """The first of `candidates` that exists; FileNotFoundError listing all of them otherwise."""
    for path in candidates:
        if Path(path).exists():
            return Path(path)
    listed = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(f"{what}: none of these exist: {listed}")


def read_json(path: Path, what: str) -> Any:
    """Parsed JSON of `path`; ValueError naming the file when it is not JSON."""
    path = require_file(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: {path} is not valid JSON ({e})") from e


def read_jsonl(path: Path, what: str) -> List[Dict[str, Any]]:
    """One dict per non-empty line of `path`; ValueError naming the line that is not JSON."""
    path = require_file(path, what)
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{what}: line {number} of {path} is not valid JSON ({e})") from e
    return rows


def read_tsv(path: Path, what: str) -> List[Dict[str, str]]:
    """Rows of a tab-separated file with a header line, as dicts of strings (cells may be huge)."""
    path = require_file(path, what)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def require_keys(row: Dict[str, Any], keys: Iterable[str], where: str) -> None:
    """ValueError naming the missing keys of `row` (a question-file entry) and where it came from."""
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; the entry has {sorted(row)}")


def require_images(paths: Iterable[Optional[str]], what: str) -> None:
    """FileNotFoundError naming the first missing path (and how many are missing)."""
    missing = [p for p in paths if p is not None and not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"{what}: {len(missing)} file(s) are missing, the first is {missing[0]}")


def find_video(folder: Path, name: str, prefixes: Sequence[str] = ("",)) -> Optional[Path]:
    """The video `name` in `folder`, as given or with a known extension and/or prefix; else None.

    Video QA question files name videos without an extension (`video0`, ActivityNet's ids without
    their `v_` prefix), so the reference tries the usual extensions in turn; so does this.
    """
    for prefix in prefixes:
        for ext in ("",) + VIDEO_EXTENSIONS:
            path = Path(folder) / f"{prefix}{name}{ext}"
            if path.is_file():
                return path
    return None
