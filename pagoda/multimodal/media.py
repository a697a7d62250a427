"""Images named in chat content parts -> PIL images: `data:` base64 URLs, `http(s)://` URLs (fetched with a
timeout and a size limit) and `file://` URLs under `allowed_local_media_path` only.

Invariants:
- Every failure is a ValueError naming the content part (`where`): an unsupported scheme, a fetch error or
  timeout, data over `max_bytes`, bytes that are not an image, a local path outside the allowed folder
  (resolved with symlinks, so no path escapes it) or a local path with no folder allowed.
- A returned image is fully decoded (broken data fails here, never later in the engine).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import urllib.parse
import urllib.request
from typing import Any

IMAGE_FETCH_TIMEOUT_S = float(os.environ.get("VLLM_IMAGE_FETCH_TIMEOUT", "5"))  # vLLM's variable and default
MAX_IMAGE_BYTES = 20 << 20


def load_image_url(url: Any, where: str, *, allowed_local_media_path: str = "",
                   timeout_s: float = IMAGE_FETCH_TIMEOUT_S, max_bytes: int = MAX_IMAGE_BYTES):
    if not isinstance(url, str) or not url:
        raise ValueError(f"{where}: the image URL must be a non-empty string")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        data = _data_url_bytes(url, where, max_bytes)
    elif scheme in ("http", "https"):
        data = _fetch(url, where, timeout_s, max_bytes)
    elif scheme == "file":
        data = _local_file(url, where, allowed_local_media_path, max_bytes)
    else:
        raise ValueError(f"{where}: {url[:40]!r} is not a data:, http(s):// or file:// URL")
    return decode_image(data, where)


def decode_image(data: bytes, where: str):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{where}: the data is not an image Pillow can read ({exc})") from None
    return image


def _data_url_bytes(url: str, where: str, max_bytes: int) -> bytes:
    header, sep, payload = url[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        raise ValueError(f"{where}: a data URL must be 'data:<media type>;base64,<data>'")
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise ValueError(f"{where}: the image is larger than {max_bytes} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: the data URL's payload is not valid base64") from None


def _fetch(url: str, where: str, timeout_s: float, max_bytes: int) -> bytes:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "pagoda"}),
                                    timeout=timeout_s) as response:
            data = response.read(max_bytes + 1)
    except Exception as exc:  # noqa: BLE001 - every fetch failure is the client's 400
        raise ValueError(f"{where}: fetching the image failed: {type(exc).__name__}: {exc}") from None
    if len(data) > max_bytes:
        raise ValueError(f"{where}: the image is larger than {max_bytes} bytes")
    return data


def _local_file(url: str, where: str, allowed: str, max_bytes: int) -> bytes:
    if not allowed:
        raise ValueError(f"{where}: file:// URLs need the server started with --allowed-local-media-path")
    path = os.path.realpath(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    root = os.path.realpath(allowed)
    if os.path.commonpath([path, root]) != root:
        raise ValueError(f"{where}: {url!r} is outside --allowed-local-media-path")
    if not os.path.isfile(path):
        raise ValueError(f"{where}: {url!r} is not a file")
    if os.path.getsize(path) > max_bytes:
        raise ValueError(f"{where}: the image is larger than {max_bytes} bytes")
    with open(path, "rb") as f:
        return f.read()
