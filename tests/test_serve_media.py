"""Media of a request: data URLs, local files only inside the allowed folder, the pixel limit."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from serve.media import decode_data_url, local_path, media_source, open_image
from serve.protocol import ApiError, MediaRef


def png(size=(6, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_data_url_round_trip_and_errors():
    data = png()
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    assert decode_data_url(url, "p") == ("image/png", data)
    assert decode_data_url(url[:30] + "\n" + url[30:], "p")[1] == data  # line breaks in the payload are fine
    for bad, words in [("data:image/png,abc", "base64-encoded"), ("image.png", "expected a data URL"),
                       ("data:image/png;base64,ab$c", "broken base64")]:
        with pytest.raises(ApiError, match=words):
            decode_data_url(bad, "p")


def test_pixel_limit_is_checked_before_decoding():
    assert open_image(png((6, 4)), 24, "p").size == (6, 4)
    with pytest.raises(ApiError, match="6 x 4 = 24 pixels; the limit is 23"):
        open_image(png((6, 4)), 23, "p")
    with pytest.raises(ApiError, match="not an image"):
        open_image(b"GIF89a but not really", 100, "p")


def test_local_paths_only_inside_the_allowed_folder(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    assert local_path("a.png", str(tmp_path), "p") == str(tmp_path / "a.png")
    assert local_path(f"file://{tmp_path}/a.png", str(tmp_path), "p") == str(tmp_path / "a.png")
    with pytest.raises(ApiError, match="--allow-local-media"):
        local_path("a.png", None, "p")
    with pytest.raises(ApiError) as e:
        local_path("../x.png", str(tmp_path), "p")
    assert e.value.status == 403
    (tmp_path / "link.png").symlink_to("/etc/hostname")
    with pytest.raises(ApiError, match="outside"):
        local_path("link.png", str(tmp_path), "p")


def test_video_data_urls_live_in_a_temporary_file_until_done():
    url = "data:video/mp4;base64," + base64.b64encode(b"video bytes").decode()
    with media_source(MediaRef("video", url, "p"), None, 100) as path:
        with open(path, "rb") as f:
            assert f.read() == b"video bytes"
    import os
    assert not os.path.exists(path)
