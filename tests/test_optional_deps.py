"""`import llava_mini_jax` without PyAV, grain, tensorflow-datasets and array_record (the GPU
machine has none of them), and the message a feature gives when its package is missing."""
import os
import subprocess
import sys
import textwrap

import pytest

from llava_mini_jax.optional_deps import require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Blocks the optional packages as if they were not installed, then uses the inference path.
_SCRIPT = textwrap.dedent("""
    import sys
    BLOCKED = ('av', 'grain', 'tensorflow_datasets', 'array_record', 'tensorflow')
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in BLOCKED:
                raise ModuleNotFoundError('not installed: ' + name, name=name)
    sys.meta_path.insert(0, Block())
    import llava_mini_jax
    from llava_mini_jax import chat, engine, generate, load_pretrained, loading
    from llava_mini_jax.data import DataConfig, features
    from llava_mini_jax import video
    assert not any(m.split('.')[0] in BLOCKED for m in sys.modules), sorted(sys.modules)
    print('import ok')
    for what in ('video.decode_video(sys.argv[1])', 'from llava_mini_jax.data import make_train_pipeline'):
        try:
            exec(what)
        except ImportError as e:
            print('ERR', e)
""")


@pytest.fixture(scope="module")
def blocked_run(tmp_path_factory):
    clip = tmp_path_factory.mktemp("video") / "clip.mkv"
    clip.write_bytes(b"not really a video")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", _SCRIPT, str(clip)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_import_without_optional_packages(blocked_run):
    assert blocked_run.returncode == 0, blocked_run.stderr[-2000:]
    assert "import ok" in blocked_run.stdout


def test_missing_package_names_package_and_feature(blocked_run):
    errs = [line for line in blocked_run.stdout.splitlines() if line.startswith("ERR")]
    assert len(errs) == 2, blocked_run.stdout
    assert "video decoding" in errs[0] and "'av'" in errs[0] and "pip install av" in errs[0]
    assert "training data pipeline" in errs[1] and "'grain'" in errs[1]


def test_require_returns_the_module_or_names_it():
    assert require("json", "x") is sys.modules["json"]
    with pytest.raises(ImportError, match=r"feature X needs the package 'tensorflow-datasets'.*pip install "
                                          r"tensorflow-datasets"):
        require("tensorflow_datasets.no_such_submodule_h14b", "feature X")
