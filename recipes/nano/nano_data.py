# Copyright 2026 The bluelm-hf authors. Apache-2.0.
"""BlueLM-nano's training inputs, for recipes/nano/prepare.py: its SFT set (thinking-mode fusion over the nano task of
`bluelm_hf.nano_task`) and its byte-level BPE tokenizer.

The task itself (the generator, the held-out set, the scoring that `bluelm-hf eval` and the Space use) is library code
in `bluelm_hf.nano_task`; what only the nano's recipe needs lives here. Tests import `train_tokenizer` from here too
(tests/conftest.py puts this folder on `sys.path`), to build tiny tokenizers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from bluelm_hf.configuration_bluelm_v import (
    AI_TOKEN,
    HUMAN_TOKEN,
    IMAGE_END_TOKEN,
    IMAGE_START_TOKEN,
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    THINK_END_TOKEN,
    THINK_MODE_TOKEN,
    THINK_START_TOKEN,
)
from bluelm_hf.nano_task import (
    COLOURS,
    EOS_TOKEN,
    NANO_TRAIN_SEED,
    TRACE_STYLES,
    dataset_features,
    draw_sample,
    messages_for,
    png_value,
    question_text,
)

PAD_TOKEN = "<pad>"
# Kept as non-special added tokens (like Qwen3's <think>): `decode(..., skip_special_tokens=True)`, which
# TRL uses on GRPO completions, must keep the thinking markup that format rewards and budget parsing read.
THINKING_TOKENS = (THINK_MODE_TOKEN, THINK_START_TOKEN, THINK_END_TOKEN)


def make_sft_dataset(
    n: int,
    seed: int = NANO_TRAIN_SEED,
    think_ratio: float = 0.5,
    split: str = "train",
    verbose_ratio: float = 0.0,
    num_proc: int = 1,
):
    """A TRL-ready SFT set mixing both modes (thinking-mode fusion).

    Columns: `messages` (thinking rows carry the trace in the assistant's `reasoning_content`), `images`
    (a one-image list), `think` (bool), `trace_style` (`"concise"`, `"verbose"`, or None on non-thinking rows),
    `answer`. Exactly `round(n * think_ratio)` rows are thinking rows, at positions chosen by `seed`, and
    `round(n_think * verbose_ratio)` of those carry the verbose trace (`thinking_trace(..., style="verbose")`):
    the over-thinking that distilled long-CoT data is full of, for GRPO's Group Overlong to curb.

    `num_proc` > 1 renders contiguous slices of the rows in that many processes (nano's 96,000 rows take ~110 s
    in one); the rows, and their order, do not depend on it.
    """
    from datasets import Dataset

    for name, ratio in (("think_ratio", think_ratio), ("verbose_ratio", verbose_ratio)):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {ratio}")
    if num_proc < 1:
        raise ValueError(f"num_proc must be >= 1, got {num_proc}")
    n_think = round(n * think_ratio)
    think = np.zeros(n, dtype=bool)
    think[np.random.default_rng([seed, n, 1]).permutation(n)[:n_think]] = True
    verbose = np.zeros(n, dtype=bool)
    thinking_rows = np.flatnonzero(think)
    verbose[np.random.default_rng([seed, n, 2]).permutation(thinking_rows)[: round(n_think * verbose_ratio)]] = True
    styles = np.where(think, np.where(verbose, "verbose", "concise"), "").tolist()
    bounds = np.linspace(0, n, min(num_proc, max(n, 1)) + 1).astype(int)
    jobs = [(seed, split, int(a), styles[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    if len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(len(jobs), mp_context=context) as pool:
            chunks = list(pool.map(_sft_rows, jobs))
    else:
        chunks = [_sft_rows(job) for job in jobs]
    rows = [row for chunk in chunks for row in chunk]
    return Dataset.from_list(rows, features=dataset_features("messages", "images", "think", "trace_style", "answer"))


def _sft_rows(job: tuple[int, str, int, list[str]]) -> list[dict]:
    """Rows `start, start + 1, ...` of an SFT set, one per entry of `styles` ("" marks a non-thinking row)."""
    seed, split, start, styles = job
    rows = []
    for i, style in enumerate(styles, start=start):
        s = draw_sample(seed, i, split)
        answer = s.answer
        rows.append(
            {
                "messages": messages_for(s.question, answer, s.trace(style) if style else None),
                "images": [png_value(s.render())],
                "think": bool(style),
                "trace_style": style or None,
                "answer": answer,
            }
        )
    return rows



def tokenizer_corpus(
    n: int = 2000, seed: int = NANO_TRAIN_SEED, styles: Sequence[str] = ("concise",)
) -> Iterator[str]:
    """Task texts for tokenizer training: every question, and the traces (in each of `styles`) and answer of `n`
    train samples.

    `styles` should be the trace styles the SFT set holds (`recipes/sft.py`: concise, plus verbose when
    `verbose_ratio > 0`). The BPE ids, and so which embedding rows the seeded init gives each token, depend on the
    corpus. With the verbose traces added to the concise-only recipe's corpus, a seed-0 run of that recipe scored
    0.922 without thinking, against 0.800 with the concise-only corpus on the same machine (BENCHMARKS.md).
    """
    for style in styles:
        if style not in TRACE_STYLES:
            raise ValueError(f"unknown trace style {style!r}; expected some of {TRACE_STYLES}")
    palette = list(COLOURS)
    yield question_text("total")
    yield question_text("most")
    for a in palette:
        yield question_text("count", (a,))
        for b in palette:
            if a != b:
                yield question_text("count_any", (a, b))
    for i in range(n):
        s = draw_sample(seed, i, "train")
        yield from (s.trace(style) for style in styles)
        yield s.answer


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """Trains BlueLM-nano's tokenizer: byte-level BPE on `texts`, plus the BlueLM special tokens.

    Why byte-level BPE rather than WordLevel: on the task texts it is just as short (every word and
    " <digit>" of the task becomes one token after ~60 merges, so a trace costs one token per word), but
    any other string, such as a user's "How many purple cells?", a newline in a template or non-ASCII,
    still encodes without `<unk>` and decodes back byte for byte. WordLevel would need an `<unk>` and a
    whitespace convention that cannot round-trip text. The ByteLevel pre-tokenizer never merges across
    words, so training stops by itself once each word is one token: the vocabulary is 256 bytes +
    merges + 10 special tokens, ~330 in all, under `vocab_size`. A `vocab_size` below 266 still
    keeps all bytes and special tokens (no merges).

    Ids: `<pad>` 0, `</s>` 1 (eos), then SPECIAL_TOKENS in configuration order. Role and image tokens are
    special; `[|BlueThink|]`, `<think>`, `</think>` are added but not special, so they survive
    `skip_special_tokens=True`. There is no `<unk>` (bytes cover everything) and no BOS (the BlueLM chat
    format has none). Special tokens are cut out of `texts` before training, so no merge spans one.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    reserved = [PAD_TOKEN, EOS_TOKEN, *SPECIAL_TOKENS]
    splitter = re.compile("|".join(re.escape(t) for t in sorted(reserved, key=len, reverse=True)))

    def pieces() -> Iterator[str]:
        for text in texts:
            yield from (piece for piece in splitter.split(text) if piece)

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=reserved,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(pieces(), trainer)
    # The trainer registered every reserved token as special; re-register the thinking ones as plain
    # added tokens (same ids, they are already in the vocabulary).
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINKING_TOKENS])

    named = {
        "human_token": HUMAN_TOKEN,
        "ai_token": AI_TOKEN,
        "image_start_token": IMAGE_START_TOKEN,
        "image_token": IMAGE_TOKEN,
        "image_end_token": IMAGE_END_TOKEN,
    }
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=named,
        clean_up_tokenization_spaces=False,
    )


