"""Tests for llava_mini_jax.image_processing.

References: the reference's own outputs in fixtures/pixels (uint8 PNGs after
resize + crop, PIL-level parts, normalised floats, mode conversions) and
transformers' CLIPImageProcessor built here from the fixture configs.
Tolerances: uint8 images and mode conversions exact; floats at atol 1e-6 (and
the normalisation LUT exact), transformers parity exact.
"""

import dataclasses
import io
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from llava_mini_jax import image_processing as ip

PIXELS = pathlib.Path(__file__).parent / "fixtures" / "pixels"
CLIP16_CONFIG = pathlib.Path(__file__).parent / "fixtures" / "baseline" / "hf" / "clip" / "preprocessor_config.json"
INDEX = json.loads((PIXELS / "pixels_index.json").read_text())
IMAGES = {name: PIXELS / meta["file"] for name, meta in INDEX["images"].items()}


@pytest.fixture(scope="module")
def npz():
    with np.load(PIXELS / "pixels.npz") as z:
        return {k: z[k] for k in z.files}


def _parts_for_png(png_name):
    """Maps an expected PNG name to the image part it shows."""
    stem, *variant = png_name[: -len(".png")].split(".")
    src = IMAGES[stem]
    if variant == ["pad"]:
        return ip.image_parts(src, "pad", 1)[0]
    if variant == ["square"]:
        return ip.image_parts(src, "square", 1)[0]
    # hd2.pad.{infer,train}.partK or hd2.square.partK
    part = int(variant[-1][len("part") :])
    if variant[1] == "pad":
        mode = {"infer": "inference", "train": "train"}[variant[2]]
        return ip.image_parts(src, "pad", 2, mode=mode)[part]
    return ip.image_parts(src, "square", 2)[part]


@pytest.mark.parametrize("png_name", INDEX["expected_png"])
def test_uint8_stage_matches_reference_png(png_name):
    expected = np.asarray(Image.open(PIXELS / "expected" / png_name).convert("RGB"))
    got = ip.resize_and_crop(_parts_for_png(png_name))
    assert got.dtype == np.uint8 and got.shape == (336, 336, 3)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", [n for n, m in INDEX["images"].items() if m["mode"] != "RGB"])
def test_load_image_mode_conversion(npz, name):
    img = ip.load_image(IMAGES[name])
    assert img.mode == "RGB"
    assert img.size == tuple(INDEX["images"][name]["size_wh"])
    np.testing.assert_array_equal(np.asarray(img), npz[f"{name}.rgb"])


def test_load_image_i16_clips_rather_than_rescales():
    with Image.open(IMAGES["i16_64x40"]) as raw:
        raw16 = np.asarray(raw).astype(np.int64)
    rgb = np.asarray(ip.load_image(IMAGES["i16_64x40"]))
    assert raw16.max() > 255
    np.testing.assert_array_equal(rgb[..., 0], np.clip(raw16, 0, 255))


@pytest.mark.parametrize("name", ["rgb_97x61", "pal_120x80"])
def test_pil_level_parts_match_reference(npz, name):
    np.testing.assert_array_equal(np.asarray(ip.image_parts(IMAGES[name], "pad", 1)[0]), npz[f"{name}.pad.padded"])
    meta = INDEX["images"][name]["hd2_pad"]
    for mode, tag in (("inference", "infer"), ("train", "train")):
        parts = ip.image_parts(IMAGES[name], "pad", 2, mode=mode)
        assert [list(p.size) for p in parts] == meta[f"{tag}_part_sizes_wh"]
        for k, part in enumerate(parts):
            np.testing.assert_array_equal(np.asarray(part), npz[f"{name}.hd2.pad.{tag}.part{k}.pre"])


@pytest.mark.parametrize("name", ["rgb_97x61", "pal_120x80"])
def test_normalised_float_tensor(npz, name):
    got = ip.process_image(IMAGES[name], "pad", 1)
    assert got.dtype == np.float32 and got.shape == (1, 3, 336, 336)
    np.testing.assert_allclose(got[0], npz[f"{name}.pad.float"], rtol=0, atol=1e-6)
    # and it is the per-channel lookup of the uint8 image
    u8 = np.asarray(Image.open(PIXELS / "expected" / f"{name}.pad.png").convert("RGB"))
    lut = npz["normalisation_lut"]
    np.testing.assert_array_equal(got[0], np.stack([lut[c][u8[..., c]] for c in range(3)]))


def test_normalisation_lut_exact(npz):
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)[None]  # [1, 256, 3] HWC
    got = ip.normalize(ramp)[:, 0, :]  # [3, 256]
    np.testing.assert_array_equal(got, npz["normalisation_lut"])


@pytest.mark.parametrize("name", ["rgb_97x61", "pal_120x80"])
def test_hd_shapes_and_orders(name):
    infer = ip.process_image(IMAGES[name], "pad", 2, mode="inference")
    train = ip.process_image(IMAGES[name], "pad", 2, mode="train")
    assert infer.shape == train.shape == (5, 3, 336, 336)
    assert not np.array_equal(infer, train)
    np.testing.assert_array_equal(infer[4], train[4])  # whole image: padded either way
    square_infer = ip.process_image(IMAGES[name], "square", 2, mode="inference")
    square_train = ip.process_image(IMAGES[name], "square", 2, mode="train")
    np.testing.assert_array_equal(square_infer, square_train)


