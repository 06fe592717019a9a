"""Export BlueLM-V to ONNX (ONNX Runtime) or ExecuTorch, quantized the way the BlueLM-V-3B paper deploys it.

    export_model("path/to/bluelm", "bluelm-onnx", format="onnx", quant="mixed")

writes three graphs (vision encoder + projector, token embeddings, decoder with KV cache), the processor / tokenizer
/ config files, `export.json` (the `transformers.exporters` manifest) and `bluelm_export.json` (ours: files, I/O
names and shapes, quantization, KV-cache layout, verification), then checks the export against PyTorch on an
image + prompt and raises `ExportVerificationError` when it is off. `bluelm_hf.ort_runner.OrtBlueLM` runs it.

Quantization (`quant`):
    none   float32 everywhere.
    int8   8-bit weights everywhere: block-wise 8-bit `MatMulNBits` (block 32) for every MatMul (with
           `int4_accuracy_level=4`, ONNX Runtime quantizes each MatMul's input to int8 per block on the fly), ONNX
           Runtime dynamic quantization for the patch-embedding Conv (`ConvInteger`: int8 weights per channel, its
           input quantized to uint8 per tensor at run time) and an int8 `Gather` for the embedding table.
    int4   the LLM (decoder + embedding table) as 4-bit block-wise weights (`MatMulNBits` /
           `GatherBlockQuantized`, block 32, symmetric); vision encoder float32.
    mixed  the paper's recipe: vision encoder + projector int8 (as `int8`), LLM int4 (as `int4`).
`kv_cache="int8"` additionally stores the KV cache as int8 (ONNX Runtime `GroupQueryAttention` with a quantized
cache, static per-channel scales calibrated on the sample) - see docs/export.md for its limits (batch size 1).

Built on `transformers.exporters` (`OnnxExporter`, `ExecutorchExporter`, `ExportedModel`, `OnnxRuntimeQuantizer`);
docs/export.md says what we had to add around it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .ort_runner import MANIFEST_FILE, OrtBlueLM

FORMATS = ("onnx", "executorch")
QUANTS = ("none", "int8", "int4", "mixed")
KV_CACHE_DTYPES = ("float32", "int8")
# (format, quant) pairs we can produce; anything else is refused up front with the list below.
SUPPORTED = {("onnx", q) for q in QUANTS} | {("executorch", "none")}
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.safetensors.index.json", "*.bin.index.json")

#: Modules bitsandbytes must leave alone: the paper keeps the ViT + projector at 8 bits at most, and the
#: (tied) output head in full precision. Full module paths of `BlueLMVForConditionalGeneration`.
BNB_SKIP_MODULES = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]


class ExportVerificationError(RuntimeError):
    """The exported model disagrees with PyTorch beyond the tolerance of its quantization."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


# ---------------------------------------------------------------------------------------------------- bitsandbytes


def bnb_config(load_in_4bit: bool = True, load_in_8bit: bool = False, **kwargs):
    """A `BitsAndBytesConfig` that quantizes the LLM only: vision tower, projector and lm_head stay as loaded.

    ```python
    >>> model = AutoModelForImageTextToText.from_pretrained(path, quantization_config=bnb_config(load_in_4bit=True))
    ```
    transformers' default skip list (`get_keys_to_not_convert`) holds only the tied / output embeddings, so without
    this the ViT and projector Linears would be quantized too. Extra `llm_int8_skip_modules` are appended.
    """
    from transformers import BitsAndBytesConfig

    if load_in_8bit:
        load_in_4bit = False
    extra = kwargs.pop("llm_int8_skip_modules", None) or []
    skip = list(BNB_SKIP_MODULES) + [module for module in extra if module not in BNB_SKIP_MODULES]
    kwargs.setdefault("bnb_4bit_compute_dtype", torch.float32 if not torch.cuda.is_available() else torch.bfloat16)
    return BitsAndBytesConfig(
        load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit, llm_int8_skip_modules=skip, **kwargs
    )


# ---------------------------------------------------------------------------------------------------- wrappers


class VisionEncoderForExport(nn.Module):
    """pixel_values (num_tiles, 3, T, T) -> image_features (num_tiles, tokens_per_tile, hidden): ViT, downsampler, MLP.

    The PyTorch model runs the same computation in chunks of `vision_batch_size` tiles; the graph takes any number
    of tiles (the runner chunks them the same way)."""

    def __init__(self, model):
        super().__init__()
        self.vision_tower = model.model.vision_tower
        self.multi_modal_projector = model.model.multi_modal_projector

    def forward(self, pixel_values):
        hidden = self.vision_tower(pixel_values=pixel_values, return_dict=True).last_hidden_state
        return {"image_features": self.multi_modal_projector(hidden)}


class EmbedTokensForExport(nn.Module):
    """input_ids (batch, seq) -> inputs_embeds (batch, seq, hidden)."""

    def __init__(self, model):
        super().__init__()
        self.embed_tokens = model.model.language_model.get_input_embeddings()

    def forward(self, input_ids):
        return {"inputs_embeds": self.embed_tokens(input_ids)}


