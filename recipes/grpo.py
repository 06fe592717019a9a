# Copyright 2026 The bluelm-hf authors. Apache-2.0.
"""GRPO for BlueLM on any conversational VLM dataset with TRL's GRPOTrainer: rule rewards plus Group Overlong.

    python recipes/grpo.py --config recipes/stages/6_grpo.yaml --model_name_or_path runs/sft --dataset_name my.jsonl
    accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml recipes/grpo.py --config recipes/nano/grpo.yaml

Modelled on TRL's `trl/scripts/grpo.py`: `--dataset_name` etc. as in recipes/sft.py, and `--reward_funcs` as dotted
import paths (or the names of TRL's script registry) with `GRPOConfig`'s `--reward_weights`, one per function.
`--reward_kwargs` (JSON: reward -> keyword arguments) configures them: a `get_*` name is a factory, called with
them (TRL's `trl.rewards.get_repetition_penalty_reward`, `get_soft_overlong_punishment`); any other function gets
them bound. The defaults are BlueLM's: `bluelm_hf.rewards.accuracy_reward` (numeric-aware answer match),
`format_reward`, TRL's repetition penalty and `bluelm_hf.rewards.group_overlong_reward` (Group Overlong).

Each prompt is a row's turns before its last assistant turn, and `answer` that turn's text (unless the dataset has
an `answer` column); a `prompt` + `answer` dataset is used as is. Rollouts are in thinking mode with
`chat_template_kwargs: {enable_thinking: true}`; a thinking budget during rollouts is set with
`generation_kwargs: {thinking_budget: N}`: TRL passes its GenerationConfig to `model.generate`, whose BlueLM override
reads `thinking_budget` from it and adds the ThinkingBudgetLogitsProcessor.
"""

import functools
import importlib
import json
from dataclasses import dataclass, field

from trl import ScriptArguments

import bluelm_hf  # noqa: F401  (registers the bluelm_v Auto classes)
from bluelm_hf.data import load_training_data, to_prompts
from bluelm_hf.distributed import enable_fsdp_on_cpu
from bluelm_hf.training import load_student, report_process_group, require_model_path, train_and_save

DEFAULT_REWARDS = [
    "bluelm_hf.rewards.accuracy_reward",
    "bluelm_hf.rewards.format_reward",
    "trl.rewards.get_repetition_penalty_reward",
    "bluelm_hf.rewards.group_overlong_reward",
]


@dataclass
class BlueLMGRPOArguments(ScriptArguments):
    reward_funcs: list[str] = field(
        default_factory=lambda: list(DEFAULT_REWARDS),
        metadata={"help": "Reward functions: dotted import paths (e.g. 'bluelm_hf.rewards.group_overlong_reward') "
                  "or names of TRL's script registry (accuracy_reward, think_format_reward, ...)."},
    )
    reward_kwargs: str = field(
        default="{}", metadata={"help": "JSON mapping a --reward_funcs entry -> its keyword arguments."}
    )
    train_stage: str = field(default="full", metadata={"help": "'full', 'adapter' or 'lora' (with --use_peft)."})


def trl_registry() -> dict:
    """The short names TRL's `trl/scripts/grpo.py` accepts, with the same settings."""
    from trl.rewards import accuracy_reward, get_soft_overlong_punishment, reasoning_accuracy_reward, think_format_reward

    return {
        "accuracy_reward": accuracy_reward,
        "reasoning_accuracy_reward": reasoning_accuracy_reward,
        "think_format_reward": think_format_reward,
        "get_soft_overlong_punishment": get_soft_overlong_punishment(max_completion_len=1280, soft_punish_cache=256),
    }


def load_reward_funcs(names: list[str], kwargs_json: str = "{}") -> list:
    """The reward callables for `names` (see the module docstring); ValueError naming what could not be loaded."""
    options = json.loads(kwargs_json or "{}")
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"--reward_kwargs names {unknown}, which are not in --reward_funcs {names}")
    registry = trl_registry()
    funcs = []
    for name in names:
        kwargs = options.get(name, {})
        if name in registry and "." not in name:
            if kwargs:
                raise ValueError(f"TRL's registry reward {name!r} takes no --reward_kwargs; use its dotted path")
            funcs.append(registry[name])
            continue
        module_path, _, attr = name.rpartition(".")
        try:
            func = getattr(importlib.import_module(module_path), attr) if module_path else None
        except (ImportError, AttributeError) as error:
            raise ValueError(f"could not load reward function {name!r}: {error}") from None
        if func is None:
            raise ValueError(
                f"could not load reward function {name!r}: expected one of {sorted(registry)} or a dotted import path"
            )
        if attr.startswith("get_"):  # a factory, TRL's convention
            func = func(**kwargs)
        elif kwargs:
            func = functools.update_wrapper(functools.partial(func, **kwargs), func)
        funcs.append(func)
    return funcs


def main(script_args, training_args, model_args, dataset_args=None):
    from trl import GRPOTrainer

    report_process_group()
    enable_fsdp_on_cpu()  # --fsdp on CPU processes: accelerate would silently use DDP
    require_model_path(model_args, "GRPO starts from an SFT'd BlueLM (recipes/sft.py)")
    reward_funcs = load_reward_funcs(script_args.reward_funcs, script_args.reward_kwargs)
    weights = training_args.reward_weights
    if weights is not None and len(weights) != len(reward_funcs):
        raise ValueError(f"{len(weights)} --reward_weights for {len(reward_funcs)} --reward_funcs {script_args.reward_funcs}")
    train_dataset, _ = load_training_data(script_args, dataset_args, seed=training_args.seed)
    train_dataset = to_prompts(train_dataset, source=script_args.dataset_name or "the mixture")

    model, processor, peft_config = load_student(model_args, script_args.train_stage)

    trainer = GRPOTrainer(
        model=model,
        args=training_args,
        reward_funcs=reward_funcs,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=peft_config,
    )
    train_and_save(trainer, processor, training_args.output_dir, training_args.resume_from_checkpoint, what="GRPO")


if __name__ == "__main__":
    from trl import DatasetMixtureConfig, GRPOConfig, ModelConfig, TrlParser

    parser = TrlParser((BlueLMGRPOArguments, GRPOConfig, ModelConfig, DatasetMixtureConfig))
    main(*parser.parse_args_and_config())
