"""Image preprocessing: loading, square padding, HD splitting and CLIP pixels.

What the model receives per image is a float32 array ``[P, 3, H, W]`` of
CLIP-normalised pixels, with ``P = 1`` or ``P = N*N + 1`` parts for a
resolution ratio ``N > 1`` (``N*N`` row-major blocks, then the whole image).

The steps follow the reference (SPEC part B §6), which runs
``PIL.Image.open(f).convert("RGB")``, optionally ``expand2square``, then
``CLIPImageProcessor`` of transformers 4.43:

1. resize (PIL bicubic, uint8) so the short side is ``shortest_edge`` and the
   long side ``int(shortest_edge * long / short)`` (truncated);
2. centre crop ``crop_height x crop_width`` at ``((h - ch) // 2, (w - cw) // 2)``;
3. ``x = float32(uint8 * rescale_factor)`` with the product in float64;
4. ``(x - mean) / std`` in float32; HWC -> CHW.

This module reimplements those steps with PIL and NumPy (no transformers),
bit-exactly. One deliberate difference from transformers 5: its
``convert_rgb`` composites onto white any image whose PIL ``info`` still
holds a ``transparency`` entry (``Image.convert("RGB")`` of a palette image
with a transparent index keeps one). transformers 4.43, which the reference
pins, does not, and neither do we: transparency is ignored everywhere.

High resolution (``resolution_ratio`` N > 1) with ``image_aspect_ratio="pad"``
has two orders in the reference, both available through ``mode``:

* ``"inference"`` (run_llava_mini, model_vqa_loader): split the raw image, then
  pad each part to a square separately;
* ``"train"`` (``LazySupervisedDataset.__getitem__``): pad the whole image to a
  square first, then split the square (no further padding).

Without padding the two orders coincide.

Pixels can also stay uint8 ``[P, H, W, 3]`` (``as_uint8=True``: steps 1-2 only, a quarter of the
bytes) and be normalised on the accelerator by ``pixels_from_uint8``, a lookup in the
``normalization_table`` that steps 3-4 give for each of the 256 values: the same float32 numbers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from typing import IO, Any, Mapping, Sequence, Union

import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

ImageLike = Union[str, os.PathLike, IO[bytes], Image.Image]

# CLIP's normalisation constants (openai/clip-vit-large-patch14-336).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_MODES = ("inference", "train")


@dataclasses.dataclass(frozen=True)
class ImageProcessorConfig:
    """The parts of an HF ``preprocessor_config.json`` that CLIP processing uses.

    The default is openai/clip-vit-large-patch14-336 (what LLaVA-Mini uses), so
    nothing needs downloading.

    Attributes:
      shortest_edge: target length of the short side after resizing.
      crop_height, crop_width: centre-crop size (the output ``H, W``).
      resample: PIL resampling filter id (3 = bicubic).
      rescale_factor: multiplies the uint8 values (1/255).
      image_mean, image_std: per-channel normalisation (RGB order).
      do_resize, do_center_crop, do_rescale, do_normalize: the processor's
        switches; all on for CLIP.
    """

    shortest_edge: int = 336
    crop_height: int = 336
    crop_width: int = 336
    resample: int = int(Image.Resampling.BICUBIC)
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True

    def __post_init__(self):
        for name in ("shortest_edge", "crop_height", "crop_width"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"ImageProcessorConfig.{name} must be a positive int, got {value!r}")
        for name in ("image_mean", "image_std"):
            if len(getattr(self, name)) != 3:
                raise ValueError(
                    f"ImageProcessorConfig.{name} must have 3 (RGB) values, got {getattr(self, name)!r}"
                )
        if any(s == 0 for s in self.image_std):
            raise ValueError(f"ImageProcessorConfig.image_std has a zero: {self.image_std!r}")

    @property
    def pad_fill(self) -> tuple[int, int, int]:
        """The reference's square-padding colour: ``int(m * 255)`` per channel, (122, 116, 104) for CLIP."""
        return tuple(int(m * 255) for m in self.image_mean)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ImageProcessorConfig":
        """Reads an HF ``preprocessor_config.json`` dict.

        ``size`` may be an int (transformers reads it as the shortest edge for
        CLIP) or ``{"shortest_edge": s}``; ``crop_size`` an int or
        ``{"height": h, "width": w}``. Missing keys take the CLIP-L/336 default.
        """
        defaults = cls()
        kwargs: dict[str, Any] = {}
        if "size" in d:
            size = d["size"]
            if isinstance(size, Mapping):
                if "shortest_edge" not in size:
                    raise ValueError(
                        f"preprocessor config 'size' must be an int or {{'shortest_edge': int}}, got {size!r}"
                    )
                size = size["shortest_edge"]
            kwargs["shortest_edge"] = size
        if "crop_size" in d:
            crop = d["crop_size"]
            if isinstance(crop, Mapping):
                if not {"height", "width"} <= set(crop):
                    raise ValueError(
                        f"preprocessor config 'crop_size' must be an int or {{'height', 'width'}}, got {crop!r}"
                    )
                kwargs["crop_height"], kwargs["crop_width"] = crop["height"], crop["width"]
            else:
                kwargs["crop_height"] = kwargs["crop_width"] = crop
        for key in ("resample", "rescale_factor", "do_resize", "do_center_crop", "do_rescale", "do_normalize"):
            if key in d:
                kwargs[key] = d[key]
        for key in ("image_mean", "image_std"):
            if key in d:
                kwargs[key] = tuple(float(v) for v in d[key])
        return dataclasses.replace(defaults, **kwargs)

    @classmethod
    def from_json(cls, path: Union[str, os.PathLike]) -> "ImageProcessorConfig":
        """Reads ``preprocessor_config.json`` (a file, or a directory holding one)."""
        path = pathlib.Path(path)
        if path.is_dir():
            path = path / "preprocessor_config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no preprocessor config at {str(path)!r}")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"preprocessor config {str(path)!r} is not valid JSON: {e}") from e
        if not isinstance(d, Mapping):
            raise ValueError(f"preprocessor config {str(path)!r} must hold a JSON object, got {type(d).__name__}")
        return cls.from_dict(d)


