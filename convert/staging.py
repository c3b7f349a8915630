"""All-or-nothing output directories: build in a hidden temporary sibling, then rename into place."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator


def check_output(out: str, overwrite: bool) -> str:
    """The absolute output path; FileExistsError when it exists and `overwrite` is False."""
    out = os.path.abspath(os.fspath(out))
    if os.path.lexists(out) and not overwrite:
        raise FileExistsError(f"output {out} already exists; pass --overwrite (overwrite=True) to replace it")
    if os.path.lexists(out) and not os.path.isdir(out):
        raise FileExistsError(f"output {out} exists and is not a directory; remove it first")
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged_output(out: str, overwrite: bool = False) -> Iterator[str]:
    """Yields a fresh temporary directory next to `out`; on success it becomes `out` (replacing an
    old `out` only with `overwrite`), on any error it is deleted. `out` is never partial."""
    out = check_output(out, overwrite)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield tmp
        check_output(out, overwrite)  # someone may have created it meanwhile
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
