"""AnyRes image processor of the BlueLM-V family (BlueLM-V-3B Alg. 1, "relaxed aspect-ratio matching").

An image becomes a grid of `tile_size` x `tile_size` tiles plus, when the grid has more than one tile, a global
thumbnail tile:

1. Every input (path, URL, base64, bytes, PIL image, array) is loaded as an upright RGB image by
   `image_loading.load_image` (EXIF orientation, alpha composited onto white, 16-bit scaled to 8-bit, pixel limit
   checked from the header). With `do_convert_rgb=False` each image keeps its own channels instead (grayscale 1,
   RGBA 4, ...); they must then match `image_mean`/`image_std`, and the model's vision tower says if it cannot take them.
2. If the longer side exceeds `max_image_side`, the size is scaled down (aspect kept) so it equals `max_image_side`.
3. `select_best_grid` picks `num_rows` x `num_cols` tiles for that size.
4. The image is resized (aspect kept, one resize from the original pixels) to fit `num_cols*tile` x `num_rows*tile`,
   padded with black, centered like LLaVA-NeXT, and split into tiles row-major.
5. The thumbnail (whole image resized to fit `tile` x `tile`, padded the same way) comes last.

Bad inputs (no pixels, corrupt or truncated data, more than `PIL.Image.MAX_IMAGE_PIXELS` pixels, HTTP errors,
timeouts) raise a ValueError that names the image's index and the numbers.

Output (`BatchFeature`):
    pixel_values: (total_tiles, 3, tile_size, tile_size) float32, all tiles of all images, image order then tile order.
    image_grids: (num_images, 2) int64, (num_rows, num_cols) per image.

This file holds the AnyRes plan (the one owner of tile and token counts: `plan_anyres`, `num_tiles_for_grid`,
`tokens_per_tile`), the backend-independent `BlueLMVImageProcessingMixin` and the torchvision backend
`BlueLMVImageProcessor` (the default). The PIL/NumPy backend, `BlueLMVImageProcessorPil`, is in
`image_processing_pil_bluelm_v.py`, as transformers splits its processors.

This file is shipped next to checkpoints as remote code, so it imports only torch, torchvision, PIL, numpy,
transformers and its sibling `image_loading.py`.
"""

import itertools
import math
import os
from typing import NamedTuple

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs, Unpack

from .configuration_bluelm_v import IMAGE_PROCESSOR_AUTO_MAP
from .image_loading import load_image, load_images

SIGLIP_MEAN = [0.5, 0.5, 0.5]
SIGLIP_STD = [0.5, 0.5, 0.5]


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
        return num_tiles_for_grid(self.num_rows, self.num_cols, use_thumbnail=self.has_thumbnail)


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
    if num_tiles_for_grid(rows, cols, use_thumbnail) > rows * cols:
        thumb_h, thumb_w = fit_size(height, width, tile_size, tile_size)
    return AnyResPlan(rows, cols, resized_h, resized_w, thumb_h, thumb_w)


