"""Export BlueLM-V to ONNX (ONNX Runtime) or ExecuTorch, quantized the way the BlueLM-V-3B paper deploys it.

    export_model("path/to/bluelm", "bluelm-onnx", format="onnx", quant="mixed")

writes three graphs (vision encoder + projector, token embeddings, decoder with KV cache), the processor / tokenizer
/ config files, `export.json` (the `transformers.exporters` manifest) and `bluelm_export.json` (ours: files written,
I/O names and shapes, quantization, KV-cache layout, verification), then checks the export against PyTorch and
raises `ExportVerificationError` when it is off. `BlueLMVExportedForConditionalGeneration.from_pretrained(dir)` runs
it with transformers' `generate` over the `transformers.exporters` runners.

The package, by job: `wrappers` (the traced modules), `quantization` (`quant` = none / int8 / int4 / mixed),
`graph_passes` (ONNX graph fixes, the int8 KV cache), `exporter` (`export_model`, `quantize_export`), `destination`
(the output folder, never a user's file lost), `verification`, `modeling` (the exported model), `genai`
(onnxruntime-genai's config and inputs), `cli`.
See docs/export.md.
"""

from .cli import add_export_subcommand, export_main
from .destination import MANIFEST_FILE, ExportDestinationError
from .exporter import FORMATS, KV_CACHE_DTYPES, SUPPORTED, export_model, load_for_export, quantize_export
from .genai import genai_inputs
from .modeling import BlueLMVExportedForConditionalGeneration, read_manifest
from .quantization import QUANTS, quantization_plan
from .verification import MIN_VERIFY_TOKENS, ExportVerificationError, verify_export

__all__ = [
    "FORMATS",
    "KV_CACHE_DTYPES",
    "MANIFEST_FILE",
    "MIN_VERIFY_TOKENS",
    "QUANTS",
    "SUPPORTED",
    "BlueLMVExportedForConditionalGeneration",
    "ExportDestinationError",
    "ExportVerificationError",
    "add_export_subcommand",
    "export_main",
    "export_model",
    "genai_inputs",
    "load_for_export",
    "quantization_plan",
    "quantize_export",
    "read_manifest",
    "verify_export",
]
