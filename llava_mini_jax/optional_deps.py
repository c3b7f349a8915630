"""Optional dependencies, imported only by the feature that needs them.

`import llava_mini_jax` (loading, generation, chat on images) needs none of PyAV, grain,
tensorflow-datasets or array_record; video decoding needs PyAV and the training data pipeline
grain (plus tensorflow-datasets / array_record for TFDS-packed data). `require` imports one of
them on first use and, when it is missing, raises an ImportError that names the package and the
feature that needs it.
"""
from __future__ import annotations

import importlib
from types import ModuleType

# import name -> pip distribution name
PIP_NAMES = {"av": "av", "grain": "grain", "tensorflow_datasets": "tensorflow-datasets",
             "array_record": "array-record"}


def require(module: str, feature: str) -> ModuleType:
    """`importlib.import_module(module)`, or ImportError naming the pip package and `feature`.

    `feature` completes "... is needed for <feature>", e.g. `"video decoding"`.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        pip = PIP_NAMES.get(top, top)
        raise ImportError(f"{feature} needs the package {pip!r} (module {module!r}), which cannot be imported "
                          f"({e}); install it with `pip install {pip}`") from e
