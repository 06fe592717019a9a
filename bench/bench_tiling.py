"""How many image tokens does each tiling rule spend on typical inputs?

Question: over a weighted mixture of real-world image sizes (shared/data/image_sizes.csv), how many LLM image tokens
per image does BlueLM-V's relaxed aspect-ratio matching use, compared with LLaVA-NeXT's `select_best_resolution` and
InternVL-1.5's closest-aspect-ratio rule, all at the same tile (384 px, 196 tokens) and thumbnail rule?

    python bench/bench_tiling.py [--csv PATH]

Rules compared (tokens = 196 x tiles; tiles = grid + 1 thumbnail when the grid has more than one tile):
  ours       `plan_anyres`: longer side capped at 1512, then `select_best_grid` (alpha 0.1) over grids up to 4x4.
  llava-next transformers' `select_best_resolution` over the same 16 grids (pinpoints at 384 px), on the same
             1512-capped size, so only the selection rule differs.
  internvl   InternVL-1.5 `dynamic_preprocess`'s `find_closest_aspect_ratio` (min_num=1, max_num=16 tiles, so grids
             such as 1x16 and 8x2 are allowed), reimplemented line for line, on the original size as InternVL does.
"""

import argparse
import csv
from collections import defaultdict
from pathlib import Path

from transformers.image_processing_utils import select_best_resolution

from bluelm_hf.image_processing_bluelm_v import (
    candidate_grids,
    limit_image_side,
    num_tiles_for_grid,
    plan_anyres,
    tokens_per_tile,
)

TILE = 384
MAX_GRID = 4
MAX_IMAGE_SIDE = 1512
TOKENS_PER_TILE = tokens_per_tile(TILE, 14, 2)
DEFAULT_CSV = Path(__file__).resolve().parents[1].parent / "shared/data/image_sizes.csv"


def read_sizes(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        rows = csv.DictReader(line for line in handle if not line.lstrip().startswith("#"))
        return [
            {
                "category": r["category"],
                "width": int(r["width"]),
                "height": int(r["height"]),
                "weight": float(r["weight"]),
            }
            for r in rows
        ]


def tiles_ours(width: int, height: int) -> int:
    return plan_anyres(height, width, TILE, MAX_GRID, MAX_IMAGE_SIDE, alpha=0.1).num_tiles


LLAVA_PINPOINTS = [[rows * TILE, cols * TILE] for rows, cols in candidate_grids(MAX_GRID)]  # (height, width)


def tiles_llava_next(width: int, height: int) -> int:
    plan_h, plan_w = limit_image_side(height, width, MAX_IMAGE_SIDE)
    best_h, best_w = select_best_resolution((plan_h, plan_w), LLAVA_PINPOINTS)
    return num_tiles_for_grid(best_h // TILE, best_w // TILE)


def find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size):
    """InternVL-1.5 (OpenGVLab/InternVL, internvl_chat/internvl/train/dataset.py), unchanged."""
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def internvl_target_ratios(min_num: int = 1, max_num: int = 16) -> list[tuple[int, int]]:
    """`dynamic_preprocess`'s candidate (cols, rows) ratios, in its order."""
    target_ratios = set(
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if i * j <= max_num and i * j >= min_num
    )
    return sorted(target_ratios, key=lambda x: x[0] * x[1])


INTERNVL_RATIOS = internvl_target_ratios()


def tiles_internvl(width: int, height: int) -> int:
    cols, rows = find_closest_aspect_ratio(width / height, INTERNVL_RATIOS, width, height, TILE)
    return num_tiles_for_grid(rows, cols)  # InternVL adds its thumbnail only when blocks != 1, as we do


RULES = {"ours (relaxed, alpha 0.1)": tiles_ours, "llava-next select_best_resolution": tiles_llava_next,
         "internvl-1.5 closest aspect ratio": tiles_internvl}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help=f"image size mixture (default {DEFAULT_CSV})")
    args = parser.parse_args()
    sizes = read_sizes(args.csv)
    total_weight = sum(s["weight"] for s in sizes)

    tiles = {name: [rule(s["width"], s["height"]) for s in sizes] for name, rule in RULES.items()}
    ours = tiles[next(iter(RULES))]

    print(f"Image tokens per image over {len(sizes)} sizes from {args.csv.name} (weighted; tile {TILE} px, "
          f"{TOKENS_PER_TILE} tokens/tile, grids up to {MAX_GRID}x{MAX_GRID} / 16 tiles, thumbnail when > 1 tile)\n")
    print("| rule | mean tokens / image | mean tiles / image | share using more tiles than ours | "
          "share using fewer tiles than ours |")
    print("|---|---:|---:|---:|---:|")
    for name, counts in tiles.items():
        mean_tiles = sum(c * s["weight"] for c, s in zip(counts, sizes)) / total_weight
        more = sum(s["weight"] for c, o, s in zip(counts, ours, sizes) if c > o) / total_weight
        fewer = sum(s["weight"] for c, o, s in zip(counts, ours, sizes) if c < o) / total_weight
        print(f"| {name} | {mean_tiles * TOKENS_PER_TILE:.0f} | {mean_tiles:.2f} | {more:.1%} | {fewer:.1%} |")

    print("\nMean tokens / image by category\n")
    names = list(RULES)
    print("| category | weight | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    by_category = defaultdict(list)
    for index, s in enumerate(sizes):
        by_category[s["category"]].append(index)
    for category, indices in by_category.items():
        weight = sum(sizes[i]["weight"] for i in indices)
        means = [sum(tiles[n][i] * sizes[i]["weight"] for i in indices) / weight * TOKENS_PER_TILE for n in names]
        print(f"| {category} | {weight:g} | " + " | ".join(f"{m:.0f}" for m in means) + " |")

    print("\nPer size (tiles: ours / llava-next / internvl)\n")
    print("| category | width x height | weight | ours | llava-next | internvl |")
    print("|---|---|---:|---:|---:|---:|")
    for index, s in enumerate(sizes):
        counts = [tiles[n][index] for n in names]
        cells = " | ".join(map(str, counts))
        print(f"| {s['category']} | {s['width']}x{s['height']} | {s['weight']:g} | {cells} |")


if __name__ == "__main__":
    main()
