"""Tests of the AnyRes image processor (src/bluelm_hf/image_processing_bluelm_v.py).

Grid expectations are worked out by hand in the comments (tile 384, max grid 4, alpha 0.1 unless noted), not by
calling the function under test. Pixel tests use tiny tiles (16 px) and images that need no resampling, so colours
are exact.
"""

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bluelm_hf.image_loading import to_rgb
from bluelm_hf.image_processing_bluelm_v import (
    BlueLMVImageProcessor,
    candidate_grids,
    fit_size,
    num_tiles_for_grid,
    plan_anyres,
    select_best_grid,
    tokens_per_tile,
)
from bluelm_hf.image_processing_pil_bluelm_v import BlueLMVImageProcessorPil

BACKENDS = [BlueLMVImageProcessor, BlueLMVImageProcessorPil]
RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def rgb_of(pixel_values, tile: int, y: int, x: int) -> tuple[int, ...]:
    """8-bit RGB of one output pixel (undoing the SigLIP 0.5/0.5 normalisation)."""
    values = torch.as_tensor(np.asarray(pixel_values[tile]))[:, y, x]
    return tuple(int(v) for v in torch.round((values * 0.5 + 0.5) * 255))


def exact(image, **kwargs):
    """Process with 16 px tiles so a 16x16 image is one tile with no resampling."""
    processor = BlueLMVImageProcessor(tile_size=16, patch_size=1, **kwargs)
    return processor(image, return_tensors="pt")


def png_bytes(image: PIL.Image.Image, **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **save_kwargs)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds almost no data: opening it costs nothing (a "bomb")."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")


