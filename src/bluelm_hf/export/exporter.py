"""`export_model` / `quantize_export`: trace the three graphs with `transformers.exporters`, quantize them, save the
export with its processor files and `bluelm_export.json`, then verify it against PyTorch."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import types
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


def _validate_request(format: str, quant: str, kv_cache: str, verify_tokens: int | None = None) -> None:
    """A ValueError for a request that cannot be exported (or, verified over `verify_tokens`, could never pass),
    before anything is loaded or written."""
    if verify_tokens is not None and verify_tokens < MIN_VERIFY_TOKENS:
        raise ValueError(
            f"verify_tokens={verify_tokens}: a verification compares at least {MIN_VERIFY_TOKENS} greedy tokens "
            "(verify=False, --no-verify, skips it)"
        )
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


def load_for_export(model_dir: str | os.PathLike, dtype: torch.dtype | str = torch.float32, weights: bool = True):
    """`(model, processor)` from a saved BlueLM directory, with clear errors for bad directories.

    dtype: float32 (the exported graphs' dtype), or "auto" (the checkpoint's own, e.g. bfloat16: half the memory;
    `export_model(low_memory=True)` then puts one component at a time in float32). weights=False: the model on the
    meta device (its config and generation config, no memory), for exports that are not verified."""
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
        if weights:
            model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype).eval()
        else:
            from transformers import GenerationConfig

            with torch.device("meta"):
                model = AutoModelForImageTextToText.from_config(config).eval()
            if (model_dir / "generation_config.json").is_file():
                model.generation_config = GenerationConfig.from_pretrained(model_dir)
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


@contextlib.contextmanager
def _linear_weights_as_matmul_operands(module: torch.nn.Module):
    """Trace every `nn.Linear` in `module` as `x @ W.T` with `W.T` stored as the parameter itself.

    Traced as is, a Linear is `MatMul(x, Transpose(W))`, and the ONNX optimizer folds each `Transpose(W)` into a new
    initializer: a second copy of every weight while the model's own is still alive (a 2-layer slice of the 2.5B
    decoder: peak 3.6 GB for 1.65 GB of float32 weights). With the parameters transposed in place (one weight copied
    at a time) the graph's MatMuls read the model's tensors directly. Restored on exit."""
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    transposed = {}  # id(parameter) -> parameter (a tied weight is transposed once)

    def forward(self, x):
        out = torch.matmul(x, self.weight)
        return out + self.bias if self.bias is not None else out

    try:
        for linear in linears:
            if id(linear.weight) not in transposed:
                transposed[id(linear.weight)] = linear.weight
                linear.weight.data = linear.weight.data.t().contiguous()
            linear.forward = types.MethodType(forward, linear)
        yield
    finally:
        for linear in linears:
            linear.__dict__.pop("forward", None)
        for parameter in transposed.values():
            parameter.data = parameter.data.t().contiguous()


@contextlib.contextmanager
def _in_float32(module: torch.nn.Module):
    """`module`'s floating-point parameters and buffers in float32 for the trace (the graphs are float32), then back
    in their own dtype: with a bfloat16 model, only one component is in float32 at a time."""
    tensors = [*module.parameters(), *module.buffers()]
    tensors = [t for t in tensors if t.is_floating_point() and t.dtype != torch.float32]
    dtypes = {}
    try:
        for tensor in tensors:
            if id(tensor) not in dtypes:
                dtypes[id(tensor)] = (tensor, tensor.dtype)
                tensor.data = tensor.data.float()
        yield
    finally:
        for tensor, dtype in dtypes.values():
            tensor.data = tensor.data.to(dtype)


def _detach_from_module(program) -> None:
    """Point the graph's initializers at tensors of their own: on leaving `_linear_weights_as_matmul_operands` /
    `_in_float32` the module's parameters are given new data (transposed back, cast back), which a graph holding the
    parameters themselves would silently pick up."""
    from onnx_ir.tensor_adapters import TorchTensor

    for value in program.graph.initializers.values():
        raw = getattr(value.const_value, "raw", None)
        if isinstance(raw, torch.Tensor):
            value.const_value = TorchTensor(raw.detach(), name=value.const_value.name)


def _export_onnx(
    model, plan: dict, kv_cache: str, calibration: dict | None, processor, opset: int | None, save_dir=None
):
    """The three graphs, quantized per `plan`. With `save_dir` (low-memory export) each graph is written there as soon
    as it is traced and quantized, and held from then on as the saved file (its weights read from disk on demand), so
    one component's float32 weights are in memory at a time."""
    from transformers.exporters import OnnxConfig, OnnxExporter
    from transformers.exporters.base import ExportedModel

    exporter = OnnxExporter()
    static_batch = kv_cache == "int8"
    # The vision and embedding graphs in onnxruntime-genai's layout (docs/export.md, "onnxruntime-genai").
    samples = sample_inputs(model, batch=1 if static_batch else 2, flat_features=True)
    shapes = dynamic_shapes(model, static_batch=static_batch, flat_features=True)
    scales = kv_scales(model, processor, calibration) if static_batch else None
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
        with _in_float32(module), _linear_weights_as_matmul_operands(module):
            component = exporter.export(module, samples[name], config).components["model"]
            program = component.program
            graph_passes.rename_symbolic_dims(program, name)
            graph_passes.strip_debug_metadata(program)
            if name == "decoder" and static_batch:
                num_fused = graph_passes.int8_kv_cache(program, scales)
                if num_fused != kv_shape(model)[0]:
                    raise RuntimeError(
                        f"kv_cache='int8': only {num_fused} of {kv_shape(model)[0]} attention layers were fused "
                        "into GroupQueryAttention, so the cache cannot be int8 throughout; export with "
                        "kv_cache='float32'"
                    )
            if plan.get(name) is not None:
                plan[name].validate_environment("onnx")
                program = plan[name].quantize(program, samples[name], "onnx")
            if save_dir is not None:
                path = Path(save_dir) / f"{name}{exporter.program_suffix}"
                exporter.save_program(program, path)
                del program
                component.program = exporter.load_program(path)
            else:
                _detach_from_module(program)
                component.program = program
        components[name] = component
    return ExportedModel(components, "onnx", config=model.config, generation_config=model.generation_config)


