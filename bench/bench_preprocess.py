"""How fast is BlueLM-V's AnyRes preprocessing compared with LLaVA-NeXT's?

Question: images per second, CPU, torchvision backends, of `BlueLMVImageProcessor` vs transformers'
`LlavaNextImageProcessor` configured alike (384 px tiles, grids up to 4x4 as pinpoints, SigLIP mean/std, bicubic),
on the same fixed set of random-content PIL images whose sizes are drawn (by weight, fixed seed) from
shared/data/image_sizes.csv. One image per call (the per-request case), `return_tensors="pt"`. Both are warmed up on
the whole set; then, `--repeats` times, every image is timed with each processor back to back (so both see the same
machine load), and each image counts its fastest time.

    python bench/bench_preprocess.py [--csv PATH] [--images 32] [--repeats 5] [--threads N]

The two do different work by design (ours caps the longer side at 1512 and may pick fewer tiles), so the tiles/image
column is printed too. Both get the input as RGB PIL images; decoding is not timed.
"""

import argparse
import csv
import os
import platform
import random
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from transformers import LlavaNextImageProcessor

from bluelm_hf.image_processing_bluelm_v import BlueLMVImageProcessor, candidate_grids

DEFAULT_CSV = Path(__file__).resolve().parents[1].parent / "shared/data/image_sizes.csv"
TILE = 384


def read_sizes(path: Path) -> list[tuple[int, int, float]]:
    with open(path, newline="") as handle:
        rows = csv.DictReader(line for line in handle if not line.lstrip().startswith("#"))
        return [(int(r["width"]), int(r["height"]), float(r["weight"])) for r in rows]


def make_images(path: Path, count: int, seed: int = 0) -> list[PIL.Image.Image]:
    sizes = read_sizes(path)
    rng = random.Random(seed)
    picked = rng.choices([(w, h) for w, h, _ in sizes], weights=[wt for _, _, wt in sizes], k=count)
    generator = np.random.default_rng(seed)
    images = []
    for width, height in picked:
        # Smooth random content (a small random image upscaled) + noise: realistic-ish, and cheap to make.
        base = PIL.Image.fromarray(generator.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((width, height))
        noise = generator.integers(-8, 9, (height, width, 1), dtype=np.int16)
        images.append(PIL.Image.fromarray(np.clip(np.asarray(base, np.int16) + noise, 0, 255).astype(np.uint8)))
    return images


def llava_next() -> LlavaNextImageProcessor:
    return LlavaNextImageProcessor(
        size={"shortest_edge": TILE},
        crop_size={"height": TILE, "width": TILE},
        image_grid_pinpoints=[[rows * TILE, cols * TILE] for rows, cols in candidate_grids(4)],
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def time_processors(processors: dict, images, repeats: int) -> dict[str, tuple[float, float]]:
    """name -> (images per second from each image's fastest time, mean tiles per image)."""
    tiles = {name: 0 for name in processors}
    for image in images:  # warm-up
        for name, processor in processors.items():
            pixel_values = processor(image, return_tensors="pt")["pixel_values"]
            tiles[name] += pixel_values.reshape(-1, 3, TILE, TILE).shape[0]
    fastest = {name: [float("inf")] * len(images) for name in processors}
    for _ in range(repeats):
        for index, image in enumerate(images):
            for name, processor in processors.items():
                start = time.perf_counter()
                processor(image, return_tensors="pt")
                fastest[name][index] = min(fastest[name][index], time.perf_counter() - start)
    return {name: (len(images) / sum(fastest[name]), tiles[name] / len(images)) for name in processors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    images = make_images(args.csv, args.images)
    megapixels = sum(image.width * image.height for image in images) / 1e6
    results = time_processors({"ours": BlueLMVImageProcessor(), "llava": llava_next()}, images, args.repeats)
    (ours_ips, ours_tiles), (llava_ips, llava_tiles) = results["ours"], results["llava"]

    print(f"{len(images)} images ({megapixels:.1f} MP in total) from {args.csv.name}, one per call, fastest of "
          f"{args.repeats} per image; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, {platform.machine()}\n")
    print("| processor (torchvision backend) | images/s | ms/image | tiles/image |")
    print("|---|---:|---:|---:|")
    print(f"| BlueLMVImageProcessor | {ours_ips:.1f} | {1000 / ours_ips:.1f} | {ours_tiles:.2f} |")
    print(f"| LlavaNextImageProcessor (384 px, 4x4 pinpoints) | {llava_ips:.1f} | {1000 / llava_ips:.1f} | "
          f"{llava_tiles:.2f} |")
    print("\n(LLaVA-NeXT always adds its base-image tile, also to 1x1 grids; ours skips the thumbnail there.)")
    print(f"\nspeed-up ours / llava-next: {ours_ips / llava_ips:.2f}x")


if __name__ == "__main__":
    main()
