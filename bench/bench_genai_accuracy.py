"""Held-out greedy agreement of onnxruntime-genai (genai's own `Model` / `Generator` loop) with PyTorch on an ONNX
export (issue 18).

    python bench/bench_genai_accuracy.py src/bluelm_hf/nano --work-dir runs/nano-export [--n 500]

Exports MODEL_DIR to float32 ONNX (`WORK_DIR/fp32`, reused when there), then answers the nano task's held-out
questions, each with its image, in thinking and non-thinking mode: PyTorch through `bluelm_hf.evaluation.evaluate_nano`
(greedy, left-padded batches, as in bench_export_accuracy.py), and onnxruntime-genai one prompt at a time from the HF
processor's output (`bluelm_hf.export.genai_inputs`), greedy with genai's defaults from genai_config.json, up to the
same 64 new tokens. Reports per mode (a table, then one JSON line per mode): accuracy, the share of completions
identical to PyTorch's, and for any that differ, whether they equal PyTorch's at batch size 1 (no padding), to
separate padded-batch float noise from genai.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import bluelm_hf  # noqa: F401  (registers the Auto classes)
from bluelm_hf import nano_task
from bluelm_hf.evaluation import evaluate_nano
from bluelm_hf.inference import _parse_completion, build_prompts, load, user_message

MAX_NEW_TOKENS = 64


def genai_greedy(genai_model, processor, config, question: str, image, thinking: bool) -> list[int]:
    import onnxruntime_genai as og

    from bluelm_hf.export import genai_inputs

    prompt = build_prompts(processor, [[user_message(question, 1)]], thinking)[0]
    batch = processor(text=[prompt], images=[image], return_tensors="np")
    params = og.GeneratorParams(genai_model)
    params.set_search_options(max_length=batch["input_ids"].shape[1] + MAX_NEW_TOKENS)
    generator = og.Generator(genai_model, params)
    generator.set_inputs(genai_inputs(batch, config.image_token_id))
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def main(argv=None) -> int:
    import onnxruntime_genai as og

    from bluelm_hf.export import export_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="the PyTorch checkpoint to export and compare with")
    parser.add_argument("--work-dir", required=True, help="its float32 ONNX export goes to WORK_DIR/fp32 (reused)")
    parser.add_argument("--n", type=int, default=500, help="how many held-out questions")
    parser.add_argument("--batch-size", type=int, default=32, help="PyTorch's batch size")
    args = parser.parse_args(argv)

    export_dir = Path(args.work_dir) / "fp32"
    if not (export_dir / "genai_config.json").exists():
        export_model(args.model, export_dir, quant="none", overwrite=True)
    dataset = nano_task.make_eval_set(args.n)
    model, processor = load(args.model)
    genai_model = og.Model(str(export_dir))
    rows = []
    for thinking in (True, False):
        start = time.perf_counter()
        with torch.inference_mode():
            ref = evaluate_nano(model, processor, dataset=dataset, thinking=thinking, batch_size=args.batch_size,
                                return_outputs=True)  # fmt: skip
        pytorch_seconds = time.perf_counter() - start
        start = time.perf_counter()
        correct = identical = 0
        differ = []
        for index, row in enumerate(dataset):
            tokens = genai_greedy(genai_model, processor, model.config, row["question"], row["image"], thinking)
            got = _parse_completion(processor, torch.tensor(tokens), model.config)
            correct += nano_task.score(got["content"], row["answer"])
            if got["text"] == ref["outputs"][index]["text"]:
                identical += 1
            else:
                differ.append((index, tokens))
        genai_seconds = time.perf_counter() - start
        # A completion that differs from the padded batch's: is it PyTorch's at batch size 1?
        same_at_batch_1 = 0
        for index, tokens in differ:
            row = dataset[index]
            prompt = build_prompts(processor, [[user_message(row["question"], 1)]], thinking)[0]
            batch = processor(text=[prompt], images=[row["image"]], return_tensors="pt")
            with torch.inference_mode():
                out = model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
            want = _parse_completion(processor, out[0, batch["input_ids"].shape[1] :], model.config)["text"]
            same_at_batch_1 += want == _parse_completion(processor, torch.tensor(tokens), model.config)["text"]
        rows.append(dict(thinking=thinking, n=len(dataset), pytorch_accuracy=ref["accuracy"],
                         genai_accuracy=correct / len(dataset), identical=identical / len(dataset),
                         differ=len(differ), differ_equal_to_pytorch_batch_1=same_at_batch_1,
                         pytorch_seconds=pytorch_seconds, genai_seconds=genai_seconds))  # fmt: skip
    print(f"held-out n={args.n}, greedy, max {MAX_NEW_TOKENS} new tokens, onnxruntime-genai {og.__version__}\n")
    print("| mode | PyTorch accuracy | genai accuracy | completions identical to PyTorch | differing, = PyTorch at "
          "batch 1 | PyTorch s (batch %d) | genai s (batch 1) |" % args.batch_size)
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        mode = "thinking" if row["thinking"] else "non-thinking"
        print(f"| {mode} | {row['pytorch_accuracy']:.3f} | {row['genai_accuracy']:.3f} | "
              f"{row['identical'] * row['n']:.0f}/{row['n']} | {row['differ_equal_to_pytorch_batch_1']}/"
              f"{row['differ']} | {row['pytorch_seconds']:.0f} | {row['genai_seconds']:.0f} |")  # fmt: skip
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