def smooth_image(width: int, height: int) -> PIL.Image.Image:
    """Gradients and a disc: resampling differences stay small, unlike on noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 255 * x / max(width - 1, 1)
    g = 255 * y / max(height - 1, 1)
    b = np.where((x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(width, height) / 3) ** 2, 220.0, 40.0)
    return PIL.Image.fromarray(np.stack([r, g, b], axis=-1).astype(np.uint8))


# ------------------------------------------------------------------------------------------- grid selection
def test_candidate_order_is_area_descending_then_wider_first():
    assert candidate_grids(2) == [(2, 2), (1, 2), (2, 1), (1, 1)]
    order = candidate_grids(4)
    assert order[:4] == [(4, 4), (3, 4), (4, 3), (3, 3)]
    assert order[-3:] == [(1, 2), (2, 1), (1, 1)]
    assert len(order) == 16


def test_square_1000():
    # 4x4 (1536^2): s = 1.536, R_e = min(1536^2, 1e6) = 1e6, R_w = 1359296 -> first, taken.
    # 3x4 (1536x1152): s = 1.152, R_e = 1e6, R_w = 769472: same R_e, less waste -> taken. 4x3: equal waste, kept out.
    # 3x3 (1152^2): R_e = 1e6, R_w = 327104 -> taken.
    # 2x4 and every smaller grid: s <= 0.768, R_e <= 768^2 = 589824, 41% below 1e6 -> never.
    assert select_best_grid(1000, 1000, 384, 4) == (3, 3)


def test_landscape_2_to_1():
    # 1024x512, w*h = 524288. Every grid with W >= 1024*... keeps R_e = 524288 while s >= 1:
    # 4x4 R_w 1835008 -> 3x4 (s=1.5) R_w 1245184 -> 3x3 (s=1.125) R_w 802816 -> 2x4 (1536x768, s=1.5) R_w 655360
    # -> 2x3 (1152x768, s=1.125) R_w 360448. Grids 768 wide or 384 tall have s <= 0.75, R_e <= 294912 (-44%).
    assert select_best_grid(1024, 512, 384, 4) == (2, 3)


def test_portrait_1_to_4():
    # 384x1536 (w*h = 589824): only 1536-tall grids keep s = 1: 4x4 (R_w 1769472) -> 4x3 (1179648) -> 4x2 (589824)
    # -> 4x1 (384x1536, R_w = 0). Shorter grids have s <= 0.75.
    assert select_best_grid(384, 1536, 384, 4) == (4, 1)


def test_tiny_image_gets_one_tile():
    # 100x50: every grid upscales, so R_e = 5000 everywhere; waste shrinks with area down to 1x1.
    assert select_best_grid(100, 50, 384, 4) == (1, 1)
    assert select_best_grid(1, 1, 384, 4) == (1, 1)


def test_huge_image_is_capped_at_max_image_side_first():
    # 6000x3000 -> 1512x756 (w*h = 1143072). 4x4: s = 1536/1512, R_e capped = 1143072, R_w = 1216224.
    # 3x4 (1536x1152): R_e capped, R_w = 626400 -> taken. 4x3 and 3x3 (1152 wide): s = 0.762, R_e = 663552 (-42%).
    # 2x4 (1536x768): s = 1536/1512, R_e capped, R_w = 36576 -> taken. All later grids are <= 1152 wide or 384 tall.
    assert select_best_grid(1512, 756, 384, 4) == (2, 4)
    plan = plan_anyres(3000, 6000)
    assert (plan.num_rows, plan.num_cols) == (2, 4)
    assert (plan.resized_height, plan.resized_width) == (768, 1536)
    assert plan.num_tiles == 9


def test_worked_example_relaxed_matching_beats_llava_next():
    # 1200x1200. 4x4: s = 1.28, R_e = 1.44e6 (capped), R_w = 919296 -> first.
    # 3x4 (1536x1152): s = 0.96, R_e = 1152^2 = 1327104, 7.8% below 1.44e6 (< 10%) and R_w = 442368 < 919296
    #   -> taken (R_e_max = 1327104). 4x3: same numbers, not strictly less waste.
    # 3x3 (1152^2): R_e = 1327104, R_w = 0 -> taken. 2x4 (1536x768): s = 0.64, R_e = 589824 -> no; nothing after.
    assert select_best_grid(1200, 1200, 384, 4) == (3, 3)
    # LLaVA-NeXT's rule keeps the largest R_e: 4x4 (1536x1536), 17 tiles instead of our 10.
    from transformers.image_processing_utils import select_best_resolution

    pinpoints = [[rows * 384, cols * 384] for rows, cols in candidate_grids(4)]
    assert tuple(select_best_resolution((1200, 1200), pinpoints)) == (1536, 1536)


def test_alpha_zero_keeps_the_first_of_equal_grids():
    # 100x100 with tiles of 384: every grid has R_e = 10000. With alpha = 0 nothing later is strictly better.
    assert select_best_grid(100, 100, 384, 2, alpha=0) == (2, 2)
    assert select_best_grid(100, 100, 384, 2, alpha=0.1) == (1, 1)


def test_max_grid_size_one():
    assert select_best_grid(3000, 100, 384, 1) == (1, 1)


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 10, 384, 4), "image_width must be a positive integer, got 0"),
        ((10, -3, 384, 4), "image_height must be a positive integer, got -3"),
        ((10, 10, 0, 4), "tile_size must be a positive integer, got 0"),
        ((10, 10, 384, 0), "max_grid_size must be a positive integer, got 0"),
        ((10.5, 10, 384, 4), "image_width must be a positive integer, got 10.5"),
        ((10, 10, 384, 4, -0.1), "alpha (anyres_alpha) must be a finite number >= 0, got -0.1"),
    ],
)
def test_select_best_grid_validates(args, message):
    with pytest.raises(ValueError) as error:
        select_best_grid(*args)
    assert message in str(error.value)


def test_fit_size():
    assert fit_size(480, 640, 768, 768) == (576, 768)  # width limits: 480 * 768 / 640 = 576
    assert fit_size(1000, 300, 1536, 384) == (1280, 384)  # 1000 * 384 / 300 = 1280
    assert fit_size(101, 100, 384, 384) == (384, 381)  # ceil(100 * 384 / 101) = ceil(380.2) = 381
    assert fit_size(1, 3000, 384, 384) == (1, 384)  # never 0


def test_tokens_per_tile():
    assert tokens_per_tile(384, 14, 2) == 196  # 27 patches -> padded to 28 -> 14 x 14
    assert tokens_per_tile(54, 2, 2) == 196  # the same 27 -> 14 path at a small size
    assert tokens_per_tile(384, 14, 1) == 729


# ------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("cls", BACKENDS)
def test_output_shapes_and_grids(cls):
    processor = cls()
    images = [smooth_image(640, 480), smooth_image(100, 50), smooth_image(384, 1536)]
    out = processor(images, return_tensors="pt")
    # 640x480 -> 2x2 (768^2, s = 1.2 keeps R_e; 1x2 loses 36%) + thumbnail; 100x50 -> 1x1; 384x1536 -> 4x1 + thumbnail
    assert out["image_grids"].tolist() == [[2, 2], [1, 1], [4, 1]]
    assert out["image_grids"].dtype == torch.long
    assert out["pixel_values"].shape == (5 + 1 + 5, 3, 384, 384)
    assert out["pixel_values"].dtype == torch.float32
    assert -1.0 - 1e-6 <= out["pixel_values"].min() and out["pixel_values"].max() <= 1.0 + 1e-6
    tiles = [processor.get_num_tiles_from_grid(grid) for grid in out["image_grids"]]
    assert tiles == [5, 1, 5]
    assert [processor.get_number_of_image_tokens(h, w) for w, h in [(640, 480), (100, 50), (384, 1536)]] == [
        196 * 5,
        196 * 1,
        196 * 5,
    ]


@pytest.mark.parametrize("cls", BACKENDS)
def test_return_tensors_none_gives_lists(cls):
    out = cls()([smooth_image(640, 480), smooth_image(50, 50)])
    assert isinstance(out["pixel_values"], list) and len(out["pixel_values"]) == 6
    assert tuple(out["pixel_values"][0].shape) == (3, 384, 384)
    assert out["image_grids"] == [[2, 2], [1, 1]]


def test_thumbnail_skipped_for_single_tile_and_when_disabled():
    assert num_tiles_for_grid(1, 1) == 1
    assert num_tiles_for_grid(2, 3) == 7
    assert num_tiles_for_grid(2, 3, use_thumbnail=False) == 6
    processor = BlueLMVImageProcessor()
    assert processor(smooth_image(300, 200), return_tensors="pt")["pixel_values"].shape[0] == 1
    out = processor(smooth_image(640, 480), use_thumbnail=False, return_tensors="pt")
    assert out["pixel_values"].shape[0] == 4
    assert processor.get_num_tiles(480, 640, images_kwargs={"use_thumbnail": False}) == 4
    assert BlueLMVImageProcessor(use_thumbnail=False).get_num_tiles_from_grid([2, 2]) == 4


def test_num_patches_and_crop_to_patches_match_internvl_usage():
    """TRL's GRPOTrainer counts tiles with `image_processor(images=..., crop_to_patches=True)["num_patches"]`."""
    processor = BlueLMVImageProcessor()
    images = [smooth_image(640, 480), smooth_image(300, 200), smooth_image(1500, 380)]
    out = processor(images=images, crop_to_patches=True, return_tensors="pt")
    assert out["num_patches"].tolist() == [processor.get_num_tiles(480, 640), 1, processor.get_num_tiles(380, 1500)]
    assert out["num_patches"].sum() == out["pixel_values"].shape[0]
    assert out["num_patches"].tolist() == [5, 1, 5]  # 2x2 + thumbnail; 1x1; 1x4 (1536x384 keeps all 1500x380) + thumbnail
    with pytest.raises(ValueError, match="crop_to_patches=False is not supported.*max_grid_size=1"):
        processor(images=images, crop_to_patches=False)


