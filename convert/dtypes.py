"""The `--dtype` choices of the converters."""
from __future__ import annotations

from typing import Optional

import ml_dtypes
import numpy as np

DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
          "float16": np.dtype(np.float16)}


def parse_dtype(name: Optional[str]) -> Optional[np.dtype]:
    """`"bfloat16"` -> numpy dtype; None stays None (keep each tensor's own dtype)."""
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: expected one of {sorted(DTYPES)}")
    return DTYPES[name]
