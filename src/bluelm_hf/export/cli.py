"""`bluelm-hf export`: the argparse subcommand and its exit codes.

Exit codes: 0 exported (and verified, unless --no-verify); 1 the export failed verification against PyTorch (it is
kept, its report in bluelm_export.json); 2 a bad request or model directory (nothing written); 3 the destination
cannot take the export: unwritable, read-only, full, or holding files --overwrite does not remove (nothing of the
user's is removed, nothing half-written left).
"""

from __future__ import annotations

import argparse
from typing import Any

from .destination import ExportDestinationError
from .exporter import FORMATS, KV_CACHE_DTYPES, export_model
from .quantization import QUANTS
from .verification import MIN_VERIFY_TOKENS, ExportVerificationError

EXIT_OK, EXIT_VERIFICATION_FAILED, EXIT_BAD_REQUEST, EXIT_DESTINATION = 0, 1, 2, 3


def add_export_subcommand(subparsers) -> Any:
    """Adds `export MODEL OUT --format onnx|executorch --quant none|int8|int4|mixed [--overwrite]` to a
    `bluelm-hf` argparse subparsers object."""
    parser = subparsers.add_parser(
        "export",
        help="export to ONNX / ExecuTorch, optionally quantized (mixed = ViT int8 + LLM int4)",
        description="Export a saved BlueLM-V to ONNX or ExecuTorch, quantized the way the BlueLM-V-3B paper deploys "
        "it, and verify it against PyTorch.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="saved BlueLM model directory")
    parser.add_argument("out", help="output directory")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--quant", choices=QUANTS, default="none")
    parser.add_argument("--kv-cache", choices=KV_CACHE_DTYPES, default="float32", help="int8: ONNX only, batch 1")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the earlier export in OUT (only the files it wrote)"
    )
    parser.add_argument(
        "--low-memory",
        action="store_true",
        help="ONNX: load in the checkpoint's dtype, one component in float32 at a time (docs/export.md, real size)",
    )
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="skip the check against PyTorch")
    parser.add_argument(
        "--verify-tokens",
        type=int,
        default=MIN_VERIFY_TOKENS,
        help=f"greedy tokens compared, EOS suppressed (default and minimum: {MIN_VERIFY_TOKENS})",
    )
    parser.add_argument(
        "--max-cache-len",
        type=int,
        default=None,
        help="executorch: KV-cache positions in model.pte (default max_position_embeddings)",
    )
    parser.set_defaults(func=export_main)
    return parser


def export_main(args) -> int:
    """Entry point of `bluelm-hf export`; prints a summary, returns the exit code (module docstring)."""
    try:
        report = export_model(
            args.model,
            args.out,
            format=args.format,
            quant=args.quant,
            overwrite=args.overwrite,
            verify=args.verify,
            kv_cache=getattr(args, "kv_cache", "float32"),
            verify_tokens=getattr(args, "verify_tokens", MIN_VERIFY_TOKENS),
            low_memory=getattr(args, "low_memory", False),
            **({"max_cache_len": args.max_cache_len} if getattr(args, "max_cache_len", None) is not None else {}),
        )
    except ExportVerificationError as error:
        print(f"error: {error}")
        return EXIT_VERIFICATION_FAILED
    except (ExportDestinationError, FileExistsError) as error:
        print(f"error: {error}")
        return EXIT_DESTINATION
    except (FileNotFoundError, NotADirectoryError, ValueError, ImportError) as error:
        print(f"error: {error}")
        return EXIT_BAD_REQUEST
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
            "(EOS suppressed) -> passed"
        )
    return EXIT_OK