def test_process_images_batches():
    batch = ip.process_images([IMAGES["rgb_97x61"], IMAGES["gray_50x50"]], "pad", 2)
    assert batch.shape == (2, 5, 3, 336, 336) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[1], ip.process_image(IMAGES["gray_50x50"], "pad", 2))
    with pytest.raises(ValueError, match="empty"):
        ip.process_images([])


# --- parity with transformers' CLIPImageProcessor -------------------------------------------------


def _hf_processor(config_path):
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)
    return cls(**json.loads(config_path.read_text()))


@pytest.fixture(scope="module", params=["clip336", "clip16"])
def processors(request):
    path = PIXELS / "preprocessor_config.json" if request.param == "clip336" else CLIP16_CONFIG
    return ip.ImageProcessorConfig.from_json(path), _hf_processor(path)


@pytest.mark.parametrize("aspect", ["pad", "square"])
@pytest.mark.parametrize("name", list(IMAGES))
def test_matches_transformers_clip_processor(processors, name, aspect):
    cfg, hf = processors
    part = ip.image_parts(IMAGES[name], aspect, 1, cfg)[0]
    ours = ip.clip_preprocess(part, cfg)
    theirs = np.asarray(hf(part, return_tensors="np")["pixel_values"][0])
    assert ours.shape == (3, cfg.crop_height, cfg.crop_width)
    if name == "pal_120x80" and aspect == "square":
        # Documented exception: transformers 5 composites images whose PIL info keeps a
        # palette 'transparency' entry onto white; the reference (transformers 4.43) does not.
        assert "transparency" in part.info
        assert not np.array_equal(ours, theirs)
        return
    np.testing.assert_array_equal(ours, theirs)


# --- config ------------------------------------------------------------------------------------------


def test_default_config_is_clip_l_336():
    assert ip.ImageProcessorConfig.from_json(PIXELS / "preprocessor_config.json") == ip.DEFAULT_CONFIG
    assert ip.ImageProcessorConfig.from_json(PIXELS) == ip.DEFAULT_CONFIG  # directory form
    assert ip.DEFAULT_CONFIG.pad_fill == (122, 116, 104)
    assert ip.DEFAULT_CONFIG.resample == int(Image.Resampling.BICUBIC)


def test_config_dict_forms():
    cfg = ip.ImageProcessorConfig.from_json(CLIP16_CONFIG)
    assert (cfg.shortest_edge, cfg.crop_height, cfg.crop_width) == (16, 16, 16)
    cfg = ip.ImageProcessorConfig.from_dict({"size": {"shortest_edge": 224}, "crop_size": {"height": 200, "width": 100}})
    assert (cfg.shortest_edge, cfg.crop_height, cfg.crop_width) == (224, 200, 100)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.shortest_edge = 1


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="'size'"):
        ip.ImageProcessorConfig.from_dict({"size": {"height": 3, "width": 3}})
    with pytest.raises(ValueError, match="crop_size"):
        ip.ImageProcessorConfig.from_dict({"crop_size": {"height": 3}})
    with pytest.raises(ValueError, match="image_mean"):
        ip.ImageProcessorConfig.from_dict({"image_mean": [0.5, 0.5]})
    with pytest.raises(FileNotFoundError, match="nope.json"):
        ip.ImageProcessorConfig.from_json(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        ip.ImageProcessorConfig.from_json(tmp_path / "bad.json")


# --- load_image -----------------------------------------------------------------------------------


def test_load_image_accepts_file_objects_and_pil():
    from_path = np.asarray(ip.load_image(IMAGES["pal_120x80"]))
    with open(IMAGES["pal_120x80"], "rb") as f:
        np.testing.assert_array_equal(np.asarray(ip.load_image(f)), from_path)
    with Image.open(IMAGES["pal_120x80"]) as pil:
        np.testing.assert_array_equal(np.asarray(ip.load_image(pil)), from_path)


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        ip.load_image(tmp_path / "missing.png")
    (tmp_path / "garbage.png").write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="garbage.png"):
        ip.load_image(tmp_path / "garbage.png")
    buf = io.BytesIO()
    Image.new("RGB", (50, 50), (1, 2, 3)).save(buf, "PNG")
    (tmp_path / "truncated.png").write_bytes(buf.getvalue()[:-40])
    with pytest.raises(ValueError, match="truncated.png"):
        ip.load_image(tmp_path / "truncated.png")


def test_decompression_bomb_names_the_file(tmp_path, monkeypatch):
    Image.new("L", (64, 64)).save(tmp_path / "huge.png")  # 4096 pixels; the limit is lowered below
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # > 2 x 1000 pixels: PIL refuses it outright
    with pytest.raises(ValueError, match=r"image '.*huge.png' is too large to decode safely .*4096 pixels.*"
                                         r"Image.MAX_IMAGE_PIXELS=1000"):
        ip.load_image(tmp_path / "huge.png")


