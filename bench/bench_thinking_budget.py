"""What does the thinking budget cost per decoding step?

Question: time of one `ThinkingBudgetLogitsProcessor` call as a share of one decode step, at batch 1, 8 and 32, on a
small-but-real llama (hidden 512, 8 layers, 32K vocabulary, 42M parameters, float32, CPU), with rows of `--prompt`
prompt tokens ending with `<think>` plus `--generated` generated tokens (the processor scans the generated part).
And end-to-end `generate` tokens/s with and without the processor.

    python bench/bench_thinking_budget.py [--prompt 512] [--generated 512] [--steps 32] [--new-tokens 64]
        [--repeats 3] [--threads N]

Per step, timed in one loop so that all see the same machine load, fastest of `--steps` steps (the machine is
shared; the fastest is the least disturbed):
- decode step: one cached forward of a (batch, 1) token at context prompt + generated, and the logits copy
  `generate` makes;
- skipped: the budget cannot have run out yet; this host-side shortcut is what every step costs until then, and
  again once every row has closed its think block;
- scan: the same with the shortcuts turned off: the full vectorised scan, nothing forced. What a step costs while
  some row could be forced (past the smallest budget) and some row is still inside a think block;
- forced: every row is forced this step (the worst step; a row has len(closing sequence) of them).

End to end: greedy `generate` of `--new-tokens` tokens, budget half of that, so the forcing happens inside the timed
run; best of `--repeats`, with and without taken back to back.
"""

import argparse
import os
import platform
import time

import torch
from transformers import DynamicCache, GenerationConfig, LlamaConfig, LlamaForCausalLM, LogitsProcessorList

from bluelm_hf.thinking import ThinkingBudgetLogitsProcessor

VOCAB = 32_000
THINK, END, MESSAGE = 3, 4, 5  # any ids; the model is random


def make_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


def make_rows(batch: int, prompt: int, generated: int) -> torch.Tensor:
    """`(batch, prompt + generated)` random words, the prompt ending with `<think>`: every row is thinking."""
    ids = torch.randint(10, VOCAB, (batch, prompt + generated), generator=torch.Generator().manual_seed(batch))
    ids[:, prompt - 1] = THINK
    return ids


class AlwaysScan(ThinkingBudgetLogitsProcessor):
    """The processor with its host-side shortcuts off, so that it runs the full scan at every step."""

    def _start(self, input_ids):
        super()._start(input_ids)
        self._first_possible_step = 0


@torch.inference_mode()
def per_step(model, batch: int, prompt: int, generated: int, steps: int) -> dict[str, float]:
    """Fastest seconds of a decode step and of each processor's call over `steps` steps, measured side by side."""
    ids = make_rows(batch, prompt, generated)
    budgeted = {
        "skipped": ThinkingBudgetLogitsProcessor(generated + 1, THINK, END),
        "scan": AlwaysScan(generated + 1, THINK, END),
        # forcing starts `steps` steps before the end, with a closing sequence long enough to force at each of them
        "forced": ThinkingBudgetLogitsProcessor(generated - steps, THINK, END, [*[MESSAGE] * steps, END]),
    }
    scores = torch.randn(batch, VOCAB)
    start_len = prompt + generated - steps
    for length in range(prompt, start_len):  # walk them to the timed window, as generate would
        for processor in budgeted.values():
            processor(ids[:, :length], scores)

    cache = DynamicCache(config=model.config)
    model(input_ids=ids[:, : start_len - 1], cache=cache, use_cache=True)
    times = {"decode step": [], **{name: [] for name in budgeted}}
    for length in range(start_len, start_len + steps):
        start = time.perf_counter()
        logits = model(input_ids=ids[:, length - 1 : length], cache=cache, use_cache=True).logits
        logits = logits[:, -1].to(copy=True, dtype=torch.float32)
        times["decode step"].append(time.perf_counter() - start)
        rows = ids[:, :length]
        for name, processor in budgeted.items():
            start = time.perf_counter()
            out = processor(rows, logits)
            times[name].append(time.perf_counter() - start)
            assert (out is not logits) == (name == "forced"), name
    return {name: min(values) for name, values in times.items()}


@torch.inference_mode()
def generate_tokens_per_s(model, batch: int, prompt: int, new_tokens: int, budget: int | None) -> float:
    ids = make_rows(batch, prompt, 0)
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
    extra = LogitsProcessorList()
    if budget is not None:
        extra.append(ThinkingBudgetLogitsProcessor(budget, THINK, END))
    start = time.perf_counter()
    mask = torch.ones_like(ids)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, logits_processor=extra)
    elapsed = time.perf_counter() - start
    if budget is not None:  # the budget did its job inside the timed run
        assert (out[:, prompt + budget] == END).all()
    return batch * new_tokens / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--generated", type=int, default=512)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = make_model()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads; "
        f"llama {params:.0f}M params, float32; rows of {args.prompt} prompt + {args.generated} generated tokens\n"
    )
    print(
        "| batch | decode step | skipped | scan | scan % of step | forced | forced % of step "
        "| generate tok/s | with budget | change |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for batch in args.batches:
        t = per_step(model, batch, args.prompt, args.generated, args.steps)
        without, with_budget = [], []
        for _ in range(args.repeats):  # back to back, so both see the same machine load
            without.append(generate_tokens_per_s(model, batch, args.prompt, args.new_tokens, None))
            with_budget.append(generate_tokens_per_s(model, batch, args.prompt, args.new_tokens, args.new_tokens // 2))
        best, best_budget = max(without), max(with_budget)
        step = t["decode step"]
        print(
            f"| {batch} | {step * 1e3:.1f} ms | {t['skipped'] * 1e6:.0f} µs | {t['scan'] * 1e6:.0f} µs "
            f"| {t['scan'] / step:.2%} | {t['forced'] * 1e6:.0f} µs | {t['forced'] / step:.2%} "
            f"| {best:.0f} | {best_budget:.0f} | {best_budget / best - 1:+.1%} |"
        )


if __name__ == "__main__":
    main()