def tokens_per_tile(tile_size: int = 384, patch_size: int = 14, downsample_factor: int = 2) -> int:
    """LLM tokens of one tile: (tile // patch) patches per side, merged in downsample x downsample windows after
    padding to a multiple (27 -> 28 -> 14 per side -> 196 for 384 / 14 / 2). The one formula: the configuration's
    `image_tokens_per_tile` calls this."""
    for name, value in (("tile_size", tile_size), ("patch_size", patch_size), ("downsample_factor", downsample_factor)):
        _check_positive_int(name, value)
    if patch_size > tile_size:
        raise ValueError(f"patch_size ({patch_size}) must not exceed tile_size ({tile_size})")
    side = math.ceil((tile_size // patch_size) / downsample_factor)
    return side * side


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
    crop_to_patches (`bool`, *optional*, defaults to `True`): InternVL's name for tiling, accepted because TRL's
        GRPO/RLOO/distillation trainers count tiles with `image_processor(images, crop_to_patches=True)["num_patches"]`.
        Only `True` is valid.
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
    """Backend-independent AnyRes logic. A backend supplies `resize`, `_empty`, `_permute` and `_affine_`, and
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
        return super().preprocess(images, **self._check_crop_to_patches(kwargs))

    @staticmethod
    def _check_crop_to_patches(kwargs: dict) -> dict:
        if kwargs.get("crop_to_patches") is False:
            raise ValueError("crop_to_patches=False is not supported: this processor always tiles; pass max_grid_size=1 "
                             "for one tile per image")
        return kwargs

    # ---- token counts (the processor expands image placeholders with these)
    def _setting(self, name: str, images_kwargs: dict | None):
        if images_kwargs and images_kwargs.get(name) is not None:
            return images_kwargs[name]
        return getattr(self, name)

    def get_anyres_plan(self, height: int, width: int, images_kwargs: dict | None = None) -> AnyResPlan:
        """The tiling of a `height` x `width` image under this processor's settings (overridable per call)."""
        images_kwargs = self._check_crop_to_patches(images_kwargs or {})
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

    # ---- loading: every source through `image_loading.load_image`, so all give the same upright image
    def fetch_images(self, image_url_or_urls):
        """Encoded sources (paths, URLs, base64, bytes) and (H, W) grayscale arrays/tensors decoded as upright 8-bit
        PIL images in their own channels (`image_loading.keep_channels`); PIL images and 3D/4D arrays and tensors
        passed through, nested lists kept, as transformers' `fetch_images` does. (A 2D array is no image to
        transformers' `ProcessorMixin.validate_inputs`, which runs next.) The RGB conversion (`do_convert_rgb`) is the
        processor's own step, so it treats every source alike.
        A `None` sample of a batch has no images (TRL's DistillationTrainer passes text-only rows so)."""
        counter = itertools.count()

        def fetch(item, top=True):
            if isinstance(item, (list, tuple)):
                return [[] if inner is None and top else fetch(inner, False) for inner in item]
            index = next(counter)
            if isinstance(item, (str, bytes, bytearray, memoryview, os.PathLike)) or getattr(item, "ndim", 0) == 2:
                return load_image(item, index, convert_rgb=False)
            return item

        return fetch(image_url_or_urls)

    def _prepare_image_like_inputs(
        self, images, *args, expected_ndims: int = 3, do_convert_rgb=None, input_data_format=None, **kwargs
    ) -> list:
        """Channels-first images for `_preprocess`. `do_convert_rgb=False` keeps each image's own channels (1 for
        grayscale, 4 for RGBA, ...), as transformers' processors do; the colour handling is `image_loading`'s alone."""
        convert_rgb = self.do_convert_rgb if do_convert_rgb is None else do_convert_rgb
        loaded = load_images(images, convert_rgb=convert_rgb, input_data_format=input_data_format)
        return [self.process_image(image, *args, do_convert_rgb=False, **kwargs) for image in loaded]

    # ---- tiling
    def _resize_to(self, image, height: int, width: int, resample):
        if tuple(image.shape[-2:]) == (height, width):
            return image
        return self.resize(image, SizeDict(height=height, width=width), resample=resample)

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
        self._check_channels(images, do_normalize, image_mean, image_std)
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

    @staticmethod
    def _check_channels(images: list, do_normalize: bool, image_mean, image_std) -> None:
        """All images share one channel count, and it matches per-channel `image_mean`/`image_std`. Only images kept
        in their own channels by `do_convert_rgb=False` can differ from 3."""
        expected = images[0].shape[0] if images else 3
        source = f"image 0 has {expected}"
        for name, values in (("image_mean", image_mean), ("image_std", image_std)):
            if do_normalize and isinstance(values, (list, tuple)):
                expected, source = len(values), f"{name} has {len(values)} values"
                break
        for index, image in enumerate(images):
            if image.shape[0] != expected:
                raise ValueError(
                    f"image {index} has {image.shape[0]} channels but {source}: with do_convert_rgb=False every "
                    "image keeps its own channels (1 for grayscale, 2 for grayscale + alpha, 4 for RGBA or CMYK). "
                    f"Pass do_convert_rgb=True (the default) for RGB, or images with {expected} channels and an "
                    "image_mean/image_std of that length."
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

    def process_image(self, image: PIL.Image.Image, *args, device=None, **kwargs) -> torch.Tensor:
        """`image`, an 8-bit PIL image from `load_image`, as a (C, H, W) uint8 view of its (H, W, C) pixels, not made
        contiguous: channels-last uint8 resizes ~4x faster in torch, and the copy is saved."""
        pixels = np.array(image)
        tensor = torch.from_numpy(pixels if pixels.ndim == 3 else pixels[:, :, None]).permute(2, 0, 1)
        return tensor if device is None else tensor.to(device)

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


__all__ = [
    "AnyResPlan",
    "BlueLMVImageProcessor",
    "BlueLMVImageProcessingMixin",
    "candidate_grids",
    "fit_size",
    "limit_image_side",
    "num_tiles_for_grid",
    "plan_anyres",
    "select_best_grid",
    "tokens_per_tile",
]
