# Copyright 2026 The bluelm-hf authors. Apache-2.0.
"""BlueLM-nano's inputs for the general recipes: its training sets, written to disk, and its random init.

    python recipes/nano/prepare.py                       # runs/nano/{init,sft-data,grpo-data}, the shipped nano's
    python recipes/sft.py --config recipes/nano/sft.yaml # then train it (recipes/nano/README.md)
    bluelm-hf eval --model runs/nano-sft                 # the held-out check

- `init/`: a byte-level BPE tokenizer trained on the task corpus (`nano_data.train_tokenizer`) and a randomly
  initialised nano-shaped BlueLM (`init_from_scratch`, seeded with `--seed`, which is also the SFT seed).
- `sft-data/`: `nano_data.make_sft_dataset` (`save_to_disk`): `messages` + `images`, half of the rows with a trace
  in `reasoning_content` (thinking-mode fusion).
- `grpo-data/`: the same generator with another seed, thinking rows only; `recipes/grpo.py` turns each row into a
  prompt (the user turn) and an `answer` (the assistant's).

The defaults are the shipped nano's (src/bluelm_hf/nano): the same rows, tokenizer and init as the pre-split recipe
built in process, so `recipes/nano/sft.yaml` re-creates it bit for bit (tests/test_recipes.py checks the first
steps against that recipe's weights). The over-thinking start of the Group Overlong ablation: `--verbose_ratio 0.7
--seed 0 --output_dir runs/nano-verbose`.
"""

import argparse
from pathlib import Path

from nano_data import make_sft_dataset, tokenizer_corpus, train_tokenizer

from bluelm_hf.assemble import init_from_scratch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="runs/nano", help="writes init/, sft-data/ and grpo-data/ here")
    parser.add_argument("--dataset_size", type=int, default=96_000, help="SFT rows")
    parser.add_argument("--data_seed", type=int, default=0, help="generator seed of the SFT rows and tokenizer corpus")
    parser.add_argument("--think_ratio", type=float, default=0.5, help="share of thinking-mode rows")
    parser.add_argument("--verbose_ratio", type=float, default=0.0,
                        help="share of thinking rows with the verbose (over-thinking) trace, for GRPO to shorten")
    parser.add_argument("--tokenizer_vocab_size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1, help="init seed (the shipped nano: 1, its SFT seed too)")
    parser.add_argument("--grpo_size", type=int, default=1000, help="GRPO prompts (0: none)")
    parser.add_argument("--grpo_seed", type=int, default=1, help="generator seed of the GRPO prompts")
    parser.add_argument("--num_proc", type=int, default=2, help="processes rendering the SFT rows (same rows)")
    return parser


def main(args) -> Path:
    out = Path(args.output_dir)
    styles = ("concise", "verbose") if args.verbose_ratio > 0 else ("concise",)
    tokenizer = train_tokenizer(
        tokenizer_corpus(seed=args.data_seed, styles=styles), vocab_size=args.tokenizer_vocab_size
    )
    model, processor = init_from_scratch(tokenizer, seed=args.seed)
    # The ids TRL's SFTTrainer aligns the config to anyway (weights and training are unchanged by it).
    model.config.text_config.eos_token_id = tokenizer.eos_token_id
    model.config.text_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out / "init")
    processor.save_pretrained(out / "init")
    sft = make_sft_dataset(
        args.dataset_size, seed=args.data_seed, think_ratio=args.think_ratio, verbose_ratio=args.verbose_ratio,
        num_proc=args.num_proc,
    )  # fmt: skip
    sft.save_to_disk(str(out / "sft-data"))
    if args.grpo_size:
        grpo = make_sft_dataset(args.grpo_size, seed=args.grpo_seed, think_ratio=1.0)
        grpo.save_to_disk(str(out / "grpo-data"))
    print(f"[bluelm-hf] nano init, {len(sft)} SFT rows and {args.grpo_size} GRPO prompts in {out}")
    return out


if __name__ == "__main__":
    main(build_parser().parse_args())
