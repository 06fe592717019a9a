"""Benchmark BlueLM exports against PyTorch eager: prefill time, decode tokens/s, peak memory.

    python bench/bench_export.py MODEL_DIR [--tokens 64] [--threads 2] [--work-dir DIR] [--int8-kv]

Exports MODEL_DIR once to float32 ONNX (reused from --work-dir when already there), quantizes that export to int8 and
mixed (ViT int8 + LLM int4) without tracing again, then runs every variant in its own subprocess on the same image +
prompt: one warm-up generation, then a timed one of `--tokens` greedy tokens (EOS suppressed, as `min_new_tokens`
does, so every variant decodes the same number and picks the same way). Timing comes from a streamer's `put` calls,
the same for ONNX Runtime and PyTorch:

    prefill   prompt in -> first new token (vision encoder + embeddings + decoder over the whole prompt)
    decode    tokens/s over the remaining tokens (one decoder step each)
    peak RSS  the subprocess's maximum resident set (`VmHWM`), runtime included; "- baseline" subtracts the resident
              set right after importing torch / transformers / onnxruntime (what the model and its run add)

Prints a markdown table. `--int8-kv` adds the mixed export with an int8 KV cache (a second trace, batch-1 decoder).
When `executorch` is installed, the ExecuTorch (XNNPACK, fp32) export runs too. Every export runs as
`BlueLMVExportedForConditionalGeneration` (transformers' `generate` over the `transformers.exporters` runners), with the
same `generate` call as PyTorch.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "pytorch": "PyTorch eager (fp32)",
    "fp32": "ORT fp32",
    "int8": "ORT int8",
    "mixed": "ORT mixed (ViT int8 + LLM int4)",
    "mixed-kv8": "ORT mixed + int8 KV cache",
    "executorch": "ExecuTorch fp32 (XNNPACK)",
}


class _Clock:
    """Streamer recording when the prompt and each new token arrive."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass

    def reset(self):
        self.times = []


def _sample(processor, tile: int, enable_thinking=False):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (2 * tile, 3 * tile, 3), dtype=np.uint8))  # a 2x3 grid + thumbnail
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the picture in detail."}]}],
        add_generation_prompt=True,
        enable_thinking=enable_thinking,
    )
    return processor(text=[text], images=[image], return_tensors="pt")


