"""TRL's GRPOTrainer on BlueLM, in process: rollouts from the bundled nano go through our processor, and the
thinking budget set in `generation_kwargs` reaches `BlueLMVForConditionalGeneration.generate`."""

import sys

import pytest
import torch

import bluelm_hf
from bluelm_hf import nano_task
from bluelm_hf.inference import load


def grpo_prompts(n: int):
    data = nano_task.make_dataset(n, seed=3, split="train")
    prompts = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in data["question"]]
    data = data.select_columns(["image", "answer"]).add_column("prompt", prompts)
    return data


def thinking_lengths(completion_ids, config) -> list[int | None]:
    """Tokens strictly between <think> and </think> per completion (None: no closed block)."""
    lengths = []
    for ids in completion_ids:
        ids = list(ids)
        if config.think_start_token_id in ids and config.think_end_token_id in ids:
            lengths.append(ids.index(config.think_end_token_id) - ids.index(config.think_start_token_id) - 1)
        else:
            lengths.append(None)
    return lengths


@pytest.mark.parametrize("budget", [None, 2])
def test_grpo_step_with_thinking_budget_in_generation_kwargs(tmp_path, budget):
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    model, processor = load(bluelm_hf.NANO)
    seen = []

    def spy_reward(completions, completion_ids, **kwargs):
        seen.extend(thinking_lengths(completion_ids, model.config))
        return [0.0] * len(completions)

    args = GRPOConfig(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, num_generations=4,
        max_completion_length=32, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
        chat_template_kwargs={"enable_thinking": True}, bf16=False, dataloader_num_workers=0,
        generation_kwargs={} if budget is None else {"thinking_budget": budget},
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=model, args=args, reward_funcs=[spy_reward], train_dataset=grpo_prompts(8), processing_class=processor
    )
    trainer.train()
    assert len(seen) == 4 and None not in seen, seen
    if budget is None:
        assert max(seen) > 2, seen  # the nano's natural traces are longer: the budget case below is a real cap
    else:
        assert all(length <= budget for length in seen), seen


@pytest.mark.slow
def test_grpo_recipe_under_fsdp2_on_two_cpu_processes(tmp_path):
    """recipes/grpo.py through `accelerate launch --config_file recipes/accelerate/fsdp2.yaml` on 2 CPU processes:
    the recipe's `enable_fsdp_on_cpu` keeps FSDP2 (accelerate would fall back to DDP), rollouts run on the sharded
    policy (its step-2 checkpoint holds each weight split across the two ranks' files), and the final folder is a
    whole model that loads as remote code."""
    from nano_data import make_sft_dataset  # recipes/nano, on sys.path by conftest
    from test_distributed import (
        DDP_MARK,
        ROOT,
        assert_loads_as_remote_code,
        assert_one_group_of_two,
        assert_split_across_two_ranks,
        free_port,
        run,
    )

    make_sft_dataset(8, seed=1, think_ratio=1.0).save_to_disk(str(tmp_path / "data"))
    out = tmp_path / "grpo"
    log = run([
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "recipes/accelerate/fsdp2.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port()),
        str(ROOT / "recipes/grpo.py"), "--config", str(ROOT / "recipes/nano/grpo.yaml"),
        "--model_name_or_path", str(bluelm_hf.NANO), "--dataset_name", str(tmp_path / "data"), "--output_dir", str(out),
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--num_generations", "2",
        "--max_completion_length", "8", "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "2",
    ])  # fmt: skip
    assert_one_group_of_two(log)
    assert DDP_MARK not in log, "FSDP was dropped for DDP"
    assert "GRPO wall time" in log and "2 process(es)" in log and "'rewards/accuracy_reward/mean'" in log
    shards = out / "checkpoint-2" / "pytorch_model_fsdp_0"
    assert shards.is_dir(), f"no sharded FSDP checkpoint: {sorted(p.name for p in (out / 'checkpoint-2').iterdir())}"
    assert assert_split_across_two_ranks(shards) >= 70
    from safetensors.torch import load_file

    assert_loads_as_remote_code(out, load_file(out / "model.safetensors"))
