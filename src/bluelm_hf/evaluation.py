"""Held-out evaluation on the nano task: accuracy, thinking length and mode-switch reliability."""

from . import nano_task
from .inference import generate
from .rewards import is_well_formed


def evaluate_nano(
    model,
    processor,
    n: int = nano_task.NANO_EVAL_SIZE,
    *,
    thinking: bool = True,
    thinking_budget: int | None = None,
    batch_size: int | None = None,
    max_new_tokens: int = 64,
    seed: int = nano_task.NANO_EVAL_SEED,
    dataset=None,
    return_outputs: bool = False,
) -> dict:
    """Greedy-decode `n` held-out questions and score them.

    Returns a dict: `accuracy`, `n`, `mean_thinking_tokens`, `well_formed` (share of rows whose completion has
    the shape the mode asks for, `rewards.is_well_formed`: `<think>reasoning</think>answer` in thinking mode, no
    think tag otherwise),
    `rows_with_think_tag`, `verbose_traces` (share of rows whose reasoning is in the verbose style,
    `cell 1 red 1 cell 2 blue ...`, see `nano_task.thinking_trace`), and the `thinking`/`thinking_budget` settings.
    With `return_outputs`, also `outputs`: the parsed completion of every row (`inference.generate`'s dicts), in
    dataset order.

    `model` may be a PyTorch BlueLM or an `OrtBlueLM` (an ONNX or ExecuTorch export, see `inference.load`).
    `batch_size` defaults to 32; an export whose decoder was traced for one batch size (int8 KV, ExecuTorch: 1)
    always runs at that size.
    """
    batch_size = getattr(model, "static_batch", None) or batch_size or 32
    dataset = dataset if dataset is not None else nano_task.make_eval_set(n, seed=seed)
    n = len(dataset)
    correct = well_formed = with_think = thinking_tokens = verbose = 0
    outputs_all = []
    for start in range(0, n, batch_size):
        rows = dataset[start : start + batch_size]
        outputs = generate(
            model,
            processor,
            rows["question"],
            rows["image"],
            thinking=thinking,
            thinking_budget=thinking_budget,
            max_new_tokens=max_new_tokens,
        )
        for out, answer in zip(outputs, rows["answer"]):
            ok = nano_task.score(out["content"], answer)
            correct += ok
            has_tag = "<think>" in out["text"] or "</think>" in out["text"]
            with_think += has_tag
            well_formed += is_well_formed(out["text"], thinking)
            thinking_tokens += out["num_thinking_tokens"]
            verbose += (out.get("reasoning_content") or "").split()[:1] == ["cell"]
            outputs_all.append(out)
    result = {
        "accuracy": correct / n,
        "n": n,
        "thinking": thinking,
        "thinking_budget": thinking_budget,
        "mean_thinking_tokens": thinking_tokens / n,
        "well_formed": well_formed / n,
        "rows_with_think_tag": with_think,
        "verbose_traces": verbose / n,
    }
    if return_outputs:
        result["outputs"] = outputs_all
    return result


__all__ = ["evaluate_nano"]
