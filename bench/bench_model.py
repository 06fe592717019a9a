"""Model-side speed: ViT+projector time vs tile count (linearity), and decode tokens/s vs LLaVA-NeXT.

    python bench/bench_model.py                 # both, small configs sized for a 2-core CPU
    python bench/bench_model.py --only vit
    python bench/bench_model.py --only decode

1. ViT+projector: `get_image_features` on 1..17 tiles (the AnyRes range: up to 4x4 + thumbnail) of a
   SigLIP tower; a least-squares line through the timings and its R^2 show cost is linear in tiles.
2. Decode: greedy tokens/s of BlueLM vs `LlavaNextForConditionalGeneration` with an equal-size config (same
   SigLIP-shaped tower width/depth for LLaVA's CLIP tower, same llama LLM, same prompt length and image),
   both timed in the same process, interleaved, median of repeats. The prompt is text-only so both decode
   against the same KV length: the LLM is identical, so this measures the per-step overhead each wrapper adds.
"""

import argparse
import statistics
import time

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


@torch.inference_mode()
def bench_decode(repeats: int, new_tokens: int) -> None:
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    tile = 336  # LLaVA-NeXT's CLIP tile; both models get one 336-px tile-equivalent image
    ours = bluelm_model(image_size=tile)
    llava_config = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=tile, projection_dim=512, **VISION),
        text_config=TEXT,
        image_token_index=31999,
        image_grid_pinpoints=[[tile, tile]],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    llava = LlavaNextForConditionalGeneration(llava_config).eval()
    prompt_len = 64
    ids = torch.randint(0, 31000, (1, prompt_len))

    def run(model):
        return model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False,
        )

    # decode speed is what is compared: the text-only prompt gives both the same KV length and LLM
    results = {"bluelm_hf": [], "llava_next": []}
    for model in (ours, llava):
        run(model)  # warm-up
    for _ in range(repeats):
        for name, model in (("bluelm_hf", ours), ("llava_next", llava)):
            start = time.perf_counter()
            run(model)
            results[name].append(new_tokens / (time.perf_counter() - start))
    print(f"\n### Decode tokens/s (greedy, batch 1, {prompt_len}-token prompt, {new_tokens} new tokens, same llama LLM)\n")
    print("| model | tokens/s (median) |")
    print("|---|---:|")
    med = {k: statistics.median(v) for k, v in results.items()}
    for name, value in med.items():
        print(f"| {name} | {value:.1f} |")
    print(f"\nratio bluelm_hf / llava_next = {med['bluelm_hf'] / med['llava_next']:.3f}")


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
