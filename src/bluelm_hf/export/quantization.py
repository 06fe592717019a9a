"""Quantizers per component (`transformers.exporters.ExportQuantizer`s): the paper's INT8 ViT + projector, INT4 LLM.

    none   float32 everywhere.
    int8   8-bit weights everywhere: block-wise 8-bit `MatMulNBits` (block 32) for every MatMul (with
           `int4_accuracy_level=4`, ONNX Runtime quantizes each MatMul's input to int8 per block on the fly), ONNX
           Runtime dynamic quantization for the patch-embedding Conv (`ConvInteger`) and an int8 `Gather` for the
           embedding table.
    int4   the LLM (decoder + embedding table) as 4-bit block-wise weights (`MatMulNBits` / `GatherBlockQuantized`,
           block 32, symmetric); vision encoder float32.
    mixed  the paper's recipe: vision encoder + projector int8 (as `int8`), LLM int4 (as `int4`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

QUANTS = ("none", "int8", "int4", "mixed")


def _matmul_nbits_quantizer_class():
    """`ExportQuantizer` for ONNX Runtime's block-wise weight-only quantization (`MatMulNBits`,
    `GatherBlockQuantized`): what transformers.exporters lacks for the paper's INT4 LLM."""
    from transformers.exporters.configs import ExportFormat
    from transformers.exporters.quantizers import ExportQuantizer

    class MatMulNBitsExportQuantizer(ExportQuantizer):
        supported_formats = (ExportFormat.ONNX,)
        required_packages = ("onnx", "onnx_ir", "onnxruntime")
        min_versions = {"onnxruntime": "1.20.0"}

        def __init__(
            self,
            bits: int = 4,
            block_size: int = 32,
            is_symmetric: bool = True,
            accuracy_level: int | None = 4,
            op_types: Sequence[str] = ("MatMul",),
        ):
            super().__init__(None)
            self.bits, self.block_size, self.is_symmetric = bits, block_size, is_symmetric
            self.accuracy_level, self.op_types = accuracy_level, tuple(op_types)

        def describe(self) -> dict:
            return {
                "method": "onnxruntime.MatMulNBits",
                "bits": self.bits,
                "block_size": self.block_size,
                "symmetric": self.is_symmetric,
                "accuracy_level": self.accuracy_level,
                "op_types": list(self.op_types),
            }

        def quantize(self, model, sample_inputs, export_format):
            import onnx_ir
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            if "MatMul" in self.op_types:
                matmul_nbits_in_place(model, self.bits, self.block_size, self.is_symmetric, self.accuracy_level)
            others = tuple(op for op in self.op_types if op != "MatMul")
            if not others:
                return model
            # The embedding table's Gather -> GatherBlockQuantized: ONNX Runtime's quantizer on the serialized
            # graph (a copy of its weights in memory; one table, not the whole LLM). Weights still in a saved
            # export's .data file are read in first: the serialized graph must carry them.
            onnx_ir.external_data.load_to_model(model)
            proto = onnx_ir.to_proto(model)
            quantizer = MatMulNBitsQuantizer(
                proto,
                bits=self.bits,
                block_size=self.block_size,
                is_symmetric=self.is_symmetric,
                accuracy_level=self.accuracy_level,
                op_types_to_quantize=others,
                quant_axes=(("MatMul", 0), ("Gather", 1)),
            )
            quantizer.process()
            return onnx_ir.from_proto(quantizer.model.model)

    return MatMulNBitsExportQuantizer


