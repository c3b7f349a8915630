"""All-or-nothing output directories: build in a hidden temporary sibling, then rename into place.

Safety rules of every command that writes a model directory (`check_output`):

* the output must not be, contain, or lie inside one of its sources (`--out RUN --src RUN/12`
  would replace the whole training run);
* an existing output is replaced only with `--overwrite`, only when it is a model directory (a
  `config.json` at its top) or empty, never a training run directory, and the command names
  what it will delete before it starts;
* the temporary sibling `.OUT.tmp-XXXX` is created with a lock file beside it (`.OUT.tmp-XXXX.lock`,
  `flock`ed for the command's life); the next command on the same output removes siblings whose
  lock is free (left by a killed command) and says so, and leaves those of a live command alone.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import os
import shutil
import tempfile
from typing import Iterator, Optional, Sequence

log = logging.getLogger(__name__)

_LOCK = ".lock"
_RUN_MARKERS = ("train_config.json", "run.lock", "metrics.jsonl")


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def check_not_overlapping(out: str, sources: Sequence[Optional[str]], what: str = "output") -> None:
    """ValueError when `out` is, contains, or lies inside one of `sources` (None entries ignored);
    symlinks are resolved."""
    o = _real(out)
    for src in sources:
        if not src:
            continue
        s = _real(src)
        if o == s:
            relation = "is"
        elif _inside(s, o):
            relation = "contains"
        elif _inside(o, s):
            relation = "lies inside"
        else:
            continue
        raise ValueError(f"{what} {os.path.abspath(out)} {relation} the source {os.path.abspath(src)}; writing there "
                         f"could delete or alter the source: choose another {what}, outside it")


def describe_contents(directory: str, limit: int = 8) -> str:
    """`N files, X MB: a, b, c, ...` for what `directory` holds (its top-level names)."""
    names = sorted(os.listdir(directory))
    files, size = 0, 0
    for root, _, fs in os.walk(directory):
        for f in fs:
            files += 1
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(root, f)).st_size
    shown = ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
    return f"{files} files, {size / 1e6:.1f} MB: {shown or 'nothing'}"


def check_output(out: str, overwrite: bool, sources: Sequence[Optional[str]] = (), announce: bool = True) -> str:
    """The absolute output path after the safety rules (module doc): ValueError when `out`
    overlaps a source, FileExistsError when it exists and `overwrite` is False, or it is a
    training run or not a model directory. With `overwrite` (and `announce`), logs what will be
    deleted."""
    out = os.path.abspath(os.fspath(out))
    check_not_overlapping(out, sources)
    if not os.path.lexists(out):
        return out
    if not overwrite:
        raise FileExistsError(f"output {out} already exists; pass --overwrite (overwrite=True) to replace it")
    if not os.path.isdir(out) or os.path.islink(out):
        raise FileExistsError(f"output {out} exists and is not a directory; remove it first")
    names = os.listdir(out)
    if any(m in names for m in _RUN_MARKERS) or any(n.isdigit() and os.path.isdir(os.path.join(out, n))
                                                     for n in names):
        raise FileExistsError(f"output {out} is a training run directory ({describe_contents(out)}); --overwrite "
                              "never replaces one: choose another output")
    if names and "config.json" not in names:
        raise FileExistsError(f"output {out} is not a model directory (no config.json; it holds "
                              f"{describe_contents(out)}); --overwrite only replaces a model directory: choose "
                              "another output or remove it yourself")
    if announce:
        log.warning("--overwrite: %s will be replaced once the new output is complete; it now holds %s", out,
                    describe_contents(out))
    return out


def _lock_free(lock_path: str) -> bool:
    """Whether nobody holds `lock_path` (a missing file counts as free)."""
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def clean_stale_staging(out: str) -> list[str]:
    """Removes the temporary siblings of `out` that killed commands left (their lock is free);
    returns one line per folder removed or left in place."""
    out = os.path.abspath(out)
    parent, base = os.path.dirname(out), os.path.basename(out)
    notes, live = [], False
    for tmp in sorted(glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(base)}.tmp-*"))):
        if tmp.endswith(_LOCK):
            if not os.path.exists(tmp[:-len(_LOCK)]) and _lock_free(tmp):
                with contextlib.suppress(OSError):
                    os.remove(tmp)
            continue
        if not _lock_free(tmp + _LOCK):
            live = True
            notes.append(f"{tmp} belongs to a conversion still running; left in place")
            continue
        what = describe_contents(tmp) if os.path.isdir(tmp) else "a file"
        shutil.rmtree(tmp, ignore_errors=True) if os.path.isdir(tmp) else os.remove(tmp)
        with contextlib.suppress(OSError):
            os.remove(tmp + _LOCK)
        notes.append(f"removed {tmp} ({what}), the unfinished output of a killed conversion")
    for old in sorted(glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(base)}.old-*"))):
        if live:
            continue
        if os.path.lexists(out):
            shutil.rmtree(old, ignore_errors=True)
            notes.append(f"removed {old}, the previous {base} left by a killed --overwrite")
        else:
            notes.append(f"{old}/x holds the previous {out} (a --overwrite was killed while replacing it); "
                         f"move it back with: mv {old}/x {out}")
    return notes


@contextlib.contextmanager
def staged_output(out: str, overwrite: bool = False) -> Iterator[str]:
    """Yields a fresh temporary directory next to `out`; on success it becomes `out` (replacing an
    old `out` only with `overwrite`), on any error it is deleted. `out` is never partial. Stale
    temporary siblings of earlier killed runs are cleaned first (and reported)."""
    out = check_output(out, overwrite, announce=False)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    for note in clean_stale_staging(out):
        log.warning("%s", note)
    fd, lock_path = tempfile.mkstemp(prefix=f".{os.path.basename(out)}.tmp-", suffix=_LOCK, dir=parent)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held until we are done: the next run knows this folder is live
    tmp = lock_path[:-len(_LOCK)]
    try:
        os.mkdir(tmp)  # an ordinary directory (mode from the umask), unlike mkdtemp's private one
        try:
            yield tmp
            check_output(out, overwrite, announce=False)  # someone may have created it meanwhile
            if os.path.lexists(out):
                old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=parent)
                os.rename(out, os.path.join(old, "x"))
                os.rename(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        os.remove(lock_path)
        os.close(fd)
