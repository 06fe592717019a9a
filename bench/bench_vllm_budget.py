"""Thinking budget, vLLM vs transformers `generate`: share of identical completions on the held-out nano questions.

Run with the project's python (transformers `generate` runs here); vLLM's side runs in the vLLM virtualenv
(`.ci/vllm_env.sh`) through tests/vllm_checks.py:

    VLLM_CPU_KVCACHE_SPACE=1 PYTHONPATH=src python bench/bench_vllm_budget.py \
        --vllm-python ~/.cache/bluelm-hf/venv-vllm/bin/python --n 500

Requests: the first N questions of nano_task's eval set (NANO_EVAL_SEED) with their images, thinking on, greedy,
`--max-new-tokens` each, at budgets 0, 4, 8 and unlimited (`generate(thinking_budget=N)` vs vLLM's
`SamplingParams(thinking_token_budget=N)`). A completion is identical when its token ids (EOS included) are equal.
For each completion that differs, the first differing step is reported with the two engines' tokens, whether
`generate`'s budget processor forced that step, and the gap between the two tokens' logits in `generate`'s fp32
model at that step (teacher-forced on the common prefix): a near-zero gap is a near tie that kernels may break either
way, a large one is a difference in the rule.
"""

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CHECKS = Path(__file__).parents[1] / "tests" / "vllm_checks.py"
MODES = {"budget0": (True, 0), "budget4": (True, 4), "budget8": (True, 8), "unlimited": (True, None)}


def load_checks():
    spec = importlib.util.spec_from_file_location("vllm_checks", CHECKS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vllm_side(python, model, n, max_new_tokens):
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
           "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    command = [python, str(CHECKS), "offline", str(model), str(n), json.dumps(MODES), str(max_new_tokens)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"vLLM side failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def explain(checks, model, processor, sample, thinking, ours, theirs):
    """First differing step: both tokens, whether `generate` forced it, and their logit gap in `generate`'s model."""
    import torch

    step = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    if step >= len(ours) or step >= len(theirs):
        return {"step": step, "kind": "one is a prefix of the other"}
    batch = processor(text=[checks.prompt(processor, sample, thinking)], images=[sample.render()], return_tensors="pt")
    ids = torch.cat([batch["input_ids"], torch.tensor([ours[:step]], dtype=torch.long)], dim=1)
    with torch.inference_mode():
        logits = model(input_ids=ids, pixel_values=batch["pixel_values"], attention_mask=torch.ones_like(ids)).logits[0, -1]
    top = logits.topk(2)
    tok = processor.tokenizer.convert_ids_to_tokens
    return {
        "step": step, "generate": tok(ours[step]), "vllm": tok(theirs[step]),
        # the model's own preference at that step: generate's token is not its argmax -> the budget forced it
        "generate_forced": int(top.indices[0]) != ours[step],
        "logit_gap": round(float(logits[ours[step]] - logits[theirs[step]]), 5),
        "top2_gap": round(float(top.values[0] - top.values[1]), 5),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm-python", required=True, help="the vLLM virtualenv's bin/python")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--show", type=int, default=5, help="differing completions to explain per mode")
    args = parser.parse_args()

    from bluelm_hf import NANO
    from bluelm_hf.inference import load

    checks = load_checks()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "bluelm-nano"
        shutil.copytree(NANO, model_dir, symlinks=False)  # a user's checkpoint folder: plain files
        start = time.perf_counter()
        theirs = vllm_side(args.vllm_python, model_dir, args.n, args.max_new_tokens)
        vllm_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = checks.generate(args.n, MODES, args.max_new_tokens)
    generate_s = time.perf_counter() - start

    model, processor = load(NANO)
    samples = checks.questions(args.n)
    result = {"n": args.n, "max_new_tokens": args.max_new_tokens, "transformers": ours["transformers"],
              "vllm": theirs["vllm"], "vllm_s": round(vllm_s, 1), "generate_s": round(generate_s, 1), "modes": {}}
    for mode, (thinking, _) in MODES.items():
        same = [a == b for a, b in zip(ours[mode], theirs[mode])]
        differing = [i for i, s in enumerate(same) if not s]
        row = {"identical": sum(same), "share": round(sum(same) / args.n, 4),
               "hit_max_new_tokens": sum(len(c) >= args.max_new_tokens for c in ours[mode]), "differ": []}
        for i in differing[: args.show]:
            why = explain(checks, model, processor, samples[i], thinking, ours[mode][i], theirs[mode][i])
            row["differ"].append({"question": i, **why})
        result["modes"][mode] = row
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
