"""ExecuTorch: one multi-method `.pte` that ExecuTorch's own `MultimodalRunner` loads and runs.

    bluelm-hf export path/to/bluelm bluelm-pte --format executorch

writes `model.pte` with the methods and constant methods `executorch.extension.llm.runner.MultimodalRunner` (the C++
runner its Android / iOS apps link, here through its Python binding) looks up:

    vision_encoder   one AnyRes tile, (1, 3, T, T) float32 normalized as the processor does
                     -> (1, tokens_per_tile, hidden): SigLIP tower, 2x2 downsampler, MLP projector
    token_embedding  input_ids (1, seq) int64 -> (1, seq, hidden)
    text_decoder     inputs_embeds (1, seq, hidden), cache_position (seq,) int64 -> logits (1, seq, vocab);
                     the KV cache lives in the program (transformers' `StaticCache` as mutable buffers)
    get_max_seq_len, get_max_context_len, get_eos_ids, get_bos_id, get_vocab_size, use_kv_cache,
    enable_dynamic_shape (the runner's metadata), and BlueLM's own: get_image_token_id, get_tokens_per_tile,
    get_tile_size, get_think_start_id, get_think_end_id

next to `tokenizer.json` (the runner's HF tokenizer loader reads it). AnyRes tiles go to the runner as images: every
row of the processor's `pixel_values` (grid tiles row-major, then the thumbnail, image after image) is one
`make_image_input`, in place of its `tokens_per_tile` `<image>` placeholders (`runner_inputs`). The thinking budget
runs through the runner's own `generate` and `prefill` (`runner_generate`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from .wrappers import EmbedTokensForExport, VisionEncoderForExport, kv_shape

PTE_FILE = "model.pte"
TOKENIZER_FILE = "tokenizer.json"
#: Our component name -> the method name `MultimodalRunner` looks up (executorch/extension/llm/runner/constants.h).
METHODS = {"vision_encoder": "vision_encoder", "embed_tokens": "token_embedding", "decoder": "text_decoder"}
LAYOUT = "executorch-multimodal-runner"


class TextDecoderForExecutorch(nn.Module):
    """inputs_embeds (1, seq, hidden), cache_position (seq,) -> logits (1, seq, vocab), the KV cache held in the
    program: transformers' `TorchExportableModuleWithStaticCache` (a `StaticCache` registered as buffers, the
    signature `executorch/extension/llm/runner` calls) over the BlueLM model without its image merge."""

    def __init__(self, model, max_cache_len: int):
        super().__init__()
        from transformers.integrations.executorch import TorchExportableModuleWithStaticCache

        # The wrapper reads the cache settings from the generation config; a copy, so the model's own is untouched.
        saved = model.generation_config
        model.generation_config = copy.deepcopy(saved)
        model.generation_config.use_cache = True
        model.generation_config.cache_implementation = "static"
        try:
            self.decoder = TorchExportableModuleWithStaticCache(model, batch_size=1, max_cache_len=max_cache_len)
        finally:
            model.generation_config = saved

    def forward(self, inputs_embeds, cache_position):
        return self.decoder(inputs_embeds=inputs_embeds, cache_position=cache_position)


def runner_metadata(model, processor, max_seq_len: int, max_cache_len: int) -> dict:
    """The constant methods of the `.pte`: what `MultimodalRunner` reads (llm_runner_helper.cpp `get_llm_metadata`,
    `get_eos_ids`) plus the BlueLM ids an app needs to build the runner's inputs."""
    config = model.config
    tokenizer = processor.tokenizer
    eos = model.generation_config.eos_token_id
    eos = eos if eos is not None else tokenizer.eos_token_id
    eos_ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos_ids[0]
    return {
        "get_max_seq_len": int(max_seq_len),
        "get_max_context_len": int(max_cache_len),
        "get_eos_ids": eos_ids,
        "get_bos_id": int(bos),
        "get_vocab_size": int(config.text_config.vocab_size),
        "use_kv_cache": True,
        "enable_dynamic_shape": True,
        "get_image_token_id": int(config.image_token_id),
        "get_tokens_per_tile": int(config.image_tokens_per_tile),
        "get_tile_size": int(config.vision_config.image_size),
        "get_think_start_id": int(config.think_start_token_id),
        "get_think_end_id": int(config.think_end_token_id),
    }


