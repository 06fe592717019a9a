"""Greedy agreement of ExecuTorch's own `MultimodalRunner` with PyTorch on the nano's held-out questions.

    python bench/bench_executorch_runner.py src/bluelm_hf/nano --work-dir runs/nano-pte [--n 500] [--budget 4]

Exports MODEL_DIR to one `model.pte` (`--format executorch`, reused from --work-dir when there), then answers each
held-out question twice, thinking and non-thinking: with PyTorch's `generate` (greedy, batch 1) and with
`MultimodalRunner(model.pte, tokenizer.json)` fed by `runner_inputs` / `runner_generate` (greedy, `--budget` applied
through the runner when given, `thinking_budget` on the PyTorch side). Reports per mode: accuracy of both, the share
of completions whose token ids are identical, and the seconds each side took. Markdown table; --json adds one JSON
line per row.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import bluelm_hf  # noqa: F401  (registers the Auto classes)
from bluelm_hf import nano_task
from bluelm_hf.thinking import parse_response


def main(argv=None) -> int:
    from bluelm_hf.export import export_model, load_for_export
    from bluelm_hf.export.executorch import load_runner, runner_generate, runner_inputs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="saved BlueLM model directory (e.g. src/bluelm_hf/nano)")
    parser.add_argument("--work-dir", required=True, help="where the export goes (reused if present)")
    parser.add_argument("--n", type=int, default=500, help="held-out questions (default 500)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--budget", type=int, default=None, help="thinking budget (thinking mode only)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    export_dir = Path(args.work_dir) / "executorch"
    if not (export_dir / "bluelm_export.json").exists():
        export_model(args.model, export_dir, format="executorch", overwrite=True)
    model, processor = load_for_export(args.model)
    runner = load_runner(export_dir)
    tokenizer = processor.tokenizer
    dataset = nano_task.make_eval_set(args.n)
    rows = []
    for thinking in (True, False):
        budget = args.budget if thinking else None
        stats = {"pytorch": [0, 0.0], "runner": [0, 0.0]}
        same = 0
        for row in dataset:
            text = processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["question"]}]}],
                add_generation_prompt=True,
                enable_thinking=thinking,
            )
            batch = processor(text=[text], images=[row["image"]], return_tensors="pt")
            prompt = batch["input_ids"].shape[1]
            extra = {} if budget is None else {"thinking_budget": budget}
            start = time.perf_counter()
            with torch.inference_mode():
                want = model.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=False, **extra)
            want = want[0, prompt:].tolist()
            stats["pytorch"][1] += time.perf_counter() - start
            start = time.perf_counter()
            runner.reset()
            got = runner_generate(runner, runner_inputs(batch, model.config), tokenizer, model.config,
                                  args.max_new_tokens, budget, generation_config=model.generation_config)  # fmt: skip
            stats["runner"][1] += time.perf_counter() - start
            got = got["token_ids"]
            same += got == want
            for side, ids in (("pytorch", want), ("runner", got)):
                content = parse_response(tokenizer.decode(ids, skip_special_tokens=False), tokenizer.eos_token)
                stats[side][0] += nano_task.score(content["content"], row["answer"])
        n = len(dataset)
        rows.append(dict(thinking=thinking, budget=budget, n=n, pytorch_accuracy=stats["pytorch"][0] / n,
                         runner_accuracy=stats["runner"][0] / n, identical=same / n,
                         pytorch_seconds=stats["pytorch"][1], runner_seconds=stats["runner"][1]))  # fmt: skip
    print(f"held-out n={args.n}, greedy, max {args.max_new_tokens} new tokens, batch 1 both sides\n")
    print("| mode | budget | PyTorch accuracy | MultimodalRunner accuracy | token-identical | PyTorch s | runner s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        mode = "thinking" if row["thinking"] else "non-thinking"
        print(f"| {mode} | {row['budget'] if row['budget'] is not None else '-'} | {row['pytorch_accuracy']:.3f} | "
              f"{row['runner_accuracy']:.3f} | {row['identical']:.3f} | {row['pytorch_seconds']:.1f} | "
              f"{row['runner_seconds']:.1f} |")  # fmt: skip
    if args.json:
        for row in rows:
            print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
