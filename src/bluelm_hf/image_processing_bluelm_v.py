"""AnyRes image processor of the BlueLM-V family (BlueLM-V-3B Alg. 1, "relaxed aspect-ratio matching").

An image becomes a grid of `tile_size` x `tile_size` tiles plus, when the grid has more than one tile, a global
thumbnail tile:

1. Inputs are loaded and made upright RGB (EXIF orientation, alpha composited onto white, 16-bit scaled to 8-bit).
2. If the longer side exceeds `max_image_side`, the size is scaled down (aspect kept) so it equals `max_image_side`.
3. `select_best_grid` picks `num_rows` x `num_cols` tiles for that size.
4. The image is resized (aspect kept, one resize from the original pixels) to fit `num_cols*tile` x `num_rows*tile`,
   padded with black, centered like LLaVA-NeXT, and split into tiles row-major.
5. The thumbnail (whole image resized to fit `tile` x `tile`, padded the same way) comes last.

Bad inputs (no pixels, corrupt or truncated data, more than `PIL.Image.MAX_IMAGE_PIXELS` pixels) raise a ValueError
that names the image's index and the numbers. Local files and bytes are opened with PIL here so they get the same
conversion as PIL images; URLs and base64 strings go through transformers' `fetch_images`.

Output (`BatchFeature`):
    pixel_values: (total_tiles, 3, tile_size, tile_size) float32, all tiles of all images, image order then tile order.
    image_grids: (num_images, 2) int64, (num_rows, num_cols) per image.

Two backends with the same behaviour: `BlueLMVImageProcessor` (torchvision, the default) and
`BlueLMVImageProcessorPil` (PIL/NumPy). Everything but resizing and array allocation lives once, in
`BlueLMVImageProcessingMixin`.

This file is shipped next to checkpoints as remote code, so it imports only torch, torchvision, PIL, numpy and
transformers.
"""

import io
import itertools
import math
import os
import re
from typing import NamedTuple

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs, Unpack

from .configuration_bluelm_v import IMAGE_PROCESSOR_AUTO_MAP

SIGLIP_MEAN = [0.5, 0.5, 0.5]
SIGLIP_STD = [0.5, 0.5, 0.5]
_EXIF_ORIENTATION = 0x0112


# ---------------------------------------------------------------------------------------------- grid selection
def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def candidate_grids(max_grid_size: int) -> list[tuple[int, int]]:
    """The `(num_rows, num_cols)` grids `select_best_grid` visits, in visiting order.

    All grids with 1 <= rows, cols <= max_grid_size, from the largest area to the smallest; among equal areas the
    wider grid first (more columns), e.g. for 2: [(2, 2), (1, 2), (2, 1), (1, 1)]. The order only decides exact ties.
    """
    _check_positive_int("max_grid_size", max_grid_size)
    grids = [(rows, cols) for rows in range(1, max_grid_size + 1) for cols in range(1, max_grid_size + 1)]
    return sorted(grids, key=lambda grid: (-grid[0] * grid[1], -grid[1]))


