"""Sharded (FSDP2) training of BlueLM: on CPU processes too, sharded checkpoints, and memory on paper.

FSDP2 itself comes from accelerate (`fsdp2_prepare_model`) through transformers' `--fsdp` / `--fsdp_config`
training arguments or an accelerate config with `distributed_type: FSDP`; nothing here wraps the model.
What accelerate reads from the model, and what this module checks:

- shard units: `model._no_split_modules`, which transformers' `post_init` gathers from the sub-models (the language
  model's decoder layer and the SigLIP encoder layer), so an assembled Qwen3 or Llama LM is wrapped per layer with no
  class-name list (`fsdp_layer_classes`);
- tied embeddings: `lm_head.weight is embed_tokens.weight`, kept in one FSDP unit by accelerate.

`enable_fsdp_on_cpu` lets accelerate honour an FSDP plugin in CPU process groups (gloo), which it otherwise drops
for DDP; `consolidate_checkpoint` turns a sharded (torch.distributed.checkpoint) checkpoint into a
`save_pretrained` folder; `training_memory_per_rank` is the per-rank memory table of docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import torch


def fsdp_layer_classes(model: torch.nn.Module) -> list[str]:
    """Class names accelerate's TRANSFORMER_BASED_WRAP turns into FSDP units when no class list is given.

    `model._no_split_modules` (union of the sub-models', from transformers' `post_init`), kept to the classes the model
    instantiates, as accelerate does (`fsdp2_prepare_auto_wrap_policy`).
    """
    declared = set(getattr(model, "_no_split_modules", None) or ())
    present = {type(module).__name__ for module in model.modules()}
    return sorted(declared & present)


def enable_fsdp_on_cpu() -> None:
    """Let accelerate run FSDP in a CPU (gloo) process group; a no-op when the group is on an accelerator.

    accelerate 1.16 turns an FSDP plugin on only for accelerator devices: `AcceleratorState.__init__` switches
    `distributed_type` to FSDP inside the branch for MULTI_GPU/MULTI_XPU/..., and MULTI_CPU is not in that list, so
    `--fsdp` / `fsdp_plugin` on CPU silently trains with DDP (`accelerate launch` with `use_cpu` also routes FSDP
    configs to its CPU launcher, which sets no FSDP environment). This applies the same switch to MULTI_CPU.
    torch's `fully_shard` works over gloo on CPU tensors. Call it before the Trainer / Accelerator is created.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__
    if getattr(original, "_bluelm_fsdp_on_cpu", False):
        return

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU and fsdp_plugin is not None:
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            self.distributed_type = DistributedType.FSDP
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    __init__._bluelm_fsdp_on_cpu = True
    AcceleratorState.__init__ = __init__


@contextlib.contextmanager
def unsharded_class(model: torch.nn.Module):
    """Give an FSDP2-sharded model its own class back for the duration of a `save_pretrained`.

    `fully_shard` swaps the root's class for a generated `FSDP<Name>` defined in torch
    (`torch/distributed/fsdp/_fully_shard/_fully_shard.py`); transformers' `custom_object_save` names the class and
    copies the file of `obj.__class__`, so a sharded model saved as is gets `auto_map` ->
    `_fsdp_init.FSDPBlueLMVForConditionalGeneration` and torch's FSDP sources instead of `modeling_bluelm_v.py`, and
    does not load as remote code. The parameters' FSDP hooks live on the modules, not on the class.
    """
    from torch.distributed.fsdp import FSDPModule

    sharded = type(model)
    if not isinstance(model, FSDPModule):
        yield model
        return
    model.__class__ = next(cls for cls in sharded.__mro__[1:] if not issubclass(cls, FSDPModule))
    try:
        yield model
    finally:
        model.__class__ = sharded


