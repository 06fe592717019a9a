"""`export_model` / `quantize_export`: trace the three graphs with `transformers.exporters`, quantize them, save the
export with its processor files and `bluelm_export.json`, then verify it against PyTorch."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from . import graph_passes
from .genai import GENAI_CONFIG_FILE, genai_config
from .destination import MANIFEST_FILE, move_into_place, prepare_out_dir, staging_dir, write_json
from .quantization import QUANTS, kv_scales, quantization_plan
from .verification import MIN_VERIFY_TOKENS, ExportVerificationError, verification_sample, verify_export
from .wrappers import (
    DecoderForExport,
    EmbedTokensAndImagesForExport,
    EmbedTokensForExport,
    VisionEncoderForExport,
    dynamic_shapes,
    kv_shape,
    sample_inputs,
)

FORMATS = ("onnx", "executorch")
KV_CACHE_DTYPES = ("float32", "int8")
# (format, quant) pairs we can produce; anything else is refused up front with the list below.
SUPPORTED = {("onnx", q) for q in QUANTS} | {("executorch", "none")}
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.safetensors.index.json", "*.bin.index.json")


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


def _export_onnx(model, plan: dict, kv_cache: str, calibration: dict | None, processor, opset: int | None):
    from transformers.exporters import OnnxConfig, OnnxExporter
    from transformers.exporters.base import ExportedModel

    exporter = OnnxExporter()
    static_batch = kv_cache == "int8"
    # The vision and embedding graphs in onnxruntime-genai's layout (docs/export.md, "onnxruntime-genai").
    samples = sample_inputs(model, batch=1 if static_batch else 2, flat_features=True)
    shapes = dynamic_shapes(model, static_batch=static_batch, flat_features=True)
    modules = {
        "vision_encoder": VisionEncoderForExport(model, flat_features=True).eval(),
        "embed_tokens": EmbedTokensAndImagesForExport(model).eval(),
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
        graph_passes.rename_symbolic_dims(components[name].program, name)
        graph_passes.strip_debug_metadata(components[name].program)
    if static_batch:
        num_fused = graph_passes.int8_kv_cache(components["decoder"].program, kv_scales(model, processor, calibration))
        if num_fused != kv_shape(model)[0]:
            raise RuntimeError(
                f"kv_cache='int8': only {num_fused} of {kv_shape(model)[0]} attention layers were fused into "
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
    num_layers = kv_shape(model)[0]
    max_len = int(getattr(model.config.text_config, "max_position_embeddings", 4096))
    tiles = Dim("num_tiles", min=1, max=max(64, (model.config.max_grid_size**2 + 1) * 4))
    seq = Dim("sequence_length", min=1, max=max_len)
    past = Dim("past_sequence_length", min=0, max=max_len - 1)
    # ExecuTorch plans memory for the largest shape, so every dynamic axis is bounded; `attention_mask` (past + seq)
    # stays `Dim.AUTO`, bounded through that relation.
    samples = sample_inputs(model, batch=1)
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
    num_layers, kv_heads, head_dim = kv_shape(model)
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
    verify_tokens: int = MIN_VERIFY_TOKENS,
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
    `verify_tokens` greedy tokens (EOS suppressed on both sides; fewer than `MIN_VERIFY_TOKENS` fail) and raise
    `ExportVerificationError` beyond tolerance (the export is kept).
    overwrite: replace the export already in `out_dir`: only the files it recorded (`written_files`) are removed, and
    a folder holding anything else is refused (`FileExistsError`). Destination failures (unwritable, read-only, full)
    raise `ExportDestinationError` with nothing half-written left behind.
    """
    _validate_request(format, quant, kv_cache)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model, processor = load_for_export(model_dir)  # before touching out_dir: a bad model leaves it alone
    prepare_out_dir(out_dir, model_dir, overwrite)

    sample = verification_sample(model, processor, prompt, image)
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
    verify_tokens: int = MIN_VERIFY_TOKENS,
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

    from .modeling import read_manifest

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
    prepare_out_dir(out_dir, model_dir, overwrite)
    tool_manifest = json.loads((export_dir / "export.json").read_text())
    plan = quantization_plan(quant, int4_accuracy_level=int4_accuracy_level, block_size=block_size)
    components = {}
    for name, entry in tool_manifest["components"].items():
        program = onnx_ir.load(str(export_dir / entry["file"]))
        onnx_ir.external_data.load_to_model(program)
        graph_passes.strip_debug_metadata(program)  # exports written before it was stripped at export time
        if plan.get(name) is not None:
            plan[name].validate_environment("onnx")
            program = plan[name].quantize(program, {}, "onnx")
        components[name] = ExportedComponent(program, ExportMetadata.from_dict(entry["metadata"]))
    exported = ExportedModel(components, "onnx", config=model.config, generation_config=model.generation_config)
    sample = verification_sample(model, processor)
    return _finalize(
        exported, out_dir, model_dir, model, processor, "onnx", quant, "float32", plan, verify, sample, verify_tokens
    )


def _finalize(
    exported, out_dir, model_dir, model, processor, format, quant, kv_cache, plan, verify, sample, verify_tokens
) -> dict:
    """Save the programs and the processor files (staged, then moved into `out_dir`), write bluelm_export.json with
    the list of files written, verify."""
    with staging_dir(out_dir) as staging:
        exported.save_pretrained(staging)
        copied = _copy_processor_files(model_dir, staging)
        manifest = _build_manifest(model, processor, exported, staging, format, quant, kv_cache, plan, copied)
        manifest["source_model_dir"] = str(Path(model_dir).resolve())
        if format == "onnx" and kv_cache == "float32":
            write_json(staging / GENAI_CONFIG_FILE, genai_config(manifest))
        manifest["written_files"] = sorted(
            [str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file()] + [MANIFEST_FILE]
        )
        write_json(staging / MANIFEST_FILE, manifest)
        move_into_place(staging, out_dir)

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
                out_dir, model, processor, quant=quant, kv_cache=kv_cache, sample=sample, tokens=verify_tokens
            )
        except ExportVerificationError as error:
            manifest["verification"] = error.report
            write_json(out_dir / MANIFEST_FILE, manifest)
            raise
        manifest["verification"] = verification
        write_json(out_dir / MANIFEST_FILE, manifest)
        report["verification"] = verification
    return report


def _build_manifest(model, processor, exported, out_dir: Path, format, quant, kv_cache, plan, copied) -> dict:
    import importlib.metadata as md

    config = model.config
    text = config.text_config
    num_layers, kv_heads, head_dim = kv_shape(model)
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
            "num_attention_heads": text.num_attention_heads,
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