def test_tile_order_is_row_major_then_thumbnail():
    # 32x32 with 16 px tiles -> 2x2 exactly (no resampling): quadrants come out top-left, top-right, bottom-left,
    # bottom-right, then the 16x16 thumbnail.
    image = PIL.Image.new("RGB", (32, 32))
    for (x, y), colour in zip([(0, 0), (16, 0), (0, 16), (16, 16)], [RED, GREEN, BLUE, WHITE]):
        image.paste(colour, (x, y, x + 16, y + 16))
    out = exact(image)
    assert out["image_grids"].tolist() == [[2, 2]]
    assert [rgb_of(out["pixel_values"], tile, 8, 8) for tile in range(4)] == [RED, GREEN, BLUE, WHITE]
    assert rgb_of(out["pixel_values"], 4, 2, 2) == RED  # thumbnail's top-left quadrant
    assert rgb_of(out["pixel_values"], 4, 13, 13) == WHITE


def test_padding_is_black_and_centered():
    # 16x8 white -> 1x1 grid, fits 16x8 with no resize, padded by 4 rows above and below.
    out = exact(PIL.Image.new("RGB", (16, 8), WHITE))
    assert [rgb_of(out["pixel_values"], 0, y, 5) for y in (0, 3, 4, 11, 12, 15)] == [BLACK, BLACK, WHITE, WHITE,
                                                                                     BLACK, BLACK]


