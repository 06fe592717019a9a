"""The distributed path for real: 2 CPU processes (torchrun) in one gloo process group runs
SFT (BlueLM-nano from scratch) and GRPO (from the bundled nano), a few steps each."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(script: str, *args: str) -> str:
    # torchrun sets RANK/WORLD_SIZE; accelerate's PartialState then joins one gloo group (accelerate's own
    # MULTI_CPU launcher started a single process here).
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        str(ROOT / "recipes" / script), *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def assert_one_group_of_two(output: str) -> None:
    for rank in (0, 1):
        assert f"[bluelm-hf] rank {rank}/2: backend=gloo world_size=2 ranks=[0, 1]" in output, output[-3000:]


@pytest.mark.slow
def test_two_process_sft(tmp_path):
    sft_dir = tmp_path / "sft"
    out = launch(
        "sft.py", "--config", str(ROOT / "recipes/nano_sft.yaml"),
        "--output_dir", str(sft_dir), "--max_steps", "2", "--dataset_size", "16",
        "--per_device_train_batch_size", "2", "--eval_size", "0", "--save_strategy", "no",
        "--dataloader_num_workers", "0", "--logging_steps", "1",
    )  # fmt: skip
    assert_one_group_of_two(out)
    assert (sft_dir / "config.json").exists() and (sft_dir / "model.safetensors").exists()



@pytest.mark.slow
def test_two_process_grpo(tmp_path):
    """GRPO from the bundled BlueLM-nano in one 2-process group: TRL's GRPOTrainer with our processor (its
    InternVL-style tile count, `crop_to_patches` / `num_patches`, and a processor output of model inputs only)."""
    import bluelm_hf

    grpo_dir = tmp_path / "grpo"
    out = launch(
        "grpo.py", "--config", str(ROOT / "recipes/nano_grpo.yaml"),
        "--model_name_or_path", str(bluelm_hf.NANO), "--output_dir", str(grpo_dir), "--max_steps", "2",
        "--dataset_size", "8", "--per_device_train_batch_size", "2", "--num_generations", "2",
        "--max_completion_length", "8", "--eval_size", "0", "--logging_steps", "1",
    )  # fmt: skip
    assert_one_group_of_two(out)
    assert "GRPO wall time" in out and "2 process(es)" in out
    assert "'rewards/accuracy_reward/mean'" in out  # the rewards ran on real rollouts
    assert (grpo_dir / "model.safetensors").exists()