class DecoderForExport(nn.Module):
    """The LLM + lm_head over a KV cache given as flat tensors.

    inputs_embeds (batch, seq, hidden), attention_mask (batch, past + seq), position_ids (batch, seq),
    past_key_values = [{"key": (batch, kv_heads, past, head_dim), "value": ...}] * num_layers
    -> {"logits": (batch, seq, vocab), "present": [{"key": (batch, kv_heads, past + seq, head_dim), ...}]}.
    Traced, the leaves are named `past_key_values.{i}.key` / `present.{i}.key`: the onnxruntime-genai and
    transformers.js convention."""

    def __init__(self, model):
        super().__init__()
        self.language_model = model.model.language_model
        self.lm_head = model.lm_head
        self.text_config = model.config.text_config

    def forward(self, inputs_embeds, attention_mask, position_ids, past_key_values):
        from transformers import DynamicCache

        cache = DynamicCache([(layer["key"], layer["value"]) for layer in past_key_values], config=self.text_config)
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            return_dict=True,
        )
        logits = self.lm_head(outputs.last_hidden_state)
        present = [{"key": layer.keys, "value": layer.values} for layer in outputs.cache.layers]
        return {"logits": logits, "present": present}


def _kv_shape(model) -> tuple[int, int, int]:
    text = model.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    return text.num_hidden_layers, kv_heads, head_dim


def _sample_inputs(model, batch: int = 2, seq: int = 3, past: int = 5, tiles: int = 3) -> dict[str, dict]:
    """Trace inputs with distinct sizes > 1 on every dynamic axis (torch.export specializes 0 / 1 and equal sizes)."""
    num_layers, kv_heads, head_dim = _kv_shape(model)
    text = model.config.text_config
    tile = model.config.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    return {
        "vision_encoder": {"pixel_values": torch.randn(tiles, 3, tile, tile, generator=generator)},
        "embed_tokens": {"input_ids": torch.randint(0, text.vocab_size, (batch, seq + past), generator=generator)},
        "decoder": {
            "inputs_embeds": torch.randn(batch, seq, text.hidden_size, generator=generator),
            "attention_mask": torch.ones(batch, past + seq, dtype=torch.long),
            "position_ids": torch.arange(past, past + seq).expand(batch, seq).clone(),
            "past_key_values": [
                {
                    "key": torch.randn(batch, kv_heads, past, head_dim, generator=generator),
                    "value": torch.randn(batch, kv_heads, past, head_dim, generator=generator),
                }
                for _ in range(num_layers)
            ],
        },
    }


def _dynamic_shapes(model, static_batch: bool = False) -> dict[str, dict]:
    """Dynamic axes as `Dim.AUTO`: explicit `Dim`s cannot say `attention_mask.shape[1] == past + seq`."""
    auto = torch.export.Dim.AUTO
    num_layers = _kv_shape(model)[0]
    batch = {} if static_batch else {0: auto}
    return {
        "vision_encoder": {"pixel_values": {0: auto}},
        "embed_tokens": {"input_ids": {0: auto, 1: auto}},
        "decoder": {
            "inputs_embeds": {**batch, 1: auto},
            "attention_mask": {**batch, 1: auto},
            "position_ids": {**batch, 1: auto},
            "past_key_values": [{"key": {**batch, 2: auto}, "value": {**batch, 2: auto}} for _ in range(num_layers)],
        },
    }


# ---------------------------------------------------------------------------------------------------- loading


