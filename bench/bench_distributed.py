"""Memory per rank for the 2.9B preset on paper, checked against 2 CPU processes; DDP vs FSDP2 speed and peak RSS.

    python bench/bench_distributed.py --paper            # the table only (meta device, no training)
    flock /tmp/heavy.lock python bench/bench_distributed.py --steps 30

1. Paper: `bluelm_hf.distributed.training_memory_per_rank` for the parameter count of `BlueLMVConfig.bluelm_2_5_3b()`
   (counted on the meta device) under DDP, ZeRO-2, ZeRO-3 and FSDP2 at 1, 2, 8 and 16 ranks.
2. Check: the bundled nano trained 2 steps by TRL's SFTTrainer in 2 gloo processes (DDP, then FSDP2); each rank sums the
   bytes of the tensors it holds (its local parameter shards, gradients just before the optimizer step, AdamW state)
   and these are compared with the same function at world size 2, fp32 (what the CPU runs train in).
3. Speed: recipes/sft.py on the nano, `torchrun --nproc_per_node 2`, DDP vs `--fsdp --fsdp_config
   recipes/accelerate/fsdp2_trainer.json`; steps/s from the trainer's `train_steps_per_second`, peak RSS per rank
   polled from /proc (psutil) every 50 ms.
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes" / "nano"))  # nano_data: the nano's SFT set
RANKS = (1, 2, 8, 16)
ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
GiB = 1024**3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args,
    ]  # fmt: skip


def preset_param_count() -> int:
    import torch

    from bluelm_hf import BlueLMVConfig, BlueLMVForConditionalGeneration

    with torch.device("meta"):
        model = BlueLMVForConditionalGeneration(BlueLMVConfig.bluelm_2_5_3b())
    return sum(p.numel() for p in model.parameters())  # the tied lm_head counted once


def paper_table(num_params: int) -> str:
    from bluelm_hf.distributed import STRATEGIES, training_memory_per_rank

    lines = [
        f"BlueLM-2.5-3B preset: {num_params:,} parameters, all trainable, bf16 mixed precision + AdamW "
        "(GiB per rank: weights / gradients / AdamW state = total; model states only)",
        "",
        "| strategy | " + " | ".join(f"{n} rank{'s' if n > 1 else ''}" for n in RANKS) + " |",
        "|---|" + "---|" * len(RANKS),
    ]
    for strategy in STRATEGIES:
        cells = []
        for n in RANKS:
            m = training_memory_per_rank(num_params, n, strategy)
            cells.append(
                f"{m['weights'] / GiB:.2f} / {m['gradients'] / GiB:.2f} / {m['optimizer'] / GiB:.2f} = "
                f"**{m['total'] / GiB:.2f}**"
            )
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def worker(strategy: str, output: str) -> None:
    """One rank of the check: the bundled nano, 2 SFTTrainer steps, then the bytes this rank holds."""
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    import bluelm_hf
    from nano_data import make_sft_dataset
    from bluelm_hf.distributed import enable_fsdp_on_cpu

    def local_bytes(tensor) -> int:
        tensor = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        return tensor.numel() * tensor.element_size()

    class GradientBytes(TrainerCallback):
        grads = 0

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.grads = sum(local_bytes(p.grad) for p in model.parameters() if p.grad is not None)

    enable_fsdp_on_cpu()
    model = AutoModelForImageTextToText.from_pretrained(bluelm_hf.NANO)
    fsdp = {}
    if strategy == "fsdp2":
        fsdp = {"fsdp": True, "fsdp_config": json.loads((ROOT / "recipes/accelerate/fsdp2_trainer.json").read_text())}
    args = SFTConfig(
        output_dir=output, max_steps=2, per_device_train_batch_size=2, use_cpu=True, report_to="none",
        save_strategy="no", dataloader_num_workers=0, activation_checkpointing=False, assistant_only_loss=True,
        max_length=None, bf16=False, optim="adamw_torch", **fsdp,
    )  # fmt: skip
    callback = GradientBytes()
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=make_sft_dataset(16),
        processing_class=AutoProcessor.from_pretrained(bluelm_hf.NANO), callbacks=[callback],
    )  # fmt: skip
    trainer.train()
    optimizer = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    optim = sum(local_bytes(v) for s in optimizer.state.values() for k, v in s.items() if k != "step")
    params = sum(local_bytes(p) for p in trainer.model.parameters())
    report = {"weights": params, "gradients": callback.grads, "optimizer": optim, "fsdp": trainer.is_fsdp_enabled}
    report["num_params"] = sum(p.numel() for p in model.parameters())
    Path(output, f"bytes_{strategy}_rank{dist.get_rank()}.json").write_text(json.dumps(report))
    torch.distributed.barrier()


def run_polled(cmd: list[str]) -> tuple[str, dict[int, int], float]:
    """Run cmd; return its output, peak RSS of each rank process (keyed by LOCAL_RANK), and wall time."""
    import psutil

    env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    peaks: dict[int, int] = {}
    ranks: dict[int, int] = {}
    done = threading.Event()

    def poll():
        parent = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                for child in parent.children(recursive=True):
                    if child.pid not in ranks:
                        rank = child.environ().get("LOCAL_RANK")
                        if rank is None:
                            continue
                        ranks[child.pid] = int(rank)
                    peaks[ranks[child.pid]] = max(peaks.get(ranks[child.pid], 0), child.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.05)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    output = proc.communicate()[0]
    done.set()
    thread.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{output[-4000:]}")
    return output, peaks, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper", action="store_true", help="print the paper table only")
    parser.add_argument("--steps", type=int, default=30, help="SFT steps per speed run")
    parser.add_argument("--batch", type=int, default=4, help="per-device batch size of the speed runs")
    parser.add_argument("--output_dir", default="runs/bench-distributed")
    parser.add_argument("--worker", nargs=2, metavar=("STRATEGY", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    num_params = preset_param_count()
    print(paper_table(num_params), flush=True)
    if args.paper:
        return
    from bluelm_hf.distributed import training_memory_per_rank

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    print("\nPer-rank bytes held after 2 SFT steps of the bundled nano, 2 gloo processes, fp32 (measured vs paper):")
    print("| strategy | rank | weights | gradients | AdamW state | paper (w / g / opt) |\n|---|---|---|---|---|---|")
    for strategy in ("ddp", "fsdp2"):
        run_polled(torchrun(str(Path(__file__).resolve()), "--worker", strategy, str(out)))
        for rank in (0, 1):
            m = json.loads((out / f"bytes_{strategy}_rank{rank}.json").read_text())
            if m["fsdp"] != (strategy == "fsdp2"):
                raise RuntimeError(f"{strategy} run had fsdp={m['fsdp']}")
            p = training_memory_per_rank(m["num_params"], 2, strategy, mixed_precision=False)
            print(
                f"| {strategy} | {rank} | {m['weights']:,} | {m['gradients']:,} | {m['optimizer']:,} | "
                f"{p['weights']:,} / {p['gradients']:,} / {p['optimizer']:,} |"
            )
    print(f"\nrecipes/sft.py, bundled nano, {args.steps} steps, batch {args.batch} per rank, torchrun 2 processes:")
    print("| strategy | steps/s | train loss | peak RSS rank 0 (MiB) | peak RSS rank 1 (MiB) | wall (s) |")
    print("|---|---|---|---|---|---|")
    import bluelm_hf

    from nano_data import make_sft_dataset

    make_sft_dataset(args.steps * args.batch * 2).save_to_disk(str(out / "data"))
    for strategy in ("ddp", "fsdp2"):
        flags = []
        if strategy == "fsdp2":
            flags = ["--fsdp", "--fsdp_config", str(ROOT / "recipes/accelerate/fsdp2_trainer.json")]
        cmd = torchrun(
            str(ROOT / "recipes/sft.py"), "--config", str(ROOT / "recipes/nano/sft.yaml"),
            "--model_name_or_path", str(bluelm_hf.NANO), "--dataset_name", str(out / "data"),
            "--output_dir", str(out / strategy), "--max_steps", str(args.steps),
            "--per_device_train_batch_size", str(args.batch), "--save_strategy", "no",
            "--logging_steps", str(args.steps), "--torch_threads", "1", *flags,
        )  # fmt: skip
        output, peaks, wall = run_polled(cmd)
        if ("find_unused_parameters=True was specified in DDP" in output) == (strategy == "fsdp2"):
            raise RuntimeError(f"{strategy}: the log says the other strategy ran")
        speed = re.search(r"'train_steps_per_second': '([\d.]+)'", output).group(1)
        loss = re.search(r"'train_loss': '([\d.]+)'", output).group(1)
        rss = " | ".join(f"{peaks.get(rank, 0) / 2**20:.0f}" for rank in (0, 1))
        print(f"| {strategy} | {speed} | {loss} | {rss} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
