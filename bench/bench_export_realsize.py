"""Export the BlueLM-2.5-3B preset (2.9B parameters, random seeded weights: vivo released none) and measure it.

    python bench/bench_export_realsize.py --work-dir DIR [--stages checkpoint,export,quantize,bandwidth,pytorch,mixed]

Stages, each in its own subprocess (so each peak RSS is that process's own, `VmHWM`), results appended to
DIR/results.jsonl as they come in:

    checkpoint  the preset in bfloat16 with seeded random weights (the nano's tokenizer; its ids fit the 100K
                vocabulary), saved with `save_pretrained`: 5.8 GB
    export      `export_model(..., quant="none", low_memory=True, verify=False)`: the fp32 ONNX export, one
                component in float32 at a time (docs/export.md, "Real size within a RAM budget")
    quantize    `quantize_export(fp32, mixed, "mixed", verify=False)`: INT8 ViT + projector, INT4 LLM, read from disk
    bandwidth   memory bandwidth of this machine: a large torch reduction (read) and copy (read + write)
    pytorch     PyTorch bf16 eager: time to first token for a 1512x1512 and a 640x480 image, decode tokens/s
    mixed       the same on the mixed export (`BlueLMVExportedForConditionalGeneration`, ONNX Runtime)

`--summary` prints the markdown table from results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _status(field: str) -> float:
    """This process's `VmHWM` (peak) or `VmRSS` (current) resident set in MiB, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


BARE = _status("VmRSS")  # the bare interpreter: only the standard library imported so far

SEED = 0
IMAGES = {"640x480": (640, 480), "1512x1512": (1512, 1512)}
STAGES = ("checkpoint", "export", "quantize", "bandwidth", "pytorch", "mixed")


def _record(work: Path, result: dict) -> None:
    result["uptime"] = Path("/proc/loadavg").read_text().split()[:3]
    result["time_utc"] = time.strftime("%H:%M:%S", time.gmtime())
    with open(work / "results.jsonl", "a") as out:
        out.write(json.dumps(result) + "\n")
    print(json.dumps(result), flush=True)


