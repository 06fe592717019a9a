"""Memory of "ViT freed after encoding" (`release_vision=True`) on an ONNX export, against keeping the vision session.

    python bench/bench_release_vision.py --work-dir runs/release-vision [--vit-layers 12] [--tokens 64]

Builds a random BlueLM with a ViT-B/16-sized vision tower (width 768, 12 layers, 224-px tiles: 86M parameters, 343 MB
in float32) and the nano's small LLM and tokenizer, exports it to float32 ONNX (reused from --work-dir), then runs
`BlueLMVExportedForConditionalGeneration` with and without `release_vision` in one subprocess each, on the same
image and prompt: two generations of `--tokens` greedy tokens (EOS suppressed), a second image in the second. Reports
the process's resident set (VmRSS, sampled at every decoding step through a stopping criterion) while decoding, its
peak (VmHWM), the time to first token of the second generation (with `release_vision` that includes re-opening the
vision session), and whether the tokens of both runs are the same.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _status(field: str) -> float:
    """`/proc/self/status` field in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def build(work: Path, vit_layers: int) -> Path:
    """The random model (saved) and its float32 ONNX export, unless already there."""
    import torch

    from bluelm_hf import NANO, BlueLMVConfig, BlueLMVForConditionalGeneration, BlueLMVImageProcessor
    from bluelm_hf.export import MANIFEST_FILE, export_model
    from transformers import AutoProcessor

    model_dir, export_dir = work / "model", work / "export"
    if (export_dir / MANIFEST_FILE).exists():
        return export_dir
    config = BlueLMVConfig.from_pretrained(NANO).to_dict()
    config["vision_config"] = dict(
        model_type="siglip_vision_model", hidden_size=768, intermediate_size=3072, num_hidden_layers=vit_layers,
        num_attention_heads=12, patch_size=16, image_size=224, vision_use_head=False,
    )  # fmt: skip
    config.update(max_grid_size=2, max_image_side=448, vision_batch_size=8)
    for key in ("auto_map", "architectures", "transformers_version"):
        config.pop(key, None)
    torch.manual_seed(0)
    model = BlueLMVForConditionalGeneration(BlueLMVConfig(**config)).eval()
    processor = AutoProcessor.from_pretrained(NANO)
    processor.image_processor = BlueLMVImageProcessor(tile_size=224, patch_size=16, max_grid_size=2, max_image_side=448)
    model.generation_config = BlueLMVForConditionalGeneration.from_pretrained(NANO).generation_config
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    export_model(model_dir, export_dir, quant="none", verify=False, overwrite=True)
    return export_dir


def worker(export_dir: str, release: bool, tokens: int, threads: int) -> dict:
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoProcessor, StoppingCriteria, StoppingCriteriaList

    from bluelm_hf.export import BlueLMVExportedForConditionalGeneration

    torch.set_num_threads(threads)
    baseline = _status("VmRSS")
    model = BlueLMVExportedForConditionalGeneration.from_pretrained(
        export_dir, num_threads=threads, release_vision=release
    )
    processor = AutoProcessor.from_pretrained(export_dir)
    loaded = _status("VmRSS")

    class Sample(StoppingCriteria):
        def __init__(self):
            self.rss, self.times, self.vision = [], [], []

        def __call__(self, input_ids, scores, **kwargs):
            self.rss.append(_status("VmRSS"))
            self.times.append(time.perf_counter())
            self.vision.append(model.vision_encoder_loaded)
            return torch.zeros(len(input_ids), dtype=torch.bool)

    rng = np.random.default_rng(0)
    runs = []
    for shape in ((448, 336), (224, 448)):  # (width, height): a 2x2 and a 1x2 grid, each plus the thumbnail
        image = Image.fromarray(rng.integers(0, 256, (shape[1], shape[0], 3), dtype=np.uint8))
        text = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the picture."}]}],
            add_generation_prompt=True,
        )
        batch = processor(text=[text], images=[image], return_tensors="pt")
        sample = Sample()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                 stopping_criteria=StoppingCriteriaList([sample]))  # fmt: skip
        runs.append(dict(
            tiles=len(batch["pixel_values"]),
            tokens=out[0, batch["input_ids"].shape[1] :].tolist(),
            first_token_ms=1000 * (sample.times[0] - start),
            decode_rss_max_mib=max(sample.rss),
            vision_loaded_while_decoding=any(sample.vision),
        ))  # fmt: skip
    return dict(release=release, baseline_mib=baseline, loaded_mib=loaded, peak_mib=_status("VmHWM"), runs=runs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", required=True, help="where the random model and its export go (reused)")
    parser.add_argument("--vit-layers", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=["keep", "release"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        export_dir = str(Path(args.work_dir) / "export")
        print(json.dumps(worker(export_dir, args.worker == "release", args.tokens, args.threads)))
        return 0

    export_dir = build(Path(args.work_dir), args.vit_layers)
    manifest = json.loads((export_dir / "bluelm_export.json").read_text())
    sizes = {name: entry.get("size_bytes") for name, entry in manifest["components"].items()}
    results = {}
    for mode in ("keep", "release"):
        command = [sys.executable, __file__, "--work-dir", args.work_dir, "--tokens", str(args.tokens),
                   "--threads", str(args.threads), "--worker", mode]  # fmt: skip
        line = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results[mode] = json.loads(line)
    keep, release = results["keep"], results["release"]
    same = [a["tokens"] == b["tokens"] for a, b in zip(keep["runs"], release["runs"])]
    print(f"export: {export_dir}, component bytes {sizes}")
    print(f"{args.tokens} new tokens per image, {args.threads} threads\n")
    print("| vision session | RSS after load (MiB) | RSS while decoding, image 1 / 2 (MiB) | peak RSS VmHWM (MiB) | "
          "time to first token, image 2 (ms) | vision open while decoding |")
    print("|---|---:|---:|---:|---:|---|")
    for name, result in (("kept (default)", keep), ("released (`release_vision=True`)", release)):
        runs = result["runs"]
        print(f"| {name} | {result['loaded_mib'] - result['baseline_mib']:.0f} | "
              f"{runs[0]['decode_rss_max_mib'] - result['baseline_mib']:.0f} / "
              f"{runs[1]['decode_rss_max_mib'] - result['baseline_mib']:.0f} | "
              f"{result['peak_mib'] - result['baseline_mib']:.0f} | {runs[1]['first_token_ms']:.0f} | "
              f"{any(run['vision_loaded_while_decoding'] for run in runs)} |")  # fmt: skip
    print("\n(MiB above the resident set before loading the export.) Tokens identical with and without release: "
          f"{same}; tiles per image: {[run['tiles'] for run in keep['runs']]}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