def _export_executorch(model, processor, max_cache_len: int | None = None):
    """One multi-method XNNPACK `.pte` for ExecuTorch's `MultimodalRunner` (`executorch.py`)."""
    from .executorch import MultimodalExport, export_multimodal_program

    manager, metadata = export_multimodal_program(model, processor, max_cache_len=max_cache_len)
    return MultimodalExport(manager, metadata, model, processor)


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
    low_memory: bool = False,
    max_cache_len: int | None = None,
) -> dict:
    """Export the BlueLM-V model saved in `model_dir` to `out_dir`; returns the report (also in bluelm_export.json).

    format: "onnx" or "executorch". quant: "none" | "int8" | "int4" | "mixed" (module docstring).
    kv_cache: "float32" or "int8" (ONNX only; batch-1 decoder, see docs/export.md).
    verify: run the export and PyTorch on an image + prompt (`prompt`, `image`, default a synthetic picture) for
    `verify_tokens` greedy tokens (EOS suppressed on both sides; fewer than `MIN_VERIFY_TOKENS` fail) and raise
    `ExportVerificationError` beyond tolerance (the export is kept).
    max_cache_len: ExecuTorch only: KV-cache positions of the `.pte` (prompt + generated; default the model's
    `max_position_embeddings`).
    overwrite: replace the export already in `out_dir`: only the files it recorded (`written_files`) are removed, and
    a folder holding anything else is refused (`FileExistsError`). Destination failures (unwritable, read-only, full)
    raise `ExportDestinationError` with nothing half-written left behind.
    low_memory (ONNX): load the model in its checkpoint dtype (bfloat16: 2 bytes per parameter), put one component
    at a time in float32 to trace it, and write each graph to disk as soon as it is traced and quantized; peak memory
    is about the checkpoint plus the largest component in float32 (docs/export.md, "Real size within a RAM budget").
    Verification then loads the model in float32 (4 bytes per parameter) next to the export.
    """
    _validate_request(format, quant, kv_cache, verify_tokens if verify else None)
    if max_cache_len is not None and format != "executorch":
        raise ValueError("max_cache_len is an ExecuTorch option (the KV cache inside model.pte); ONNX caches grow")
    if low_memory and format != "onnx":
        raise ValueError("low_memory=True is implemented for format='onnx' only")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    # Before touching out_dir: a bad model leaves it alone.
    model, processor = load_for_export(model_dir, dtype="auto" if low_memory else torch.float32)
    if format == "executorch":
        from .executorch import cache_lengths

        cache_lengths(model.config, max_cache_len=max_cache_len)  # a bad length is refused before out_dir exists
    prepare_out_dir(out_dir, model_dir, overwrite)

    sample = verification_sample(model, processor, prompt, image)
    if format == "executorch":
        plan = {"vision_encoder": None, "embed_tokens": None, "decoder": None}
        exported = _export_executorch(model, processor, max_cache_len)
        return _finalize(
            exported, out_dir, model_dir, model, processor, format, quant, kv_cache, plan, verify, sample, verify_tokens
        )
    plan = quantization_plan(quant, int4_accuracy_level=int4_accuracy_level, block_size=block_size)
    with staging_dir(out_dir) if low_memory else contextlib.nullcontext() as staging:
        exported = _export_onnx(model, plan, kv_cache, dict(sample), processor, opset, save_dir=staging)
        if low_memory and verify:
            model = model.float()  # the PyTorch reference; the export's graphs are on disk by now
        return _finalize(
            exported, out_dir, model_dir, model, processor, "onnx", quant, kv_cache, plan, verify, sample,
            verify_tokens, staging=staging,
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

    _validate_request("onnx", quant, "float32", verify_tokens if verify else None)
    export_dir, out_dir = Path(export_dir), Path(out_dir)
    manifest = read_manifest(export_dir)
    kv_dtype = manifest["kv_cache"]["dtype"]
    if manifest.get("format") != "onnx" or manifest.get("quant") != "none" or kv_dtype != "float32":
        raise ValueError(
            f"{export_dir} is a {manifest.get('format')} export with quant={manifest.get('quant')!r}, "
            f"kv_cache={manifest['kv_cache']['dtype']!r}; quantize_export starts from a float32 ONNX export"
        )
    model_dir = Path(model_dir or manifest.get("source_model_dir") or "")
    # Unverified, the PyTorch model is only needed for its configs: no weights loaded.
    model, processor = load_for_export(model_dir, weights=verify)
    if export_dir.resolve() == out_dir.resolve():
        raise ValueError("quantize_export writes a new directory; out_dir must differ from export_dir")
    prepare_out_dir(out_dir, model_dir, overwrite)
    tool_manifest = json.loads((export_dir / "export.json").read_text())
    plan = quantization_plan(quant, int4_accuracy_level=int4_accuracy_level, block_size=block_size)
    components = {}
    for name, entry in tool_manifest["components"].items():
        # Weights stay in the float32 export's .data files, mapped one at a time as they are quantized or copied.
        program = onnx_ir.load(str(export_dir / entry["file"]))
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


def _save_exported(exported, directory: Path, programs_saved: bool) -> None:
    """`exported.save_pretrained(directory)`; when the programs are already there (written by a low-memory export),
    only the rest of what it writes: `export.json` (the same manifest) and the configs, so no graph is copied."""
    import dataclasses

    from transformers.exporters.base import EXPORT_MANIFEST_FILE, EXPORT_SCHEMA_VERSION
    from transformers.exporters import OnnxExporter

    if not programs_saved:
        exported.save_pretrained(directory)
        return
    entries = {
        name: {
            "file": f"{OnnxExporter.program_prefix}{name}{OnnxExporter.program_suffix}",
            "metadata": dataclasses.asdict(component.metadata),
        }
        for name, component in exported.components.items()
    }
    manifest = {"schema_version": EXPORT_SCHEMA_VERSION, "export_format": "onnx", "components": entries}
    (directory / EXPORT_MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    exported.config.save_pretrained(directory)
    if exported.generation_config is not None:
        exported.generation_config.save_pretrained(directory)


def _finalize(
    exported, out_dir, model_dir, model, processor, format, quant, kv_cache, plan, verify, sample, verify_tokens,
    staging=None,
) -> dict:
    """Save the programs and the processor files (staged, then moved into `out_dir`), write bluelm_export.json with
    the list of files written, verify. `staging`: the staging folder the programs were already saved to."""
    programs_saved = staging is not None
    with contextlib.nullcontext(staging) if programs_saved else staging_dir(out_dir) as staging:
        _save_exported(exported, staging, programs_saved)
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
        "sizes": (
            {name: entry["size_bytes"] for name, entry in manifest["components"].items()}
            if "runner" not in manifest
            else {manifest["runner"]["program"]: manifest["total_size_bytes"]}
        ),
        "total_size_bytes": manifest["total_size_bytes"],
    }
    if verify:
        try:
            verification = verify_export(
                out_dir, model, processor, quant=quant, kv_cache=kv_cache, sample=sample, tokens=verify_tokens
            )
            if format == "executorch":  # and ExecuTorch's own MultimodalRunner on the same .pte
                from .executorch import verify_runner

                verification["multimodal_runner"] = verify_runner(out_dir, model, processor, sample, verify_tokens)
                if not verification["multimodal_runner"]["passed"]:
                    verification["passed"] = False
                    raise ExportVerificationError(
                        f"Export in {out_dir}: MultimodalRunner's greedy tokens differ from PyTorch's: "
                        f"{verification['multimodal_runner']}. The export was kept; its report is in {MANIFEST_FILE}.",
                        verification,
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
    runner = None
    if format == "executorch":  # one model.pte for MultimodalRunner, no transformers.exporters manifest
        from .executorch import manifest_entries

        components, runner = manifest_entries(model, exported.metadata, out_dir)
        tool_manifest = {"components": {}}
    else:
        tool_manifest = json.loads((out_dir / "export.json").read_text())
        components = {}
    total = runner["size_bytes"] if runner is not None else 0
    for name, entry in tool_manifest["components"].items():  # ONNX graphs (ExecuTorch's one .pte is `runner`)
        files = [f for f in (entry["file"], f"{entry['file']}.data") if (out_dir / f).exists()]
        size = _dir_size([out_dir / f for f in files])
        total += size
        inputs, outputs = _io_spec(out_dir, entry)
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
    manifest = {
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
        "transformers_exporters_manifest": "export.json" if runner is None else None,
        **({"runner": runner} if runner is not None else {}),
        "versions": versions,
    }
    if runner is not None:  # model.pte keeps its KV cache inside and takes cache positions, not masks / past tensors
        manifest["kv_cache"].update(layout=runner["kv_cache"], input_name=None, output_name=None)
        manifest["inputs_contract"] = {
            "cache_position": "past + arange(sequence_length)",
            "image_inputs": runner["image_inputs"],
            "padding": "batch size 1, no padding",
        }
    return manifest