def stage_checkpoint(work: Path, args) -> dict:
    import torch
    from transformers import AutoTokenizer

    import bluelm_hf
    from bluelm_hf import BlueLMVConfig, BlueLMVForConditionalGeneration
    from bluelm_hf.assemble import add_bluelm_special_tokens, build_processor

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(bluelm_hf.NANO)
    config = BlueLMVConfig.bluelm_2_5_3b(**add_bluelm_special_tokens(tokenizer))
    tokenizer.model_max_length = config.text_config.max_position_embeddings  # the nano's is 1024: a 4x4 grid is 3.4K
    torch.manual_seed(SEED)
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: 5.8 GB, never the 11.6 GB of float32
    model = BlueLMVForConditionalGeneration(config).eval()
    torch.set_default_dtype(torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(work / "checkpoint")
    build_processor(config, tokenizer).save_pretrained(work / "checkpoint")
    return {"parameters": parameters, "seconds": time.perf_counter() - start}


def _sizes(export_dir: Path) -> dict:
    manifest = json.loads((export_dir / "bluelm_export.json").read_text())
    return {name: entry["size_bytes"] for name, entry in manifest["components"].items()}


def stage_export(work: Path, args) -> dict:
    from bluelm_hf.export import export_model

    start = time.perf_counter()
    export_model(work / "checkpoint", work / "fp32", quant="none", low_memory=True, verify=False, overwrite=True)
    return {"seconds": time.perf_counter() - start, "sizes": _sizes(work / "fp32")}


def stage_quantize(work: Path, args) -> dict:
    from bluelm_hf.export import quantize_export

    start = time.perf_counter()
    quantize_export(work / "fp32", work / "mixed", "mixed", verify=False, overwrite=True, model_dir=work / "checkpoint")
    return {"seconds": time.perf_counter() - start, "sizes": _sizes(work / "mixed")}


def stage_bandwidth(work: Path, args) -> dict:
    """Memory bandwidth with `args.threads` threads over 1 GiB buffers (32x the L3): best of 5 of a sum (reads the
    buffer once) and of a copy (reads one, writes the other; counted as 2 x 1 GiB moved)."""
    import torch

    size = 2**30
    a = torch.ones(size // 4)
    b = torch.empty_like(a)
    reads, copies = [], []
    for _ in range(5):
        start = time.perf_counter()
        a.sum()
        reads.append(size / (time.perf_counter() - start) / 1e9)
        start = time.perf_counter()
        b.copy_(a)
        copies.append(2 * size / (time.perf_counter() - start) / 1e9)
    return {"read_gb_s": max(reads), "copy_gb_s": max(copies), "buffer_bytes": size}


def _image(width: int, height: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(SEED)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _generate_timed(model, processor, image, tokens: int) -> dict:
    """Preprocess, then greedy `generate` of `tokens` new tokens (EOS suppressed); time to first token (vision +
    embeddings + prefill), decode tokens/s over the rest."""
    import torch

    content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": "Describe the picture."}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    start = time.perf_counter()
    batch = processor(text=[text], images=[image] if image is not None else None, return_tensors="pt")
    preprocess = time.perf_counter() - start
    from bench_export import _Clock  # the streamer bench/bench_export.py times with (this script's folder)

    clock = _Clock()
    with torch.inference_mode():
        start = time.perf_counter()
        out = model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, streamer=clock)
    _, first, *rest = clock.times  # the streamer's first put is the prompt
    result = {
        "prompt_tokens": int(batch["input_ids"].shape[1]),
        "tiles": int(batch["pixel_values"].shape[0]) if "pixel_values" in batch else 0,
        "preprocess_s": preprocess,
        "ttft_s": first - start,
        "new_tokens": len(rest) + 1,
        "tokens": out[0, batch["input_ids"].shape[1] :].tolist(),
    }
    if rest:
        result["decode_tokens_per_s"] = len(rest) / (rest[-1] - first)
    return result


def _run_model(work: Path, args, variant: str) -> dict:
    import torch

    import bluelm_hf  # noqa: F401
    import onnxruntime  # noqa: F401  (imported by both variants: the same baseline)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    imported = _status("VmRSS")
    start = time.perf_counter()
    if variant == "pytorch":
        model = AutoModelForImageTextToText.from_pretrained(work / "checkpoint", dtype=torch.bfloat16).eval()
        processor = AutoProcessor.from_pretrained(work / "checkpoint")
    else:
        from bluelm_hf.export import BlueLMVExportedForConditionalGeneration

        model = BlueLMVExportedForConditionalGeneration.from_pretrained(work / variant, num_threads=args.threads)
        processor = AutoProcessor.from_pretrained(work / variant)
    result = {"load_s": time.perf_counter() - start, "imported_rss_mib": imported}
    _generate_timed(model, processor, None, 2)  # warm-up: thread pools, allocator, lazy initialisation
    for name in args.images.split(","):
        width, height = IMAGES[name]
        tokens = args.tokens if name == "640x480" else 2
        measured = _generate_timed(model, processor, _image(width, height), tokens)
        result[name] = measured
        _record(work, {"stage": f"{variant}:{name}", **measured, "rss_mib": _status("VmHWM"), "bare_rss_mib": BARE})
    return result


def stage_pytorch(work: Path, args) -> dict:
    return _run_model(work, args, "pytorch")


def stage_mixed(work: Path, args) -> dict:
    return _run_model(work, args, "mixed")


def run_stage(name: str, work: Path, args) -> dict:
    """One stage in this process (the child): its result plus its own peak RSS."""
    import torch

    torch.set_num_threads(args.threads)
    baseline = _status("VmRSS")
    result = {"stage": name, **globals()[f"stage_{name}"](work, args)}
    result["peak_rss_mib"] = _status("VmHWM")
    result["baseline_rss_mib"] = baseline
    result["bare_rss_mib"] = BARE
    result["threads"] = args.threads
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", required=True, help="checkpoint, exports and results.jsonl go here")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {STAGES}")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tokens", type=int, default=32, help="decoded tokens per timed generation")
    parser.add_argument("--images", default=",".join(IMAGES), help=f"for pytorch / mixed: subset of {list(IMAGES)}")
    parser.add_argument("--summary", action="store_true", help="print the table from results.jsonl")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if args.summary:
        print(summary(work))
        return 0
    if args.stage:
        _record(work, run_stage(args.stage, work, args))
        return 0
    for name in args.stages.split(","):
        if name not in STAGES:
            parser.error(f"unknown stage {name!r}; choose from {', '.join(STAGES)}")
        cmd = [sys.executable, __file__, "--work-dir", str(work), "--stage", name, "--threads", str(args.threads),
               "--tokens", str(args.tokens), "--images", args.images]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        if subprocess.run(cmd, env=env).returncode:
            print(f"stage {name} failed", file=sys.stderr)
            return 1
    print(summary(work))
    return 0


def summary(work: Path) -> str:
    """Markdown tables from results.jsonl (the latest line of each stage)."""
    rows, bandwidths = {}, []
    for line in (work / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["stage"]] = row
        if row["stage"] == "bandwidth":
            bandwidths.append(row)
    if bandwidths:  # other jobs share the memory bus: the best measurement is the closest to the machine's own
        rows["bandwidth"] = max(bandwidths, key=lambda row: row["read_gb_s"])
    gib, mib, out = 2**30, 2**20, []
    if "export" in rows or "quantize" in rows:
        out += ["| step | time (s) | peak RSS (GiB) | vision (MB) | embedding (MB) | decoder (MB) | total (GB) "
                "| load |",
                "|---|---:|---:|---:|---:|---:|---:|---|"]
        for stage, label in (("export", "export fp32 (low_memory)"), ("quantize", "quantize -> mixed, from disk")):
            if stage in rows:
                r = rows[stage]
                sizes = r["sizes"]
                out.append(
                    f"| {label} | {r['seconds']:.0f} | {r['peak_rss_mib'] * mib / gib:.2f} | "
                    f"{sizes['vision_encoder'] / 1e6:.0f} | {sizes['embed_tokens'] / 1e6:.0f} | "
                    f"{sizes['decoder'] / 1e6:.0f} | {sum(sizes.values()) / 1e9:.3f} | {' '.join(r['uptime'])} |"
                )
    bandwidth = rows.get("bandwidth")
    if bandwidth:
        others = ", ".join(f"{b['read_gb_s']:.1f} at load {b['uptime'][0]}" for b in bandwidths if b is not bandwidth)
        out.append(f"\nmemory bandwidth ({bandwidth['threads']} threads, 1 GiB buffers), "
                   f"best of {len(bandwidths)} runs: "
                   f"read {bandwidth['read_gb_s']:.1f} GB/s, copy {bandwidth['copy_gb_s']:.1f} GB/s at load "
                   f"{bandwidth['uptime'][0]}" + (f" (other runs, read GB/s: {others})" if others else ""))
    weights = _decoder_weight_bytes(work)
    out += ["", "| runtime | image | tiles | prompt tokens | TTFT (s) | decode (tok/s) | weights read / token (GB) | "
            "bandwidth limit (tok/s) | peak RSS - bare (GiB) | load |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for variant, label in (("pytorch", "PyTorch bf16 eager"), ("mixed", "ORT mixed")):
        for image in IMAGES:
            r = rows.get(f"{variant}:{image}")
            if r is None:
                continue
            decode = r.get("decode_tokens_per_s")
            limit = bandwidth["read_gb_s"] * 1e9 / weights[variant] if bandwidth and variant in weights else None
            out.append(
                f"| {label} | {image} | {r['tiles']} | {r['prompt_tokens']} | {r['ttft_s']:.1f} | "
                f"{f'{decode:.3g}' if decode and r['new_tokens'] > 2 else '-'} | "
                f"{weights.get(variant, float('nan')) / 1e9:.2f} | {f'{limit:.2f}' if limit else '-'} | "
                f"{(r['rss_mib'] - r['bare_rss_mib']) * mib / gib:.2f} | {' '.join(r['uptime'])} |"
            )
    return "\n".join(out)


def _decoder_weight_bytes(work: Path) -> dict:
    """Bytes of weights one decode step reads: every decoder weight (layers, final norm, lm_head); the embedding
    lookup reads one row. PyTorch bf16: 2 bytes per LLM parameter; the export: its decoder's files."""
    weights = {}
    if (work / "mixed" / "bluelm_export.json").exists():
        weights["mixed"] = _sizes(work / "mixed")["decoder"]
    config_path = work / "checkpoint" / "config.json"
    if config_path.exists():
        text = json.loads(config_path.read_text())["text_config"]
        hidden, inter, layers = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"]
        kv = text["num_key_value_heads"] * text["head_dim"]
        q = text["num_attention_heads"] * text["head_dim"]
        per_layer = hidden * (q + 2 * kv) + q * hidden + 3 * hidden * inter + 2 * hidden
        weights["pytorch"] = 2 * (layers * per_layer + hidden + text["vocab_size"] * hidden)
    return weights


if __name__ == "__main__":
    sys.exit(main())