def _validate_request(format: str, quant: str, kv_cache: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"Unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if quant not in QUANTS:
        raise ValueError(f"Unknown quantization {quant!r}; choose one of {', '.join(QUANTS)}")
    if kv_cache not in KV_CACHE_DTYPES:
        raise ValueError(f"Unknown kv_cache {kv_cache!r}; choose one of {', '.join(KV_CACHE_DTYPES)}")
    if (format, quant) not in SUPPORTED:
        supported = ", ".join(q for f, q in sorted(SUPPORTED) if f == format)
        raise ValueError(
            f"quant={quant!r} is not supported for format={format!r} (supported: {supported}). "
            + (
                "ExecuTorch exports are float32 only for now: PT2E int8 (XNNPACKQuantizer, dynamic, per channel) "
                "fails while calibrating the decoder (IndexError in the traced attention-mask indexing) and int4 "
                "(torchao 8da4w) was not tried; use format='onnx' for int8 / int4 / mixed (docs/export.md)."
                if format == "executorch"
                else ""
            )
        )
    if kv_cache == "int8" and format != "onnx":
        raise ValueError("kv_cache='int8' is only implemented for format='onnx' (ONNX Runtime GroupQueryAttention)")


def _prepare_out_dir(out_dir: Path, model_dir: Path, overwrite: bool) -> None:
    out_dir = out_dir.resolve()
    model_dir = model_dir.resolve()
    if out_dir == model_dir or model_dir.is_relative_to(out_dir):
        raise ValueError(f"The output directory {out_dir} would overwrite the model directory {model_dir}")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir} exists and is not a directory")
        if any(out_dir.iterdir()):
            if not overwrite:
                raise FileExistsError(
                    f"Output directory {out_dir} exists and is not empty; pass overwrite=True (--overwrite) to "
                    "replace it"
                )
            if not ((out_dir / MANIFEST_FILE).exists() or (out_dir / "export.json").exists()):
                # Guard against `--overwrite` pointed at the wrong directory (".", a home directory...).
                raise FileExistsError(
                    f"{out_dir} is not empty and holds no previous export ({MANIFEST_FILE} / export.json); "
                    "overwrite only replaces an earlier export, remove this directory yourself"
                )
            shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def load_for_export(model_dir: str | os.PathLike):
    """`(model, processor)` in float32 from a saved BlueLM directory, with clear errors for bad directories."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    import bluelm_hf  # noqa: F401  (registers bluelm_v with the Auto classes)

    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise FileNotFoundError(f"Model directory {model_dir} does not exist")
    if not model_dir.is_dir():
        raise NotADirectoryError(f"{model_dir} is not a directory")
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json: not a saved model directory")
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except Exception as error:
        raise ValueError(f"{model_dir}/config.json could not be read (corrupt?): {error}") from error
    if getattr(config, "model_type", None) != "bluelm_v":
        raise ValueError(f"{model_dir} holds a {config.model_type!r} model; export supports BlueLM-V ('bluelm_v')")
    if not any(any(model_dir.glob(pattern)) for pattern in WEIGHT_FILES):
        raise FileNotFoundError(f"{model_dir} has no weights (*.safetensors / *.bin)")
    try:
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    except Exception as error:
        raise ValueError(
            f"Could not load the model weights from {model_dir} (corrupt or incomplete?): {error}"
        ) from error
    try:
        processor = AutoProcessor.from_pretrained(model_dir)
    except Exception as error:
        raise ValueError(
            f"Could not load the processor / tokenizer from {model_dir}: {error}. Export needs them to verify the "
            "export and to make it self-contained (save them with `processor.save_pretrained`)."
        ) from error
    return model, processor


# ---------------------------------------------------------------------------------------------------- quantizers


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

            proto = onnx_ir.to_proto(model)
            quantizer = MatMulNBitsQuantizer(
                proto,
                bits=self.bits,
                block_size=self.block_size,
                is_symmetric=self.is_symmetric,
                accuracy_level=self.accuracy_level,
                op_types_to_quantize=self.op_types,
                quant_axes=(("MatMul", 0), ("Gather", 1)),
            )
            quantizer.process()
            return onnx_ir.from_proto(quantizer.model.model)

    return MatMulNBitsExportQuantizer


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


# ---------------------------------------------------------------------------------------------------- ONNX graph fixes


_DIM_NAMES = {
    "vision_encoder": {"pixel_values": {0: "num_tiles"}},
    "embed_tokens": {"input_ids": {0: "batch_size", 1: "sequence_length"}},
    "decoder": {
        "inputs_embeds": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
        "position_ids": {0: "batch_size", 1: "sequence_length"},
        "past_key_values.*": {0: "batch_size", 2: "past_sequence_length"},
    },
}


def _strip_debug_metadata(program) -> int:
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


def _rename_symbolic_dims(program, component: str) -> None:
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


def _int8_kv_cache(program, scales: dict[str, np.ndarray]) -> int:
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


def _kv_scales(model, processor, sample: dict, headroom: float = 1.25) -> dict[str, np.ndarray]:
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


# ---------------------------------------------------------------------------------------------------- export


def _verification_sample(model, processor, prompt: str | None = None, image=None, enable_thinking: bool = False):
    """Processor inputs for one image + prompt: a deterministic 2-tile-wide picture (so the grid has several tiles
    plus the thumbnail) unless `image` is given."""
    from PIL import Image

    if image is None:
        tile = model.config.vision_config.image_size
        width, height = 2 * tile, tile
        y, x = np.mgrid[0:height, 0:width]
        rgb = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)), ((x + y) * 7) % 256], axis=-1)
        image = Image.fromarray(rgb.astype(np.uint8))
    prompt = prompt or "Describe the picture. How many red cells are there?"
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
        add_generation_prompt=True,
        enable_thinking=enable_thinking,
    )
    return processor(text=[text], images=[image], return_tensors="pt")


def _export_onnx(model, plan: dict, kv_cache: str, calibration: dict | None, processor, opset: int | None):
    from transformers.exporters import OnnxConfig, OnnxExporter
    from transformers.exporters.base import ExportedModel

    exporter = OnnxExporter()
    static_batch = kv_cache == "int8"
    samples = _sample_inputs(model, batch=1 if static_batch else 2)
    shapes = _dynamic_shapes(model, static_batch=static_batch)
    modules = {
        "vision_encoder": VisionEncoderForExport(model).eval(),
        "embed_tokens": EmbedTokensForExport(model).eval(),
        "decoder": DecoderForExport(model).eval(),
    }
    components = {}
    for name, module in modules.items():
        # GroupQueryAttention (the only ONNX Runtime op with a quantized KV cache) needs the CPU fusions, and fuses a
        # multi-token decoder over a cache for batch size 1 only.
        fusions = "cpu" if (name == "decoder" and static_batch) else None
        config = OnnxConfig(dynamic=True, dynamic_shapes=shapes[name], opset_version=opset, ort_fusions=fusions)
        exported = exporter.export(module, samples[name], config)
        components[name] = exported.components["model"]
        _rename_symbolic_dims(components[name].program, name)
        _strip_debug_metadata(components[name].program)
    if static_batch:
        num_fused = _int8_kv_cache(components["decoder"].program, _kv_scales(model, processor, calibration))
        if num_fused != _kv_shape(model)[0]:
            raise RuntimeError(
                f"kv_cache='int8': only {num_fused} of {_kv_shape(model)[0]} attention layers were fused into "
                "GroupQueryAttention, so the cache cannot be int8 throughout; export with kv_cache='float32'"
            )
    for name, quantizer in plan.items():
        if quantizer is not None:
            quantizer.validate_environment("onnx")
            components[name].program = quantizer.quantize(components[name].program, samples[name], "onnx")
    return ExportedModel(components, "onnx", config=model.config, generation_config=model.generation_config)


def _export_executorch(model, quant: str):
    """ExecuTorch (XNNPACK) programs of the three components: static-batch-1 graphs with bounded dynamic lengths."""
    from transformers.exporters import ExecutorchConfig
    from transformers.exporters.base import ExportedModel

    try:
        from transformers.exporters import ExecutorchExporter

        exporter = ExecutorchExporter()
    except (ImportError, ModuleNotFoundError) as error:
        raise ImportError(_executorch_missing_message(error)) from error

    Dim = torch.export.Dim
    num_layers = _kv_shape(model)[0]
    max_len = int(getattr(model.config.text_config, "max_position_embeddings", 4096))
    tiles = Dim("num_tiles", min=1, max=max(64, (model.config.max_grid_size**2 + 1) * 4))
    seq = Dim("sequence_length", min=1, max=max_len)
    past = Dim("past_sequence_length", min=0, max=max_len - 1)
    # ExecuTorch plans memory for the largest shape, so every dynamic axis is bounded; `attention_mask` (past + seq)
    # stays `Dim.AUTO`, bounded through that relation.
    samples = _sample_inputs(model, batch=1)
    shapes = {
        "vision_encoder": {"pixel_values": {0: tiles}},
        "embed_tokens": {"input_ids": {1: Dim("ids_length", min=1, max=max_len)}},
        "decoder": {
            "inputs_embeds": {1: seq},
            "attention_mask": {1: Dim.AUTO},
            "position_ids": {1: seq},
            "past_key_values": [{"key": {2: past}, "value": {2: past}} for _ in range(num_layers)],
        },
    }
    modules = {
        "vision_encoder": VisionEncoderForExport(model).eval(),
        "embed_tokens": EmbedTokensForExport(model).eval(),
        "decoder": DecoderForExport(model).eval(),
    }
    components = {}
    for name, module in modules.items():
        config = ExecutorchConfig(
            dynamic=True,
            dynamic_shapes=shapes[name],
            backend="xnnpack",
            prefer_deferred_runtime_asserts_over_guards=True,
        )
        components[name] = exporter.export(module, samples[name], config).components["model"]
    return ExportedModel(components, "executorch", config=model.config, generation_config=model.generation_config)


def _executorch_missing_message(error: Exception) -> str:
    import importlib.metadata as md

    try:
        torch_version = md.version("torch")
    except md.PackageNotFoundError:  # pragma: no cover
        torch_version = "?"
    return (
        f"format='executorch' needs the `executorch` package (with its XNNPACK backend) next to torch "
        f"{torch_version}: {type(error).__name__}: {error}. `pip install executorch` (1.5.1 installs beside torch "
        "2.14 without replacing it; see docs/export.md)."
    )


def _io_spec(component_dir: Path, entry: dict) -> tuple[list, list]:
    """Inputs / outputs of one saved ONNX component: name, dtype, shape (ints or axis names)."""
    import onnx

    proto = onnx.load(str(component_dir / entry["file"]), load_external_data=False)

    def describe(values):
        out = []
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
            out.append({"name": value.name, "dtype": dtype, "shape": dims})
        return out

    return describe(proto.graph.input), describe(proto.graph.output)


def _component_io_executorch(model, name: str) -> tuple[list, list]:
    num_layers, kv_heads, head_dim = _kv_shape(model)
    text = model.config.text_config
    tile = model.config.vision_config.image_size
    if name == "vision_encoder":
        return (
            [{"name": "pixel_values", "dtype": "float32", "shape": ["num_tiles", 3, tile, tile]}],
            [
                {
                    "name": "image_features",
                    "dtype": "float32",
                    "shape": ["num_tiles", model.config.image_tokens_per_tile, text.hidden_size],
                }
            ],
        )
    if name == "embed_tokens":
        return (
            [{"name": "input_ids", "dtype": "int64", "shape": [1, "sequence_length"]}],
            [{"name": "inputs_embeds", "dtype": "float32", "shape": [1, "sequence_length", text.hidden_size]}],
        )
    inputs = [
        {"name": "inputs_embeds", "dtype": "float32", "shape": [1, "sequence_length", text.hidden_size]},
        {"name": "attention_mask", "dtype": "int64", "shape": [1, "total_sequence_length"]},
        {"name": "position_ids", "dtype": "int64", "shape": [1, "sequence_length"]},
    ]
    outputs = [{"name": "logits", "dtype": "float32", "shape": [1, "sequence_length", text.vocab_size]}]
    for i in range(num_layers):
        for kind in ("key", "value"):
            past_shape = [1, kv_heads, "past_sequence_length", head_dim]
            present_shape = [1, kv_heads, "total_sequence_length", head_dim]
            inputs.append({"name": f"past_key_values.{i}.{kind}", "dtype": "float32", "shape": past_shape})
            outputs.append({"name": f"present.{i}.{kind}", "dtype": "float32", "shape": present_shape})
    return inputs, outputs


def _copy_processor_files(model_dir: Path, out_dir: Path) -> list[str]:
    """Everything but the weights (tokenizer, processor and generation configs, chat template, remote code)."""
    copied = []
    weights = {p.name for pattern in WEIGHT_FILES for p in model_dir.glob(pattern)}
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and path.name not in weights and not (out_dir / path.name).exists():
            shutil.copy2(path, out_dir / path.name)
            copied.append(path.name)
    return copied


def _dir_size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.exists())


def export_model(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    format: str = "onnx",
    quant: str = "none",
    overwrite: bool = False,
    verify: bool = True,
    *,
    kv_cache: str = "float32",
    verify_tokens: int = 16,
    prompt: str | None = None,
    image=None,
    int4_accuracy_level: int | None = 4,
    block_size: int = 32,
    opset: int | None = None,
) -> dict:
    """Export the BlueLM-V model saved in `model_dir` to `out_dir`; returns the report (also in bluelm_export.json).

    format: "onnx" or "executorch". quant: "none" | "int8" | "int4" | "mixed" (module docstring).
    kv_cache: "float32" or "int8" (ONNX only; batch-1 decoder, see docs/export.md).
    verify: run the export and PyTorch on an image + prompt (`prompt`, `image`, default a synthetic picture) for
    `verify_tokens` greedy tokens and raise `ExportVerificationError` beyond tolerance (the export is kept).
    """
    _validate_request(format, quant, kv_cache)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model, processor = load_for_export(model_dir)  # before touching out_dir: a bad model leaves it alone
    _prepare_out_dir(out_dir, model_dir, overwrite)

    sample = _verification_sample(model, processor, prompt, image)
    if format == "onnx":
        plan = quantization_plan(quant, int4_accuracy_level=int4_accuracy_level, block_size=block_size)
        exported = _export_onnx(model, plan, kv_cache, dict(sample), processor, opset)
    else:
        plan = {"vision_encoder": None, "embed_tokens": None, "decoder": None}
        exported = _export_executorch(model, quant)
    return _finalize(
        exported, out_dir, model_dir, model, processor, format, quant, kv_cache, plan, verify, sample, verify_tokens
    )


def quantize_export(
    export_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    quant: str,
    overwrite: bool = False,
    verify: bool = True,
    *,
    model_dir: str | os.PathLike | None = None,
    verify_tokens: int = 16,
    int4_accuracy_level: int | None = 4,
    block_size: int = 32,
) -> dict:
    """Quantize an existing float32 ONNX export (`quant="none"`, float32 KV cache) without tracing again.

    Same result as `export_model(..., quant=quant)`, minutes faster on a big model: trace once, quantize many ways.
    Verification needs the PyTorch model: `model_dir`, or the source directory recorded in the export.
    """
    import onnx_ir
    from transformers.exporters.base import ExportedComponent, ExportedModel
    from transformers.exporters.metadata import ExportMetadata

    from .ort_runner import read_manifest

    _validate_request("onnx", quant, "float32")
    export_dir, out_dir = Path(export_dir), Path(out_dir)
    manifest = read_manifest(export_dir)
    kv_dtype = manifest["kv_cache"]["dtype"]
    if manifest.get("format") != "onnx" or manifest.get("quant") != "none" or kv_dtype != "float32":
        raise ValueError(
            f"{export_dir} is a {manifest.get('format')} export with quant={manifest.get('quant')!r}, "
            f"kv_cache={manifest['kv_cache']['dtype']!r}; quantize_export starts from a float32 ONNX export"
        )
    model_dir = Path(model_dir or manifest.get("source_model_dir") or "")
    model, processor = load_for_export(model_dir)
    if export_dir.resolve() == out_dir.resolve():
        raise ValueError("quantize_export writes a new directory; out_dir must differ from export_dir")
    _prepare_out_dir(out_dir, model_dir, overwrite)
    tool_manifest = json.loads((export_dir / "export.json").read_text())
    plan = quantization_plan(quant, int4_accuracy_level=int4_accuracy_level, block_size=block_size)
    components = {}
    for name, entry in tool_manifest["components"].items():
        program = onnx_ir.load(str(export_dir / entry["file"]))
        onnx_ir.external_data.load_to_model(program)
        _strip_debug_metadata(program)  # exports written before it was stripped at export time
        if plan.get(name) is not None:
            plan[name].validate_environment("onnx")
            program = plan[name].quantize(program, {}, "onnx")
        components[name] = ExportedComponent(program, ExportMetadata.from_dict(entry["metadata"]))
    exported = ExportedModel(components, "onnx", config=model.config, generation_config=model.generation_config)
    sample = _verification_sample(model, processor)
    return _finalize(
        exported, out_dir, model_dir, model, processor, "onnx", quant, "float32", plan, verify, sample, verify_tokens
    )


def _finalize(
    exported, out_dir, model_dir, model, processor, format, quant, kv_cache, plan, verify, sample, verify_tokens
) -> dict:
    """Save the programs and the processor files, write bluelm_export.json, verify."""
    exported.save_pretrained(out_dir)
    copied = _copy_processor_files(model_dir, out_dir)

    manifest = _build_manifest(model, processor, exported, out_dir, format, quant, kv_cache, plan, copied)
    manifest["source_model_dir"] = str(Path(model_dir).resolve())
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")

    report = {
        "export_dir": str(out_dir),
        "format": format,
        "quant": quant,
        "kv_cache": kv_cache,
        "sizes": {name: entry["size_bytes"] for name, entry in manifest["components"].items()},
        "total_size_bytes": manifest["total_size_bytes"],
    }
    if verify:
        try:
            verification = verify_export(
                out_dir, model, processor, quant=quant, kv_cache=kv_cache, sample=sample, max_new_tokens=verify_tokens
            )
        except ExportVerificationError as error:
            manifest["verification"] = error.report
            (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
            raise
        manifest["verification"] = verification
        (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        report["verification"] = verification
    return report


def _build_manifest(model, processor, exported, out_dir: Path, format, quant, kv_cache, plan, copied) -> dict:
    import importlib.metadata as md

    config = model.config
    text = config.text_config
    num_layers, kv_heads, head_dim = _kv_shape(model)
    gen = model.generation_config
    tool_manifest = json.loads((out_dir / "export.json").read_text())
    components = {}
    total = 0
    for name, entry in tool_manifest["components"].items():
        files = [entry["file"]] + ([f"{entry['file']}.data"] if format == "onnx" else [])
        files = [f for f in files if (out_dir / f).exists()]
        size = _dir_size([out_dir / f for f in files])
        total += size
        if format == "onnx":
            inputs, outputs = _io_spec(out_dir, entry)
        else:
            inputs, outputs = _component_io_executorch(model, name)
        quantizer = plan.get(name)
        components[name] = {
            "file": entry["file"],
            "files": files,
            "size_bytes": size,
            "inputs": inputs,
            "outputs": outputs,
            "quantization": quantizer.describe() if quantizer is not None else {"method": "none", "weights": "float32"},
        }
    if kv_cache == "int8" or format == "executorch":
        components["decoder"]["static_batch_size"] = 1
    eos = gen.eos_token_id if gen.eos_token_id is not None else processor.tokenizer.eos_token_id
    versions = {}
    for package in ("torch", "transformers", "onnx", "onnxruntime", "onnxscript", "executorch", "bluelm-hf"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return {
        "format": format,
        "schema_version": 1,
        "producer": "bluelm_hf.export",
        "quant": quant,
        "components": components,
        "total_size_bytes": total,
        "kv_cache": {
            "dtype": kv_cache,
            "layout": "BNSH (batch, kv_heads, sequence, head_dim)",
            "num_layers": num_layers,
            "num_kv_heads": kv_heads,
            "head_dim": head_dim,
            "input_name": "past_key_values.{layer}.{key|value}",
            "output_name": "present.{layer}.{key|value}",
            "quantization": (
                "int8, static per-channel scales (1, kv_heads, 1, head_dim) stored in the decoder "
                "(initializers kv_scale.{layer}.{key|value}); GroupQueryAttention quantizes new entries"
                if kv_cache == "int8"
                else None
            ),
        },
        "model": {
            "model_type": config.model_type,
            "hidden_size": text.hidden_size,
            "vocab_size": text.vocab_size,
            "num_hidden_layers": num_layers,
            "image_token_id": config.image_token_id,
            "image_start_token_id": config.image_start_token_id,
            "image_end_token_id": config.image_end_token_id,
            "think_mode_token_id": config.think_mode_token_id,
            "think_start_token_id": config.think_start_token_id,
            "think_end_token_id": config.think_end_token_id,
            "thinking_end_sequence_ids": getattr(gen, "thinking_end_sequence_ids", None),
            "tile_size": config.vision_config.image_size,
            "tokens_per_tile": config.image_tokens_per_tile,
            "vision_batch_size": config.vision_batch_size,
            "eos_token_id": eos,
            "pad_token_id": gen.pad_token_id if gen.pad_token_id is not None else processor.tokenizer.pad_token_id,
            "max_position_embeddings": getattr(text, "max_position_embeddings", None),
        },
        "inputs_contract": {
            "position_ids": "cumsum(attention_mask) - 1 (1 where masked), like transformers",
            "image_merge": (
                "inputs_embeds[input_ids == image_token_id] = image_features.reshape(-1, hidden) (row-major)"
            ),
            "prefill": "past_key_values.* with past_sequence_length 0",
            "padding": "left" if kv_cache == "float32" and format == "onnx" else "batch size 1",
        },
        "processor_files": copied,
        "transformers_exporters_manifest": "export.json",
        "versions": versions,
    }


# ---------------------------------------------------------------------------------------------------- verification


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two vectors (centered cosine): 1.0 = same up to scale and shift."""
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 1.0


