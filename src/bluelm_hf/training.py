"""Training-stage presets from the BlueLM papers, shared by recipes/sft.py and recipes/grpo.py.

- `adapter`: the alignment stage: ViT and LLM frozen, only the projector (downsampler MLP) trains.
- `full`: everything trains; optionally with a layer-wise learning-rate decay on the ViT
  (`vision_lr_decay`; BlueLM-V-3B used 0.9), so early ViT layers move least.
- `lora`: ViT and LLM weights frozen; PEFT LoRA adapters on the LLM (from `--use_peft --lora_target_modules`,
  see `recipes/README.md`) and the whole projector (PEFT `modules_to_save`) train.
"""

import re
import warnings

import torch

TRAIN_STAGES = ("full", "adapter", "lora")
_LAYER_RE = re.compile(r"vision_tower\..*?layers\.(\d+)\.")


def yarn_rope_parameters(text_config, context_length: int) -> dict:
    """The LLM's `rope_parameters` switched to YaRN (BlueLM-2.5's long-context activation), scaled from its
    `max_position_embeddings` (the trained context) to `context_length` tokens."""
    original = text_config.max_position_embeddings
    if not (isinstance(context_length, int) and context_length > original):
        raise ValueError(
            f"context_length must be an int above the model's max_position_embeddings ({original}), got "
            f"{context_length!r}: YaRN extends a context, it does not shorten one"
        )
    current = dict(text_config.rope_parameters or {})
    if current.get("rope_type", "default") not in ("default", "yarn"):
        raise ValueError(f"the LLM already uses {current['rope_type']!r} RoPE scaling; YaRN replaces only 'default'")
    return {
        "rope_type": "yarn",
        "rope_theta": current.get("rope_theta", getattr(text_config, "rope_theta", 10000.0)),
        "factor": context_length / original,
        "original_max_position_embeddings": original,
    }


