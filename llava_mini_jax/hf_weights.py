"""The map between HF PyTorch tensor names/layouts and this library's parameter tree.

One table (`weight_rules`) serves loading, both conversion directions and `init_from_parts`.
Each rule ties one HF tensor to one or more JAX leaves with an exact (transpose/reshape/split)
transform each way, so conversions round-trip bit for bit. Layered rules expand per layer index:
scanned params stack layers on a leading axis under `.../layers`, unscanned ones use
`.../layers_{i}`.

Layouts: HF `Linear.weight` is `[out, in]`; ours is `[in, out]`, with attention projections split
per head: q `[D, H, hd]`, o `[H, hd, D]`. The compressor's packed `in_proj_weight [3d, d]` is three
kernels `q_proj/k_proj/v_proj [d, 8, d/8]`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Optional

import numpy as np

from .array_file import Box
from .config import LlavaMiniConfig, projector_layers

Path = tuple[str, ...]

CLIP_PREFIX = "model.vision_tower.vision_tower.vision_model."


@dataclasses.dataclass(frozen=True)
class LeafLayout:
    """How one JAX leaf is cut from its HF tensor `a`, as views only (so a box of the leaf maps to
    a box of `a`, see `hf_box`):

    1. `part=(j, n)`: block `j` of `n` equal blocks along `a`'s axis 0 (packed q/k/v); else all;
    2. `perm`: `transpose(perm)` (None: unchanged);
    3. `split=(axis, heads)`: that axis of the result split into `(heads, size // heads)`.
    """

    perm: Optional[tuple[int, ...]] = None
    split: Optional[tuple[int, int]] = None
    part: Optional[tuple[int, int]] = None

    def _moved_shape(self, hf_shape: tuple) -> list:
        """The shape after steps 1 and 2."""
        shape = list(hf_shape)
        if self.part is not None:
            j, n = self.part
            if shape[0] % n:
                raise ValueError(f"axis 0 of size {shape[0]} does not split into {n} equal parts")
            shape[0] //= n
        return [shape[p] for p in self.perm] if self.perm is not None else shape

    def leaf_shape(self, hf_shape: tuple) -> tuple:
        """The leaf's shape for an HF tensor of `hf_shape` (ValueError when heads do not divide)."""
        shape = self._moved_shape(tuple(hf_shape))
        if self.split is not None:
            ax, heads = self.split
            if shape[ax] % heads:
                raise ValueError(f"an axis of size {shape[ax]} does not split into {heads} heads")
            shape[ax:ax + 1] = [heads, shape[ax] // heads]
        return tuple(shape)

    def hf_box(self, hf_shape: tuple, box: Box) -> tuple[Box, tuple]:
        """`(HF box to read, selection)` for `box` of the leaf: `select(read box) [selection]` is
        the leaf's box. The HF box covers whole heads (a box cutting head_dim reads its heads)."""
        moved = self._moved_shape(tuple(hf_shape))
        mbox, sel = [], []
        k = 0
        for ax in range(len(moved)):
            if self.split is not None and ax == self.split[0]:
                hd = moved[ax] // self.split[1]
                (h0, h1), (d0, d1) = box[k], box[k + 1]
                mbox.append((h0 * hd, h1 * hd))
                sel += [slice(None), slice(d0, d1)]
                k += 2
            else:
                mbox.append(tuple(box[k]))
                sel.append(slice(None))
                k += 1
        perm = self.perm if self.perm is not None else tuple(range(len(moved)))
        hbox: list = [None] * len(moved)
        for ax, src in enumerate(perm):
            hbox[src] = mbox[ax]
        if self.part is not None:
            off = self.part[0] * (hf_shape[0] // self.part[1])
            hbox[0] = (hbox[0][0] + off, hbox[0][1] + off)
        return tuple(hbox), tuple(sel)

    def select(self, block: np.ndarray, hf_shape: tuple, box: Box, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The leaf's `box` from `block`, the HF box `hf_box` gives: written into `out` (C-contiguous,
        the box's shape, any dtype: the cast happens in the same copy) or a new array."""
        _, sel = self.hf_box(hf_shape, box)
        want = tuple(b - a for a, b in box)
        if out is None:
            out = np.empty(want, block.dtype)
        if out.shape != want:
            raise ValueError(f"select: out has shape {out.shape}, the box {box} needs {want}")
        view = block
        if self.perm is not None:
            view = view.transpose(self.perm)
        if self.split is not None:
            ax, heads = self.split
            hd = self._moved_shape(tuple(hf_shape))[ax] // heads
            view = view.reshape(view.shape[:ax] + (-1, hd) + view.shape[ax + 1:])
        whole = all(s == slice(None) or (s.start, s.stop) == (0, n) for s, n in zip(sel, view.shape))
        if (whole and block.ndim == 2 and self.perm == (1, 0) and out.flags.c_contiguous
                and block.size >= _T_MIN_SIZE):
            _transpose_into(block, out.reshape(block.shape[::-1]))
        else:
            np.copyto(out, view[sel], casting="unsafe")
        return out

    def read(self, read_box: Callable[[Box], np.ndarray], hf_shape: tuple, box: Box,
             out: Optional[np.ndarray] = None) -> np.ndarray:
        """The leaf's `box`, reading only the HF box behind it through `read_box(hf_box)` (into
        `out` when given, see `select`)."""
        return self.select(read_box(self.hf_box(hf_shape, box)[0]), hf_shape, box, out)

    def apply(self, a: np.ndarray) -> np.ndarray:
        """The whole leaf of HF tensor `a`, C-contiguous: a view of `a` when its memory order
        already is the leaf's (see `convert.fast_layout`), else one copy."""
        shape = self.leaf_shape(a.shape)  # checks that parts and heads divide
        view = a
        if self.part is not None:
            j, n = self.part
            rows = a.shape[0] // n
            view = view[j * rows:(j + 1) * rows]
        if self.perm is not None:
            view = view.transpose(self.perm)
        return np.ascontiguousarray(view.reshape(shape))


def _transpose_into(a: np.ndarray, out: np.ndarray) -> None:
    """`out[...] = a.T` for a 2-D `a`, copied in row blocks (several times faster than numpy's one
    strided copy on large matrices; a dtype cast rides along)."""
    for i in range(0, a.shape[0], _T_ROWS):
        out[:, i:i + _T_ROWS] = a[i:i + _T_ROWS].T


_T_MIN_SIZE = 1 << 16  # smaller transposes are one numpy copy
_T_ROWS = 16


@dataclasses.dataclass(frozen=True)
class WeightRule:
    """HF tensor `hf_name` (with `{i}` for the layer) <-> JAX leaves `paths` under `stack`.

    `to_jax(hf_array) -> tuple of arrays` (one per path, `layouts[j].apply`); `to_hf(tuple of
    arrays) -> hf_array`. `layouts[j]` says how leaf j is cut from the HF tensor, so a box of a
    leaf can be read without the rest. `stack`/`num_layers` are set for per-layer tensors.
    """

    hf_name: str
    paths: tuple[Path, ...]
    to_jax: Callable[[np.ndarray], tuple]
    to_hf: Callable[[tuple], np.ndarray]
    stack: Optional[Path] = None
    num_layers: int = 0
    layouts: tuple[LeafLayout, ...] = ()


def _same(path: Path) -> tuple:
    return ((path,), (LeafLayout(),), lambda t: t[0])


def _linear_t(path: Path) -> tuple:
    """HF `[out, in]` <-> ours `[in, out]`."""
    return ((path,), (LeafLayout(perm=(1, 0)),), lambda t: np.ascontiguousarray(t[0].T))


def _heads_in(path: Path, heads: int) -> tuple:
    """HF `[heads*hd, in]` <-> ours `[in, heads, hd]`."""
    def to_hf(t):
        k = t[0]
        return np.ascontiguousarray(k.reshape(k.shape[0], -1).T)
    return ((path,), (LeafLayout(perm=(1, 0), split=(1, heads)),), to_hf)


def _heads_bias(path: Path, heads: int) -> tuple:
    """HF `[heads*hd]` <-> ours `[heads, hd]`."""
    return ((path,), (LeafLayout(split=(0, heads)),), lambda t: t[0].reshape(-1))


def _heads_out(path: Path, heads: int) -> tuple:
    """HF `[out, heads*hd]` <-> ours `[heads, hd, out]`."""
    def to_hf(t):
        k = t[0]
        return np.ascontiguousarray(k.reshape(-1, k.shape[-1]).T)
    return ((path,), (LeafLayout(perm=(1, 0), split=(0, heads)),), to_hf)


def _packed_in_proj(heads: int) -> tuple:
    """`in_proj_weight [3d, d]` <-> `q_proj/k_proj/v_proj` kernels `[d, heads, d/heads]`."""
    paths = tuple((n, "kernel") for n in ("q_proj", "k_proj", "v_proj"))

    def to_hf(t):
        return np.ascontiguousarray(np.concatenate([k.reshape(k.shape[0], -1).T for k in t], axis=0))
    return (paths, tuple(LeafLayout(perm=(1, 0), split=(1, heads), part=(j, 3)) for j in range(3)), to_hf)


def _packed_in_bias(heads: int) -> tuple:
    paths = tuple((n, "bias") for n in ("q_proj", "k_proj", "v_proj"))

    def to_hf(t):
        return np.concatenate([b.reshape(-1) for b in t])
    return (paths, tuple(LeafLayout(split=(0, heads), part=(j, 3)) for j in range(3)), to_hf)


def _apply_all(layouts: tuple) -> Callable[[np.ndarray], tuple]:
    return lambda a: tuple(layout.apply(a) for layout in layouts)


def _rule(hf_name, spec, prefix: Path = (), stack: Optional[Path] = None, num_layers: int = 0) -> WeightRule:
    paths, layouts, to_hf = spec
    paths = tuple(prefix + path for path in paths)
    return WeightRule(hf_name, paths, _apply_all(layouts), to_hf, stack, num_layers, layouts)


def _llama_layer_rules(hf_prefix: str, stack: Path, n: int, heads: int, kv_heads: int) -> list[WeightRule]:
    specs = {
        "input_layernorm.weight": _same(("input_layernorm", "scale")),
        "post_attention_layernorm.weight": _same(("post_attention_layernorm", "scale")),
        "self_attn.q_proj.weight": _heads_in(("self_attn", "q_proj", "kernel"), heads),
        "self_attn.k_proj.weight": _heads_in(("self_attn", "k_proj", "kernel"), kv_heads),
        "self_attn.v_proj.weight": _heads_in(("self_attn", "v_proj", "kernel"), kv_heads),
        "self_attn.o_proj.weight": _heads_out(("self_attn", "o_proj", "kernel"), heads),
        "mlp.gate_proj.weight": _linear_t(("mlp", "gate_proj", "kernel")),
        "mlp.up_proj.weight": _linear_t(("mlp", "up_proj", "kernel")),
        "mlp.down_proj.weight": _linear_t(("mlp", "down_proj", "kernel")),
    }
    return [_rule(f"{hf_prefix}.{{i}}.{k}", s, stack=stack, num_layers=n) for k, s in specs.items()]


def _clip_rules(cfg: LlavaMiniConfig) -> list[WeightRule]:
    v = cfg.vision
    top: Path = ("vision_tower",)
    rules = [
        _rule(CLIP_PREFIX + "embeddings.class_embedding", _same(("class_embedding",)), top),
        _rule(CLIP_PREFIX + "embeddings.patch_embedding.weight",
              ((("patch_embedding",),), (LeafLayout(perm=(1, 2, 3, 0)),),
               lambda t: np.ascontiguousarray(t[0].transpose(3, 0, 1, 2))), top),
        _rule(CLIP_PREFIX + "embeddings.position_embedding.weight", _same(("position_embedding",)), top),
    ]
    for ln in ("pre_layrnorm", "post_layernorm"):
        rules += [_rule(CLIP_PREFIX + f"{ln}.weight", _same((ln, "scale")), top),
                  _rule(CLIP_PREFIX + f"{ln}.bias", _same((ln, "bias")), top)]
    specs = {
        "layer_norm1.weight": _same(("layer_norm1", "scale")),
        "layer_norm1.bias": _same(("layer_norm1", "bias")),
        "layer_norm2.weight": _same(("layer_norm2", "scale")),
        "layer_norm2.bias": _same(("layer_norm2", "bias")),
        "mlp.fc1.weight": _linear_t(("fc1", "kernel")),
        "mlp.fc1.bias": _same(("fc1", "bias")),
        "mlp.fc2.weight": _linear_t(("fc2", "kernel")),
        "mlp.fc2.bias": _same(("fc2", "bias")),
        "self_attn.out_proj.weight": _heads_out(("out_proj", "kernel"), v.num_heads),
        "self_attn.out_proj.bias": _same(("out_proj", "bias")),
    }
    for n in ("q_proj", "k_proj", "v_proj"):
        specs[f"self_attn.{n}.weight"] = _heads_in((n, "kernel"), v.num_heads)
        specs[f"self_attn.{n}.bias"] = _heads_bias((n, "bias"), v.num_heads)
    rules += [_rule(CLIP_PREFIX + f"encoder.layers.{{i}}.{k}", s, stack=top, num_layers=v.num_layers)
              for k, s in specs.items()]
    return rules


def weight_rules(cfg: LlavaMiniConfig) -> list[WeightRule]:
    """Every tensor of an HF LLaVA-Mini (or LLaVA-v1.5) checkpoint and where it lives in our params."""
    llm = cfg.llm
    rules = [_rule("model.embed_tokens.weight", _same(("llm", "embed_tokens", "embedding")))]
    rules += _llama_layer_rules("model.layers", ("llm", "decoder"), llm.num_layers, llm.num_heads, llm.num_kv_heads)
    rules.append(_rule("model.norm.weight", _same(("llm", "norm", "scale"))))
    if not llm.tie_word_embeddings:
        rules.append(_rule("lm_head.weight", _linear_t(("llm", "lm_head"))))
    k = projector_layers(cfg.projector_type)
    for j in range(k):
        hf = "model.mm_projector" if cfg.projector_type == "linear" else f"model.mm_projector.{2 * j}"
        rules += [_rule(f"{hf}.weight", _linear_t(("mm_projector", f"linear_{j}", "kernel"))),
                  _rule(f"{hf}.bias", _same(("mm_projector", f"linear_{j}", "bias")))]
    if cfg.is_mini:
        h, c = cfg.compressor_heads, ("compressor",)
        rules += [
            _rule("model.compressor.query", _same(("query",)), c),
            _rule("model.compressor.pos_embed", _same(("pos_embed",)), c),
            _rule("model.compressor.ln_q.weight", _same(("ln_q", "scale")), c),
            _rule("model.compressor.ln_q.bias", _same(("ln_q", "bias")), c),
            _rule("model.compressor.ln_kv.weight", _same(("ln_kv", "scale")), c),
            _rule("model.compressor.ln_kv.bias", _same(("ln_kv", "bias")), c),
            _rule("model.compressor.attn.in_proj_weight", _packed_in_proj(h), c),
            _rule("model.compressor.attn.in_proj_bias", _packed_in_bias(h), c),
            _rule("model.compressor.attn.out_proj.weight", _heads_out(("out_proj", "kernel"), h), c),
            _rule("model.compressor.attn.out_proj.bias", _same(("out_proj", "bias")), c),
        ]
        rules += _llama_layer_rules("model.prefusion_layers", ("prefusion",), cfg.prefusion_layers, llm.num_heads,
                                    llm.num_kv_heads)
    rules += _clip_rules(cfg)
    return rules


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where one HF tensor goes: `leaves[j]` is the full param path of `to_jax(x)[j]`; `layer` is the
    index on the leading stacked axis (scanned layers) or None."""

    hf_name: str
    rule: WeightRule
    leaves: tuple[Path, ...]
    layer: Optional[int]


def placements(cfg: LlavaMiniConfig, scan_layers: bool = True) -> list[Placement]:
    """Every HF tensor name with its destination, expanded over layers: stacked under `layers`
    (`scan_layers=True`, a `LlavaMini(scan_layers=True)` params tree) or one `layers_{i}` each."""
    scan = scan_layers
    out = []
    for r in weight_rules(cfg):
        if r.stack is None:
            out.append(Placement(r.hf_name, r, r.paths, None))
            continue
        for i in range(r.num_layers):
            if scan:
                leaves = tuple(r.stack + ("layers",) + p for p in r.paths)
                out.append(Placement(r.hf_name.format(i=i), r, leaves, i))
            else:
                leaves = tuple(r.stack + (f"layers_{i}",) + p for p in r.paths)
                out.append(Placement(r.hf_name.format(i=i), r, leaves, None))
    return out


def is_scanned(tree: dict) -> bool:
    """True when a params tree (or a tree of shapes) stacks its layers under `layers` keys."""
    return any(k == "layers" or (isinstance(v, dict) and is_scanned(v)) for k, v in tree.items())


def _get(tree: dict, path: Path):
    for k in path:
        tree = tree[k]
    return tree


def _set(tree: dict, path: Path, value) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def hf_to_params(read: Callable[[str], np.ndarray], cfg: LlavaMiniConfig, shapes: dict,
                 dtype=None, scan_layers: Optional[bool] = None) -> dict:
    """Builds the nested params dict (numpy) from `read(hf_name) -> array`, one tensor at a time.

    `shapes` is the params tree of expected shapes (e.g. from `jax.eval_shape(model.init)`);
    every tensor is checked against it, and its layer layout is the one built (unless
    `scan_layers` says). Stacked leaves are allocated once and filled per layer.
    """
    params: dict = {}
    for pl in placements(cfg, is_scanned(shapes) if scan_layers is None else scan_layers):
        src = read(pl.hf_name)
        hint = "(does config.json match the weights?)"
        try:
            arrays = pl.rule.to_jax(src)
        except ValueError as e:  # e.g. a per-head reshape of a wrongly sized tensor
            raise ValueError(f"{pl.hf_name}: shape {tuple(src.shape)} cannot be converted ({e}) {hint}") from e
        for leaf, a in zip(pl.leaves, arrays):
            want = tuple(_get(shapes, leaf))
            got = a.shape if pl.layer is None else (want[0],) + a.shape
            if got != want:
                raise ValueError(f"{pl.hf_name}: shape {tuple(src.shape)} (as {a.shape}) does not fit param "
                                 f"{'/'.join(leaf)} of shape {want} {hint}")
            a = a if dtype is None else a.astype(dtype)
            if pl.layer is None:
                _set(params, leaf, a)
            else:
                try:
                    buf = _get(params, leaf)
                except KeyError:
                    buf = np.empty(want, a.dtype)
                    _set(params, leaf, buf)
                buf[pl.layer] = a
    return params


def params_to_hf(params: dict, cfg: LlavaMiniConfig, scan_layers: Optional[bool] = None) -> Iterator[tuple]:
    """Yields `(hf_name, numpy array)` one tensor at a time (reference names and layouts); the
    layer layout is read from `params` unless `scan_layers` says."""
    for pl in placements(cfg, is_scanned(params) if scan_layers is None else scan_layers):
        parts = []
        for leaf in pl.leaves:
            a = _get(params, leaf)
            a = a[pl.layer] if pl.layer is not None else a
            parts.append(np.asarray(a))
        yield pl.hf_name, pl.rule.to_hf(tuple(parts))