#: Pass criteria of a quantized export (fp32 ones are checked for exactness instead): minimum correlation of the
#: teacher-forced logits and of the image features with PyTorch's. Thresholds are loose enough for a random model's
#: flat logits and tight enough to catch a broken graph (a wrong scale or layout gives < 0.5).
QUANT_CRITERIA = {
    "int8": {"logits_corr": 0.98, "image_features_corr": 0.98},
    "int4": {"logits_corr": 0.90, "image_features_corr": 0.999},
    "mixed": {"logits_corr": 0.90, "image_features_corr": 0.98},
}
FP32_ATOL, FP32_RTOL = 1e-3, 1e-4
#: ExecuTorch's XNNPACK kernels compute GELU / exp / tanh with polynomial approximations even in float32, so the
#: float32 check is looser there (greedy tokens must still be identical).
FP32_TOLERANCE = {"onnx": (FP32_ATOL, FP32_RTOL), "executorch": (5e-3, 5e-4)}
INT8_KV_CRITERIA = {"logits_corr": 0.95, "image_features_corr": 0.999}


def verify_export(
    export_dir: str | os.PathLike,
    model,
    processor,
    *,
    quant: str = "none",
    kv_cache: str = "float32",
    sample=None,
    max_new_tokens: int = 16,
    runner: OrtBlueLM | None = None,
    raise_on_failure: bool = True,
) -> dict:
    """Compare the export with the PyTorch model on `sample` (processor output for an image + prompt).

    Reports max abs diff of the logits (whole prompt, then each of `max_new_tokens` teacher-forced steps), their
    correlation and top-1 agreement with PyTorch's, the image-feature difference, and the greedy tokens of both
    (agreement = share of positions equal). float32: logits within 1e-3 + 1e-4 * max|logit| (ExecuTorch:
    `FP32_TOLERANCE`) and identical greedy
    tokens (a divergence at a numerical tie, where PyTorch's top-2 logits are closer than the tolerance, is
    reported but accepted). Quantized: `QUANT_CRITERIA`.
    """
    runner = runner or OrtBlueLM.from_pretrained(export_dir, processor=processor)
    if sample is None:
        sample = _verification_sample(model, processor)
    batch = {k: v for k, v in sample.items()}
    np_batch = {k: v.numpy() for k, v in batch.items()}

    with torch.no_grad():
        image_outputs = model.get_image_features(batch["pixel_values"], batch.get("image_grids"))
        ref_features = torch.cat(image_outputs.pooler_output)
        ref_prefill = model(**batch).logits[0].numpy()
        ref = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    prompt_len = batch["input_ids"].shape[1]
    ref_tokens = ref.sequences[0, prompt_len:].tolist()
    ref_step_logits = np.stack([step[0].float().numpy() for step in ref.logits])

    features = runner.encode_images(np_batch["pixel_values"]).reshape(-1, ref_features.shape[-1])
    embeds = runner.prefill_embeds(np_batch["input_ids"], np_batch["pixel_values"])
    mask = np_batch.get("attention_mask", np.ones_like(np_batch["input_ids"]))
    positions = np.cumsum(mask, axis=1) - 1
    prefill_logits, _ = runner.decode(embeds, mask, positions, runner.empty_past(1))
    prefill_logits = prefill_logits[0]
    forced = runner.generate(
        np_batch["input_ids"], mask, np_batch["pixel_values"], max_new_tokens=len(ref_tokens), forced_tokens=ref_tokens
    )
    step_logits = np.stack([s[0].numpy() for s in forced.logits])
    free = runner.generate(np_batch["input_ids"], mask, np_batch["pixel_values"], max_new_tokens=max_new_tokens)
    ort_tokens = free.new_tokens[0].tolist()

    scale = float(max(np.abs(ref_prefill).max(), np.abs(ref_step_logits).max()))
    atol, rtol = FP32_TOLERANCE.get(runner.manifest.get("format", "onnx"), (FP32_ATOL, FP32_RTOL))
    tolerance = atol + rtol * scale
    prefill_diff = float(np.abs(prefill_logits - ref_prefill).max())
    step_diff = float(np.abs(step_logits - ref_step_logits).max())
    top1 = float(np.mean(step_logits.argmax(-1) == ref_step_logits.argmax(-1)))
    step_corr = [_corr(a, b) for a, b in zip(step_logits, ref_step_logits)]
    prefill_corr = [_corr(a, b) for a, b in zip(prefill_logits, ref_prefill)]
    same = sum(a == b for a, b in zip(ort_tokens, ref_tokens))
    common = min(len(ort_tokens), len(ref_tokens))
    prefix = next((i for i, (a, b) in enumerate(zip(ort_tokens, ref_tokens)) if a != b), common)
    identical = ort_tokens == ref_tokens
    tie = None
    if not identical and prefix < len(ref_tokens) and prefix < len(ort_tokens):
        row = ref_step_logits[prefix]
        gap = float(row[ref_tokens[prefix]] - row[ort_tokens[prefix]])
        tie = {"step": prefix, "pytorch_logit_gap": gap, "is_numerical_tie": gap <= 2 * tolerance}

    report = {
        "prompt_tokens": int(prompt_len),
        "image_tiles": int(batch["pixel_values"].shape[0]),
        "new_tokens": len(ref_tokens),
        "image_features_max_abs_diff": float(np.abs(features - ref_features.numpy()).max()),
        "image_features_corr": _corr(features, ref_features.numpy()),
        "prefill_logits_max_abs_diff": prefill_diff,
        "decode_logits_max_abs_diff": step_diff,
        "max_abs_diff_logits": max(prefill_diff, step_diff),
        "logits_corr_min": float(min(step_corr + prefill_corr)),
        "logits_corr_mean": float(np.mean(step_corr + prefill_corr)),
        "teacher_forced_top1_agreement": top1,
        "greedy_tokens_pytorch": ref_tokens,
        "greedy_tokens_export": ort_tokens,
        "greedy_identical": identical,
        "greedy_agreement": same / max(len(ref_tokens), 1),
        "greedy_matching_prefix": prefix,
        "divergence": tie,
        "tolerance": tolerance if quant == "none" and kv_cache == "float32" else None,
    }

    failures = []
    if quant == "none" and kv_cache == "float32":
        if report["max_abs_diff_logits"] > tolerance:
            failures.append(f"max |logits diff| {report['max_abs_diff_logits']:.3g} > {tolerance:.3g}")
        if report["image_features_max_abs_diff"] > tolerance:
            failures.append(f"max |image feature diff| {report['image_features_max_abs_diff']:.3g} > {tolerance:.3g}")
        if not identical and not (tie and tie["is_numerical_tie"]):
            failures.append(f"greedy tokens differ from step {prefix}: {ort_tokens} vs PyTorch {ref_tokens}")
        criteria = {"max_abs_diff_logits": tolerance, "greedy_identical": True}
    else:
        criteria = dict(QUANT_CRITERIA.get(quant, QUANT_CRITERIA["int8"]))
        if kv_cache == "int8":
            criteria = {
                key: min(value, INT8_KV_CRITERIA[key]) if quant != "none" else INT8_KV_CRITERIA[key]
                for key, value in criteria.items()
            }
        if not np.isfinite(step_logits).all() or not np.isfinite(prefill_logits).all():
            failures.append("non-finite logits")
        if report["logits_corr_mean"] < criteria["logits_corr"]:
            failures.append(f"logits correlation {report['logits_corr_mean']:.4f} < {criteria['logits_corr']}")
        if report["image_features_corr"] < criteria["image_features_corr"]:
            failures.append(
                f"image feature correlation {report['image_features_corr']:.4f} < {criteria['image_features_corr']}"
            )
    report["criteria"] = criteria
    report["passed"] = not failures
    report["failures"] = failures
    if failures and raise_on_failure:
        raise ExportVerificationError(
            f"Export in {export_dir} ({quant}, kv_cache={kv_cache}) failed verification against PyTorch: "
            + "; ".join(failures) + f". The export was kept; its report is in {MANIFEST_FILE}.",
            report,
        )
    return report