def export_multimodal_program(model, processor, max_seq_len: int | None = None, max_cache_len: int | None = None):
    """`(ExecutorchProgramManager, metadata)`: the three methods traced with transformers' exporter machinery
    (`DynamoExporter.export_program` under the ExecuTorch patches and FX fixes `ExecutorchExporter` applies), lowered
    together to XNNPACK with `to_edge_transform_and_lower`, so they share one `.pte`.

    max_cache_len: KV-cache positions (prompt + generated), default `max_position_embeddings`; max_seq_len: the
    longest single prefill, default `max_cache_len`. ExecuTorch plans memory for the largest shapes."""
    try:
        from transformers.exporters import ExecutorchConfig, ExecutorchExporter

        exporter = ExecutorchExporter()
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir.program import to_edge_transform_and_lower
    except (ImportError, ModuleNotFoundError) as error:
        from .exporter import _executorch_missing_message

        raise ImportError(_executorch_missing_message(error)) from error
    from transformers.exporters.exporter_dynamo import DynamoExporter
    from transformers.exporters.exporter_executorch import _get_edge_compile_config
    from transformers.exporters.utils import apply_fx_node_fixes, apply_fx_program_fixes, apply_patches

    text = model.config.text_config
    positions = int(getattr(text, "max_position_embeddings", 4096))
    max_cache_len = int(max_cache_len or positions)
    max_seq_len = int(max_seq_len or max_cache_len)
    if not 2 <= max_seq_len <= max_cache_len <= positions:
        raise ValueError(
            f"need 2 <= max_seq_len ({max_seq_len}) <= max_cache_len ({max_cache_len}) <= max_position_embeddings "
            f"({positions})"
        )
    model = model.eval().requires_grad_(False)
    tile = model.config.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    Dim = torch.export.Dim
    seq = Dim("sequence_length", min=1, max=max_seq_len)
    tokens = Dim("ids_length", min=1, max=max_seq_len)
    methods = {
        "vision_encoder": (
            VisionEncoderForExport(model),
            {"pixel_values": torch.randn(1, 3, tile, tile, generator=generator)},
            None,
        ),
        "embed_tokens": (
            EmbedTokensForExport(model),
            {"input_ids": torch.randint(0, text.vocab_size, (1, 3), generator=generator)},
            {"input_ids": {1: tokens}},
        ),
        "decoder": (
            TextDecoderForExecutorch(model, max_cache_len),
            {"inputs_embeds": torch.randn(1, 3, text.hidden_size, generator=generator), "cache_position": torch.arange(3)},
            {"inputs_embeds": {1: seq}, "cache_position": {0: seq}},
        ),
    }
    programs = {}
    with apply_patches("executorch"), apply_patches("executorch.xnnpack"):
        for name, (module, inputs, shapes) in methods.items():
            config = ExecutorchConfig(
                dynamic=shapes is not None,
                dynamic_shapes=shapes,
                # Strict (Dynamo) tracing sees the StaticCache tensors as the buffers they are registered as, so their
                # updates become buffer mutations; non-strict lifts them as constants and lowering fails.
                strict=name == "decoder",
                backend="xnnpack",
                prefer_deferred_runtime_asserts_over_guards=True,
            )
            program, _ = DynamoExporter.export_program(exporter, module.eval(), inputs, config)
            apply_fx_program_fixes("executorch", program)
            apply_fx_node_fixes("executorch", program.graph_module)
            programs[METHODS[name]] = program
        metadata = runner_metadata(model, processor, max_seq_len, max_cache_len)
        edge = to_edge_transform_and_lower(
            programs,
            partitioner={method: [XnnpackPartitioner()] for method in programs},
            compile_config=_get_edge_compile_config("xnnpack"),
            constant_methods=metadata,
        )
        manager = edge.to_executorch()
    return manager, metadata