DEFAULT_CONFIG = ImageProcessorConfig()


def load_image(image: ImageLike) -> Image.Image:
    """Opens an image and converts it to RGB exactly as the reference does.

    ``Image.convert("RGB")`` semantics (PIL's): ``L`` is replicated, ``RGBA``
    and ``LA`` drop alpha without compositing, ``P`` maps through the palette
    (transparency ignored), ``I;16`` is clipped to 0..255 (not rescaled),
    ``CMYK`` uses PIL's naive formula.

    An animated image (GIF, APNG, WebP, multi-page TIFF) gives its current frame (the first, for
    a file) and a logged warning that says which frame of how many was used. An image larger than
    PIL's decompression-bomb limit is a ValueError naming it.

    Args:
      image: a path, a binary file object, or a PIL image (converted if not RGB).
    Returns:
      a PIL image in mode ``RGB``, fully loaded.
    """
    if isinstance(image, Image.Image):
        _note_frames(image, "the given PIL image")
        return image if image.mode == "RGB" else image.convert("RGB")
    name = repr(str(image)) if isinstance(image, (str, os.PathLike)) else repr(image)
    if isinstance(image, (str, os.PathLike)) and not os.path.isfile(image):
        raise FileNotFoundError(f"image file not found: {name}")
    try:
        with Image.open(image) as img:
            _note_frames(img, name)
            return img.convert("RGB")
    except Image.DecompressionBombError as e:
        raise ValueError(f"image {name} is too large to decode safely ({e}); the limit is PIL's "
                         f"Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS} (raise it only for files you trust)") from None
    except UnidentifiedImageError as e:
        raise ValueError(f"cannot identify image {name}: not an image or unsupported format") from e
    except OSError as e:  # truncated or otherwise undecodable data
        raise ValueError(f"cannot decode image {name}: {e}") from e