def matmul_nbits_in_place(program, bits: int, block_size: int, is_symmetric: bool, accuracy_level: int | None) -> int:
    """Replace every `MatMul` by a float32 2-D initializer with ONNX Runtime's block-wise `MatMulNBits`, in the
    `onnx_ir` graph itself, one weight at a time; returns how many were replaced.

    The same packing as `onnxruntime.quantization.MatMulNBitsQuantizer` (its C++ `quantize_matmul_{4,8}bits`, the
    same initializer and node names), without its `ModelProto` round trip, which holds a second copy of every weight:
    10 GB for the 2.5B decoder in float32. Here a weight is read (from memory, or mapped from the export's `.data`
    file), quantized and dropped before the next one, so peak memory is the quantized graph plus one weight."""
    import onnx_ir as ir
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    quantize_blocks = {4: quantize_matmul_4bits, 8: quantize_matmul_8bits}[bits]
    graph = program.graph
    count = 0
    for node in list(graph):
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        weight = node.inputs[1]
        tensor = weight.const_value if weight is not None and weight.is_initializer() else None
        if tensor is None or len(tensor.shape) != 2 or tensor.dtype != ir.DataType.FLOAT:
            continue
        rows, cols = (int(d) for d in tensor.shape)  # K, N
        k_blocks = (rows + block_size - 1) // block_size
        array = np.ascontiguousarray(tensor.numpy(), dtype=np.float32)
        if k_blocks * block_size != rows:
            array = np.pad(array, ((0, k_blocks * block_size - rows), (0, 0)))
        per_byte = 8 // bits
        packed = np.zeros((cols, k_blocks, (block_size + per_byte - 1) // per_byte), dtype=np.uint8)
        zero_points = np.zeros((cols, (k_blocks + per_byte - 1) // per_byte), dtype=np.uint8)
        scales = np.zeros((cols, k_blocks), dtype=np.float32)
        quantize_blocks(packed, array, scales, zero_points, block_size, cols, rows, is_symmetric)
        del array

        def initializer(name, data):
            value = ir.Value(name=name, const_value=ir.tensor(data, name=name))
            value.dtype, value.shape = value.const_value.dtype, ir.Shape(data.shape)
            graph.register_initializer(value)
            return value

        inputs = [
            node.inputs[0],
            initializer(f"{weight.name}_Q{bits}", packed),
            initializer(f"{weight.name}_scales", scales),
        ]
        if not is_symmetric:
            inputs.append(initializer(f"{weight.name}_zero_points", zero_points))
        attributes = {"K": rows, "N": cols, "bits": bits, "block_size": block_size}
        if accuracy_level:
            attributes["accuracy_level"] = accuracy_level
        replacement = ir.Node(
            "com.microsoft",
            "MatMulNBits",
            inputs,
            [ir.AttrInt64(key, value) for key, value in attributes.items()],
            num_outputs=1,
            name=f"{node.name}_Q{bits}" if node.name else None,
        )
        ir.convenience.replace_nodes_and_values(graph, node, [node], [replacement], node.outputs, replacement.outputs)
        if not weight.uses():
            graph.initializers.pop(weight.name)
            if isinstance(tensor, ir.ExternalTensor):
                tensor.release()  # unmap the float32 weight
        count += 1
    if count:
        program.opset_imports.setdefault("com.microsoft", 1)
    return count


def _chained_quantizer(*steps):
    """One `ExportQuantizer` that runs `steps` in order on a component (e.g. MatMulNBits, then ConvInteger)."""
    from transformers.exporters.configs import ExportFormat
    from transformers.exporters.quantizers import ExportQuantizer

    class ChainedExportQuantizer(ExportQuantizer):
        supported_formats = (ExportFormat.ONNX,)

        def __init__(self):
            super().__init__(None)
            self.steps = steps

        def validate_environment(self, export_format):
            for step in self.steps:
                step.validate_environment(export_format)

        def describe(self) -> dict:
            described = [step.describe() for step in self.steps]
            return {"method": " + ".join(d["method"] for d in described), "steps": described}

        def quantize(self, model, sample_inputs, export_format):
            for step in self.steps:
                model = step.quantize(model, sample_inputs, export_format)
            return model

    return ChainedExportQuantizer()


def _int8_quantizer(op_types: Sequence[str]):
    """transformers.exporters' `OnnxRuntimeQuantizer` in dynamic mode: int8 weights, per channel."""
    from onnxruntime.quantization import QuantType
    from transformers.exporters import OnnxRuntimeDynamicConfig, OnnxRuntimeQuantizer

    config = OnnxRuntimeDynamicConfig(
        op_types_to_quantize=list(op_types), per_channel=True, reduce_range=False, weight_type=QuantType.QInt8
    )
    quantizer = OnnxRuntimeQuantizer(config)
    quantizer.describe = lambda: {  # type: ignore[attr-defined]
        "method": "onnxruntime.quantize_dynamic",
        "weight_type": "int8",
        "per_channel": True,
        "activations": "uint8, quantized at run time",
        "op_types": list(op_types),
    }
    return quantizer


def quantization_plan(quant: str, int4_accuracy_level: int | None = 4, block_size: int = 32) -> dict[str, Any]:
    """Quantizer per component for `quant` (None = float32)."""
    nbits = _matmul_nbits_quantizer_class()

    def vision_int8():
        # Weight-only block-wise 8-bit MatMuls (activations stay float, as the paper's FP16 ViT activations do),
        # then the patch-embedding Conv by dynamic int8 (its input is pixels, which per-tensor uint8 holds well).
        # Dynamic int8 on the MatMuls too cost a random tiny ViT image-feature correlation 0.979 (vs 0.9997).
        return _chained_quantizer(
            nbits(bits=8, block_size=block_size, accuracy_level=int4_accuracy_level), _int8_quantizer(["Conv"])
        )

    if quant == "none":
        return dict.fromkeys(("vision_encoder", "embed_tokens", "decoder"))
    if quant == "int8":
        # The decoder's int8 is weight-only and block-wise (MatMulNBits, 8 bits), not dynamic quantization: the
        # per-tensor uint8 activations of `quantize_dynamic` cannot hold the outliers of SiLU(gate) * up, the
        # input of every down_proj (nano: logits correlation 0.84 with dynamic int8, 0.999 with down_proj in float).
        # The paper keeps LLM activations at 16 bits, too.
        return {
            "vision_encoder": vision_int8(),
            "embed_tokens": _int8_quantizer(["Gather"]),
            "decoder": nbits(bits=8, block_size=block_size, accuracy_level=int4_accuracy_level),
        }
    llm = {
        "embed_tokens": nbits(bits=4, block_size=block_size, accuracy_level=None, op_types=("Gather",)),
        "decoder": nbits(bits=4, block_size=block_size, accuracy_level=int4_accuracy_level),
    }
    if quant == "int4":
        return {"vision_encoder": None, **llm}
    if quant == "mixed":
        return {"vision_encoder": vision_int8(), **llm}
    raise ValueError(quant)


def kv_scales(model, processor, sample: dict, headroom: float = 1.25) -> dict[str, np.ndarray]:
    """Per-channel static int8 scales of each layer's key and value cache: max |x| over the calibration prompt (the
    verification image + prompt) per (kv_head, channel) x `headroom` / 127."""
    with torch.no_grad():
        out = model(**sample, use_cache=True)
    scales = {}
    for index, layer in enumerate(out.cache.layers):
        for kind, tensor in (("key", layer.keys), ("value", layer.values)):
            amax = tensor.abs().amax(dim=(0, 2), keepdim=True)  # (1, kv_heads, 1, head_dim)
            scales[f"{index}.{kind}"] = (amax.clamp(min=1e-6) * headroom / 127.0).numpy()
    return scales