@pytest.mark.parametrize("size", [(640, 480), (1500, 700), (300, 1000), (4000, 900), (383, 385)])
def test_backends_agree(size):
    image = smooth_image(*size)
    a = BlueLMVImageProcessor()(image, return_tensors="pt")
    b = BlueLMVImageProcessorPil()(image, return_tensors="pt")
    assert a["image_grids"].tolist() == b["image_grids"].tolist()
    assert a["pixel_values"].shape == b["pixel_values"].shape
    assert (a["pixel_values"] - b["pixel_values"]).abs().mean() < 0.01  # values span [-1, 1]


def test_array_and_tensor_inputs_match_pil():
    image = smooth_image(200, 120)
    array = np.array(image)
    reference = BlueLMVImageProcessor()(image, return_tensors="pt")["pixel_values"]
    for variant in (array, array.transpose(2, 0, 1).copy(), torch.from_numpy(array).permute(2, 0, 1), array[None]):
        got = BlueLMVImageProcessor()(variant, return_tensors="pt")["pixel_values"]
        assert got.shape == reference.shape
        assert (got - reference).abs().max() < 0.02
    gray = BlueLMVImageProcessorPil()(np.full((20, 30), 128, np.uint8), return_tensors="pt")
    assert gray["pixel_values"].shape == (1, 3, 384, 384)


def test_paths_bytes_and_nested_lists(tmp_path):
    image = PIL.Image.new("RGB", (16, 16), BLUE)
    path = tmp_path / "blue.png"
    image.save(path)
    data = png_bytes(PIL.Image.new("RGB", (16, 16), GREEN))
    for cls in BACKENDS:
        out = cls(tile_size=16, patch_size=1)([[str(path)], [Path(path), data]], return_tensors="pt")
        assert [rgb_of(out["pixel_values"], tile, 5, 5) for tile in range(3)] == [BLUE, BLUE, GREEN]


def test_size_mirrors_tile_size_and_round_trips(tmp_path):
    processor = BlueLMVImageProcessorPil(size={"height": 56, "width": 56}, max_grid_size=3)
    assert processor.tile_size == 56
    processor.save_pretrained(tmp_path)
    loaded = BlueLMVImageProcessor.from_pretrained(tmp_path)
    assert (loaded.tile_size, loaded.size.height, loaded.max_grid_size) == (56, 56, 3)
    assert loaded.to_dict()["image_processor_type"] == "BlueLMVImageProcessor"
    with pytest.raises(ValueError, match="disagrees with tile_size=384"):
        BlueLMVImageProcessor(size={"height": 56, "width": 56}, tile_size=384)
    with pytest.raises(ValueError, match="max_grid_size must be a positive integer, got 0"):
        BlueLMVImageProcessor(max_grid_size=0)


# ------------------------------------------------------------------------------------------- modes and EXIF
def palette_image(transparent_index=None) -> PIL.Image.Image:
    image = PIL.Image.new("P", (16, 16), 0)
    image.putpalette(list(RED) + list(GREEN) + [0, 0, 0] * 254)
    image.paste(1, (8, 0, 16, 16))  # right half green
    if transparent_index is not None:
        image.info["transparency"] = transparent_index
    return image


