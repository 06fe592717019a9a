"""Every image source to one upright RGB PIL image, through one path.

Sources: a path (str or `os.PathLike`), an http(s) URL, base64 text (optionally a `data:image/...;base64,` URI),
raw bytes, a PIL image, or a numpy array / torch tensor ((H, W), (C, H, W) or (H, W, C), C in 1..4). Encoded
sources (path, URL, base64, bytes) are opened lazily with PIL, so the pixel limit (`PIL.Image.MAX_IMAGE_PIXELS`) is
checked from the header before anything is decoded; then every image, whatever its source, gets the same `to_rgb`.
Animated images give their first frame. With `convert_rgb=False` (the image processors' `do_convert_rgb=False`) an
image keeps its own channels (`keep_channels`): upright, decoded to 8 bits, but grayscale stays 1 channel, RGBA 4.

transformers' `load_image` resolves sources in the same order (URL, existing file, base64) but converts with
`.convert("RGB")` (16-bit clipped, alpha dropped onto black), decodes images up to 2x the pixel limit (where PIL
only warns), and hands an HTTP error page to PIL; so only its choice of HTTP client (httpx) is kept here.

Every failure is a ValueError that names the image's index, the source and the numbers.
Shipped next to checkpoints as remote code, so it imports only PIL, numpy and httpx (a transformers dependency).
"""

import base64
import binascii
import io
import os
import re

import httpx
import numpy as np
import PIL.Image
import PIL.ImageOps

#: Seconds to wait for an image URL's server to connect and to send each chunk of the answer.
DEFAULT_TIMEOUT = 10.0
_EXIF_ORIENTATION = 0x0112