def select_best_grid(
    image_width: int, image_height: int, tile_size: int, max_grid_size: int, alpha: float = 0.1
) -> tuple[int, int]:
    """BlueLM-V-3B Alg. 1: the `(num_rows, num_cols)` grid for a `image_width` x `image_height` image.

    For a grid of W x H pixels (W = cols * tile_size, H = rows * tile_size) and s = min(W / w, H / h):
        effective R_e = min(int(w * s) * int(h * s), w * h)   (image pixels kept; no credit for upscaling)
        wasted    R_w = W * H - R_e                             (padding and upscaled pixels the ViT pays for)
    Grids are visited in `candidate_grids` order; the first is taken, and a later one replaces the current best if
        R_e - R_e_max > alpha * R_e_max                          (clearly more detail), or
        R_e_max - R_e < alpha * R_e_max and R_w < R_w_min        (about as much detail, less waste).
    LLaVA-NeXT's `select_best_resolution` takes the largest R_e and uses R_w only to break exact ties; here a grid
    that keeps nearly all the detail with less waste wins: a 1200x1200 image gets 3x3 tiles (downscaled 4%) instead
    of 4x4 (upscaled). With alpha = 0 an equal R_e never replaces the current best, so the larger grid is kept.
    """
    _check_positive_int("image_width", image_width)
    _check_positive_int("image_height", image_height)
    _check_positive_int("tile_size", tile_size)
    _check_positive_int("max_grid_size", max_grid_size)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha (anyres_alpha) must be a finite number >= 0, got {alpha!r}")

    w, h = int(image_width), int(image_height)
    best, best_effective, best_wasted = None, 0, 0
    for rows, cols in candidate_grids(max_grid_size):
        grid_w, grid_h = cols * tile_size, rows * tile_size
        scale = min(grid_w / w, grid_h / h)
        effective = min(int(w * scale) * int(h * scale), w * h)
        wasted = grid_w * grid_h - effective
        if (
            best is None
            or effective - best_effective > alpha * best_effective
            or (best_effective - effective < alpha * best_effective and wasted < best_wasted)
        ):
            best, best_effective, best_wasted = (rows, cols), effective, wasted
    return best


