"""Held-out accuracy of ONNX exports against the PyTorch checkpoint they came from (issue 6's acceptance check).

    python bench/bench_export_accuracy.py src/bluelm_hf/nano --work-dir runs/nano-export [--n 500]

Exports MODEL_DIR to float32 ONNX (reused from --work-dir when there), quantizes it to int8 and mixed (ViT +
projector int8, LLM int4), then greedy-decodes the nano task's held-out questions with PyTorch and with every export,
in thinking and non-thinking mode, through the same `bluelm_hf.inference.generate` (same processor, chat template
and batches). Reports per variant and mode: accuracy, the share of completions token-for-token identical to PyTorch's,
the accuracy difference to PyTorch in points, and the export's size. Prints a markdown table and, with --json, one
JSON line per row. When `executorch` is installed, the ExecuTorch (XNNPACK, fp32) export is checked too; its
programs are batch-1, so it decodes the questions one by one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch

import bluelm_hf  # noqa: F401  (registers the Auto classes)
from bluelm_hf import nano_task
from bluelm_hf.evaluation import evaluate_nano
from bluelm_hf.inference import load

VARIANTS = ("fp32", "int8", "mixed") + (("executorch",) if importlib.util.find_spec("executorch") else ())


def build_exports(model_dir: Path, work: Path) -> dict[str, Path]:
    from bluelm_hf.export import export_model, quantize_export

    work.mkdir(parents=True, exist_ok=True)
    dirs = {name: work / name for name in VARIANTS}
    if not (dirs["fp32"] / "bluelm_export.json").exists():
        export_model(model_dir, dirs["fp32"], quant="none", overwrite=True)
    for quant in ("int8", "mixed"):
        if not (dirs[quant] / "bluelm_export.json").exists():
            quantize_export(dirs["fp32"], dirs[quant], quant, overwrite=True, model_dir=model_dir)
    if "executorch" in dirs and not (dirs["executorch"] / "bluelm_export.json").exists():
        export_model(model_dir, dirs["executorch"], format="executorch", overwrite=True)
    return dirs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="saved BlueLM model directory (e.g. src/bluelm_hf/nano)")
    parser.add_argument("--work-dir", required=True, help="where the exports go (reused if present)")
    parser.add_argument("--n", type=int, default=500, help="held-out questions (default 500)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="also print one JSON line per row")
    args = parser.parse_args(argv)

    dirs = build_exports(Path(args.model), Path(args.work_dir))
    dataset = nano_task.make_eval_set(args.n)
    rows = []
    for thinking in (True, False):
        model, processor = load(args.model)
        start = time.perf_counter()
        with torch.inference_mode():
            ref = evaluate_nano(model, processor, dataset=dataset, thinking=thinking, batch_size=args.batch_size,
                                return_outputs=True)  # fmt: skip
        rows.append(dict(variant="pytorch", thinking=thinking, accuracy=ref["accuracy"], identical=1.0,
                         delta_points=0.0, size_mib=None, seconds=time.perf_counter() - start))  # fmt: skip
        for name, path in dirs.items():
            export, export_processor = load(path)
            start = time.perf_counter()
            got = evaluate_nano(export, export_processor, dataset=dataset, thinking=thinking,
                                batch_size=args.batch_size, return_outputs=True)  # fmt: skip
            same = sum(g["text"] == r["text"] for g, r in zip(got["outputs"], ref["outputs"])) / len(dataset)
            size = json.loads((path / "bluelm_export.json").read_text())["total_size_bytes"] / 2**20
            rows.append(dict(variant=name, thinking=thinking, accuracy=got["accuracy"], identical=same,
                             delta_points=100 * (got["accuracy"] - ref["accuracy"]), size_mib=size,
                             seconds=time.perf_counter() - start))  # fmt: skip
    print(f"held-out n={args.n}, greedy, max 64 new tokens\n")
    print("| variant | mode | accuracy | identical to PyTorch | accuracy - PyTorch (points) | size MiB |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        size = "-" if row["size_mib"] is None else f"{row['size_mib']:.2f}"
        mode = "thinking" if row["thinking"] else "non-thinking"
        print(f"| {row['variant']} | {mode} | {row['accuracy']:.3f} | {row['identical']:.3f} | "
              f"{row['delta_points']:+.1f} | {size} |")  # fmt: skip
    if args.json:
        for row in rows:
            print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
