# Copyright 2026 The bluelm-hf authors. Apache-2.0.
"""GRPO for BlueLM with TRL's GRPOTrainer: rule rewards plus the Group Overlong length penalty.

    python recipes/grpo.py --config recipes/nano_grpo.yaml
    accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml recipes/grpo.py --config recipes/nano_grpo.yaml

Rewards come from `bluelm_hf.rewards` (accuracy, format, repetition, group_overlong), weighted by
`reward_weights` (a mapping name -> weight in the YAML). Rollouts are in thinking mode by default
(`chat_template_kwargs: {enable_thinking: true}`); a thinking budget during rollouts is set with
`generation_kwargs: {thinking_budget: N}`: TRL passes its GenerationConfig to `model.generate`, whose
BlueLM override reads `thinking_budget` from it and adds the ThinkingBudgetLogitsProcessor.
"""

import json
import time
from dataclasses import dataclass, field

import bluelm_hf  # noqa: F401  (registers the bluelm_v Auto classes)
from bluelm_hf import nano_task
from bluelm_hf.training import apply_train_stage, load_pretrained_for_training, report_process_group


@dataclass
class BlueLMGRPOArguments:
    dataset_size: int = field(default=2000, metadata={"help": "Prompts drawn from the nano task's train split."})
    data_seed_offset: int = field(default=1, metadata={"help": "Generator seed (differs from SFT's by default)."})
    reward_weights_by_name: str = field(
        default='{"accuracy": 1.0, "format": 0.5, "repetition": 0.5, "group_overlong": 0.5}',
        metadata={"help": "JSON mapping reward name -> weight; names from bluelm_hf.rewards."},
    )
    reward_options: str = field(default="{}", metadata={"help": "JSON mapping reward name -> keyword options."})
    eval_size: int = field(default=200, metadata={"help": "Held-out rows for the final check (0: skip)."})
    train_stage: str = field(default="full", metadata={"help": "'full', 'adapter' or 'lora' (with --use_peft)."})


def grpo_dataset(n: int, seed: int, thinking: bool):
    """Nano-task prompts in TRL's conversational VLM format, with the answer and a bool mode column."""
    data = nano_task.make_dataset(n, seed=seed, split="train")
    prompts = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in data["question"]]
    keep = ["image", "answer"]
    data = data.remove_columns([c for c in data.column_names if c not in keep])
    data = data.add_column("prompt", prompts)
    return data.add_column("thinking", [thinking] * n)


def main(script_args, training_args, model_args):
    from transformers import AutoProcessor
    from trl import GRPOTrainer, get_peft_config

    report_process_group()

    from bluelm_hf.rewards import build_reward_funcs

    if model_args.model_name_or_path is None:
        raise ValueError("GRPO starts from an SFT'd BlueLM: pass --model_name_or_path (e.g. the bundled nano)")
    model = load_pretrained_for_training(model_args)
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path)
    apply_train_stage(model, script_args.train_stage)

    thinking = bool((training_args.chat_template_kwargs or {}).get("enable_thinking", False))
    weights = json.loads(script_args.reward_weights_by_name)
    options = json.loads(script_args.reward_options)
    reward_funcs, reward_weights = build_reward_funcs(weights, score_fn=nano_task.score, options=options)
    training_args.reward_weights = reward_weights

    trainer = GRPOTrainer(
        model=model,
        args=training_args,
        reward_funcs=reward_funcs,
        train_dataset=grpo_dataset(script_args.dataset_size, script_args.data_seed_offset, thinking),
        processing_class=processor,
        peft_config=get_peft_config(model_args),
    )
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    wall = time.perf_counter() - start
    steps = max(trainer.state.global_step, 1)
    trainer.accelerator.print(
        f"GRPO wall time: {wall:.0f} s for {steps} steps ({wall / steps:.1f} s/step, "
        f"{trainer.accelerator.num_processes} process(es))"
    )

    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(training_args.output_dir)
        if script_args.eval_size:
            from bluelm_hf.evaluation import evaluate_nano

            final = trainer.model.merge_and_unload() if hasattr(trainer.model, "merge_and_unload") else trainer.model
            result = evaluate_nano(final.eval(), processor, n=script_args.eval_size, thinking=True)
            trainer.accelerator.print(f"held-out (think): {json.dumps(result)}")
    trainer.accelerator.end_training()


if __name__ == "__main__":
    from trl import GRPOConfig, ModelConfig, TrlParser

    parser = TrlParser((BlueLMGRPOArguments, GRPOConfig, ModelConfig))
    main(*parser.parse_args_and_config())