def gray16(value: int) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.full((16, 16), value, np.uint16))  # mode I;16


MODE_CASES = {
    "P": (palette_image(), [RED, GREEN]),
    "P transparent": (palette_image(transparent_index=1), [RED, WHITE]),
    "P via PNG tRNS": (PIL.Image.open(io.BytesIO(png_bytes(palette_image(), transparency=0))), [WHITE, GREEN]),
    "RGBA": (PIL.Image.new("RGBA", (16, 16), (0, 0, 0, 0)), [WHITE, WHITE]),
    "RGBA half": (PIL.Image.new("RGBA", (16, 16), (255, 0, 0, 128)), [(255, 127, 127)] * 2),
    "LA": (PIL.Image.new("LA", (16, 16), (0, 0)), [WHITE, WHITE]),
    "L": (PIL.Image.new("L", (16, 16), 128), [(128, 128, 128)] * 2),
    "1": (PIL.Image.new("1", (16, 16), 1), [WHITE, WHITE]),
    "CMYK": (PIL.Image.new("CMYK", (16, 16), (0, 255, 255, 0)), [RED, RED]),
    "I;16 max": (gray16(65535), [WHITE, WHITE]),
    "I;16 257*100": (gray16(25700), [(100, 100, 100)] * 2),
    "I;16 via PNG": (PIL.Image.open(io.BytesIO(png_bytes(gray16(65535)))), [WHITE, WHITE]),
    "I 16-bit": (PIL.Image.fromarray(np.full((16, 16), 65535, np.int32)), [WHITE, WHITE]),
    "I 8-bit": (PIL.Image.fromarray(np.full((16, 16), 200, np.int32)), [(200, 200, 200)] * 2),
    "F 0..1": (PIL.Image.fromarray(np.full((16, 16), 1.0, np.float32)), [WHITE, WHITE]),
    "F 0..255": (PIL.Image.fromarray(np.full((16, 16), 64.0, np.float32)), [(64, 64, 64)] * 2),
}


@pytest.mark.parametrize("case", list(MODE_CASES))
def test_mode_conversion_colours(case):
    image, (left, right) = MODE_CASES[case]
    converted = to_rgb(image)
    assert converted.mode == "RGB" and converted.size == image.size
    assert converted.getpixel((2, 8)) == left
    assert converted.getpixel((13, 8)) == right
    for cls in BACKENDS:  # and through the processors, untouched by resampling
        out = cls(tile_size=16, patch_size=1)(image, return_tensors="pt")
        assert rgb_of(out["pixel_values"], 0, 8, 2) == left, cls.__name__
        assert rgb_of(out["pixel_values"], 0, 8, 13) == right, cls.__name__


def test_float_and_int_modes_outside_known_ranges_are_stretched():
    values = np.zeros((4, 4), np.float32)
    values[0, 0], values[3, 3] = -10.0, 1000.0
    stretched = np.asarray(to_rgb(PIL.Image.fromarray(values)))
    assert stretched[0, 0].tolist() == [0, 0, 0] and stretched[3, 3].tolist() == [255, 255, 255]
    constant = np.asarray(to_rgb(PIL.Image.fromarray(np.full((2, 2), -5, np.int32))))
    assert constant.max() == 0
    with_nan = np.asarray(to_rgb(PIL.Image.fromarray(np.array([[np.nan, 0.5]], np.float32))))
    assert with_nan[0].tolist() == [[0, 0, 0], [128, 128, 128]]