def load_pretrained_for_training(model_args, context_length: int = 0):
    """`AutoModelForImageTextToText.from_pretrained` for the recipes, from TRL's `ModelConfig`.

    `context_length` > 0 is the long-context stage: the LLM's RoPE becomes YaRN (`yarn_rope_parameters`) and its
    `max_position_embeddings` is raised to `context_length`, in the config that is loaded, trained and saved.

    QLoRA: `--load_in_4bit` (or `--load_in_8bit`) with `--use_peft` quantizes the LLM only, through TRL's
    `get_quantization_config` (the vision tower and projector stay unquantized through the model's
    `_keep_in_fp32_modules`, the tied lm_head through transformers' default skip list), then PEFT's `prepare_model_for_kbit_training` freezes the base weights and keeps the
    float modules in float32. The adapters are added by the trainer from `--use_peft`.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    kwargs = {"dtype": model_args.dtype}
    if context_length:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path)
        config.text_config.rope_parameters = yarn_rope_parameters(config.text_config, context_length)
        config.text_config.max_position_embeddings = context_length
        kwargs["config"] = config
    quantized = model_args.load_in_4bit or model_args.load_in_8bit
    if quantized:
        if not model_args.use_peft:
            raise ValueError(
                "--load_in_4bit / --load_in_8bit freeze a quantized LLM, so only adapters can train (QLoRA): "
                "add --use_peft and --lora_target_modules (see recipes/README.md)"
            )
        from trl import get_quantization_config

        kwargs["quantization_config"] = get_quantization_config(model_args)
    model = AutoModelForImageTextToText.from_pretrained(model_args.model_name_or_path, **kwargs)
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        bits = 4 if model_args.load_in_4bit else 8
        names = [n for n, m in model.named_modules() if type(m).__name__ in ("Linear4bit", "Linear8bitLt")]
        outside = sorted({n.split(".")[1] for n in names if not n.startswith("model.language_model.")})
        print(f"[bluelm-hf] {bits}-bit: {len(names)} Linear layers, outside the LLM: {outside or 'none'}", flush=True)
    return model


def apply_train_stage(model, stage: str, peft_config=None):
    """Set what trains for a training stage (see module docstring) and return the model to train.

    `full` and `adapter` set `requires_grad` and return `model`. `lora` takes the PEFT config (TRL's
    `get_peft_config(model_args)` from `--use_peft --lora_target_modules ...`): the projector is added to its
    `modules_to_save`, so it trains fully, and the returned `PeftModel` trains only that and the LoRA adapters
    (ViT and LLM weights frozen). Hand that model to the trainer with `peft_config=None`. Without the config it
    warns: the trainer's own PEFT wrapping would freeze the projector.
    """
    if stage not in TRAIN_STAGES:
        raise ValueError(f"train_stage must be one of {TRAIN_STAGES}, got {stage!r}")
    if stage == "full":
        model.requires_grad_(True)
        return model
    model.requires_grad_(False)
    model.multi_modal_projector.requires_grad_(True)
    if stage == "adapter":
        return model
    if peft_config is None:  # the trainer will add the adapters and freeze everything else
        warnings.warn(
            "train_stage 'lora' without its LoRA config: the trainer's PEFT wrapping will freeze the projector too. "
            "Pass apply_train_stage(model, 'lora', get_peft_config(model_args)) and hand the returned model to the "
            "trainer with peft_config=None, or add --lora_modules_to_save multi_modal_projector",
            stacklevel=2,
        )
        return model
    from peft import get_peft_model

    peft_config.modules_to_save = sorted({*(peft_config.modules_to_save or []), "multi_modal_projector"})
    return get_peft_model(model, peft_config)


def vision_layer_depth(name: str, num_layers: int) -> int | None:
    """Depth of a ViT parameter: 0 = patch/position embeddings, i+1 = encoder layer i, L+1 = final norm.

    None for parameters outside the vision tower.
    """
    if "vision_tower." not in name:
        return None
    match = _LAYER_RE.search(name)
    if match:
        return int(match.group(1)) + 1
    if "embeddings" in name:
        return 0
    return num_layers + 1


def vision_layerwise_param_groups(model, lr: float, decay: float, weight_decay: float = 0.0) -> list[dict]:
    """AdamW parameter groups where ViT depth d gets `lr * decay ** (L + 1 - d)`; everything else `lr`."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"vision_lr_decay must be in (0, 1], got {decay}")
    num_layers = model.config.vision_config.num_hidden_layers
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth = vision_layer_depth(name, num_layers)
        scale = 1.0 if depth is None else decay ** (num_layers + 1 - depth)
        groups.setdefault(scale, []).append(param)
    return [
        {"params": params, "lr": lr * scale, "weight_decay": weight_decay, "lr_scale": scale}
        for scale, params in sorted(groups.items())
    ]


def vision_layerwise_optimizer(model, training_args, decay: float) -> torch.optim.Optimizer:
    """AdamW over `vision_layerwise_param_groups`, with the TrainingArguments' betas, eps and weight decay."""
    groups = vision_layerwise_param_groups(model, training_args.learning_rate, decay, training_args.weight_decay)
    return torch.optim.AdamW(
        groups,
        lr=training_args.learning_rate,
        betas=(training_args.adam_beta1, training_args.adam_beta2),
        eps=training_args.adam_epsilon,
    )


def sequence_lengths(dataset, processor, messages_column: str = "messages", images_column: str = "images") -> list[int]:
    """Token count of each row as the processor will build it: the chat-templated text with every image placeholder
    expanded to `<im_start>` + tokens_per_tile x tiles `<image>` + `<im_end>`.

    For `train_sampling_strategy="group_by_length"` (transformers' `LengthGroupedSampler` reads them from the
    `length` column): batches of similar length pad less, which TRL's padding-free mode would otherwise do but
    does not support for vision datasets. Image sizes come from the encoded images' headers, not decoded pixels.
    """
    import io

    from datasets import Image as ImageFeature
    from datasets import List as ListFeature
    from PIL import Image

    image_processor, tokenizer = processor.image_processor, processor.tokenizer
    placeholder = processor.image_token
    raw = dataset
    if images_column in dataset.column_names:
        raw = dataset.cast_column(images_column, ListFeature(ImageFeature(decode=False)))
    lengths = []
    for row in raw:
        text = processor.apply_chat_template(row[messages_column], tokenize=False)
        length = len(tokenizer(text, add_special_tokens=False)["input_ids"]) - text.count(placeholder)
        for image in row.get(images_column) or []:
            source = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
            with Image.open(source) as opened:  # reads the header only
                width, height = opened.size
            length += 2 + image_processor.get_number_of_image_tokens(height, width)
        lengths.append(length)
    return lengths


