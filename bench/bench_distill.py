"""Distillation at nano scale: a half-size student distilled from the shipped BlueLM-nano (recipes/distill.py,
off-policy: TRL's DistillationTrainer with `lmbda 0`, forward KL) against the same student trained by plain SFT
(recipes/sft.py) from the same random init, on the same rows, with the same schedule and seed; held-out accuracy,
thinking and non-thinking, with `bluelm-hf eval`, at several points of training.

    python bench/bench_distill.py [--steps 3000] [--eval-at 500,1000,2000,3000] [--seed 1] [--work-dir DIR]

1. `recipes/nano/prepare.py` writes the nano's SFT rows (data seed 0, half of them thinking rows).
2. The student: `BlueLMVConfig.nano`'s shape with the LLM at half width and depth (hidden 96, MLP 256, 2 layers,
   2 heads; the ViT unchanged: the paper distils the LLM), random init with `--init-seed`, the nano's tokenizer.
3. Both arms from that init for `--steps` steps, batch 16, LR `--lr` cosine with 100 warm-up steps, `--seed`, saving
   at each `--eval-at` step: plain SFT (recipes/nano/sft.yaml) and distillation (recipes/nano/distill.yaml).
4. `bluelm-hf eval --n N --think/--no-think` on each saved step of both arms, and on the teacher.

Every run is a subprocess, one at a time, with the recipes' 2 torch threads. Prints each result and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WALL = re.compile(r"(Training|Distillation) wall time: .*")


def run(cmd: list[str]) -> str:
    """Runs `cmd` from the repository root; returns its output (stdout + stderr), or exits with its tail."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{(result.stdout + result.stderr)[-4000:]}")
    return result.stdout + result.stderr


def build_student(out: Path, seed: int) -> Path:
    """The nano's shape with a half-width, half-depth LLM, randomly initialised, with the nano's processor."""
    import torch
    from transformers import AutoProcessor, GenerationConfig

    from bluelm_hf import NANO, BlueLMVConfig, BlueLMVForConditionalGeneration

    config = BlueLMVConfig.from_pretrained(NANO)
    text = config.text_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = 96, 256, 2
    text.num_attention_heads, text.num_key_value_heads = 2, 1  # head_dim stays 48
    config.projector_hidden_size = 96
    torch.manual_seed(seed)
    model = BlueLMVForConditionalGeneration(config)
    model.generation_config = GenerationConfig.from_pretrained(NANO)
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(NANO).save_pretrained(out)
    return out


def evaluate(model: str, n: int, think: bool) -> dict:
    flag = "--think" if think else "--no-think"
    out = run([sys.executable, "-m", "bluelm_hf.cli", "eval", "--model", model, "--n", str(n), flag, "--json"])
    result = json.loads(next(line for line in out.splitlines() if line.startswith('{"accuracy"')))
    return {k: result[k] for k in ("accuracy", "n", "mean_thinking_tokens", "well_formed")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--eval-at", default="500,1000,2000,3000", help="steps whose checkpoints are evaluated")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-n", type=int, default=500)
    parser.add_argument("--init-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1, help="training seed of both arms (data order)")
    parser.add_argument("--rows", type=int, default=48_000, help="SFT rows written (16 x steps: one epoch)")
    parser.add_argument("--arms", default="sft,distill")
    parser.add_argument("--work-dir", default="runs/bench-distill")
    args = parser.parse_args()
    eval_at = sorted({int(s) for s in args.eval_at.split(",")})
    if eval_at[-1] > args.steps or eval_at[0] < 1 or any(step % eval_at[0] for step in eval_at):
        sys.exit(f"--eval-at {args.eval_at}: every step must be in 1..--steps ({args.steps}) and a multiple of the "
                 "first (the checkpoint interval)")  # fmt: skip
    work = (ROOT / args.work_dir).resolve()
    py = sys.executable
    timings = {}

    start = time.perf_counter()
    if not (work / "nano" / "sft-data").exists():
        run([py, "recipes/nano/prepare.py", "--output_dir", str(work / "nano"), "--dataset_size", str(args.rows),
             "--grpo_size", "0"])  # fmt: skip
    data = str(work / "nano" / "sft-data")
    student = work / "student-init"
    if not (student / "model.safetensors").exists():
        build_student(student, args.init_seed)
    timings["prepare_s"] = round(time.perf_counter() - start)

    common = ["--model_name_or_path", str(student), "--dataset_name", data, "--max_steps", str(args.steps),
              "--learning_rate", str(args.lr), "--lr_scheduler_type", "cosine", "--warmup_steps", "100",
              "--seed", str(args.seed),
              "--logging_steps", "100", "--save_strategy", "steps", "--save_steps", str(eval_at[0]),
              "--save_total_limit", "1000", "--save_only_model", "true"]  # fmt: skip
    recipes = {
        "sft": [py, "recipes/sft.py", "--config", "recipes/nano/sft.yaml"],
        "distill": [py, "recipes/distill.py", "--config", "recipes/nano/distill.yaml"],
    }
    arms = args.arms.split(",")
    for arm in arms:
        out = work / f"student-{arm}"
        timings[arm] = WALL.search(run([*recipes[arm], *common, "--output_dir", str(out)])).group(0)
        print(f"{arm}: {timings[arm]}", flush=True)

    from bluelm_hf import NANO

    results = {}
    for step in eval_at:
        for arm in arms:
            checkpoint = work / f"student-{arm}" / f"checkpoint-{step}"
            for think in (True, False):
                key = f"{arm} step {step} {'thinking' if think else 'non-thinking'}"
                results[key] = evaluate(str(checkpoint), args.eval_n, think)
                print(key, results[key], flush=True)
    for think in (True, False):
        key = f"teacher {'thinking' if think else 'non-thinking'}"
        results[key] = evaluate(str(NANO), args.eval_n, think)
        print(key, results[key], flush=True)
    print(json.dumps({"args": vars(args), "timings": timings, "results": results}, indent=1))


if __name__ == "__main__":
    main()