def test_exif_orientation_applied():
    # Stored 80x40: left half red, right half blue. Orientation 6 = rotate 90 degrees clockwise to display, so the
    # upright image is 40x80 with red on top.
    stored = PIL.Image.new("RGB", (80, 40), BLUE)
    stored.paste(RED, (0, 0, 40, 40))
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    data = png_bytes(stored, exif=exif)
    upright = to_rgb(PIL.Image.open(io.BytesIO(data)))
    assert upright.size == (40, 80)
    assert upright.getpixel((20, 10)) == RED and upright.getpixel((20, 70)) == BLUE
    # Through the processor (16 px tiles): 40x80 upright -> more rows than columns, top tile red.
    processor = BlueLMVImageProcessor(tile_size=16, patch_size=1)
    out = processor(data, return_tensors="pt")
    rows, cols = out["image_grids"][0].tolist()
    assert (rows, cols) == tuple(processor.get_anyres_plan(80, 40)[:2])
    assert rows > cols
    assert rgb_of(out["pixel_values"], 0, 15, 8) == RED
    assert rgb_of(out["pixel_values"], rows * cols - 1, 0, 8) == BLUE


# ----------------------------------------------------------------------------------------- do_convert_rgb
# The channels each PIL mode keeps with do_convert_rgb=False: a palette is expanded (its indices are not pixel
# values), 1-bit and high-bit-depth grayscale become 8-bit L.
KEPT_CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4, "YCbCr": 3, "1": 1, "I;16": 1, "I": 1, "F": 1,
                 "P": 3, "P transparent": 4}


def mode_image(mode: str, width: int, height: int, seed: int) -> PIL.Image.Image:
    """A random-pixel image of `mode` ("P transparent": a palette image with a transparent index)."""
    rng = np.random.default_rng(seed)
    if mode.startswith("P"):
        image = PIL.Image.fromarray(rng.integers(0, 4, (height, width), dtype=np.uint8), "P")
        image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])
        if mode == "P transparent":
            image.info["transparency"] = 1
        return image
    if mode in ("I;16", "I", "F"):
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        return PIL.Image.fromarray(rng.integers(0, 65536, (height, width)).astype(dtype))
    if mode == "1":
        return PIL.Image.fromarray(rng.integers(0, 2, (height, width), dtype=bool))
    bands = len(PIL.Image.new(mode, (1, 1)).getbands())
    return PIL.Image.frombytes(mode, (width, height), rng.integers(0, 256, width * height * bands, np.uint8).tobytes())


@settings(max_examples=40, deadline=None)
@given(mode=st.sampled_from(sorted(KEPT_CHANNELS)), width=st.integers(1, 90), height=st.integers(1, 90),
       seed=st.integers(0, 2**16), pil_backend=st.booleans())
def test_do_convert_rgb_false_keeps_the_image_channels(mode, width, height, seed, pil_backend):
    cls = BlueLMVImageProcessorPil if pil_backend else BlueLMVImageProcessor
    processor = cls(tile_size=16, patch_size=2, max_grid_size=2)
    image = mode_image(mode, width, height, seed)
    channels = KEPT_CHANNELS[mode]
    default = processor(image, return_tensors="pt")
    kept = processor(image, do_convert_rgb=False, image_mean=[0.5] * channels, image_std=[0.5] * channels,
                     return_tensors="pt")
    assert default["pixel_values"].shape[1] == 3
    assert kept["pixel_values"].shape == (default["pixel_values"].shape[0], channels, 16, 16)
    assert kept["image_grids"].tolist() == default["image_grids"].tolist()  # the plan does not depend on channels
    if mode == "RGB":  # nothing to convert: the same pixels either way
        assert torch.equal(kept["pixel_values"], default["pixel_values"])
    elif mode == "L":  # the one gray channel, where RGB repeats it three times
        assert torch.equal(kept["pixel_values"][:, 0], default["pixel_values"][:, 0])
    if channels == 3:  # the default 3-value SigLIP mean/std fit
        assert torch.equal(processor(image, do_convert_rgb=False, return_tensors="pt")["pixel_values"],
                           kept["pixel_values"])
    else:
        with pytest.raises(ValueError, match=f"image 0 has {channels} channels but image_mean has 3 values"):
            processor(image, do_convert_rgb=False, return_tensors="pt")