def report_process_group() -> None:
    """Print this process's rank and the process group it is in (every rank prints; used to prove DDP/gloo runs)."""
    import torch.distributed as dist
    from accelerate import PartialState

    state = PartialState()
    if dist.is_available() and dist.is_initialized():
        ranks = torch.tensor([state.process_index], dtype=torch.long)
        gathered = [torch.zeros_like(ranks) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, ranks)  # fails unless every rank is in the same group
        group = f"backend={dist.get_backend()} world_size={dist.get_world_size()} ranks={sorted(int(t) for t in gathered)}"
    else:
        group = "no process group (single process)"
    print(f"[bluelm-hf] rank {state.process_index}/{state.num_processes}: {group}", flush=True)


def require_model_path(model_args, hint: str) -> str:
    """`--model_name_or_path`, or a ValueError saying what to pass (`hint`), before any data is read."""
    if model_args.model_name_or_path is None:
        raise ValueError(f"--model_name_or_path is required: {hint}")
    return model_args.model_name_or_path


def load_student(model_args, train_stage: str = "full", context_length: int = 0):
    """(model, processor, peft_config) of a recipe: `--model_name_or_path` loaded by `load_pretrained_for_training`,
    set up for `train_stage` (`apply_train_stage`), and TRL's PEFT config from `--use_peft`. In the `lora` stage the
    returned model is already the PeftModel (the projector trains fully beside the adapters): hand the trainer
    `peft_config=None` then."""
    from transformers import AutoProcessor
    from trl import get_peft_config

    model = load_pretrained_for_training(model_args, context_length=context_length)
    peft_config = get_peft_config(model_args)
    model = apply_train_stage(model, train_stage, peft_config)
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path)
    return model, processor, None if train_stage == "lora" else peft_config


def train_and_save(trainer, processor, output_dir: str, resume_from_checkpoint=None, what: str = "Training") -> float:
    """`trainer.train()`, timed and reported (samples/s over all processes), then the whole model, its processor and
    generation config saved to `output_dir`, also under FSDP; returns the wall time in seconds."""
    import time

    from .distributed import unsharded_class

    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    wall = time.perf_counter() - start
    args = trainer.args
    steps = max(trainer.state.global_step, 1)
    samples = steps * args.per_device_train_batch_size * args.gradient_accumulation_steps
    trainer.accelerator.print(
        f"{what} wall time: {wall:.0f} s for {steps} steps ({wall / steps:.2f} s/step, "
        f"{samples * trainer.accelerator.num_processes / wall:.2f} samples/s, "
        f"{trainer.accelerator.num_processes} process(es))"
    )
    if trainer.is_fsdp_enabled:  # a sharded state dict is for resuming; the final folder is a whole model
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    with unsharded_class(trainer.model):  # FSDP2 renames the class; the saved auto_map must name ours
        trainer.save_model(output_dir)
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(output_dir)
        trainer.accelerator.unwrap_model(trainer.model).generation_config.save_pretrained(output_dir)
    trainer.accelerator.end_training()
    return wall


__all__ = [
    "TRAIN_STAGES",
    "apply_train_stage",
    "load_student",
    "require_model_path",
    "report_process_group",
    "sequence_lengths",
    "train_and_save",
    "vision_layerwise_optimizer",
    "vision_layerwise_param_groups",
    "yarn_rope_parameters",
]
