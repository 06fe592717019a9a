"""SFT samples/s on BlueLM-nano: the general recipe (recipes/nano/prepare.py + recipes/sft.py on the data written to
disk) against the nano-only recipe it replaced (recipes/sft.py of commit f8c22c2, which built the tokenizer, init
and rows in process), in one run, and whether the two give the same weights and losses.

    python bench/bench_sft_recipe.py [--steps 20] [--reference-commit f8c22c2] [--work-dir DIR]

Both run `recipes/nano/sft.yaml`'s settings (the shipped nano's: batch 16, 2 torch threads, pinned AVX2 kernels,
fused AdamW) for `--steps` steps on `16 x steps` rows, in subprocesses, one after the other. samples/s is the
Trainer's `train_samples_per_second` (training loop only: data preparation is outside it in both). Prints JSON.
Needs a git checkout (the reference recipe and its library, `src/` of that commit, are read with `git show` /
`git archive`; the general recipe runs on this checkout's library, PYTHONPATH as given).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOG = re.compile(r"\{'(?:loss|train_runtime)'.*?\}")


def run(cmd: list[str], cwd: Path, **env_overrides: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env_overrides}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{(result.stdout + result.stderr)[-4000:]}")
    return result.stdout + result.stderr


def metrics(output: str) -> dict:
    logs = [eval(match) for match in LOG.findall(output)]  # noqa: S307 (the Trainer's own dict reprs)
    losses = [float(log["loss"]) for log in logs if "loss" in log]
    final = next(log for log in logs if "train_runtime" in log)
    return {"losses": losses, "samples_per_s": float(final["train_samples_per_second"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reference-commit", default="f8c22c2")
    parser.add_argument("--work-dir", default=None)
    args = parser.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-sft-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = str(16 * args.steps)
    common = ["--max_steps", str(args.steps), "--save_strategy", "no", "--logging_steps", "1", "--warmup_steps", "1"]

    reference = work / "reference"
    reference.mkdir(exist_ok=True)
    for name, path in (("sft.py", "recipes/sft.py"), ("nano_sft.yaml", "recipes/nano_sft.yaml")):
        text = subprocess.run(["git", "show", f"{args.reference_commit}:{path}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout  # fmt: skip
        (reference / name).write_text(text)
    # The reference recipe runs on its own library (it built the rows with nano_task.make_sft_dataset, since moved
    # to recipes/nano/nano_data.py).
    archive = subprocess.run(["git", "archive", args.reference_commit, "src"], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(reference)], input=archive.stdout, check=True)
    old = run([sys.executable, str(reference / "sft.py"), "--config", str(reference / "nano_sft.yaml"),
               "--output_dir", str(work / "old"), "--dataset_size", rows, "--eval_size", "0", "--dataset_num_proc", "1",
               *common], work, PYTHONPATH=str(reference / "src"))  # fmt: skip
    run([sys.executable, str(ROOT / "recipes/nano/prepare.py"), "--output_dir", str(work / "nano"),
         "--dataset_size", rows, "--grpo_size", "0", "--num_proc", "1"], work)  # fmt: skip
    new = run([sys.executable, str(ROOT / "recipes/sft.py"), "--config", str(ROOT / "recipes/nano/sft.yaml"),
               "--model_name_or_path", str(work / "nano/init"), "--dataset_name", str(work / "nano/sft-data"),
               "--output_dir", str(work / "new"), *common], work)  # fmt: skip

    import torch
    from safetensors.torch import load_file

    a, b = load_file(work / "old/model.safetensors"), load_file(work / "new/model.safetensors")
    differ = sorted(name for name in a if name not in b or not torch.equal(a[name], b[name]))
    old_m, new_m = metrics(old), metrics(new)
    print(json.dumps({
        "steps": args.steps, "rows": int(rows), "reference_commit": args.reference_commit,
        "nano_only_recipe_samples_per_s": old_m["samples_per_s"], "general_recipe_samples_per_s": new_m["samples_per_s"],
        "same_losses": old_m["losses"] == new_m["losses"], "losses": new_m["losses"],
        "tensors": len(a), "tensors_that_differ": differ, "work_dir": str(work),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