@pytest.mark.parametrize("cls", BACKENDS)
def test_do_convert_rgb_false_arrays_and_mixed_channels(cls, tmp_path):
    processor = cls(tile_size=16, patch_size=2, max_grid_size=1)
    # Encoded sources too, given directly or through fetch_images (which ProcessorMixin calls first): the channels
    # are kept until the processor's conversion step.
    la = PIL.Image.new("LA", (16, 16), (90, 0))
    la.save(tmp_path / "la.png")
    for source in (str(tmp_path / "la.png"), png_bytes(la)):
        for passed in (source, processor.fetch_images(source)):
            kept = processor(passed, do_convert_rgb=False, do_normalize=False, return_tensors="pt")["pixel_values"]
            assert kept.shape == (1, 2, 16, 16) and kept[0, 0, 8, 8] == pytest.approx(90 / 255)
            assert rgb_of(processor(passed, return_tensors="pt")["pixel_values"], 0, 8, 8) == WHITE
    rgba = np.random.default_rng(0).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    for layout, array in (("channels_last", rgba), ("channels_first", np.moveaxis(rgba, -1, 0))):
        out = processor(array, do_convert_rgb=False, input_data_format=layout, image_mean=[0.0] * 4,
                        image_std=[1.0] * 4, return_tensors="pt")
        assert out["pixel_values"].shape == (1, 4, 16, 16), layout
    # The transparent pixels' colour survives (the default composites them onto white).
    clear = np.zeros((16, 16, 4), np.uint8)
    clear[..., 0] = 200
    kept = processor(clear, do_convert_rgb=False, do_normalize=False, return_tensors="pt")["pixel_values"]
    assert torch.allclose(kept[0, :, 8, 8], torch.tensor([200 / 255, 0.0, 0.0, 0.0]))
    assert rgb_of(processor(clear, return_tensors="pt")["pixel_values"], 0, 8, 8) == WHITE
    gray = PIL.Image.new("L", (16, 16), 7)
    with pytest.raises(ValueError, match="image 1 has 1 channels but image 0 has 4"):
        processor([clear, gray], do_convert_rgb=False, do_normalize=False, return_tensors="pt")
    with pytest.raises(ValueError, match="input_data_format must be"):
        processor(rgba, do_convert_rgb=False, input_data_format="channels_middle")


# ------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("cls", BACKENDS)
def test_zero_size_images(cls):
    processor = cls()
    good = PIL.Image.new("RGB", (20, 20))
    with pytest.raises(ValueError, match=r"image 1 has size 0x17 \(width x height\)"):
        processor([good, PIL.Image.new("RGB", (0, 17))])
    with pytest.raises(ValueError, match=r"image 0 has size 0x17 \(width x height, array shape \(17, 0, 3\)\)"):
        processor(np.zeros((17, 0, 3), np.uint8))
    with pytest.raises(ValueError, match=r"image 0 has size 5x0"):
        processor(torch.zeros(3, 0, 5, dtype=torch.uint8))


