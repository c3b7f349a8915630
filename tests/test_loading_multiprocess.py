"""loading.py across processes: two processes on localhost (`jax.distributed`, 4 CPU devices each,
mesh (data 1, fsdp 2, tensor 4), so each process holds one half of every `fsdp`-sharded dimension)
load the same tiny model from an HF directory, from our converted JAX directory and from an orbax
(OCDBT) params checkpoint saved sharded, as a training run saves it. Each process checks its
shards against the checkpoint's values, and the bytes it read (the OS's count, `/proc/self/io`
`rchar`) against the bytes its devices hold: HF and our format read exactly the held bytes plus
metadata; orbax's chunks are the saving run's shards, so they fit the same mesh."""
from __future__ import annotations

import json
import os
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from convert.hf_to_jax import convert_hf_to_jax
from flax import linen as nn

from llava_mini_jax import LlavaMini
from llava_mini_jax.loading import abstract_params, load_pretrained
from llava_mini_jax.sharding import make_mesh
from llava_mini_jax.tiny import tiny_config, write_hf_checkpoint
from processes import free_port, run_together

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METADATA_SLACK = 64 << 10  # config.json, safetensors headers, .zarray / orbax metadata files

_WORKER = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    import numpy as np
    import tensorstore  # imported before measuring (its import reads files too)
    from llava_mini_jax import loading
    from llava_mini_jax.sharding import make_mesh

    loading.LAYERWISE_BYTES = 48 << 10  # the MLP kernels (64 KB) layer by layer, into donated global buffers

    def rchar():
        with open("/proc/self/io") as f:
            return int(next(line for line in f if line.startswith("rchar")).split()[1])

    want = dict(np.load(sys.argv[3]))
    mesh = make_mesh((1, 2, 4))
    loading.load_pretrained(sys.argv[4], mesh=mesh)  # warm-up: the first compiles read files of their own
    out = {}
    for name, path in zip(("hf", "jax", "orbax"), sys.argv[4:]):
        before = rchar()
        model, params = loading.load_pretrained(path, mesh=mesh)
        jax.block_until_ready(params)
        read = rchar() - before
        held = total = bad = 0
        for p, a in jax.tree_util.tree_leaves_with_path(params):
            key = jax.tree_util.keystr(p)
            total += a.nbytes
            seen = set()
            for s in a.addressable_shards:
                box = tuple((sl.start or 0, n if sl.stop is None else sl.stop) for sl, n in zip(s.index, a.shape))
                if box not in seen:
                    seen.add(box)
                    held += s.data.nbytes
                bad += not np.array_equal(np.asarray(s.data), want[key][s.index])
        out[name] = dict(read=read, held=held, total=total, bad=bad, devices=len(jax.local_devices()),
                         global_devices=jax.device_count())
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("mp_load")
    cfg = tiny_config("mini", vocab_size=512, hidden_size=64, num_kv_heads=4, vision_hidden_size=64)
    rng = np.random.default_rng(1)  # random values of the model's shapes (no init compile)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32),
                          nn.unbox(abstract_params(LlavaMini(cfg))))
    hf = write_hf_checkpoint(d / "hf", cfg, params)
    converted = convert_hf_to_jax(hf, d / "jax")
    # an orbax params item saved from arrays sharded over the same mesh (as a training run saves it)
    model, sharded = load_pretrained(hf, mesh=make_mesh((1, 2, 4)))
    orbax_dir = d / "orbax"
    os.makedirs(orbax_dir)
    with open(os.path.join(converted, "config.json")) as f:  # with the resolved vision_config
        (orbax_dir / "config.json").write_text(f.read())
    ocp.PyTreeCheckpointer().save(orbax_dir / "params", sharded)
    _, plain = load_pretrained(hf)
    want = d / "want.npz"
    np.savez(want, **{jax.tree_util.keystr(p): np.asarray(a) for p, a in jax.tree_util.tree_leaves_with_path(plain)})
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               XLA_FLAGS="--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0")
    outs = run_together([[sys.executable, "-c", _WORKER, f"localhost:{port}", str(i), str(want), hf, str(converted),
                          str(orbax_dir)] for i in range(2)], env, 300, "the two loading processes")
    return [json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]) for out in outs]


@pytest.mark.parametrize("source", ["hf", "jax", "orbax"])
def test_each_process_holds_the_checkpoint_values(results, source):
    for r in results:
        assert (r[source]["devices"], r[source]["global_devices"]) == (4, 8)
        assert r[source]["bad"] == 0


@pytest.mark.parametrize("source", ["hf", "jax", "orbax"])
def test_each_process_reads_only_what_its_devices_hold(results, source):
    for r in results:
        held, read, total = r[source]["held"], r[source]["read"], r[source]["total"]
        assert held < 0.7 * total  # half of every fsdp-sharded leaf; the replicated ones whole
        assert read <= held + METADATA_SLACK, r[source]
        if source != "orbax":  # orbax compresses its chunks (zstd)
            assert read >= held, r[source]
