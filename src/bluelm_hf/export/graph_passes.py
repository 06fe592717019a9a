"""Passes over the traced ONNX graphs (`onnx_ir`): readable axis names, no debug metadata, an int8 KV cache."""

from __future__ import annotations

import numpy as np


_DIM_NAMES = {
    "vision_encoder": {"pixel_values": {0: "num_tiles"}},
    "embed_tokens": {
        "input_ids": {0: "batch_size", 1: "sequence_length"},
        "image_features": {0: "num_image_tokens"},
    },
    "decoder": {
        "inputs_embeds": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
        "position_ids": {0: "batch_size", 1: "sequence_length"},
        "past_key_values.*": {0: "batch_size", 2: "past_sequence_length"},
    },
}


def strip_debug_metadata(program) -> int:
    """Drop the debugging metadata torch.onnx attaches to every node (FX node, stack trace, module path, name
    scopes); returns how many entries went. Runtimes never read it, and it is bulky: 464 KB of nano's 543 KB
    decoder graph, a fifth of its whole `mixed` export."""
    removed = 0
    nodes = program.graph.all_nodes() if hasattr(program.graph, "all_nodes") else program.graph
    for node in nodes:
        removed += len(node.metadata_props)
        node.metadata_props.clear()
        node.doc_string = None
    return removed


def rename_symbolic_dims(program, component: str) -> None:
    """torch.export names dynamic axes `s44`; give the graph's inputs readable names, everywhere they appear."""
    import re

    import onnx_ir as ir

    names = _DIM_NAMES[component]
    mapping: dict[str, str] = {}
    for value in program.graph.inputs:
        spec = names.get(value.name) or (names.get("past_key_values.*") if value.name.startswith("past_") else None)
        if not spec or value.shape is None:
            continue
        for axis, new in spec.items():
            dim = value.shape[axis]
            if isinstance(dim, ir.SymbolicDim) and isinstance(dim.value, str):
                mapping.setdefault(dim.value, new)
    if not mapping:
        return
    pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True)) + r")\b")

    def rename(value) -> None:
        if value is None or value.shape is None:
            return
        dims, changed = [], False
        for dim in value.shape:
            if isinstance(dim, ir.SymbolicDim) and isinstance(dim.value, str) and pattern.search(dim.value):
                dims.append(ir.SymbolicDim(pattern.sub(lambda m: mapping[m.group(1)], dim.value)))
                changed = True
            else:
                dims.append(dim)
        if changed:
            value.shape = ir.Shape(dims)

    for value in program.graph.inputs:
        rename(value)
    for node in program.graph.all_nodes() if hasattr(program.graph, "all_nodes") else program.graph:
        for value in node.outputs:
            rename(value)
    for value in program.graph.outputs:
        rename(value)


def int8_kv_cache(program, scales: dict[str, np.ndarray]) -> int:
    """Turn the fused `GroupQueryAttention` nodes of a (batch-1, `ort_fusions="cpu"`) decoder into ones over an int8
    KV cache: `kv_cache_bit_width=8`, per-channel static scales (`k_scale` / `v_scale` initializers, shape
    (1, kv_heads, 1, head_dim)), and int8 `past_key_values.*` / `present.*` graph inputs / outputs."""
    import onnx_ir as ir

    graph = program.graph
    attentions = [n for n in graph if n.op_type == "GroupQueryAttention" and n.domain == "com.microsoft"]
    inputs = {v.name: v for v in graph.inputs}
    count = 0
    for node in attentions:
        past_key, past_value = node.inputs[3], node.inputs[4]
        if past_key is None or past_key.name not in inputs or past_value is None or past_value.name not in inputs:
            continue
        layer = past_key.name.split(".")[1]
        # GroupQueryAttention inputs: ..., 10 attention_bias, 11 head_sink, 12 k_scale, 13 v_scale, ...
        if len(node.inputs) < 14:
            node.resize_inputs(14)
        for position, kind in ((12, "key"), (13, "value")):
            array = np.ascontiguousarray(scales[f"{layer}.{kind}"].astype(np.float32))
            value = ir.Value(name=f"kv_scale.{layer}.{kind}", const_value=ir.tensor(array))
            value.dtype, value.shape = ir.DataType.FLOAT, ir.Shape(array.shape)
            graph.register_initializer(value)
            node.replace_input_with(position, value)
        node.attributes["kv_cache_bit_width"] = ir.AttrInt64("kv_cache_bit_width", 8)
        node.attributes["k_quant_type"] = ir.AttrString("k_quant_type", "PER_CHANNEL")
        node.attributes["v_quant_type"] = ir.AttrString("v_quant_type", "PER_CHANNEL")
        for value in (past_key, past_value, node.outputs[1], node.outputs[2]):
            value.dtype = ir.DataType.INT8
        count += 1
    return count