def _note_frames(img: Image.Image, name: str) -> None:
    """Warns that only one frame of an animated image is used, naming which."""
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        log.warning("image %s is animated (%d frames); using frame %d (0-based) only", name, frames, img.tell())


def expand2square(img: Image.Image, fill: Sequence[int]) -> Image.Image:
    """Pads a W x H image to a square of side max(W, H), content centred.

    W > H: pasted at ``(0, (W - H) // 2)``; H > W: at ``((H - W) // 2, 0)``.
    A square image is returned unchanged (the same object, as the reference).
    """
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    canvas = Image.new(img.mode, (side, side), tuple(fill))
    canvas.paste(img, ((side - width) // 2, (side - height) // 2))
    return canvas


def split_image(img: Image.Image, n: int) -> list[Image.Image]:
    """Splits into n*n blocks of (W // n, H // n) plus the whole image.

    Blocks are row-major (row i over height, column j over width); block (i, j)
    is the crop ``(j*bw, i*bh, (j+1)*bw, (i+1)*bh)``. Remainder columns/rows are
    dropped from the blocks. ``n = 1`` gives ``[img]``.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"resolution_ratio must be a positive int, got {n!r}")
    if n == 1:
        return [img]
    width, height = img.size
    bw, bh = width // n, height // n
    if bw == 0 or bh == 0:
        raise ValueError(f"image of size {width}x{height} (WxH) is too small to split into {n}x{n} blocks")
    blocks = [img.crop((j * bw, i * bh, (j + 1) * bw, (i + 1) * bh)) for i in range(n) for j in range(n)]
    return blocks + [img]


def resize_and_crop(img: Image.Image, cfg: ImageProcessorConfig = DEFAULT_CONFIG) -> np.ndarray:
    """The uint8 stage of CLIP processing: short-side resize then centre crop.

    Args:
      img: an RGB PIL image (other modes are converted as by ``load_image``).
    Returns:
      uint8 ``[crop_height, crop_width, 3]`` (HWC); the raw image's size if both
      switches are off.
    """
    img = load_image(img)
    if cfg.do_resize:
        width, height = img.size
        short, long = min(width, height), max(width, height)
        new_long = int(cfg.shortest_edge * long / short)
        size = (cfg.shortest_edge, new_long) if width <= height else (new_long, cfg.shortest_edge)
        img = img.resize(size, resample=Image.Resampling(cfg.resample))
    pixels = np.asarray(img, dtype=np.uint8)
    if cfg.do_center_crop:
        height, width = pixels.shape[:2]
        if height < cfg.crop_height or width < cfg.crop_width:
            raise ValueError(
                f"image of size {width}x{height} (WxH) is smaller than the crop "
                f"{cfg.crop_width}x{cfg.crop_height}; padding crops are not supported"
            )
        top, left = (height - cfg.crop_height) // 2, (width - cfg.crop_width) // 2
        pixels = pixels[top : top + cfg.crop_height, left : left + cfg.crop_width]
    return np.ascontiguousarray(pixels)


def normalize(pixels: np.ndarray, cfg: ImageProcessorConfig = DEFAULT_CONFIG) -> np.ndarray:
    """uint8 ``[..., H, W, 3]`` -> float32 ``[..., 3, H, W]`` (rescale, normalise, to CHW).

    Rescale in float64 then cast to float32; ``(x - mean) / std`` in float32,
    as transformers does.
    """
    x = pixels.astype(np.float64)
    if cfg.do_rescale:
        x = x * cfg.rescale_factor
    x = x.astype(np.float32)
    if cfg.do_normalize:
        x = (x - np.asarray(cfg.image_mean, np.float32)) / np.asarray(cfg.image_std, np.float32)
    return np.moveaxis(x, -1, -3)


def normalization_table(cfg: ImageProcessorConfig = DEFAULT_CONFIG) -> np.ndarray:
    """float32 ``[3, 256]``: ``normalize`` of every uint8 value, per channel (RGB)."""
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # [1, 256, 3]: H=1, W=256
    return np.ascontiguousarray(normalize(ramp, cfg)[:, 0, :])


def pixels_from_uint8(pixels: jnp.ndarray, table: jnp.ndarray) -> jnp.ndarray:
    """``normalize`` on the device: uint8 ``[..., H, W, 3]`` -> float32 ``[..., 3, H, W]`` by looking
    each value up in ``table`` (``normalization_table``, ``[3, 256]``), so the numbers are exactly the
    host's."""
    x = pixels.astype(jnp.int32)
    return jnp.stack([table[c][x[..., c]] for c in range(3)], axis=-3)


def clip_preprocess(img: Image.Image, cfg: ImageProcessorConfig = DEFAULT_CONFIG) -> np.ndarray:
    """CLIPImageProcessor (transformers 4.43) on one image, bit-exact: float32 ``[3, H, W]``.

    No compositing of palette transparency (transformers 5 composites; see the
    module docstring).
    """
    return normalize(resize_and_crop(img, cfg), cfg)


def image_parts(
    img: ImageLike,
    image_aspect_ratio: str = "pad",
    resolution_ratio: int = 1,
    cfg: ImageProcessorConfig = DEFAULT_CONFIG,
    mode: str = "inference",
) -> list[Image.Image]:
    """The PIL images handed to the CLIP processor: 1 or N*N+1 parts.

    See ``process_image`` for the arguments; useful for inspecting HD splits.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    img = load_image(img)
    pad = image_aspect_ratio == "pad"
    if pad and mode == "train":
        return split_image(expand2square(img, cfg.pad_fill), resolution_ratio)
    parts = split_image(img, resolution_ratio)
    return [expand2square(p, cfg.pad_fill) for p in parts] if pad else parts


def process_image(
    img: ImageLike,
    image_aspect_ratio: str = "pad",
    resolution_ratio: int = 1,
    cfg: ImageProcessorConfig = DEFAULT_CONFIG,
    mode: str = "inference",
    as_uint8: bool = False,
) -> np.ndarray:
    """One image -> the model's pixels, float32 ``[P, 3, H, W]`` (uint8 ``[P, H, W, 3]``, resized and
    cropped but not normalised, with ``as_uint8``: see ``pixels_from_uint8``).

    Args:
      img: a path, file object or PIL image (converted to RGB by ``load_image``).
      image_aspect_ratio: ``"pad"`` pads to a square with ``cfg.pad_fill``; any
        other value (``"square"``, the reference's training default) does not pad.
      resolution_ratio: N; ``P = 1`` for N = 1, else ``N*N + 1``.
      cfg: CLIP processing settings.
      mode: ``"inference"`` (split the raw image, pad each part) or ``"train"``
        (pad the whole image, then split). Identical unless padding with N > 1.
    """
    parts = image_parts(img, image_aspect_ratio, resolution_ratio, cfg, mode)
    if as_uint8:
        return np.stack([resize_and_crop(p, cfg) for p in parts])
    return np.stack([clip_preprocess(p, cfg) for p in parts])


def process_images(
    images: Sequence[ImageLike],
    image_aspect_ratio: str = "pad",
    resolution_ratio: int = 1,
    cfg: ImageProcessorConfig = DEFAULT_CONFIG,
    mode: str = "inference",
) -> np.ndarray:
    """A batch of images -> float32 ``[B, P, 3, H, W]`` (``process_image`` on each)."""
    if len(images) == 0:
        raise ValueError("process_images needs at least one image, got an empty sequence")
    return np.stack([process_image(im, image_aspect_ratio, resolution_ratio, cfg, mode) for im in images])