def fit_size(height: int, width: int, target_height: int, target_width: int) -> tuple[int, int]:
    """(height, width) of an image resized, aspect kept, to fit inside the target; the fitted side is exact and the
    other is rounded up (LLaVA-NeXT's `get_patch_output_size`, in integer arithmetic)."""
    if target_width * height <= target_height * width:  # width is the limiting side
        return max(1, min(-(-height * target_width // width), target_height)), target_width
    return target_height, max(1, min(-(-width * target_height // height), target_width))


def num_tiles_for_grid(num_rows: int, num_cols: int, use_thumbnail: bool = True) -> int:
    """Tiles of one image from its `image_grids` row: the grid, plus the thumbnail when the grid has > 1 tile."""
    grid_tiles = int(num_rows) * int(num_cols)
    return grid_tiles + (1 if use_thumbnail and grid_tiles > 1 else 0)


class AnyResPlan(NamedTuple):
    """How one image is tiled. Sizes are in pixels, (height, width)."""

    num_rows: int
    num_cols: int
    resized_height: int  # the image inside the (num_rows * tile) x (num_cols * tile) canvas
    resized_width: int
    thumbnail_height: int  # the image inside the tile x tile thumbnail; 0 when there is no thumbnail
    thumbnail_width: int

    @property
    def has_thumbnail(self) -> bool:
        return self.thumbnail_height > 0

    @property
    def num_tiles(self) -> int:
        return self.num_rows * self.num_cols + int(self.has_thumbnail)


def limit_image_side(height: int, width: int, max_image_side: int | None) -> tuple[int, int]:
    """(height, width) scaled down, aspect kept, so the longer side is at most `max_image_side` (None: no limit)."""
    _check_positive_int("height", height)
    _check_positive_int("width", width)
    if max_image_side is None:
        return height, width
    _check_positive_int("max_image_side", max_image_side)
    longest = max(height, width)
    if longest <= max_image_side:
        return height, width
    if height >= width:  # the longer side becomes exactly max_image_side
        return max_image_side, max(1, round(width * max_image_side / longest))
    return max(1, round(height * max_image_side / longest)), max_image_side


def plan_anyres(
    height: int,
    width: int,
    tile_size: int = 384,
    max_grid_size: int = 4,
    max_image_side: int | None = 1512,
    alpha: float = 0.1,
    use_thumbnail: bool = True,
) -> AnyResPlan:
    """Grid and resize targets for an image of `height` x `width` pixels (the single source of truth for both the
    pixels and the token counts)."""
    height, width = limit_image_side(height, width, max_image_side)
    rows, cols = select_best_grid(width, height, tile_size, max_grid_size, alpha)
    resized_h, resized_w = fit_size(height, width, rows * tile_size, cols * tile_size)
    thumb_h, thumb_w = 0, 0
    if use_thumbnail and rows * cols > 1:
        thumb_h, thumb_w = fit_size(height, width, tile_size, tile_size)
    return AnyResPlan(rows, cols, resized_h, resized_w, thumb_h, thumb_w)


def tokens_per_tile(tile_size: int = 384, patch_size: int = 14, downsample_factor: int = 2) -> int:
    """LLM tokens of one tile: (tile // patch) patches per side, merged in downsample x downsample windows after
    padding to a multiple (27 -> 28 -> 14 per side -> 196 for 384 / 14 / 2)."""
    for name, value in (("tile_size", tile_size), ("patch_size", patch_size), ("downsample_factor", downsample_factor)):
        _check_positive_int(name, value)
    if patch_size > tile_size:
        raise ValueError(f"patch_size ({patch_size}) must not exceed tile_size ({tile_size})")
    side = math.ceil((tile_size // patch_size) / downsample_factor)
    return side * side


# ------------------------------------------------------------------------------------------------ input handling
def _describe_source(source) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"{len(source)} bytes"
    text = str(source)
    return repr(text if len(text) <= 120 else text[:100] + f"... ({len(text)} characters)")


def _pixel_limit_error(index: int, width: int, height: int) -> ValueError | None:
    limit = PIL.Image.MAX_IMAGE_PIXELS
    if limit is None or width * height <= limit:
        return None
    return ValueError(
        f"image {index} of {width}x{height} = {width * height} pixels exceeds the limit of {limit} pixels "
        "(PIL.Image.MAX_IMAGE_PIXELS); it may be a decompression bomb. If you trust it, raise "
        "PIL.Image.MAX_IMAGE_PIXELS (None disables the check) or downscale it first."
    )


def _open_pil(fp, index: int, source) -> PIL.Image.Image:
    """PIL.Image.open (lazy: reads the header only) with errors people can act on."""
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
            f"image {index} ({_describe_source(source)}): {what}; it may be a decompression bomb. If you trust it, "
            "raise PIL.Image.MAX_IMAGE_PIXELS (None disables the check)."
        ) from error
    except PIL.UnidentifiedImageError as error:
        raise ValueError(
            f"image {index} ({_describe_source(source)}) is not in an image format PIL recognises: the data is "
            "corrupt, truncated, or not an image"
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(
            f"image {index} ({_describe_source(source)}) could not be read as an image: {error}. "
            "Is the file corrupt, truncated or not an image?"
        ) from error


def _flatten_sources(images) -> list:
    """A flat list of single images from an image, a (nested) list of them, or 4D arrays/tensors (batches)."""
    if isinstance(images, (list, tuple)):
        return [leaf for item in images for leaf in _flatten_sources(item)]
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    return [images]


def _spatial_size(array) -> tuple[int, int]:
    """(width, height) of a 2D, CHW or HWC array, channels inferred like transformers (first axis if 1, 3 or 4)."""
    shape = tuple(array.shape)
    if len(shape) == 2:
        return shape[1], shape[0]
    if shape[0] in (1, 3, 4):
        return shape[2], shape[1]
    return shape[1], shape[0]


def _scale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """8-bit values for a single-channel high-bit-depth or float image.

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


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """An upright RGB version of a (loaded) PIL image: EXIF orientation applied, transparency composited onto white,
    palette expanded, CMYK/YCbCr/1-bit converted, 16-bit and float single-channel scaled (not clipped) to 8 bits."""
    if image.getexif().get(_EXIF_ORIENTATION, 1) not in (None, 1):
        image = PIL.ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in ("I", "F") or mode.startswith("I;16"):
        gray = _scale_to_uint8(np.asarray(image), mode)
        return PIL.Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), mode="RGB")
    if "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")  # also un-premultiplies RGBa/La and applies P/L/RGB "transparency"
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


# ------------------------------------------------------------------------------------------------ processor
class BlueLMVImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    tile_size (`int`, *optional*, defaults to 384): side of a square tile in pixels (the ViT input size).
    max_grid_size (`int`, *optional*, defaults to 4): grids go up to `max_grid_size` x `max_grid_size` tiles.
    max_image_side (`int`, *optional*, defaults to 1512): longer sides above this are scaled down to it first.
    anyres_alpha (`float`, *optional*, defaults to 0.1): relaxed matching threshold of `select_best_grid`.
    use_thumbnail (`bool`, *optional*, defaults to `True`): append a global thumbnail tile to multi-tile grids.
    patch_size (`int`, *optional*, defaults to 14): ViT patch size, for token counts.
    downsample_factor (`int`, *optional*, defaults to 2): side of the token-merging window, for token counts.
    crop_to_patches (`bool`, *optional*, defaults to `True`): InternVL's name for AnyRes tiling, accepted so that
        InternVL-aware code (TRL's GRPOTrainer counts tiles this way) works unchanged. `False` is the same as
        `max_grid_size=1`: the whole image as one tile.
    """

    tile_size: int
    max_grid_size: int
    max_image_side: int | None
    anyres_alpha: int | float
    use_thumbnail: bool
    patch_size: int
    downsample_factor: int
    crop_to_patches: bool


class BlueLMVImageProcessingMixin:
    """Backend-independent AnyRes logic. A backend supplies `_resize_to`, `_empty`, `_permute` and `_affine_`, and
    receives images as channels-first arrays/tensors from its `process_image`."""

    # `image_grids` and `num_patches` (tiles per image, InternVL's name) describe the tiling; the processor uses
    # them to expand placeholders and does not pass them on (see BlueLMVProcessor.unused_input_names).
    model_input_names = ["pixel_values", "image_grids", "num_patches"]
    valid_kwargs = BlueLMVImageProcessorKwargs

    tile_size = 384
    size = {"height": 384, "width": 384}  # mirrors tile_size, for tools that read `image_processor.size`
    max_grid_size = 4
    max_image_side = 1512
    anyres_alpha = 0.1
    use_thumbnail = True
    patch_size = 14
    downsample_factor = 2
    crop_to_patches = True
    resample = PILImageResampling.BICUBIC
    image_mean = SIGLIP_MEAN
    image_std = SIGLIP_STD
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True

    def to_dict(self) -> dict:
        # save_pretrained's `auto_map` names the saved backend's class only; name both (remote code picks "pil"
        # where torchvision is missing).
        output = super().to_dict()
        entry = output.get("auto_map", {}).get("AutoImageProcessor")
        if isinstance(entry, str) and entry.startswith("image_processing_bluelm_v."):
            output["auto_map"] = {**output["auto_map"], "AutoImageProcessor": dict(IMAGE_PROCESSOR_AUTO_MAP)}
        return output

    def __init__(self, **kwargs: Unpack[BlueLMVImageProcessorKwargs]):
        kwargs = self._sync_size_and_tile_size(kwargs, default_tile_size=type(self).tile_size)
        super().__init__(**kwargs)
        plan_anyres(1, 1, self.tile_size, self.max_grid_size, self.max_image_side, self.anyres_alpha)  # validates
        tokens_per_tile(self.tile_size, self.patch_size, self.downsample_factor)  # validates

    @staticmethod
    def _sync_size_and_tile_size(kwargs: dict, default_tile_size: int) -> dict:
        """`size` is an alias of `tile_size` ({"height": t, "width": t}); keep the two in agreement."""
        kwargs = dict(kwargs)
        tile_size, size = kwargs.get("tile_size"), kwargs.get("size")
        if size is not None:
            if isinstance(size, int):
                height = width = size
            elif isinstance(size, (list, tuple)) and len(size) == 2:
                height, width = size
            elif isinstance(size, dict):
                height, width = size.get("height"), size.get("width")
            else:  # SizeDict
                height, width = getattr(size, "height", None), getattr(size, "width", None)
            if height is None or height != width:
                raise ValueError(f"size must be a square {{'height': t, 'width': t}} (the tile size), got {size}")
            if tile_size is not None and tile_size != height:
                raise ValueError(
                    f"size {size} (height {height}) disagrees with tile_size={tile_size}; set only tile_size"
                )
            tile_size = height
        tile_size = default_tile_size if tile_size is None else tile_size
        kwargs["tile_size"], kwargs["size"] = tile_size, {"height": tile_size, "width": tile_size}
        return kwargs

    def preprocess(self, images, **kwargs: Unpack[BlueLMVImageProcessorKwargs]) -> BatchFeature:
        """Tile `images` (PIL images, arrays, tensors, paths, URLs, base64 strings or bytes; one or a nested list).

        Returns `pixel_values` (total_tiles, 3, tile, tile), `image_grids` (num_images, 2) = (num_rows, num_cols)
        and `num_patches` (num_images,), the tiles of each image (grid plus thumbnail); with `return_tensors=None`,
        a list of (3, tile, tile) tiles and lists.
        """
        if "size" in kwargs or "tile_size" in kwargs:
            kwargs = self._sync_size_and_tile_size(kwargs, default_tile_size=self.tile_size)
        return super().preprocess(images, **self._resolve_crop_to_patches(kwargs))

    @staticmethod
    def _resolve_crop_to_patches(kwargs: dict) -> dict:
        """`crop_to_patches=False` (InternVL's "no tiling") as what it means here: `max_grid_size=1`."""
        if kwargs.get("crop_to_patches") is not False:
            return kwargs
        if kwargs.get("max_grid_size") not in (None, 1):
            raise ValueError(
                f"crop_to_patches=False means one tile per image, which contradicts max_grid_size="
                f"{kwargs['max_grid_size']}; pass one of the two"
            )
        return {**kwargs, "max_grid_size": 1}

    # ---- token counts (the processor expands image placeholders with these)
    def _setting(self, name: str, images_kwargs: dict | None):
        if images_kwargs and images_kwargs.get(name) is not None:
            return images_kwargs[name]
        return getattr(self, name)

    def get_anyres_plan(self, height: int, width: int, images_kwargs: dict | None = None) -> AnyResPlan:
        """The tiling of a `height` x `width` image under this processor's settings (overridable per call)."""
        images_kwargs = self._resolve_crop_to_patches(images_kwargs or {})
        return plan_anyres(
            height,
            width,
            tile_size=self._setting("tile_size", images_kwargs),
            max_grid_size=self._setting("max_grid_size", images_kwargs),
            max_image_side=self._setting("max_image_side", images_kwargs),
            alpha=self._setting("anyres_alpha", images_kwargs),
            use_thumbnail=self._setting("use_thumbnail", images_kwargs),
        )

    def get_num_tiles(self, height: int, width: int, images_kwargs: dict | None = None) -> int:
        """Tiles (grid + thumbnail) a `height` x `width` image becomes."""
        return self.get_anyres_plan(height, width, images_kwargs).num_tiles

    def get_tokens_per_tile(self, images_kwargs: dict | None = None) -> int:
        return tokens_per_tile(
            self._setting("tile_size", images_kwargs),
            self._setting("patch_size", images_kwargs),
            self._setting("downsample_factor", images_kwargs),
        )

    def get_number_of_image_tokens(self, height: int, width: int, images_kwargs: dict | None = None) -> int:
        """LLM tokens of a `height` x `width` image: tokens_per_tile (196 at 384/14/2) x tiles."""
        return self.get_tokens_per_tile(images_kwargs) * self.get_num_tiles(height, width, images_kwargs)

    def get_num_tiles_from_grid(self, image_grid, use_thumbnail: bool | None = None) -> int:
        """Tiles of one image from its `image_grids` row (num_rows, num_cols)."""
        num_rows, num_cols = (int(v) for v in image_grid)
        return num_tiles_for_grid(num_rows, num_cols, self.use_thumbnail if use_thumbnail is None else use_thumbnail)

    # ---- loading and validation, shared by both backends
    def _fetch_one(self, source, index: int):
        if isinstance(source, os.PathLike):
            source = os.fspath(source)
        if isinstance(source, (bytes, bytearray, memoryview)):
            return _open_pil(io.BytesIO(bytes(source)), index, source)
        if not isinstance(source, str):
            return source
        is_url = source.startswith(("http://", "https://"))
        if not is_url and os.path.isfile(source):
            # Opened here rather than by the base loader, which converts to RGB itself (dropping alpha instead of
            # compositing, clipping 16-bit) and, in the torchvision backend, has no decompression-bomb limit.
            return _open_pil(source, index, source)
        try:
            image = super().fetch_images(source)  # URLs and base64 strings
        except PIL.Image.DecompressionBombError as error:
            raise ValueError(f"image {index} ({_describe_source(source)}): {error}") from error
        except Exception as error:
            kind = "URL" if is_url else "source (not an existing file, an http(s) URL or base64 image data)"
            raise ValueError(
                f"image {index}: could not load an image from {kind} {_describe_source(source)}: "
                f"{type(error).__name__}: {str(error)[:300]}"
            ) from error
        if isinstance(image, torch.Tensor) and (limit_error := _pixel_limit_error(index, *_spatial_size(image))):
            raise limit_error
        return image

    def fetch_images(self, image_url_or_urls):
        """Load paths, URLs, base64 strings and bytes (nested lists kept); other inputs pass through."""
        counter = itertools.count()

        def fetch(item):
            if isinstance(item, (list, tuple)):
                return [fetch(inner) for inner in item]
            return self._fetch_one(item, next(counter))

        return fetch(image_url_or_urls)

    def _prepare_images_structure(self, images, expected_ndims: int = 3) -> list:
        return [self._fetch_one(source, index) for index, source in enumerate(_flatten_sources(images))]

    @staticmethod
    def _check_and_convert(image, index: int, do_convert_rgb: bool):
        """Reject empty or oversized images and decode PIL images to upright RGB."""
        if isinstance(image, PIL.Image.Image):
            width, height = image.size
            if width == 0 or height == 0:
                raise ValueError(f"image {index} has size {width}x{height} (width x height); it has no pixels")
            if limit_error := _pixel_limit_error(index, width, height):
                raise limit_error
            try:
                image.load()
            except Exception as error:  # any decoder failure means a corrupt or truncated file
                name = getattr(image, "filename", "") or "in-memory image"
                raise ValueError(
                    f"image {index} ({name!r}, {image.format or 'unknown'} {width}x{height}, mode {image.mode}) "
                    f"could not be decoded: {error}. The file is corrupt or truncated."
                ) from error
            if not do_convert_rgb:
                return PIL.ImageOps.exif_transpose(image)
            try:
                return to_rgb(image)
            except ValueError as error:
                raise ValueError(f"image {index} has PIL mode {image.mode!r}, which cannot be converted to RGB: "
                                 f"{error}") from error
        if isinstance(image, (np.ndarray, torch.Tensor)):
            if image.ndim not in (2, 3):
                raise ValueError(f"image {index} is an array of shape {tuple(image.shape)}; expected (H, W), "
                                 "(C, H, W) or (H, W, C) with C in 1, 3, 4, or a 4D batch of those")
            if 0 in tuple(image.shape):
                width, height = _spatial_size(image)
                raise ValueError(f"image {index} has size {width}x{height} (width x height, array shape "
                                 f"{tuple(image.shape)}); it has no pixels")
            return image[None] if image.ndim == 2 else image  # (H, W) grayscale -> (1, H, W), for both backends
        raise ValueError(f"image {index} has unsupported type {type(image).__name__}; pass a PIL image, a numpy "
                         "array, a torch tensor, a path, a URL, base64 data or bytes")

    def _prepare_image_like_inputs(self, images, *args, expected_ndims: int = 3, **kwargs) -> list:
        images = self._prepare_images_structure(images, expected_ndims=expected_ndims)
        do_convert_rgb = kwargs.get("do_convert_rgb")
        return [
            self.process_image(self._check_and_convert(image, index, do_convert_rgb), *args, **kwargs)
            for index, image in enumerate(images)
        ]

    # ---- tiling
    def _pad_centered(self, image, height: int, width: int):
        """`image` (C, h, w) centered on a black (C, height, width) canvas; split like LLaVA-NeXT (extra pixel at the
        bottom/right)."""
        channels, image_h, image_w = image.shape
        if (image_h, image_w) == (height, width):
            return image
        top, left = (height - image_h) // 2, (width - image_w) // 2
        bottom, right = top + image_h, left + image_w
        # Channels-last memory behind a (C, H, W) view: resized images come channels-last, so the paste is a plain
        # row copy and the one transpose happens in the tile gather.
        canvas = self._permute(self._empty((height, width, channels), like=image), (2, 0, 1))
        canvas[:, :top], canvas[:, bottom:] = 0, 0  # only the borders are zeroed: one pass over the canvas
        canvas[:, top:bottom, :left], canvas[:, top:bottom, right:] = 0, 0
        canvas[:, top:bottom, left:right] = image
        return canvas

    def _preprocess(
        self,
        images: list,
        tile_size: int,
        max_grid_size: int,
        max_image_side: int | None,
        anyres_alpha: float,
        use_thumbnail: bool,
        resample,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        pieces, grids, num_patches = [], [], []  # pieces: (rows, cols, C, tile, tile) views, concatenated in order below
        for image in images:
            height, width = image.shape[-2:]
            plan = plan_anyres(height, width, tile_size, max_grid_size, max_image_side, anyres_alpha, use_thumbnail)
            resized = self._resize_to(image, plan.resized_height, plan.resized_width, resample)
            rows, cols = plan.num_rows, plan.num_cols
            canvas = self._pad_centered(resized, rows * tile_size, cols * tile_size)
            channels = canvas.shape[0]
            tiles = self._permute(canvas.reshape(channels, rows, tile_size, cols, tile_size), (1, 3, 0, 2, 4))
            pieces.append(tiles)
            if plan.has_thumbnail:
                # Resize from whichever is smaller, the original or the grid-resized image: the same picture up to
                # resampling, and much cheaper for large photos.
                source = image if height * width <= plan.resized_height * plan.resized_width else resized
                thumbnail = self._resize_to(source, plan.thumbnail_height, plan.thumbnail_width, resample)
                pieces.append(self._pad_centered(thumbnail, tile_size, tile_size)[None, None])
            grids.append([rows, cols])
            num_patches.append(plan.num_tiles)

        # One float32 output, filled piece by piece (tile gather + dtype cast in one pass), normalized in place.
        total = sum(piece.shape[0] * piece.shape[1] for piece in pieces)
        channels = pieces[0].shape[2]
        pixel_values = self._empty((total, channels, tile_size, tile_size), like=pieces[0], float32=True)
        start = 0
        for piece in pieces:
            rows, cols = piece.shape[:2]
            pixel_values[start : start + rows * cols].reshape(rows, cols, channels, tile_size, tile_size)[...] = piece
            start += rows * cols
        self._rescale_and_normalize_(pixel_values, do_rescale, rescale_factor, do_normalize, image_mean, image_std)

        if return_tensors is None:
            pixel_values = list(pixel_values)
        return BatchFeature(
            data={"pixel_values": pixel_values, "image_grids": grids, "num_patches": num_patches},
            tensor_type=return_tensors,
        )

    def _rescale_and_normalize_(self, pixel_values, do_rescale, rescale_factor, do_normalize, mean, std) -> None:
        """In place: x * rescale_factor, then (x - mean) / std per channel, as one multiply-add per channel."""
        channels = pixel_values.shape[1]
        scale = rescale_factor if do_rescale else 1.0
        if do_normalize:
            means = list(mean) if isinstance(mean, (list, tuple)) else [mean] * channels
            stds = list(std) if isinstance(std, (list, tuple)) else [std] * channels
        else:
            means, stds = [0.0] * channels, [1.0] * channels
        multipliers = [scale / s for s in stds]
        offsets = [-m / s for m, s in zip(means, stds)]
        if len(set(multipliers)) == 1 and len(set(offsets)) == 1:
            self._affine_(pixel_values, multipliers[0], offsets[0])
        else:
            for channel in range(channels):
                self._affine_(pixel_values[:, channel], multipliers[channel], offsets[channel])


class BlueLMVImageProcessor(BlueLMVImageProcessingMixin, TorchvisionBackend):
    """BlueLM-V AnyRes image processor, torchvision backend (the default). See the module docstring."""

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, device=None, **kwargs):
        if isinstance(image, PIL.Image.Image) and image.mode == "RGB":
            # A (C, H, W) view of the (H, W, C) pixels, not made contiguous: channels-last uint8 resizes ~4x faster
            # in torch, and the copy is saved.
            image = torch.from_numpy(np.array(image)).permute(2, 0, 1)
            return image if device is None else image.to(device)
        return super().process_image(image, do_convert_rgb, input_data_format, device, **kwargs)

    def _resize_to(self, image: torch.Tensor, height: int, width: int, resample) -> torch.Tensor:
        if tuple(image.shape[-2:]) == (height, width):
            return image
        return self.resize(image, SizeDict(height=height, width=width), resample=resample)

    @staticmethod
    def _empty(shape, like: torch.Tensor, float32: bool = False) -> torch.Tensor:
        return torch.empty(shape, dtype=torch.float32 if float32 else like.dtype, device=like.device)

    @staticmethod
    def _affine_(tensor: torch.Tensor, multiplier: float, offset: float) -> None:
        """tensor = tensor * multiplier + offset, in one pass."""
        torch.add(torch.tensor(offset, dtype=tensor.dtype, device=tensor.device), tensor, alpha=multiplier, out=tensor)

    @staticmethod
    def _permute(tensor: torch.Tensor, dims) -> torch.Tensor:
        return tensor.permute(*dims)


class BlueLMVImageProcessorPil(BlueLMVImageProcessingMixin, PilBackend):
    """BlueLM-V AnyRes image processor, PIL/NumPy backend. Same output as `BlueLMVImageProcessor` up to resampling."""

    def _resize_to(self, image: np.ndarray, height: int, width: int, resample) -> np.ndarray:
        if tuple(image.shape[-2:]) == (height, width):
            return image
        return self.resize(image, SizeDict(height=height, width=width), resample=resample)

    @staticmethod
    def _empty(shape, like: np.ndarray, float32: bool = False) -> np.ndarray:
        return np.empty(shape, dtype=np.float32 if float32 else like.dtype)

    @staticmethod
    def _affine_(array: np.ndarray, multiplier: float, offset: float) -> None:
        array *= multiplier
        array += offset

    @staticmethod
    def _permute(array: np.ndarray, dims) -> np.ndarray:
        return array.transpose(*dims)


__all__ = [
    "AnyResPlan",
    "BlueLMVImageProcessor",
    "BlueLMVImageProcessorPil",
    "candidate_grids",
    "fit_size",
    "limit_image_side",
    "num_tiles_for_grid",
    "plan_anyres",
    "select_best_grid",
    "to_rgb",
    "tokens_per_tile",
]
