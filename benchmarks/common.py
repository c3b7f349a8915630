"""Shared pieces of the efficiency benchmarks (flops.py, latency.py, video_memory.py).

- Output: every figure is one JSON line on stdout (`emit`); `write_results` stores all of a run's
  figures with the machine description under `benchmarks/results/<name>.json`.
- Models at the paper's sizes: CLIP ViT-L/14-336 (`ClipVisionConfig()`), Vicuna-7B and
  Llama-3.1-8B, mlp2x_gelu projector, select layer -2 (`patch`), 4 pre-fusion layers; the
  variants the paper compares (336 px with one vision token, HD 672 px with 64) in both modes
  (`mini` = LLaVA-Mini, `baseline` = LLaVA-v1.5). A tiny stand-in of each for the `--tiny` runs.
- One request (`request_shapes`, `prompt_ids`): `prompt_tokens` text tokens (BOS, then random ids)
  with the image placeholder right after BOS; images of the variant's views.
- Device helpers: random parameters created on the device (no host copy), timing with
  `block_until_ready`, peak device memory.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import statistics
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from llava_mini_jax.config import IMAGE_TOKEN_INDEX, LlavaMiniConfig
from llava_mini_jax.flops import LLAMA31_8B, VICUNA_7B, real_size_config  # the library's real-size presets
from llava_mini_jax.loading import abstract_params
from llava_mini_jax.tiny import tiny_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
GIB = 1024 ** 3

# -- configurations -----------------------------------------------------------------------------------
LLMS = {"vicuna-7b": VICUNA_7B, "llama-3.1-8b": LLAMA31_8B, "tiny": None}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One column of the paper's efficiency table: image resolution, views per image `parts`
    (1, or r*r tiles + a global view for HD) and the LLaVA-Mini compressor size C (Q = C*C tokens)."""

    name: str
    resolution: int
    parts: int
    compressor_size: int

    @property
    def resolution_ratio(self) -> int:
        return 1 if self.parts == 1 else int(round((self.parts - 1) ** 0.5))


STANDARD = Variant("336px", 336, parts=1, compressor_size=1)
HD = Variant("672px-hd", 672, parts=5, compressor_size=8)  # 2x2 tiles of 336 + global view; 64 tokens
TINY_STANDARD = Variant("tiny", 16, parts=1, compressor_size=1)
TINY_HD = Variant("tiny-hd", 32, parts=5, compressor_size=2)

# The paper's figures (LLaVA-Mini, ICLR 2025, efficiency table: Vicuna-7B, CLIP-L/336), keyed
# (variant, mode). Latency in ms per image; memory in MB of vision-token state per image.
PAPER_TFLOPS = {("336px", "baseline"): 8.55, ("336px", "mini"): 1.96,
                ("672px-hd", "baseline"): 40.49, ("672px-hd", "mini"): 7.19}
PAPER_LATENCY_MS = {"a100": {"baseline": 113.04, "mini": 38.64}, "rtx3090": {"baseline": 198.75, "mini": 64.52}}
PAPER_MB_PER_IMAGE = {"baseline": 360.0, "mini": 0.6}
PAPER_FRAMES_IN_24GB = 10000


def model_config(llm: str, mode: str, variant: Variant = STANDARD) -> LlavaMiniConfig:
    """The LLaVA-Mini (`mode="mini"`) or LLaVA-v1.5 (`"baseline"`) config of one LLM and variant:
    the paper's setup (`flops.real_size_config`), or with `llm="tiny"` the library's tiny model
    (`tiny.tiny_config`: small enough that a forward compiles and runs in a second on CPU; GQA so
    the KV arithmetic is exercised; a 3-layer CLIP read at -2; one pre-fusion layer)."""
    if llm not in LLMS:
        raise ValueError(f"llm={llm!r}: expected one of {sorted(LLMS)}")
    kw = dict(compressor_size=variant.compressor_size, resolution_ratio=variant.resolution_ratio)
    if llm == "tiny":
        return tiny_config(mode, vocab_size=256, hidden_size=64, max_position_embeddings=8192, rms_norm_eps=1e-5,
                           pad_token_id=0, vision_layers=3, vision_select_layer=-2,
                           prefusion_layers=1, vision_tower="openai/clip-vit-large-patch14-336", **kw)
    return real_size_config(LLMS[llm], mode, **kw)


def variants(tiny: bool) -> tuple[Variant, Variant]:
    return (TINY_STANDARD, TINY_HD) if tiny else (STANDARD, HD)


def vision_tokens(cfg: LlavaMiniConfig, parts: int, frames: int = 1) -> int:
    """Tokens the LLM sees for one image (or video of `frames` frames): Q per frame in LLaVA-Mini,
    every patch of every view in LLaVA-v1.5."""
    per_frame = cfg.compressor_size ** 2 if cfg.is_mini else parts * cfg.vision.num_patches
    return per_frame * frames


def request_shapes(cfg: LlavaMiniConfig, parts: int, prompt_tokens: int, batch: int = 1, frames: int = 0,
                   pixel_dtype=jnp.bfloat16) -> dict:
    """`ShapeDtypeStruct`s of one request: `input_ids [B, prompt_tokens + 1]` (text plus the
    placeholder), `images [B, P, 3, H, W]` or, with `frames`, video `[B, T, P, 3, H, W]`."""
    v = cfg.vision
    view = (v.num_channels, v.image_size, v.image_size)
    image_shape = (batch, parts) + view if not frames else (batch, frames, parts) + view
    return dict(input_ids=jax.ShapeDtypeStruct((batch, prompt_tokens + 1), jnp.int32),
                images=jax.ShapeDtypeStruct(image_shape, pixel_dtype))