# ---------------------------------------------------------------------------------------------------- CLI


def add_export_subcommand(subparsers) -> Any:
    """Adds `export MODEL OUT --format onnx|executorch --quant none|int8|int4|mixed [--overwrite]` to a
    `bluelm-hf` argparse subparsers object."""
    parser = subparsers.add_parser(
        "export",
        help="export to ONNX / ExecuTorch, optionally quantized (mixed = ViT int8 + LLM int4)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("model", help="saved BlueLM model directory")
    parser.add_argument("out", help="output directory")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--quant", choices=QUANTS, default="none")
    parser.add_argument("--kv-cache", choices=KV_CACHE_DTYPES, default="float32", help="int8: ONNX only, batch 1")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="skip the check against PyTorch")
    parser.add_argument("--verify-tokens", type=int, default=16, help="greedy tokens compared (default 16)")
    parser.set_defaults(func=export_main)
    return parser


def export_main(args) -> int:
    """Entry point of `bluelm-hf export`; prints a summary, returns the exit code (1 on a verification failure)."""
    try:
        report = export_model(
            args.model,
            args.out,
            format=args.format,
            quant=args.quant,
            overwrite=args.overwrite,
            verify=args.verify,
            kv_cache=getattr(args, "kv_cache", "float32"),
            verify_tokens=getattr(args, "verify_tokens", 16),
        )
    except ExportVerificationError as error:
        print(f"error: {error}")
        return 1
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, ImportError) as error:
        print(f"error: {error}")
        return 2
    print(f"Exported {args.model} -> {report['export_dir']} ({report['format']}, quant={report['quant']})")
    for name, size in report["sizes"].items():
        print(f"  {name:<15} {size / 2**20:9.2f} MiB")
    verification = report.get("verification")
    if verification:
        print(
            f"  verification: max |logits diff| {verification['max_abs_diff_logits']:.3g}, "
            f"logits corr {verification['logits_corr_mean']:.4f}, "
            f"teacher-forced top-1 {verification['teacher_forced_top1_agreement']:.0%}, "
            f"greedy agreement {verification['greedy_agreement']:.0%} over {verification['new_tokens']} tokens "
            f"-> {'passed' if verification['passed'] else 'FAILED'}"
        )
    return 0


__all__ = [
    "BNB_SKIP_MODULES",
    "ExportVerificationError",
    "add_export_subcommand",
    "bnb_config",
    "export_main",
    "export_model",
    "load_for_export",
    "quantization_plan",
    "quantize_export",
    "verify_export",
]
