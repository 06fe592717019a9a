# Copyright 2026 The bluelm-hf authors. Apache-2.0.
"""Supervised fine-tuning of BlueLM with TRL's SFTTrainer: thinking-mode fusion on the nano task.

    python recipes/sft.py --config recipes/nano_sft.yaml
    accelerate launch recipes/sft.py --config recipes/nano_sft.yaml
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/sft.py --config recipes/nano_sft.yaml

With `--model_name_or_path` unset, BlueLM-nano is built from scratch: a BPE tokenizer is trained on the task
corpus, then a randomly initialised nano-shaped BlueLM. Otherwise any BlueLM checkpoint (a path, a Hub id, or
one made by `bluelm_hf.assemble_bluelm`) is fine-tuned. Thinking-mode fusion: `think_ratio` of the rows carry
a `<think>` trace, the rest answer directly; the loss is on assistant tokens only (`assistant_only_loss`,
through the chat template's `{% generation %}` markers). TRL does not support packing or padding-free
batches for vision datasets, so batches are padded.
"""

import os
import time
from dataclasses import dataclass, field

# Bit-reproducible training on CPU. By default PyTorch, MKL and oneDNN each pick the widest vector code the CPU
# has, and AVX-512 and AVX2 kernels round differently: the same recipe, seed and data then give a measurably
# different model (BENCHMARKS.md: non-thinking accuracy 0.76-0.88 across boxes, same init). Pinning all three to
# their AVX2 code paths gave the same weights, bit for bit, on an AVX-512 and an (emulated) AVX2 AMD CPU, for a fixed
# number of torch threads (nano_sft.yaml: 2); an emulated Intel CPU still differs. Set before torch loads; export
# another value to override.
CPU_NUMERICS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX2"}
for _name, _value in CPU_NUMERICS.items():
    os.environ.setdefault(_name, _value)

import bluelm_hf  # noqa: E402, F401  (registers the bluelm_v Auto classes)
from bluelm_hf import nano_task  # noqa: E402
from bluelm_hf.assemble import init_from_scratch  # noqa: E402
from bluelm_hf.distributed import enable_fsdp_on_cpu, unsharded_class  # noqa: E402
from bluelm_hf.training import apply_train_stage, load_pretrained_for_training, report_process_group  # noqa: E402


@dataclass
class BlueLMSFTArguments:
    dataset_size: int = field(default=20_000, metadata={"help": "Training rows drawn from the nano task."})
    data_seed_offset: int = field(default=0, metadata={"help": "Seed of the nano task generator."})
    think_ratio: float = field(default=0.5, metadata={"help": "Share of thinking-mode rows (mode fusion)."})
    verbose_ratio: float = field(
        default=0.0,
        metadata={"help": "Share of thinking rows with the verbose (over-thinking) trace, for GRPO to shorten."},
    )
    tokenizer_vocab_size: int = field(default=512, metadata={"help": "BPE vocabulary when building nano."})
    eval_size: int = field(default=200, metadata={"help": "Held-out rows for the final accuracy check (0: skip)."})
    train_stage: str = field(
        default="full",
        metadata={"help": "'full', 'adapter' (projector only: ViT and LLM frozen) or 'lora' (use --use_peft)."},
    )
    vision_lr_decay: float = field(
        default=1.0, metadata={"help": "Layer-wise LR decay on the ViT (BlueLM-V-3B used 0.9); 1.0 = off."}
    )
    torch_threads: int = field(
        default=0,
        metadata={"help": "torch intra-op threads (0: torch's default). CPU results depend on it, so a recipe that "
                  "must re-create its checkpoint bit for bit fixes it."},
    )


def main(script_args, training_args, model_args):
    from transformers import AutoProcessor
    from trl import SFTTrainer, get_peft_config

    if script_args.torch_threads:
        import torch

        torch.set_num_threads(script_args.torch_threads)
    report_process_group()
    enable_fsdp_on_cpu()  # --fsdp on CPU processes: accelerate would silently use DDP

    from bluelm_hf.training import vision_layerwise_optimizer

    if model_args.model_name_or_path is None:  # build BlueLM-nano from scratch
        styles = ("concise", "verbose") if script_args.verbose_ratio > 0 else ("concise",)
        tokenizer = nano_task.train_tokenizer(
            nano_task.tokenizer_corpus(seed=script_args.data_seed_offset, styles=styles),
            vocab_size=script_args.tokenizer_vocab_size,
        )
        model, processor = init_from_scratch(tokenizer, seed=training_args.seed)
    else:
        model = load_pretrained_for_training(model_args)
        processor = AutoProcessor.from_pretrained(model_args.model_name_or_path)
    apply_train_stage(model, script_args.train_stage)

    train_dataset = nano_task.make_sft_dataset(
        script_args.dataset_size,
        seed=script_args.data_seed_offset,
        think_ratio=script_args.think_ratio,
        verbose_ratio=script_args.verbose_ratio,
        num_proc=training_args.dataset_num_proc or 1,
    )
    if training_args.train_sampling_strategy == "group_by_length":
        # transformers' LengthGroupedSampler reads the lengths from a column; TRL keeps only messages + images of a
        # vision dataset unless told otherwise. (For nano, grouping hurt: see recipes/nano_sft.yaml.)
        if training_args.remove_unused_columns:
            raise ValueError(
                "train_sampling_strategy=group_by_length needs --remove_unused_columns false: TRL drops every column "
                f"of a vision dataset but messages and images, {training_args.length_column_name!r} included"
            )
        if training_args.length_column_name not in train_dataset.column_names:
            from bluelm_hf.training import sequence_lengths

            train_dataset = train_dataset.add_column(
                training_args.length_column_name, sequence_lengths(train_dataset, processor)
            )
    optimizers = (None, None)
    if script_args.vision_lr_decay != 1.0:
        optimizers = (vision_layerwise_optimizer(model, training_args, script_args.vision_lr_decay), None)

    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=get_peft_config(model_args),
        optimizers=optimizers,
    )
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    wall = time.perf_counter() - start
    trainer.accelerator.print(f"Training wall time: {wall:.0f} s")

    if trainer.is_fsdp_enabled:  # a sharded state dict is for resuming; the final folder is a whole model
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    with unsharded_class(trainer.model):  # FSDP2 renames the class; the saved auto_map must name ours
        trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(training_args.output_dir)
        model.generation_config.save_pretrained(training_args.output_dir)
        if script_args.eval_size:
            from bluelm_hf.evaluation import evaluate_nano

            final = trainer.model.merge_and_unload() if hasattr(trainer.model, "merge_and_unload") else trainer.model
            for thinking in (True, False):
                result = evaluate_nano(final.eval(), processor, n=script_args.eval_size, thinking=thinking)
                trainer.accelerator.print(f"held-out ({'think' if thinking else 'no-think'}): {result}")
    trainer.accelerator.end_training()


if __name__ == "__main__":
    from trl import ModelConfig, SFTConfig, TrlParser

    parser = TrlParser((BlueLMSFTArguments, SFTConfig, ModelConfig))
    main(*parser.parse_args_and_config())
