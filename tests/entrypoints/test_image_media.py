"""Image URLs of chat content parts: data: URLs, http(s) fetched from a local server with a timeout and a size
limit, file:// only under the allowed folder (symlinks resolved); every failure names the part."""

import base64
import io
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from pagoda.multimodal.media import load_image_url

WHERE = "messages[0].content[1]"


def _png(size=(6, 5)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server():
    png = _png()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path == "/slow":
                threading.Event().wait(2)
            body = png if self.path in ("/img.png", "/slow") else b"not an image" if self.path == "/text" else None
            if body is None:
                self.send_response(404)
                self.end_headers()
                return
            try:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout test)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_data_urls():
    image = load_image_url("data:image/png;base64," + base64.b64encode(_png()).decode(), WHERE)
    assert image.size == (5, 6)
    with pytest.raises(ValueError, match=r"messages\[0\].content\[1\]: .*not valid base64"):
        load_image_url("data:image/png;base64,@@@", WHERE)
    with pytest.raises(ValueError, match="not an image"):
        load_image_url("data:image/png;base64," + base64.b64encode(b"hello").decode(), WHERE)
    with pytest.raises(ValueError, match="larger than 10 bytes"):
        load_image_url("data:image/png;base64," + base64.b64encode(_png()).decode(), WHERE, max_bytes=10)
    with pytest.raises(ValueError, match="data:<media type>;base64"):
        load_image_url("data:image/png,rawdata", WHERE)
    with pytest.raises(ValueError, match="is not a data:, http"):
        load_image_url("ftp://x/y.png", WHERE)


def test_http_urls_with_timeout_and_size_limit(server):
    assert load_image_url(f"{server}/img.png", WHERE).size == (5, 6)
    with pytest.raises(ValueError, match="fetching the image failed: HTTPError"):
        load_image_url(f"{server}/missing.png", WHERE)
    with pytest.raises(ValueError, match="not an image"):
        load_image_url(f"{server}/text", WHERE)
    with pytest.raises(ValueError, match="larger than 10 bytes"):
        load_image_url(f"{server}/img.png", WHERE, max_bytes=10)
    with pytest.raises(ValueError, match="fetching the image failed"):
        load_image_url(f"{server}/slow", WHERE, timeout_s=0.3)


def test_file_urls_only_under_the_allowed_folder(tmp_path):
    allowed = tmp_path / "media"
    allowed.mkdir()
    (allowed / "a.png").write_bytes(_png())
    outside = tmp_path / "secret.png"
    outside.write_bytes(_png())
    os.symlink(outside, allowed / "link.png")
    assert load_image_url(f"file://{allowed}/a.png", WHERE, allowed_local_media_path=str(allowed)).size == (5, 6)
    with pytest.raises(ValueError, match="need the server started with --allowed-local-media-path"):
        load_image_url(f"file://{allowed}/a.png", WHERE)
    for url in (f"file://{outside}", f"file://{allowed}/../secret.png", f"file://{allowed}/link.png"):
        with pytest.raises(ValueError, match="outside --allowed-local-media-path"):
            load_image_url(url, WHERE, allowed_local_media_path=str(allowed))
    with pytest.raises(ValueError, match="is not a file"):
        load_image_url(f"file://{allowed}/none.png", WHERE, allowed_local_media_path=str(allowed))