def test_animated_image_says_which_frame_is_used(tmp_path, caplog):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    first = np.asarray(ip.load_image(tmp_path / "anim.gif"))
    assert first[0, 0].tolist() == [255, 0, 0]
    assert "anim.gif' is animated (3 frames); using frame 0 (0-based) only" in caplog.text
    caplog.clear()
    with Image.open(tmp_path / "anim.gif") as pil:
        pil.seek(2)
        assert np.asarray(ip.load_image(pil))[0, 0].tolist() == [0, 0, 255]
    assert "the given PIL image is animated (3 frames); using frame 2 (0-based) only" in caplog.text
    caplog.clear()
    ip.load_image(IMAGES["pal_120x80"])
    assert "animated" not in caplog.text


# --- padding and splitting, hand-worked --------------------------------------------------------------


def _ramp_image(width, height):
    """RGB image whose red channel numbers the pixels row-major (1, 2, ...)."""
    red = np.arange(1, width * height + 1, dtype=np.uint8).reshape(height, width)
    return Image.fromarray(np.stack([red, red, red], axis=-1))


def test_expand2square_offsets():
    fill = (9, 8, 7)
    wide = np.asarray(ip.expand2square(_ramp_image(3, 1), fill))  # 3x1 -> 3x3, content on row 1
    assert wide.shape == (3, 3, 3)
    np.testing.assert_array_equal(wide[1, :, 0], [1, 2, 3])
    np.testing.assert_array_equal(wide[0], [fill] * 3)
    np.testing.assert_array_equal(wide[2], [fill] * 3)
    tall = np.asarray(ip.expand2square(_ramp_image(1, 4), fill))  # 1x4 -> 4x4, content at column (4-1)//2 = 1
    np.testing.assert_array_equal(tall[:, 1, 0], [1, 2, 3, 4])
    np.testing.assert_array_equal(tall[:, [0, 2, 3]], np.broadcast_to(fill, (4, 3, 3)))
    square = _ramp_image(2, 2)
    assert ip.expand2square(square, fill) is square


def test_split_image_blocks():
    img = _ramp_image(5, 4)  # red = [[1..5], [6..10], [11..15], [16..20]]
    parts = ip.split_image(img, 2)  # blocks of 2x2, column 4 dropped
    assert len(parts) == 5 and parts[-1] is img
    reds = [np.asarray(p)[..., 0].tolist() for p in parts[:4]]
    assert reds == [[[1, 2], [6, 7]], [[3, 4], [8, 9]], [[11, 12], [16, 17]], [[13, 14], [18, 19]]]
    assert ip.split_image(img, 1) == [img]


def test_argument_errors():
    img = _ramp_image(5, 4)
    with pytest.raises(ValueError, match="resolution_ratio"):
        ip.split_image(img, 0)
    with pytest.raises(ValueError, match="too small"):
        ip.split_image(img, 5)
    with pytest.raises(ValueError, match="mode"):
        ip.process_image(img, mode="eval")


@pytest.mark.parametrize("name", ["rgb_97x61", "pal_120x80"])
def test_uint8_pixels_normalised_on_the_device_equal_the_fixture_floats(npz, name):
    """`as_uint8` keeps the reference's uint8 image (after pad, resize, crop); `pixels_from_uint8`
    on the device gives exactly the host's float32 pixels (the normalisation LUT)."""
    import jax.numpy as jnp
    u8 = ip.process_image(IMAGES[name], "pad", 1, as_uint8=True)
    assert u8.dtype == np.uint8 and u8.shape == (1, 336, 336, 3)
    np.testing.assert_array_equal(u8[0], np.asarray(Image.open(PIXELS / "expected" / f"{name}.pad.png").convert("RGB")))
    table = ip.normalization_table()
    np.testing.assert_array_equal(table, npz["normalisation_lut"])
    got = np.asarray(ip.pixels_from_uint8(jnp.asarray(u8), jnp.asarray(table)))
    np.testing.assert_array_equal(got, ip.process_image(IMAGES[name], "pad", 1))
    np.testing.assert_allclose(got[0], npz[f"{name}.pad.float"], rtol=0, atol=1e-6)


def test_device_normalisation_follows_the_processor_config():
    import jax.numpy as jnp
    cfg = ip.ImageProcessorConfig.from_json(CLIP16_CONFIG)
    cfg = dataclasses.replace(cfg, image_mean=(0.1, 0.5, 0.9), image_std=(0.2, 0.3, 0.7))
    u8 = np.random.default_rng(0).integers(0, 256, (2, 3, 5, 7, 3), dtype=np.uint8)
    got = np.asarray(ip.pixels_from_uint8(jnp.asarray(u8), jnp.asarray(ip.normalization_table(cfg))))
    assert got.shape == (2, 3, 3, 5, 7)
    np.testing.assert_array_equal(got, ip.normalize(u8, cfg))
