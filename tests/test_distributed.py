"""The distributed path for real: 2 CPU processes in one gloo process group run SFT (BlueLM-nano from scratch)
and GRPO (from the bundled nano), a few steps each, under both launchers a user has:

- `accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml` (accelerate's MULTI_CPU: mpirun, Open MPI;
  .ci/run installs openmpi-bin);
- `torchrun --nproc_per_node 2` (torch's elastic launcher; accelerate's PartialState joins its group)."""

import os
import shutil
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


HAS_MPIRUN = shutil.which("mpirun") is not None
LAUNCHERS = [
    "torchrun",
    pytest.param(
        "accelerate",
        marks=pytest.mark.skipif(not HAS_MPIRUN, reason="accelerate's MULTI_CPU needs mpirun (apt-get install openmpi-bin)"),
    ),
]


def launch(launcher: str, script: str, *args: str) -> str:
    if launcher == "torchrun":
        prefix = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        ]  # fmt: skip
    else:
        prefix = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(ROOT / "recipes/accelerate/cpu_2proc.yaml"), "--main_process_port", str(free_port()),
        ]  # fmt: skip
    cmd = [*prefix, str(ROOT / "recipes" / script), *args]
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    }  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def assert_one_group_of_two(output: str) -> None:
    for rank in (0, 1):
        assert f"[bluelm-hf] rank {rank}/2: backend=gloo world_size=2 ranks=[0, 1]" in output, output[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_process_sft(tmp_path, launcher):
    import bluelm_hf
    from bluelm_hf import nano_task

    sft_dir = tmp_path / "sft"
    nano_task.make_sft_dataset(16).save_to_disk(str(tmp_path / "data"))
    out = launch(
        launcher, "sft.py", "--config", str(ROOT / "recipes/nano/sft.yaml"), "--model_name_or_path", str(bluelm_hf.NANO),
        "--dataset_name", str(tmp_path / "data"), "--output_dir", str(sft_dir), "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--save_strategy", "no",
        "--dataloader_num_workers", "0", "--logging_steps", "1",
    )  # fmt: skip
    assert_one_group_of_two(out)
    assert (sft_dir / "config.json").exists() and (sft_dir / "model.safetensors").exists()



@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_process_grpo(tmp_path, launcher):
    """GRPO from the bundled BlueLM-nano in one 2-process group: TRL's GRPOTrainer with our processor (its
    InternVL-style tile count, `crop_to_patches` / `num_patches`, and a processor output of model inputs only)."""
    import bluelm_hf

    from bluelm_hf import nano_task

    grpo_dir = tmp_path / "grpo"
    nano_task.make_sft_dataset(8, seed=1, think_ratio=1.0).save_to_disk(str(tmp_path / "data"))
    out = launch(
        launcher, "grpo.py", "--config", str(ROOT / "recipes/nano/grpo.yaml"),
        "--model_name_or_path", str(bluelm_hf.NANO), "--dataset_name", str(tmp_path / "data"),
        "--output_dir", str(grpo_dir), "--max_steps", "2", "--per_device_train_batch_size", "2", "--num_generations", "2",
        "--max_completion_length", "8", "--logging_steps", "1",
    )  # fmt: skip
    assert_one_group_of_two(out)
    assert "GRPO wall time" in out and "2 process(es)" in out
    assert "'rewards/accuracy_reward/mean'" in out  # the rewards ran on real rollouts
    assert (grpo_dir / "model.safetensors").exists()