def consolidate_checkpoint(
    checkpoint: str | os.PathLike, output_dir: str | os.PathLike, config_from: str | os.PathLike
) -> Path:
    """Turn a sharded FSDP checkpoint into a `save_pretrained` folder that `from_pretrained` loads (and, with
    `trust_remote_code=True`, without bluelm_hf installed).

    checkpoint: a Trainer `checkpoint-N` folder (its `pytorch_model_fsdp_0/` holds torch.distributed.checkpoint
    shards, one `__<rank>_0.distcp` file per rank) or that shard folder itself. config_from: a folder or Hub id with the
    run's config and processor (the model trained from, or the run's `output_dir`). Runs in one process, no group:
    accelerate's `merge_fsdp_weights` (the `accelerate merge-weights` command) gathers the shards. Returns output_dir.
    """
    from accelerate.utils import merge_fsdp_weights
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, GenerationConfig

    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    shards = checkpoint / "pytorch_model_fsdp_0" if (checkpoint / "pytorch_model_fsdp_0").is_dir() else checkpoint
    if not (shards / ".metadata").is_file():
        found = sorted(p.name for p in checkpoint.iterdir()) if checkpoint.is_dir() else "no such folder"
        raise FileNotFoundError(
            f"{checkpoint} is not a sharded FSDP checkpoint: expected {shards}/.metadata (torch.distributed.checkpoint, "
            f"fsdp_state_dict_type SHARDED_STATE_DICT); found {found}"
        )
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} is not empty; consolidate into a new folder")
    with tempfile.TemporaryDirectory() as merged:
        merge_fsdp_weights(str(shards), merged, safe_serialization=True)
        state_dict = load_file(Path(merged) / "model.safetensors")
    config = AutoConfig.from_pretrained(config_from)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    expected = set(model.state_dict())
    if set(state_dict) != expected:
        missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
        raise ValueError(
            f"{shards} does not hold the weights of the {config.model_type} model in {config_from}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    model.load_state_dict(state_dict, assign=True)
    model.tie_weights()
    model.save_pretrained(output_dir)
    with contextlib.suppress(OSError):
        AutoProcessor.from_pretrained(config_from).save_pretrained(output_dir)
    with contextlib.suppress(OSError):
        GenerationConfig.from_pretrained(config_from).save_pretrained(output_dir)
    return output_dir


STRATEGIES = ("ddp", "zero2", "zero3", "fsdp2")


def training_memory_per_rank(num_params: int, world_size: int, strategy: str, mixed_precision: bool = True) -> dict:
    """Bytes per rank for weights, gradients and AdamW state (model states only: no activations, buffers or the
    transient all-gathered layers), with num_params trainable parameters on world_size ranks.

    mixed_precision=True is bf16 training as DeepSpeed/FSDP do it: DDP and ZeRO keep bf16 weights and gradients
    (2 + 2 bytes) and an fp32 master copy + Adam m + v (12 bytes, counted as optimizer state; ZeRO paper, K=12);
    FSDP2 with a bf16 `MixedPrecisionPolicy` keeps the sharded parameters themselves in fp32 (4, the master copy),
    fp32 gradients (4) and m + v (8). mixed_precision=False is fp32 throughout (4 + 4 + 8), as the CPU runs here.
    ZeRO-2 shards gradients and optimizer state; ZeRO-3 and FSDP2 shard all three (1/world_size each, rounded up:
    FSDP2 pads every tensor's dim-0 to a multiple of world_size; ignored here).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if world_size < 1 or num_params < 0:
        raise ValueError(f"need world_size >= 1 and num_params >= 0, got {world_size} and {num_params}")
    if strategy == "fsdp2" or not mixed_precision:
        weight, grad, optim = 4, 4, 8
    else:
        weight, grad, optim = 2, 2, 12
    shard = {
        "ddp": (1, 1, 1),
        "zero2": (1, world_size, world_size),
        "zero3": (world_size, world_size, world_size),
        "fsdp2": (world_size, world_size, world_size),
    }[strategy]
    weights, gradients, optimizer = (
        -(-num_params * nbytes // ways) for nbytes, ways in zip((weight, grad, optim), shard)
    )
    total = weights + gradients + optimizer
    return {"weights": weights, "gradients": gradients, "optimizer": optimizer, "total": total}


__all__ = [
    "STRATEGIES",
    "consolidate_checkpoint",
    "enable_fsdp_on_cpu",
    "fsdp_layer_classes",
    "training_memory_per_rank",
    "unsharded_class",
]
