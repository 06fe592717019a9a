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

import json
import os
import shutil
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


__all__ = ["enable_fsdp_on_cpu", "fsdp_layer_classes"]
