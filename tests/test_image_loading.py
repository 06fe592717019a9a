"""Tests of image loading (src/bluelm_hf/image_loading.py): every source gives the same image, through the processor.

URL cases use a local HTTP server on 127.0.0.1 (no internet); every request that could hang runs with a bound.
"""

import base64
import http.server
import io
import struct
import threading
import time
import zlib

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bluelm_hf import BlueLMVImageProcessor, BlueLMVImageProcessorPil

BACKENDS = [BlueLMVImageProcessor, BlueLMVImageProcessorPil]


def encode(image: PIL.Image.Image, format: str = "PNG", **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **save_kwargs)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds almost no pixel data: decoding it fails, reading its header
    does not."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")


def palette_with_transparency() -> PIL.Image.Image:
    image = PIL.Image.new("P", (16, 16), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)
    image.paste(1, (8, 0, 16, 16))
    image.info["transparency"] = 0  # the red half is transparent: white after compositing
    return image


def animated_gif() -> bytes:
    frames = [PIL.Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


# ------------------------------------------------------------------------------------------- local HTTP server
class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    release = threading.Event()

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path == "/hang":  # accept the connection, never answer (until the test session ends)
            self.release.wait(30)
            return
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"

    def serve(name: str, data: bytes) -> str:
        _Handler.files[f"/{name}"] = data
        return f"{base}/{name}"

    serve.base = base
    yield serve
    _Handler.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def sources(data: bytes, tmp_path, server, name: str) -> dict:
    """The same encoded image as each kind of source."""
    path = tmp_path / name
    path.write_bytes(data)
    text = base64.b64encode(data).decode()
    return {
        "path": str(path),
        "bytes": data,
        "base64": text,
        "data URI": f"data:image/png;base64,{text}",
        "URL": server(name, data),
        "PIL": PIL.Image.open(io.BytesIO(data)),
    }


def run_bounded(fn, seconds: float):
    """fn() in a thread; fails the test (instead of hanging it) if fn has not returned within `seconds`."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as error:  # noqa: BLE001 (handed back to the test)
            result["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: hangs"
    return result, time.monotonic() - start


# ------------------------------------------------------------------------------------------- one path, one result
CASES = {
    "16-bit PNG": (encode(PIL.Image.fromarray(np.full((16, 16), 65535, np.uint16))), [(255, 255, 255)] * 2),
    "palette PNG with transparency": (encode(palette_with_transparency()), [(255, 255, 255), (0, 255, 0)]),
    "animated GIF": (animated_gif(), [(255, 0, 0)] * 2),  # the first frame
    "RGBA PNG": (encode(PIL.Image.new("RGBA", (16, 16), (0, 0, 255, 0))), [(255, 255, 255)] * 2),
}


@pytest.mark.parametrize("cls", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_every_source_gives_the_same_pixels(case, cls, tmp_path, server):
    data, (left, right) = CASES[case]
    processor = cls(tile_size=16, patch_size=1)
    results = {kind: processor(source, return_tensors="pt") for kind, source in
               sources(data, tmp_path, server, f"{case.replace(' ', '_')}.img").items()}
    for kind, out in results.items():
        rgb = torch.round((out["pixel_values"][0] * 0.5 + 0.5) * 255).to(torch.int64)
        assert out["pixel_values"].max() <= 1.0 + 1e-6, kind  # 16-bit via URL/base64 once gave 513.0
        assert tuple(rgb[:, 8, 2].tolist()) == left, kind
        assert tuple(rgb[:, 8, 13].tolist()) == right, kind
        assert torch.equal(out["pixel_values"], results["path"]["pixel_values"]), kind


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mode=st.sampled_from(["RGB", "RGBA", "LA", "L", "P", "I;16"]),
    width=st.integers(5, 40),  # from 5: a (1, w, 3) or (4, w, 3) array would read as channels first
    height=st.integers(5, 40),
    seed=st.integers(0, 2**16),
)
def test_property_sources_agree(mode, width, height, seed, tmp_path, server):
    from bluelm_hf.image_loading import load_image

    rng = np.random.default_rng(seed)
    if mode == "I;16":
        image = PIL.Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    else:
        channels = {"RGB": 3, "RGBA": 4, "LA": 2, "L": 1, "P": 3}[mode]
        array = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        image = PIL.Image.fromarray(array[..., 0] if channels == 1 else array)
        if mode == "P":
            image = image.quantize(8)
            image.info["transparency"] = 0
    data = encode(image, transparency=0) if mode == "P" else encode(image)
    reference = np.asarray(load_image(PIL.Image.open(io.BytesIO(data))))
    for kind, source in sources(data, tmp_path, server, f"prop_{seed}.png").items():
        loaded = load_image(source)
        assert loaded.mode == "RGB", kind
        assert np.array_equal(np.asarray(loaded), reference), kind
    # An array of the decoded RGB pixels, channels last or first, or a tensor, is the same image again.
    for array in (reference, reference.transpose(2, 0, 1), torch.from_numpy(reference.copy()).permute(2, 0, 1)):
        assert np.array_equal(np.asarray(load_image(array)), reference)


def test_array_dtypes_are_scaled_not_clipped():
    from bluelm_hf.image_loading import load_image

    assert np.asarray(load_image(np.full((4, 4, 3), 65535, np.uint16))).max() == 255
    assert np.asarray(load_image(np.full((4, 4, 3), 1.0, np.float32))).min() == 255
    assert np.asarray(load_image(np.full((4, 4), 128, np.uint8))).tolist()[0][0] == [128, 128, 128]
    with pytest.raises(ValueError, match=r"image 3 is an array of shape \(5, 5, 7\) with 7 channels"):
        load_image(np.zeros((5, 5, 7), np.uint8), index=3)


# ------------------------------------------------------------------------------------------- bombs, errors
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("cls", BACKENDS)
def test_bomb_from_url_or_base64_is_refused_from_the_header(cls, monkeypatch, tmp_path, server):
    # 50x40 = 2000 pixels over a limit of 1000: PIL only warns, so the check is ours. The data holds no pixels, so
    # only a loader that reads the header first (and never decodes) can report the size.
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    data = png_header(50, 40)
    for kind, source in sources(data, tmp_path, server, "bomb.png").items():
        with pytest.raises(ValueError, match=r"image 0 of 50x40 = 2000 pixels exceeds the limit of 1000"):
            cls()(source)
    monkeypatch.undo()
    # Above 2 x MAX_IMAGE_PIXELS PIL refuses at open.
    big = png_header(30000, 30000)
    for source in (base64.b64encode(big).decode(), server("big_bomb.png", big)):
        with pytest.raises(ValueError, match=r"900000000 pixels exceeds the limit"):
            cls()(source)


def test_url_that_never_answers_times_out(server, monkeypatch):
    import bluelm_hf.image_loading as image_loading

    monkeypatch.setattr(image_loading, "DEFAULT_TIMEOUT", 0.5)
    result, seconds = run_bounded(lambda: BlueLMVImageProcessor()(f"{server.base}/hang"), seconds=10)
    error = result.get("error")
    assert isinstance(error, ValueError), result
    assert "did not answer within 0.5 s" in str(error) and "/hang" in str(error)
    assert seconds < 5


@pytest.mark.parametrize("cls", BACKENDS)
def test_http_error_says_the_status(cls, server):
    result, _ = run_bounded(lambda: cls()(f"{server.base}/missing.png"), seconds=20)
    error = result.get("error")
    assert isinstance(error, ValueError), result
    assert "HTTP 404 Not Found" in str(error) and "missing.png" in str(error)


def test_not_a_source():
    with pytest.raises(ValueError, match=r"image 1: could not load an image from source \(not an existing file"):
        BlueLMVImageProcessor()([PIL.Image.new("RGB", (4, 4)), "no/such/file.png"])
    with pytest.raises(ValueError, match=r"image 0 \(base64 data .*\) is not in an image format PIL recognises"):
        BlueLMVImageProcessor()(base64.b64encode(b"plain text, not an image").decode())