def prompt_ids(cfg: LlavaMiniConfig, prompt_tokens: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    """`[B, prompt_tokens + 1]` int32: the placeholder at position 1 (after BOS), random text ids
    (>= 3, never a pad) elsewhere."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, cfg.llm.vocab_size, size=(batch, prompt_tokens + 1)).astype(np.int32)
    ids[:, 0] = 1
    ids[:, 1] = IMAGE_TOKEN_INDEX
    return ids


# -- parameters -----------------------------------------------------------------------------------------
def abstract_param_tree(model) -> Any:
    """Params as a plain (unboxed) tree of `ShapeDtypeStruct`s; nothing is allocated."""
    return nn.unbox(abstract_params(model))


def param_count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def param_bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def _hash_uniform(shape, salt: int) -> jnp.ndarray:
    """Uniform [-1, 1) float32 of `shape` from a counter-based hash (the murmur3 finalizer of
    `index * golden + salt`): well mixed like a random generator, but integer ops that compile in
    milliseconds (threefry over ~60 parameter leaves takes many seconds to compile on CPU)."""
    h = jax.lax.iota(jnp.uint32, int(np.prod(shape))) * np.uint32(0x9E3779B1) + np.uint32(salt & 0xFFFFFFFF)
    for shift, mult in ((16, 0x85EBCA6B), (13, 0xC2B2AE35), (16, None)):
        h = h ^ (h >> np.uint32(shift))
        if mult is not None:
            h = h * np.uint32(mult)
    return ((h >> np.uint32(8)).astype(jnp.float32) * np.float32(2.0 ** -23) - 1.0).reshape(shape)


def random_params_on_device(model, seed: int = 0, std: float = 0.02):
    """Params of `model` made directly on the default device by one jitted function, so real-size
    weights never pass through host memory: norm scales 1, everything else uniform with standard
    deviation `std` (`_hash_uniform`, a different stream per leaf and seed). Timing does not depend
    on the values."""
    shapes = abstract_param_tree(model)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)

    def make():
        out = []
        for i, (path, s) in enumerate(leaves):
            if getattr(path[-1], "key", None) == "scale":
                out.append(jnp.ones(s.shape, s.dtype))
            else:
                salt = (i + 1) * 0x632BE5AB + seed * 0x27D4EB2F
                out.append((std * np.sqrt(3.0) * _hash_uniform(s.shape, salt)).astype(s.dtype))
        return jax.tree_util.tree_unflatten(treedef, out)
    return jax.jit(make)()


# -- timing and memory ------------------------------------------------------------------------------------
def block(tree):
    """Waits for every array in `tree`; returns it."""
    return jax.block_until_ready(tree)


def time_call(fn: Callable[[], Any], warmup: int = 1, repeats: int = 5, sync: Callable[[Any], Any] = block) -> dict:
    """Seconds of `fn()` (synchronised by `sync` on its result): `median_s`, `min_s`, `repeats`,
    after `warmup` untimed calls (the first compiles)."""
    for _ in range(warmup):
        sync(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def peak_device_bytes(device=None) -> Optional[int]:
    """`peak_bytes_in_use` of the device since the process started (None where the backend keeps no
    statistics, e.g. CPU). It only grows: measure in increasing order, or one point per process."""
    stats = (device or jax.devices()[0]).memory_stats()
    if not stats:
        return None
    return int(stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0)))


def planned_bytes(compiled) -> Optional[dict]:
    """XLA's buffer plan of a compiled program: argument, output, temporary and total bytes."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    args, out, temp, alias = (int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                              int(m.temp_size_in_bytes), int(m.alias_size_in_bytes))
    return {"argument_bytes": args, "output_bytes": out, "temp_bytes": temp, "alias_bytes": alias,
            "total_bytes": args + out + temp - alias}


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


# -- machine and output -------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _host_memory_gib() -> Optional[float]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    return None


def machine() -> dict:
    """What ran the benchmark: host CPU and memory, JAX backend and devices, library versions."""
    devices = jax.devices()
    d0 = devices[0]
    stats = d0.memory_stats() or {}
    info = {
        "host": platform.node(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
        "host_memory_gib": _host_memory_gib(),
        "python": platform.python_version(), "jax": jax.__version__, "backend": jax.default_backend(),
        "devices": len(devices), "device_kind": d0.device_kind,
        "device_memory_gib": round(stats["bytes_limit"] / GIB, 1) if "bytes_limit" in stats else None,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    try:
        import flax
        info["flax"] = flax.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def emit(figure: dict, sink: Optional[list] = None) -> dict:
    """Prints `figure` as one JSON line (and appends it to `sink`)."""
    print(json.dumps(figure, default=_jsonable), flush=True)
    if sink is not None:
        sink.append(json.loads(json.dumps(figure, default=_jsonable)))
    return figure


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    return str(x)


def default_out(name: str, tiny: bool) -> Optional[str]:
    """`benchmarks/results/<name>.json` for full runs; no file for `--tiny` unless asked."""
    return None if tiny else str(RESULTS / f"{name}.json")


def write_results(path: Optional[str], benchmark: str, setting: dict, results: list, **extra) -> None:
    """`{"benchmark", "machine", "setting", "results": [figures], ...}` as indented JSON at `path`."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    doc = {"benchmark": benchmark, "machine": machine(), "setting": setting, "results": results, **extra}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=_jsonable)
        f.write("\n")


def rounded(x: Optional[float], digits: int = 4) -> Optional[float]:
    """`x` to `digits` decimals (None stays None)."""
    return None if x is None else round(float(x), digits)


def significant(x: Optional[float], digits: int = 5) -> Optional[float]:
    """`x` to `digits` significant figures (None stays None): tiny and real sizes alike."""
    return None if x is None else float(f"{float(x):.{digits}g}")
