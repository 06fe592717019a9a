"""Check an export against the PyTorch model it came from: teacher-forced logits and greedy tokens, EOS suppressed.

Both sides decode `tokens` new tokens with `min_new_tokens = tokens` (transformers' `MinNewTokensLengthLogitsProcessor`
keeps EOS out, in PyTorch's `generate` and in the export's, which is the same `generate`), so a model that would stop
early is still compared over the whole run. Fewer than `MIN_VERIFY_TOKENS` compared tokens fail the check.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from .destination import MANIFEST_FILE

#: The fewest greedy tokens a verification may compare and pass.
MIN_VERIFY_TOKENS = 32


class ExportVerificationError(RuntimeError):
    """The exported model disagrees with PyTorch beyond the tolerance of its quantization."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


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


def verification_sample(model, processor, prompt: str | None = None, image=None, enable_thinking: bool = False):
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


@torch.no_grad()
def teacher_forced_logits(model, batch: dict, tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """`(prompt_logits (prompt, vocab), step_logits (len(tokens), vocab))` of `model` fed the prompt, then `tokens`
    one at a time through its KV cache: the prefill graph and every decode step are checked, not just the choices."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    inputs = {k: v for k, v in batch.items() if k not in ("attention_mask",)}
    out = model(**inputs, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
    prompt_logits, steps = out.logits[0].float(), [out.logits[0, -1].float()]
    for token in tokens[:-1]:
        mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
        positions = positions[:, -1:] + 1
        out = model(
            input_ids=torch.tensor([[token]]), attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
        )
        steps.append(out.logits[0, -1].float())
    return prompt_logits.numpy(), torch.stack(steps).numpy()


def verify_export(
    export_dir: str | os.PathLike,
    model,
    processor,
    *,
    quant: str = "none",
    kv_cache: str = "float32",
    sample=None,
    tokens: int = MIN_VERIFY_TOKENS,
    exported=None,
    raise_on_failure: bool = True,
) -> dict:
    """Compare the export in `export_dir` with the PyTorch `model` on `sample` (processor output, one image + prompt).

    Reports the image-feature difference, the max abs diff / correlation / top-1 agreement of the teacher-forced
    logits (the prompt, then each of the `tokens` steps) and the greedy tokens of both with EOS suppressed.
    float32: logits within `atol + rtol * max|logit|` (`FP32_TOLERANCE`) and identical greedy tokens (a divergence at
    a numerical tie, where PyTorch's top-2 logits are closer than the tolerance, is reported but accepted).
    Quantized: `QUANT_CRITERIA`. Always: at least `MIN_VERIFY_TOKENS` tokens compared.
    """
    from .modeling import BlueLMVExportedForConditionalGeneration

    exported = exported or BlueLMVExportedForConditionalGeneration.from_pretrained(export_dir)
    batch = dict(sample if sample is not None else verification_sample(model, processor))
    prompt_len = batch["input_ids"].shape[1]
    greedy = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)

    with torch.no_grad():
        ref_features = model.get_image_features(batch["pixel_values"], batch.get("image_grids"))
        ref_features = torch.cat(ref_features.pooler_output).numpy()
        ref_tokens = model.generate(**batch, **greedy)[0, prompt_len:].tolist()
        export_tokens = exported.generate(**batch, **greedy)[0, prompt_len:].tolist()
        features = exported.get_image_features(batch["pixel_values"]).numpy()
    ref_prefill, ref_steps = teacher_forced_logits(model, batch, ref_tokens)
    prefill, steps = teacher_forced_logits(exported, batch, ref_tokens)

    scale = float(max(np.abs(ref_prefill).max(), np.abs(ref_steps).max()))
    atol, rtol = FP32_TOLERANCE.get(exported.manifest.get("format", "onnx"), (FP32_ATOL, FP32_RTOL))
    tolerance = atol + rtol * scale
    prefill_diff = float(np.abs(prefill - ref_prefill).max())
    step_diff = float(np.abs(steps - ref_steps).max())
    correlations = [_corr(a, b) for a, b in zip(steps, ref_steps)] + [_corr(a, b) for a, b in zip(prefill, ref_prefill)]
    compared = min(len(export_tokens), len(ref_tokens))
    prefix = next((i for i, (a, b) in enumerate(zip(export_tokens, ref_tokens)) if a != b), compared)
    identical = export_tokens == ref_tokens
    tie = None
    if not identical and prefix < compared:
        row = ref_steps[prefix]
        gap = float(row[ref_tokens[prefix]] - row[export_tokens[prefix]])
        tie = {"step": prefix, "pytorch_logit_gap": gap, "is_numerical_tie": gap <= 2 * tolerance}
    exact = quant == "none" and kv_cache == "float32"

    report = {
        "prompt_tokens": int(prompt_len),
        "image_tiles": int(batch["pixel_values"].shape[0]),
        "new_tokens": compared,
        "eos_suppressed": True,
        "image_features_max_abs_diff": float(np.abs(features - ref_features).max()),
        "image_features_corr": _corr(features, ref_features),
        "prefill_logits_max_abs_diff": prefill_diff,
        "decode_logits_max_abs_diff": step_diff,
        "max_abs_diff_logits": max(prefill_diff, step_diff),
        "logits_corr_min": float(min(correlations)),
        "logits_corr_mean": float(np.mean(correlations)),
        "teacher_forced_top1_agreement": float(np.mean(steps.argmax(-1) == ref_steps.argmax(-1))),
        "greedy_tokens_pytorch": ref_tokens,
        "greedy_tokens_export": export_tokens,
        "greedy_identical": identical,
        "greedy_agreement": sum(a == b for a, b in zip(export_tokens, ref_tokens)) / max(len(ref_tokens), 1),
        "greedy_matching_prefix": prefix,
        "divergence": tie,
        "tolerance": tolerance if exact else None,
    }

    failures = []
    if compared < MIN_VERIFY_TOKENS:
        failures.append(
            f"only {compared} greedy tokens compared (PyTorch {len(ref_tokens)}, export {len(export_tokens)}); "
            f"a verification compares at least {MIN_VERIFY_TOKENS}"
        )
    if exact:
        if report["max_abs_diff_logits"] > tolerance:
            failures.append(f"max |logits diff| {report['max_abs_diff_logits']:.3g} > {tolerance:.3g}")
        if report["image_features_max_abs_diff"] > tolerance:
            failures.append(f"max |image feature diff| {report['image_features_max_abs_diff']:.3g} > {tolerance:.3g}")
        if not identical and not (tie and tie["is_numerical_tie"]):
            failures.append(f"greedy tokens differ from step {prefix}: {export_tokens} vs PyTorch {ref_tokens}")
        criteria = {"max_abs_diff_logits": tolerance, "greedy_identical": True}
    else:
        criteria = dict(QUANT_CRITERIA.get(quant, INT8_KV_CRITERIA))
        if kv_cache == "int8":
            criteria = {key: min(value, INT8_KV_CRITERIA[key]) for key, value in criteria.items()}
        if not np.isfinite(steps).all() or not np.isfinite(prefill).all():
            failures.append("non-finite logits")
        if report["logits_corr_mean"] < criteria["logits_corr"]:
            failures.append(f"logits correlation {report['logits_corr_mean']:.4f} < {criteria['logits_corr']}")
        if report["image_features_corr"] < criteria["image_features_corr"]:
            failures.append(
                f"image feature correlation {report['image_features_corr']:.4f} < {criteria['image_features_corr']}"
            )
    criteria["min_tokens"] = MIN_VERIFY_TOKENS
    report["criteria"] = criteria
    report["passed"] = not failures
    report["failures"] = failures
    if failures and raise_on_failure:
        raise ExportVerificationError(
            f"Export in {export_dir} ({quant}, kv_cache={kv_cache}) failed verification against PyTorch: "
            + "; ".join(failures)
            + f". The export was kept; its report is in {MANIFEST_FILE}.",
            report,
        )
    return report
