"""Images and videos of a request: data URLs (base64) or, only under `--allow-local-media DIR`,
local files inside DIR. Nothing is fetched from the network.

Images are opened lazily and their size checked against a pixel limit before anything is decoded
(a small PNG can claim 50,000 x 50,000 pixels: a decompression bomb). Videos sent as data URLs are
written to a temporary file for the decoder and removed right after.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import tempfile
import urllib.parse
from typing import Iterator, Optional

from PIL import Image

from .protocol import ApiError, MediaRef, bad_request


def decode_data_url(url: str, param: str) -> tuple[str, bytes]:
    """`data:<mime>;base64,<payload>` -> (mime, bytes). Raises ApiError (400) naming `param`."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:"):
        raise bad_request(param, "expected a data URL (data:<mime>;base64,...)")
    mime, *flags = head[len("data:"):].split(";")
    if "base64" not in flags:
        raise bad_request(param, "the data URL must be base64-encoded (data:<mime>;base64,...)")
    try:
        return mime, base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad_request(param, f"broken base64 in the data URL ({e})") from None


def local_path(url: str, allowed_dir: Optional[str], param: str) -> str:
    """A `file://` URL or plain path, resolved; only inside `allowed_dir`. Raises ApiError."""
    if url.startswith(("http://", "https://")):
        raise bad_request(param, "remote URLs are not fetched; send the file as a base64 data URL")
    if allowed_dir is None:
        raise bad_request(param, "local paths are disabled (start the server with --allow-local-media DIR); "
                                 "send the file as a base64 data URL")
    path = urllib.parse.unquote(url[len("file://"):]) if url.startswith("file://") else url
    root = os.path.realpath(allowed_dir)
    real = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([root, real]) != root:
        raise ApiError(403, f"{param}: {path!r} is outside the allowed media directory", param)
    if not os.path.exists(real):
        raise bad_request(param, f"{path!r} does not exist under the allowed media directory")
    return real


def open_image(data: bytes, max_pixels: int, param: str) -> Image.Image:
    """Bytes -> a loaded RGB-convertible PIL image, at most `max_pixels` pixels. Raises ApiError."""
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
        w, h = img.size
        if w * h > max_pixels:
            raise bad_request(param, f"the image is {w} x {h} = {w * h} pixels; the limit is {max_pixels} "
                                     "(--max-image-pixels)")
        img.load()
    except ApiError:
        raise
    except Image.DecompressionBombError as e:
        raise bad_request(param, f"the image is too large ({e})") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for bytes that are no image
        raise bad_request(param, f"the bytes are not an image PIL can read ({type(e).__name__}: {e})") from None
    return img


@contextlib.contextmanager
def media_source(ref: MediaRef, allowed_dir: Optional[str], max_pixels: int) -> Iterator:
    """Yields what `chat.media_pixels` takes: a PIL image (image parts) or a file path (video parts;
    a data URL lives in a temporary file until the block ends)."""
    if ref.url.startswith("data:"):
        _, data = decode_data_url(ref.url, ref.param)
        if ref.kind == "image":
            yield open_image(data, max_pixels, ref.param)
            return
        fd, tmp = tempfile.mkstemp(suffix=".video")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            yield tmp
        finally:
            os.unlink(tmp)
        return
    path = local_path(ref.url, allowed_dir, ref.param)
    if ref.kind == "image":
        with open(path, "rb") as f:
            yield open_image(f.read(), max_pixels, ref.param)
        return
    yield path