@pytest.mark.parametrize("cls", BACKENDS)
def test_corrupt_files_and_bytes(cls, tmp_path):
    processor = cls()
    garbage = tmp_path / "photo.jpg"
    garbage.write_bytes(b"this is not a JPEG" * 10)
    with pytest.raises(ValueError, match=r"image 0 \('.*photo\.jpg'\) is not in an image format PIL recognises"):
        processor(str(garbage))
    with pytest.raises(ValueError, match=r"image 1 \(5 bytes\) is not in an image format"):
        processor([PIL.Image.new("RGB", (8, 8)), b"\x00\x01\x02\x03\x04"])
    full = png_bytes(PIL.Image.effect_noise((64, 64), 50).convert("RGB"))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(full[: len(full) // 2])
    with pytest.raises(ValueError, match=r"image 0 \('.*truncated\.png', PNG 64x64, mode RGB\) could not be decoded"):
        processor(str(truncated))
    with pytest.raises(ValueError, match=r"image 0: could not load an image from source \(not an existing file"):
        processor(str(tmp_path / "missing.png"))


@pytest.mark.parametrize("cls", BACKENDS)
def test_decompression_bombs(cls, monkeypatch, tmp_path):
    processor = cls()
    # Above 2 x MAX_IMAGE_PIXELS PIL refuses to open the file at all.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(30000, 30000))
    limit = 2 * PIL.Image.MAX_IMAGE_PIXELS
    with pytest.raises(ValueError, match=rf"image 0 \('.*bomb\.png'\): 900000000 pixels exceeds the limit of {limit}"):
        processor(str(bomb))
    with pytest.raises(ValueError, match=r"\(\d+ bytes\): 900000000 pixels exceeds the limit"):
        processor(png_header(30000, 30000))
    # Above MAX_IMAGE_PIXELS (PIL only warns) and for in-memory images, the size is in the message.
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match=r"image 0 of 50x40 = 2000 pixels exceeds the limit of 1000 pixels"):
        processor(PIL.Image.new("RGB", (50, 40)))
    warned = tmp_path / "warned.png"
    PIL.Image.new("RGB", (50, 40)).save(warned)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
        with pytest.raises(ValueError, match=r"image 0 of 50x40 = 2000 pixels exceeds the limit of 1000 pixels"):
            processor(str(warned))


def test_unsupported_inputs():
    with pytest.raises(ValueError, match="image 0 has unsupported type dict"):
        BlueLMVImageProcessor()({"not": "an image"})
    with pytest.raises(ValueError, match=r"image 0 is an array of shape \(2, 3, 4, 5, 6\)"):
        BlueLMVImageProcessor()(np.zeros((2, 3, 4, 5, 6), np.uint8))


# ------------------------------------------------------------------------------------------- fuzz
SIDES = st.integers(min_value=1, max_value=3000)
FUZZ_MODES = ["RGB", "L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1"]


@settings(max_examples=400, deadline=None)
@given(width=SIDES, height=SIDES)
@example(width=1, height=3000)
@example(width=3000, height=1)
@example(width=3000, height=3000)
@example(width=1, height=1)
def test_fuzz_token_counts_at_384(width, height):
    processor = BlueLMVImageProcessor()
    plan = processor.get_anyres_plan(height, width)
    tiles = processor.get_num_tiles(height, width)
    assert tiles == num_tiles_for_grid(plan.num_rows, plan.num_cols) <= 4 * 4 + 1
    assert processor.get_number_of_image_tokens(height, width) == 196 * tiles
    # The resized image fills the canvas along one side and fits inside it along the other.
    assert plan.resized_height <= plan.num_rows * 384 and plan.resized_width <= plan.num_cols * 384
    assert plan.resized_height == plan.num_rows * 384 or plan.resized_width == plan.num_cols * 384


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=SIDES,
    height=SIDES,
    mode=st.sampled_from(FUZZ_MODES),
    pil_backend=st.booleans(),
)
@example(width=1, height=3000, mode="RGB", pil_backend=False)
@example(width=3000, height=1, mode="I;16", pil_backend=True)
@example(width=3000, height=2999, mode="P", pil_backend=False)
def test_fuzz_processing(width, height, mode, pil_backend):
    # 54 px tiles with 2 px patches keep the real 27 -> 28 -> 14 token path (196 per tile) at 1/50 of the pixels.
    cls = BlueLMVImageProcessorPil if pil_backend else BlueLMVImageProcessor
    processor = cls(tile_size=54, patch_size=2, max_image_side=212)
    image = PIL.Image.new(mode, (width, height))
    out = processor(image, return_tensors="pt")
    tiles = out["pixel_values"].shape[0]
    assert out["pixel_values"].shape[1:] == (3, 54, 54)
    assert tiles == processor.get_num_tiles(height, width) == processor.get_num_tiles_from_grid(out["image_grids"][0])
    assert tiles <= 4 * 4 + 1
    assert processor.get_number_of_image_tokens(height, width) == 196 * tiles
    assert torch.isfinite(out["pixel_values"]).all()


@pytest.mark.parametrize("size", [(4032, 3024), (1, 2000), (2000, 1)])
def test_real_size_extremes_at_384(size):
    out = BlueLMVImageProcessor()(PIL.Image.new("RGB", size, GREEN), return_tensors="pt")
    rows, cols = out["image_grids"][0].tolist()
    assert out["pixel_values"].shape == (num_tiles_for_grid(rows, cols), 3, 384, 384)
