# Copyright 2026 The bluelm-hf authors. Apache-2.0.
"""Supervised fine-tuning of BlueLM on any conversational VLM dataset with TRL's SFTTrainer.

    python recipes/sft.py --model_name_or_path runs/assembled --dataset_name my_data.jsonl --output_dir runs/sft
    python recipes/sft.py --config recipes/stages/5_sft.yaml --model_name_or_path runs/stage4 --dataset_name ...
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/sft.py --config my_sft.yaml

Modelled on TRL's `examples/scripts/sft_vlm.py`: TRL's `ScriptArguments` (`--dataset_name`, `--dataset_config`,
`--dataset_train_split`, `--dataset_test_split`), `SFTConfig` and `ModelConfig`, plus a `datasets:` list in the
YAML (TRL's `DatasetMixtureConfig`) whose `fraction`s are the probabilities of an interleaved mixture (6:4
image:text for the joint stage). `--dataset_name` takes a `save_to_disk` folder, a JSON/JSONL/Parquet/CSV file
(image paths relative to it), an image folder with metadata, or a Hub id (`bluelm_hf.data`). Rows are TRL's
conversational VLM format (`messages`, `images`); text-only and image rows mix in one batch.

`--model_name_or_path` is required: a BlueLM checkpoint, or one made by `bluelm-hf assemble VISION_MODEL LM OUT`
(BlueLM-nano's random init: `recipes/nano/prepare.py`). Thinking-mode fusion comes from the data: an assistant
turn with `reasoning_content` (or a `<think>...</think>` prefix) trains thinking mode, one without it non-thinking
mode; `--long_cot_repeat 3 --long_cot_min_tokens N` shows rows with >= N reasoning tokens 3x as often (the paper:
normal CoT 3 epochs, long CoT 9). The loss is on assistant tokens only (`assistant_only_loss`, through the chat
template's `{% generation %}` markers). TRL does not support packing or padding-free batches for vision
datasets, so batches are padded.
"""

import os
from dataclasses import dataclass, field

# Bit-reproducible training on CPU. By default PyTorch, MKL and oneDNN each pick the widest vector code the CPU
# has, and AVX-512 and AVX2 kernels round differently: the same recipe, seed and data then give a measurably
# different model (BENCHMARKS.md: non-thinking accuracy 0.76-0.88 across boxes, same init). Pinning all three to
# their AVX2 code paths gave the same weights, bit for bit, on an AVX-512 and an (emulated) AVX2 AMD CPU, for a fixed
# number of torch threads (nano/sft.yaml: 2); an emulated Intel CPU still differs. Set before torch loads; export
# another value to override.
CPU_NUMERICS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX2"}
for _name, _value in CPU_NUMERICS.items():
    os.environ.setdefault(_name, _value)

from trl import ScriptArguments  # noqa: E402

import bluelm_hf  # noqa: E402, F401  (registers the bluelm_v Auto classes)
from bluelm_hf.data import load_training_data, repeat_long_cot  # noqa: E402
from bluelm_hf.distributed import enable_fsdp_on_cpu  # noqa: E402
from bluelm_hf.training import load_student, report_process_group, require_model_path, train_and_save  # noqa: E402


@dataclass
class BlueLMSFTArguments(ScriptArguments):
    train_stage: str = field(
        default="full",
        metadata={"help": "'full', 'adapter' (projector only: ViT and LLM frozen) or 'lora' (use --use_peft)."},
    )
    vision_lr_decay: float = field(
        default=1.0, metadata={"help": "Layer-wise LR decay on the ViT (BlueLM-V-3B used 0.9); 1.0 = off."}
    )
    context_length: int = field(
        default=0,
        metadata={"help": "Long-context activation: RoPE to YaRN through the LLM config's rope_parameters, scaled "
                  "from its max_position_embeddings to this many tokens (BlueLM-2.5: 32768); 0 = off."},
    )
    long_cot_min_tokens: int = field(
        default=0, metadata={"help": "Rows with at least this many reasoning tokens count as long CoT."}
    )
    long_cot_repeat: int = field(
        default=1, metadata={"help": "Times each long-CoT row appears per epoch (paper: 3, for 9 vs 3 epochs)."}
    )
    torch_threads: int = field(
        default=0,
        metadata={"help": "torch intra-op threads (0: torch's default). CPU results depend on it, so a recipe that "
                  "must re-create its checkpoint bit for bit fixes it."},
    )


def main(script_args, training_args, model_args, dataset_args=None):
    from trl import SFTTrainer

    from bluelm_hf.training import vision_layerwise_optimizer

    if script_args.torch_threads:
        import torch

        torch.set_num_threads(script_args.torch_threads)
    report_process_group()
    enable_fsdp_on_cpu()  # --fsdp on CPU processes: accelerate would silently use DDP
    require_model_path(
        model_args, "a BlueLM checkpoint, or one built by `bluelm-hf assemble VISION_MODEL LM OUT` (BlueLM-nano's "
        "random init: `python recipes/nano/prepare.py`)"
    )
    train_dataset, eval_dataset = load_training_data(script_args, dataset_args, seed=training_args.seed)
    model, processor, peft_config = load_student(model_args, script_args.train_stage, script_args.context_length)
    train_dataset = repeat_long_cot(
        train_dataset, processor.tokenizer, script_args.long_cot_min_tokens, script_args.long_cot_repeat
    )

    if training_args.train_sampling_strategy == "group_by_length":
        # transformers' LengthGroupedSampler reads the lengths from a column; TRL keeps only messages + images of a
        # vision dataset unless told otherwise. (For nano, grouping hurt: see recipes/nano/sft.yaml.)
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
        eval_dataset=eval_dataset if training_args.eval_strategy != "no" else None,
        processing_class=processor,
        peft_config=peft_config,
        optimizers=optimizers,
    )
    train_and_save(trainer, processor, training_args.output_dir, training_args.resume_from_checkpoint)


if __name__ == "__main__":
    from trl import DatasetMixtureConfig, ModelConfig, SFTConfig, TrlParser

    parser = TrlParser((BlueLMSFTArguments, SFTConfig, ModelConfig, DatasetMixtureConfig))
    main(*parser.parse_args_and_config())