def describe_source(source) -> str:
    """A short, printable description of an image source for error messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"{len(source)} bytes"
    text = str(source)
    return repr(text if len(text) <= 120 else text[:100] + f"... ({len(text)} characters)")


# ------------------------------------------------------------------------------------------------ colour
def _scale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """8-bit values for a high-bit-depth or float image (any shape).

    I;16*: 0..65535 -> 0..255. I (int32) and F (float) carry no range, so: I values within 0..255 are taken as 8-bit
    and within 0..65535 as 16-bit; F values within 0..1 are scaled by 255 and within 0..255 kept; anything else is
    stretched min..max to 0..255. NaN and infinities count as 0.
    """
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and 255 < hi <= 65535):
        values = values * (255.0 / 65535.0)
    elif mode == "F" and lo >= 0 and hi <= 1:
        values = values * 255.0
    elif lo < 0 or hi > 255:
        values = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _upright(image: PIL.Image.Image) -> PIL.Image.Image:
    if image.getexif().get(_EXIF_ORIENTATION, 1) not in (None, 1):
        image = PIL.ImageOps.exif_transpose(image)
    return image


def _is_high_bit_depth(mode: str) -> bool:
    return mode in ("I", "F") or mode.startswith("I;16")


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """An upright RGB version of a (loaded) PIL image: EXIF orientation applied, transparency composited onto white,
    palette expanded, CMYK/YCbCr/1-bit converted, 16-bit and float single-channel scaled (not clipped) to 8 bits."""
    image = _upright(image)
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if _is_high_bit_depth(mode):
        gray = _scale_to_uint8(np.asarray(image), mode)
        return PIL.Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), mode="RGB")
    if "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")  # also un-premultiplies RGBa/La and applies P/L/RGB "transparency"
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def keep_channels(image: PIL.Image.Image) -> PIL.Image.Image:
    """A (loaded) PIL image upright and in 8-bit bands, its channels kept (what `do_convert_rgb=False` asks for):
    L, LA, RGB, RGBA, CMYK, YCbCr, ... as they are; a palette expanded to RGB (RGBA with transparency), since
    palette indices are not pixel values; 1-bit as L; 16-bit and float single-channel scaled to 8-bit L."""
    image = _upright(image)
    mode = image.mode
    if _is_high_bit_depth(mode):
        return PIL.Image.fromarray(_scale_to_uint8(np.asarray(image), mode), mode="L")
    if mode in ("P", "PA"):
        return image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
    if mode == "1":
        return image.convert("L")
    return image


# ------------------------------------------------------------------------------------------------ sources
def _download(url: str, index: int, timeout: float) -> bytes:
    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=True)
    except httpx.TimeoutException as error:
        raise ValueError(
            f"image {index}: the server of {describe_source(url)} did not answer within {timeout} s "
            f"({type(error).__name__}); check the URL or download the image yourself"
        ) from error
    except httpx.HTTPError as error:
        raise ValueError(
            f"image {index}: could not download {describe_source(url)}: {type(error).__name__}: {error}"
        ) from error
    if response.status_code >= 400:
        raise ValueError(
            f"image {index}: downloading {describe_source(url)} failed with HTTP {response.status_code} "
            f"{response.reason_phrase}; the URL does not serve an image"
        )
    return response.content


def _decode_base64(text: str, index: int) -> bytes:
    data = text.split(",", 1)[1] if text.startswith("data:") else text
    try:
        return base64.b64decode(re.sub(r"\s+", "", data), validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(
            f"image {index}: could not load an image from source (not an existing file, an http(s) URL or base64 "
            f"image data) {describe_source(text)}"
        ) from error


def _open(fp, index: int, source, kind: str = "") -> PIL.Image.Image:
    """PIL.Image.open (lazy: reads the header only) with errors people can act on; `kind` prefixes the source."""
    what_source = f"{kind} {describe_source(source)}" if kind else describe_source(source)
    try:
        return PIL.Image.open(fp)
    except PIL.Image.DecompressionBombError as error:  # PIL raises above 2 x MAX_IMAGE_PIXELS
        numbers = re.search(r"\((\d+) pixels\) exceeds limit of (\d+) pixels", str(error))
        what = (
            f"{numbers.group(1)} pixels exceeds the limit of {numbers.group(2)} pixels (2 x PIL.Image.MAX_IMAGE_PIXELS)"
            if numbers
            else str(error)
        )
        raise ValueError(
            f"image {index} ({what_source}): {what}; it may be a decompression bomb. If you trust it, "
            "raise PIL.Image.MAX_IMAGE_PIXELS (None disables the check)."
        ) from error
    except PIL.UnidentifiedImageError as error:
        raise ValueError(
            f"image {index} ({what_source}) is not in an image format PIL recognises: the data is "
            "corrupt, truncated, or not an image"
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(
            f"image {index} ({what_source}) could not be read as an image: {error}. "
            "Is the file corrupt, truncated or not an image?"
        ) from error


def _array_to_pil(array, index: int, input_data_format=None) -> PIL.Image.Image:
    """A numpy array or torch tensor as a PIL image. Channels are first or last as `input_data_format` says
    ("channels_first" / "channels_last", as transformers' `ChannelDimension`); without it they are inferred like
    transformers: the first axis if it has 1, 3 or 4 entries.

    uint8 values are taken as they are; other dtypes are scaled to 8 bits by `_scale_to_uint8`'s rules (uint16 as
    16-bit, floats in 0..1 as 0..1, integers by their range)."""
    if hasattr(array, "detach"):  # torch.Tensor, without importing torch here
        array = array.detach().cpu().numpy()
    shape = tuple(array.shape)
    if array.ndim not in (2, 3):
        raise ValueError(f"image {index} is an array of shape {shape}; expected (H, W), "
                         "(C, H, W) or (H, W, C) with C in 1, 3, 4, or a 4D batch of those")
    layout = getattr(input_data_format, "value", input_data_format)
    if layout not in (None, "channels_first", "channels_last"):
        raise ValueError(f"input_data_format must be 'channels_first', 'channels_last' or None, got {layout!r}")
    if array.ndim == 3 and (layout == "channels_first" or (layout is None and shape[0] in (1, 3, 4))):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    height, width = array.shape[:2]
    if height == 0 or width == 0 or (array.ndim == 3 and array.shape[-1] == 0):
        raise ValueError(f"image {index} has size {width}x{height} (width x height, array shape {shape}); it has no "
                         "pixels")
    if array.ndim == 3 and array.shape[-1] not in (2, 3, 4):
        raise ValueError(f"image {index} is an array of shape {shape} with {array.shape[-1]} channels; expected 1, "
                         "3 or 4 channels first or last")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        mode = "I;16" if array.dtype == np.uint16 else "F" if np.issubdtype(array.dtype, np.floating) else "I"
        array = _scale_to_uint8(array, mode)
    return PIL.Image.fromarray(np.ascontiguousarray(array))  # mode L, LA, RGB or RGBA from the shape


def _open_source(source, index: int, timeout: float, input_data_format=None) -> PIL.Image.Image:
    """A PIL image for any source: lazily opened for encoded sources, as is for PIL images."""
    if isinstance(source, PIL.Image.Image):
        return source
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _open(io.BytesIO(bytes(source)), index, source)
    if isinstance(source, str):
        if source.startswith(("http://", "https://")):
            return _open(io.BytesIO(_download(source, index, timeout)), index, source, kind="URL")
        if os.path.isfile(source):
            return _open(source, index, source)
        return _open(io.BytesIO(_decode_base64(source, index)), index, source, kind="base64 data")
    if isinstance(source, np.ndarray) or hasattr(source, "detach"):
        return _array_to_pil(source, index, input_data_format)
    raise ValueError(f"image {index} has unsupported type {type(source).__name__}; pass a PIL image, a numpy "
                     "array, a torch tensor, a path, a URL, base64 data or bytes")


def _pixel_limit_error(index: int, width: int, height: int) -> ValueError | None:
    limit = PIL.Image.MAX_IMAGE_PIXELS
    if limit is None or width * height <= limit:
        return None
    return ValueError(
        f"image {index} of {width}x{height} = {width * height} pixels exceeds the limit of {limit} pixels "
        "(PIL.Image.MAX_IMAGE_PIXELS); it may be a decompression bomb. If you trust it, raise "
        "PIL.Image.MAX_IMAGE_PIXELS (None disables the check) or downscale it first."
    )


def load_image(
    source, index: int = 0, timeout: float | None = None, convert_rgb: bool = True, input_data_format=None
) -> PIL.Image.Image:
    """`source` (any kind in the module docstring) as a decoded, upright RGB PIL image.

    index: the image's position in its batch, for error messages.
    timeout: seconds an http(s) server may take to connect and to send each chunk (None: `DEFAULT_TIMEOUT`).
    convert_rgb: False keeps the image's own channels (`keep_channels`) instead of `to_rgb`.
    input_data_format: where an array's channels are ("channels_first" / "channels_last"; None: inferred).
    Raises ValueError for an unreadable, empty, corrupt or oversized image, an HTTP error or a timeout.
    """
    image = _open_source(source, index, DEFAULT_TIMEOUT if timeout is None else timeout, input_data_format)
    width, height = image.size
    if width == 0 or height == 0:
        raise ValueError(f"image {index} has size {width}x{height} (width x height); it has no pixels")
    if limit_error := _pixel_limit_error(index, width, height):  # from the header: nothing is decoded yet
        raise limit_error
    try:
        image.load()
    except Exception as error:  # any decoder failure means a corrupt or truncated file
        name = getattr(image, "filename", "") or (
            describe_source(source) if isinstance(source, str) else "in-memory image")
        raise ValueError(
            f"image {index} ({name!r}, {image.format or 'unknown'} {width}x{height}, mode {image.mode}) "
            f"could not be decoded: {error}. The file is corrupt or truncated."
        ) from error
    if not convert_rgb:
        return keep_channels(image)
    try:
        return to_rgb(image)
    except ValueError as error:
        raise ValueError(f"image {index} has PIL mode {image.mode!r}, which cannot be converted to RGB: "
                         f"{error}") from error


def flatten_images(images, _top: bool = True) -> list:
    """A flat list of single images from an image, a (nested) list of them, or 4D arrays/tensors (batches). A `None`
    sample of a batch has no images (TRL's DistillationTrainer passes text-only rows so)."""
    if isinstance(images, (list, tuple)):
        return [leaf for item in images if not (_top and item is None) for leaf in flatten_images(item, False)]
    if getattr(images, "ndim", None) == 4 and (isinstance(images, np.ndarray) or hasattr(images, "detach")):
        return list(images)
    return [images]


def load_images(
    images, timeout: float | None = None, convert_rgb: bool = True, input_data_format=None
) -> list[PIL.Image.Image]:
    """`load_image` on every image of `images` (one, a nested list, or 4D batches), flattened, indexed in order."""
    return [
        load_image(source, index, timeout, convert_rgb, input_data_format)
        for index, source in enumerate(flatten_images(images))
    ]


__all__ = [
    "DEFAULT_TIMEOUT", "describe_source", "flatten_images", "keep_channels", "load_image", "load_images", "to_rgb"
]
