"""Model-side speed: ViT+projector time vs tile count (linearity), and decode tokens/s vs LLaVA-NeXT.

    python bench/bench_model.py                 # both, small configs sized for a 2-core CPU
    python bench/bench_model.py --only vit
    python bench/bench_model.py --only decode

1. ViT+projector: `get_image_features` on 1..17 tiles (the AnyRes range: up to 4x4 + thumbnail) of a
   SigLIP tower; a least-squares line through the timings and its R^2 show cost is linear in tiles.
2. Decode: greedy tokens/s of BlueLM vs `LlavaNextForConditionalGeneration` with an equal-size config (same
   SigLIP-shaped tower width/depth for LLaVA's CLIP tower, same llama LLM), both timed in the same process,
   interleaved, median of repeats, in two settings:
   - `text`: a text-only prompt, so both decode against the same KV length through the identical LLM; this
     isolates the per-step overhead each wrapper adds (parity is the expected result);
   - `image`: one 640x480 photo (the most common size in shared/data/image_sizes.csv), each model through its own
     processor at the same 384-px tile and the same 4x4 grid set. BlueLM's 2x2 merge gives 196 tokens per tile,
     LLaVA-NeXT 729 (plus a newline token per row, minus what it unpads), so LLaVA-NeXT decodes against a longer
     KV cache (2.9x on this image: 2975 against 1028 prompt tokens).
   Decode tokens/s = new tokens / (time(1 + N new tokens) - time(1 new token)), so prefill is not counted;
   prefill (the 1-token run) is reported on its own.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import bluelm_hf  # noqa: F401
from bluelm_hf import BlueLMVConfig, BlueLMVForConditionalGeneration

VISION = dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6, patch_size=14)
TEXT = dict(
    model_type="llama",
    vocab_size=32000,
    hidden_size=512,
    intermediate_size=1408,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=8,
    max_position_embeddings=4096,
)


def bluelm_model(image_size: int = 384) -> BlueLMVForConditionalGeneration:
    config = BlueLMVConfig(
        vision_config=dict(model_type="siglip_vision_model", image_size=image_size, vision_use_head=False, **VISION),
        text_config=TEXT,
        image_token_id=31999,
        vision_batch_size=4,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return BlueLMVForConditionalGeneration(config).eval()


def timeit(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def bench_vit(repeats: int) -> None:
    model = bluelm_model()
    tile = model.config.vision_config.image_size
    rows = []
    for tiles in (1, 2, 3, 5, 7, 9, 10, 13, 17):
        pixel_values = torch.randn(tiles, 3, tile, tile)
        model.get_image_features(pixel_values)  # warm-up
        rows.append((tiles, timeit(lambda: model.get_image_features(pixel_values), repeats)))
    xs, ys = [r[0] for r in rows], [r[1] for r in rows]
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    intercept = mean_y - slope * mean_x
    ss_res = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - mean_y) ** 2 for y in ys)
    print(f"\n### ViT+projector time vs tiles (tile {tile}px, vision_batch_size {model.config.vision_batch_size})\n")
    print("| tiles | time (ms) | ms / tile | linear fit (ms) |")
    print("|---:|---:|---:|---:|")
    for x, y in rows:
        print(f"| {x} | {y * 1e3:.1f} | {y * 1e3 / x:.1f} | {(intercept + slope * x) * 1e3:.1f} |")
    print(f"\nfit: {slope * 1e3:.2f} ms/tile + {intercept * 1e3:.2f} ms, R^2 = {1 - ss_res / ss_tot:.4f}")


def _llava_next(tile: int):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    from bluelm_hf.image_processing_bluelm_v import candidate_grids

    config = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=tile, projection_dim=512, **VISION),
        text_config=TEXT,
        image_token_index=31999,
        image_grid_pinpoints=[[rows * tile, cols * tile] for rows, cols in candidate_grids(4)],
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return LlavaNextForConditionalGeneration(config).eval()


def _image_inputs(tile: int, width: int, height: int) -> dict:
    """The same photo through each model's own processor (same tile, same grid set), plus the same question."""
    import numpy as np
    from PIL import Image
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    from bluelm_hf import BlueLMVImageProcessor, BlueLMVProcessor
    from bluelm_hf.image_processing_bluelm_v import candidate_grids
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes" / "nano"))
    from nano_data import tokenizer_corpus, train_tokenizer

    tokenizer = train_tokenizer(tokenizer_corpus(n=200))  # ids < 400: valid for both 32k-vocab LLMs
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
    ours = BlueLMVProcessor(
        image_processor=BlueLMVImageProcessor(tile_size=tile, max_grid_size=4, patch_size=14), tokenizer=tokenizer
    )
    llava = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(
            size={"shortest_edge": tile},
            crop_size={"height": tile, "width": tile},
            image_grid_pinpoints=[[rows * tile, cols * tile] for rows, cols in candidate_grids(4)],
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    text = "<image>How many red cells are there in this picture? Count them one by one."
    out = {
        "bluelm_hf": dict(ours(text=[text], images=[image], return_tensors="pt")),
        "llava_next": dict(llava(text=[text], images=[image], return_tensors="pt")),
    }
    # Both LLM configs use image token id 31999, whatever the tokenizer calls it.
    for inputs in out.values():
        inputs["input_ids"] = torch.where(inputs["input_ids"] == tokenizer.image_token_id, 31999, inputs["input_ids"])
    return out


@torch.inference_mode()
def bench_decode(repeats: int, new_tokens: int) -> None:
    tile = 384
    models = {"bluelm_hf": bluelm_model(image_size=tile), "llava_next": _llava_next(tile)}
    ids = torch.randint(0, 31000, (1, 64))
    settings = {
        "text": {name: {"input_ids": ids, "attention_mask": torch.ones_like(ids)} for name in models},
        "image": _image_inputs(tile, 640, 480),
    }

    def run(name, inputs, tokens):
        return models[name].generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)

    for setting, inputs in settings.items():
        for name in models:
            run(name, inputs[name], 2)  # warm-up
        full = {name: [] for name in models}
        first = {name: [] for name in models}
        for _ in range(repeats):  # interleaved, so load changes hit both models alike
            for name in models:
                start = time.perf_counter()
                run(name, inputs[name], 1)
                first[name].append(time.perf_counter() - start)
                start = time.perf_counter()
                run(name, inputs[name], 1 + new_tokens)
                full[name].append(time.perf_counter() - start)
        print(f"\n#### Decode, {setting} prompt (greedy, batch 1, {new_tokens} new tokens, same llama LLM)\n")
        print("| model | prompt tokens | image tokens | prefill ms (median) | decode tokens/s (median) |")
        print("|---|---:|---:|---:|---:|")
        rate = {}
        for name in models:
            prompt = int(inputs[name]["input_ids"].shape[1])
            image_tokens = int((inputs[name]["input_ids"] == 31999).sum())
            prefill = statistics.median(first[name])
            rate[name] = statistics.median(new_tokens / max(f - p, 1e-9) for f, p in zip(full[name], first[name]))
            print(f"| {name} | {prompt} | {image_tokens} | {prefill * 1e3:.0f} | {rate[name]:.1f} |")
        print(f"\nratio bluelm_hf / llava_next ({setting}) = {rate['bluelm_hf'] / rate['llava_next']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["vit", "decode"], default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.only in (None, "vit"):
        bench_vit(args.repeats)
    if args.only in (None, "decode"):
        bench_decode(args.repeats, args.new_tokens)


if __name__ == "__main__":
    main()