def worker(args) -> None:
    """One variant, in its own process; prints a JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    import onnxruntime  # noqa: F401  (imported by every variant, so the baseline is the same)
    import transformers  # noqa: F401

    import bluelm_hf  # noqa: F401

    baseline = _rss_mib("VmRSS")  # the runtimes imported, nothing loaded yet
    clock = _Clock()
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if args.variant == "pytorch":
        model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.float32).eval()
        processor = AutoProcessor.from_pretrained(args.model)
    else:
        from bluelm_hf.export import BlueLMVExportedForConditionalGeneration

        model = BlueLMVExportedForConditionalGeneration.from_pretrained(args.export, num_threads=args.threads)
        processor = AutoProcessor.from_pretrained(args.export)
    batch = _sample(processor, model.config.vision_config.image_size)

    def run(tokens):
        clock.reset()
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, streamer=clock)
        return out[0, batch["input_ids"].shape[1] :].tolist()

    run(min(4, args.tokens))  # warm-up: allocator, thread pools, lazy init
    prefills, decodes = [], []
    for _ in range(args.repeats):
        tokens = run(args.tokens)
        prompt_at, first, *rest = clock.times
        prefills.append(first - prompt_at)
        if rest:
            decodes.append(len(rest) / (clock.times[-1] - first))
    print(
        json.dumps(
            {
                "variant": args.variant,
                "prompt_tokens": int(batch["input_ids"].shape[1]),
                "tiles": int(batch["pixel_values"].shape[0]),
                "new_tokens": len(tokens),
                "prefill_s": statistics.median(prefills),
                "decode_tokens_per_s": statistics.median(decodes) if decodes else float("nan"),
                "peak_rss_mib": _rss_mib("VmHWM"),
                "baseline_rss_mib": baseline,
                "tokens": tokens,
            }
        )
    )


def _rss_mib(field: str = "VmHWM") -> float | None:
    """This process's peak (`VmHWM`) or current (`VmRSS`) resident set, from /proc: its own address space since exec,
    unlike `ru_maxrss`, which Linux carries over from the parent across fork + exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _run_variant_wait4(variant: str, model: str, export: str | None, tokens: int, threads: int, repeats: int) -> dict:
    """Like `_run_variant`, reaping the child with `os.wait4` to get its own rusage (peak RSS of that child only)."""
    cmd = [sys.executable, __file__, "--worker", variant, model, "--tokens", str(tokens), "--threads", str(threads),
           "--repeats", str(repeats)]
    if export:
        cmd += ["--export", export]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode:
        raise RuntimeError(f"{variant} failed (exit {process.returncode}):\n{stderr[-3000:]}")
    result = json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])
    if result.get("peak_rss_mib") is None:
        result["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux: KiB; includes the parent's peak (fork), hence VmHWM
    return result


def build(args) -> None:
    """Export fp32 once, quantize it to int8 / mixed, and (when asked) trace the int8-KV export; prints timings."""
    from bluelm_hf.export import export_model, quantize_export

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    wanted = set(args.build.split(","))
    times = {}
    if not (work / "fp32" / "bluelm_export.json").exists():
        start = time.perf_counter()
        export_model(args.model, work / "fp32", quant="none", overwrite=True)
        times["fp32"] = time.perf_counter() - start
    for quant in ("int8", "mixed"):
        if not (work / quant / "bluelm_export.json").exists():
            start = time.perf_counter()
            quantize_export(work / "fp32", work / quant, quant, overwrite=True, model_dir=args.model)
            times[quant] = time.perf_counter() - start
    if "executorch" in wanted and not (work / "executorch" / "bluelm_export.json").exists():
        start = time.perf_counter()
        export_model(args.model, work / "executorch", format="executorch", overwrite=True)
        times["executorch"] = time.perf_counter() - start
    if "mixed-kv8" in wanted and not (work / "mixed-kv8" / "bluelm_export.json").exists():
        start = time.perf_counter()
        export_model(args.model, work / "mixed-kv8", quant="mixed", kv_cache="int8", overwrite=True)
        times["mixed-kv8"] = time.perf_counter() - start
    print(json.dumps(times))


def _size_mib(export_dir: Path) -> float:
    manifest = json.loads((export_dir / "bluelm_export.json").read_text())
    return manifest["total_size_bytes"] / 2**20


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="saved BlueLM model directory")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per timed generation")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work-dir", help="where the exports go (reused if present); default a temporary directory")
    parser.add_argument("--repeats", type=int, default=3, help="timed generations per variant (median reported)")
    parser.add_argument("--int8-kv", action="store_true", help="also benchmark mixed + int8 KV cache")
    parser.add_argument("--variants", nargs="*", help=f"subset of {list(VARIANTS)}")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--build", help=argparse.SUPPRESS)
    parser.add_argument("--export", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.variant = args.worker
        worker(args)
        return 0

    if args.build:
        build(args)
        return 0

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bluelm_bench_"))
    default = ["pytorch", "fp32", "int8", "mixed"] + (["mixed-kv8"] if args.int8_kv else [])
    if importlib.util.find_spec("executorch") is not None:
        default.append("executorch")
    variants = args.variants or default
    # The exports are built in a subprocess: this process stays free of torch, so it adds nothing to the workers.
    cmd = [sys.executable, __file__, args.model, "--build", ",".join(variants), "--work-dir", str(work)]
    built = subprocess.run(cmd, capture_output=True, text=True)
    if built.returncode:
        raise RuntimeError(f"building the exports failed:\n{built.stderr[-3000:]}")
    build_times = json.loads([line for line in built.stdout.splitlines() if line.startswith("{")][-1])
    exports = {name: work / name for name in ("fp32", "int8", "mixed", "mixed-kv8", "executorch")}

    results = []
    for variant in variants:
        export = None if variant == "pytorch" else str(exports[variant])
        result = _run_variant_wait4(variant, args.model, export, args.tokens, args.threads, args.repeats)
        result["size_mib"] = _size_mib(Path(export)) if export else None
        results.append(result)
        print(f"# {variant}: done", file=sys.stderr)

    reference = next((r["tokens"] for r in results if r["variant"] == "pytorch"), None)
    first = results[0]
    print(
        f"\n{args.model}: {first['prompt_tokens']} prompt tokens ({first['tiles']} tiles), {args.tokens} new tokens, "
        f"{args.threads} threads, greedy\n"
    )
    print(
        "| variant | weights (MiB) | prefill (ms) | decode (tok/s) | peak RSS (MiB) | peak - baseline (MiB) "
        "| tokens = PyTorch |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        size = f"{r['size_mib']:.1f}" if r["size_mib"] is not None else "-"
        if reference is None:
            agree = "-"
        else:
            same = sum(a == b for a, b in zip(r["tokens"], reference))
            agree = f"{same}/{len(reference)}"
        base = r.get("baseline_rss_mib")
        over = f"{r['peak_rss_mib'] - base:.0f}" if base is not None else "-"
        print(
            f"| {VARIANTS[r['variant']]} | {size} | {r['prefill_s'] * 1000:.1f} | {r['decode_tokens_per_s']:.1f} | "
            f"{r['peak_rss_mib']:.0f} | {over} | {agree} |"
        )
    if build_times:
        print("\nexport / quantization time: " + ", ".join(f"{k} {v:.0f} s" for k, v in build_times.items()))
    print(f"exports in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
