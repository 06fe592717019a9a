"""Distillation at nano scale: a half-size student distilled from the shipped BlueLM-nano (recipes/distill.py, TRL's
DistillationTrainer) against the same student trained by plain SFT (recipes/sft.py) for the same steps, on the same
data, with the same seed; held-out accuracy, thinking and non-thinking, with `bluelm-hf eval`.

    python bench/bench_distill.py [--warmup-steps 1500] [--steps 200] [--eval-n 500] [--work-dir runs/bench-distill]

1. `recipes/nano/prepare.py` writes the nano's SFT rows (data seed 0, half of them thinking rows).
2. The student: `BlueLMVConfig.nano`'s shape with the LLM at half width and depth (hidden 96, MLP 256, 2 layers,
   2 heads; the ViT unchanged: the paper distils the LLM), random init with `--init-seed`, the nano's tokenizer.
3. A shared SFT warm-up of `--warmup-steps` (recipes/nano/sft.yaml at `--warmup-lr`, cosine to 0): on-policy distillation needs a
   student that already writes `<think>...</think>answer`.
4. From the warm-up, for `--steps` steps each, seed 2, constant LR 3e-4, batch 16: plain SFT (recipes/nano/sft.yaml)
   and distillation from the nano (recipes/nano/distill.yaml, thinking-mode rollouts).
5. `bluelm-hf eval --n N --think/--no-think` on the warm-up, both arms and the teacher.

Every step runs in a subprocess (`--jobs` at once for the arms and the evals; wall times then share the CPU); a
finished warm-up in the work dir is reused. Prints each result and a JSON summary at the end.
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


def run(cmds: list[list[str]], jobs: int = 1) -> list[str]:
    """Runs `cmds` in subprocesses, `jobs` at a time; returns their outputs (stdout + stderr), in order."""
    from concurrent.futures import ThreadPoolExecutor

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def one(cmd):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if result.returncode:
            sys.exit(f"{' '.join(cmd)} failed:\n{(result.stdout + result.stderr)[-4000:]}")
        return result.stdout + result.stderr

    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(one, cmds))


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


def eval_command(model: str, n: int, think: bool) -> list[str]:
    flag = "--think" if think else "--no-think"
    return [sys.executable, "-m", "bluelm_hf.cli", "eval", "--model", model, "--n", str(n), flag, "--json"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup-steps", type=int, default=1500)
    parser.add_argument("--warmup-lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-n", type=int, default=500)
    parser.add_argument("--init-seed", type=int, default=0)
    parser.add_argument("--rows", type=int, default=48_000, help="SFT rows written (>= 16 x all steps)")
    parser.add_argument("--work-dir", default="runs/bench-distill")
    parser.add_argument("--jobs", type=int, default=1, help="subprocesses at once for the two arms and the evals")
    args = parser.parse_args()
    work = (ROOT / args.work_dir).resolve()
    py = sys.executable
    timings = {}

    start = time.perf_counter()
    if not (work / "nano" / "sft-data").exists():
        run([[py, "recipes/nano/prepare.py", "--output_dir", str(work / "nano"), "--dataset_size", str(args.rows),
              "--grpo_size", "0"]])  # fmt: skip
    data = str(work / "nano" / "sft-data")
    student = work / "student-init"
    if not (student / "model.safetensors").exists():
        build_student(student, args.init_seed)
    timings["prepare_s"] = round(time.perf_counter() - start)

    warm = work / "student-warm"
    if (warm / "model.safetensors").exists():  # a finished warm-up is reused (same settings: the caller's job)
        timings["warmup"] = "reused"
    else:
        out = run([[py, "recipes/sft.py", "--config", "recipes/nano/sft.yaml", "--model_name_or_path", str(student),
                    "--dataset_name", data, "--max_steps", str(args.warmup_steps), "--save_strategy", "no",
                    "--learning_rate", str(args.warmup_lr), "--warmup_steps", str(max(args.warmup_steps // 10, 1)),
                    "--logging_steps", "250", "--output_dir", str(warm)]])[0]  # fmt: skip
        timings["warmup"] = WALL.search(out).group(0)
    print(f"warm-up: {timings['warmup']}", flush=True)

    arm = ["--model_name_or_path", str(warm), "--dataset_name", data, "--max_steps", str(args.steps), "--seed", "2",
           "--learning_rate", "3e-4", "--lr_scheduler_type", "constant", "--logging_steps", "25"]  # fmt: skip
    arms = {
        "sft": [py, "recipes/sft.py", "--config", "recipes/nano/sft.yaml", *arm, "--warmup_steps", "0",
                "--save_strategy", "no", "--output_dir", str(work / "student-sft")],
        "distill": [py, "recipes/distill.py", "--config", "recipes/nano/distill.yaml", *arm,
                    "--output_dir", str(work / "student-distill")],
    }  # fmt: skip
    for name, out in zip(arms, run(list(arms.values()), jobs=args.jobs)):
        timings[name] = WALL.search(out).group(0)
        print(f"{name}: {timings[name]}", flush=True)

    from bluelm_hf import NANO

    models = {"warm-up": warm, "sft": work / "student-sft", "distill": work / "student-distill", "teacher": NANO}
    runs = [(name, think) for name in models for think in (True, False)]
    outputs = run([eval_command(str(models[name]), args.eval_n, think) for name, think in runs], jobs=args.jobs)
    results = {}
    for (name, think), out in zip(runs, outputs):
        result = json.loads(next(line for line in out.splitlines() if line.startswith('{"accuracy"')))
        key = f"{name} {'thinking' if think else 'non-thinking'}"
        results[key] = {k: result[k] for k in ("accuracy", "n", "mean_thinking_tokens", "well_formed")}
        print(key, results[key], flush=True)
    print(json.dumps({"args": vars(args), "timings": timings, "results": results}, indent=1))


if __name__ == "__main__":
    main()
