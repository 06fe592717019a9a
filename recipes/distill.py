# Copyright 2026 The bluelm-hf authors. Apache-2.0.
"""Knowledge distillation of a teacher into a BlueLM student with TRL's DistillationTrainer, on any conversational
VLM dataset (BlueLM-2.5: the 2.5B LLM was distilled from a 7B one).

    python recipes/distill.py --model_name_or_path runs/student --teacher_model_name_or_path runs/teacher \\
        --dataset_name my_data.jsonl --output_dir runs/distilled
    python recipes/distill.py --config recipes/stages/distill.yaml --dataset_name ...
    python recipes/distill.py --config recipes/nano/distill.yaml       # at nano scale (bench/bench_distill.py)

Modelled on TRL's `trl/scripts/distillation.py`, with the dataset arguments of recipes/sft.py (`--dataset_name`,
`--dataset_config`, `--dataset_train_split`, a `datasets:` mixture; `bluelm_hf.data`). Each row's turns before its
last assistant turn are the prompt (as in recipes/grpo.py).

The trainer is TRL's `DistillationTrainer` (`bluelm_hf.distillation`): the student is trained to match the
teacher's next-token distribution under a generalized JSD (`--beta`: 0 forward KL, 1 reverse KL, in between the
JSD) over completions that are, per generation batch, the student's own with probability `--lmbda` (on-policy,
TRL's default: `--lmbda 1`), else each row's last assistant turn (off-policy; `--lmbda 0` is supervised KD on the
data). It is the trainer that fits a VLM: the processor's `pixel_values` go to the student's generation and to both
models' forward passes, while GKD's (`trl.experimental.gkd`) `compute_loss` gives the teacher and the student only
`input_ids` and `attention_mask`. Teacher and student must share the tokenizer (TRL checks the vocabulary size);
their widths may differ. On-policy rollouts use one chat mode for every row (`chat_template_kwargs: {enable_thinking:
true}` distils thinking mode); off-policy rows keep their own mode (a turn with reasoning is a thinking turn).
"""

from dataclasses import dataclass, field

from trl import ScriptArguments

import bluelm_hf  # noqa: F401  (registers the bluelm_v Auto classes)
from bluelm_hf.data import load_training_data, to_prompts
from bluelm_hf.distillation import BlueLMDistillationTrainer
from bluelm_hf.distributed import enable_fsdp_on_cpu
from bluelm_hf.training import load_student, report_process_group, require_model_path, train_and_save


@dataclass
class BlueLMDistillArguments(ScriptArguments):
    train_stage: str = field(default="full", metadata={"help": "'full', 'adapter' or 'lora' (with --use_peft)."})


def load_teacher(training_args, model_args):
    """The frozen teacher, `--teacher_model_name_or_path`, in the student's dtype (or `teacher_model_init_kwargs`'),
    in eval mode."""
    from transformers import AutoModelForImageTextToText

    path = training_args.teacher_model_name_or_path
    if path is None:
        raise ValueError("--teacher_model_name_or_path is required: the model to distil into the student")
    kwargs = {"dtype": model_args.dtype, **(training_args.teacher_model_init_kwargs or {})}
    teacher = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    return teacher.eval().requires_grad_(False)


def main(script_args, training_args, model_args, dataset_args=None):
    report_process_group()
    enable_fsdp_on_cpu()  # --fsdp on CPU processes: accelerate would silently use DDP
    require_model_path(model_args, "the student, a BlueLM checkpoint (or `bluelm-hf assemble VISION_MODEL LM OUT`)")
    teacher = load_teacher(training_args, model_args)
    train_dataset, _ = load_training_data(script_args, dataset_args, seed=training_args.seed)
    source = script_args.dataset_name or "the mixture"
    train_dataset = to_prompts(train_dataset, source=source, completions=training_args.lmbda < 1)

    model, processor, peft_config = load_student(model_args, script_args.train_stage)
    # TRL gives the teacher only what it was loaded with: it is never passed `teacher_model_init_kwargs` again
    training_args.teacher_model_init_kwargs = None

    trainer = BlueLMDistillationTrainer(
        model=model,
        teacher_model=teacher,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=peft_config,
    )
    train_and_save(
        trainer, processor, training_args.output_dir, training_args.resume_from_checkpoint, what="Distillation"
    )


if __name__ == "__main__":
    from trl import DatasetMixtureConfig, ModelConfig, TrlParser

    from bluelm_hf.distillation import BlueLMDistillConfig

    parser = TrlParser((BlueLMDistillArguments, BlueLMDistillConfig, ModelConfig, DatasetMixtureConfig))
    main(*parser.parse_args_and_config())
