"""`bluelm-hf` command line: info, chat, eval, assemble, export, card."""

import argparse
import sys

EXIT_CODES = """exit codes:
  0    success
  1    error: one line on stderr (--debug prints the traceback); `export` sets its own codes (export_main)
  2    bad command line (usage error)
  130  interrupted (Ctrl-C)"""


def cmd_info(args) -> int:
    import torch

    import bluelm_hf
    from bluelm_hf import PRESETS, BlueLMVForConditionalGeneration

    print(f"bluelm-hf {bluelm_hf.__version__}")
    print(f"{'preset':<16} {'total':>8} {'vision':>8} {'projector':>10} {'LLM':>8}  grid  tokens/tile")
    for name, make in PRESETS.items():
        config = make()
        with torch.device("meta"):
            model = BlueLMVForConditionalGeneration(config)
        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        vit, proj = count(model.vision_tower), count(model.multi_modal_projector)
        total = count(model)
        llm = total - vit - proj
        print(
            f"{name:<16} {total / 1e9:>7.3f}B {vit / 1e9:>7.3f}B {proj / 1e6:>9.1f}M {llm / 1e9:>7.3f}B"
            f"  {config.max_grid_size}x{config.max_grid_size}  {config.image_tokens_per_tile}"
        )
    nano = bluelm_hf.NANO
    print(f"BlueLM-nano checkpoint: {nano if (nano / 'config.json').exists() else 'not bundled in this install'}")
    return 0


DEFAULT_QUESTION = "Which colour is most common?"


def _question(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"the question is empty; ask one, or leave it out for the default ({DEFAULT_QUESTION!r})"
        )
    return text


def at_least(low: int):
    """argparse type: a whole number >= `low`; anything else is a usage error that says the number."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"whole number >= {low}"  # argparse names the type in its own messages
    return parse


def cmd_chat(args) -> int:
    from . import nano_task
    from .inference import load, stream_chat, user_message

    model, processor = load(args.model, release_vision=args.release_vision)
    image_path = args.image or nano_task.EXAMPLE_IMAGE_PATH
    image = processor.image_processor.fetch_images(str(image_path))  # clear errors for bad files
    question = DEFAULT_QUESTION if args.question is None else args.question
    print(f"image: {image_path} ({image.width}x{image.height})")
    print(f"question: {question}")
    mode = "thinking" if args.think else "non-thinking"
    budget = f", budget {args.budget}" if args.budget is not None else ""
    print(f"[{mode}{budget}]")
    current = None
    for kind, text in stream_chat(
        model,
        processor,
        [user_message(question, 1)],
        [image],
        thinking=args.think,
        thinking_budget=args.budget,
        max_new_tokens=args.max_new_tokens,
    ):
        if kind.endswith("_replace"):  # a later </think>: what was printed for this field was not it
            kind = kind.removesuffix("_replace")
            print(f"\n({kind} restarts: the model went on reasoning after </think>)", end="")
            current = ""
        if kind != current:
            print(("\n" if current is not None else "") + f"{kind}: ", end="")
            current = kind
        print(text, end="", flush=True)
    print()
    return 0


def cmd_eval(args) -> int:
    import json

    from .evaluation import evaluate_nano
    from .inference import load

    model, processor = load(args.model, release_vision=args.release_vision)
    result = evaluate_nano(
        model, processor, n=args.n, thinking=args.think, thinking_budget=args.budget, batch_size=args.batch_size
    )
    result["model"] = str(args.model or "bluelm-nano (bundled)")
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


def cmd_assemble(args) -> int:
    from .assemble import assemble_bluelm

    model, processor = assemble_bluelm(args.vision_model, args.lm, dtype=args.dtype, max_grid_size=args.max_grid_size)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    count = sum(p.numel() for p in model.parameters())
    print(f"BlueLM assembled from {args.vision_model} + {args.lm}: {count / 1e9:.3f}B parameters, {model.dtype}, "
          f"saved to {args.out}; next: recipes/stages/1_adapter.yaml (recipes/README.md)")
    return 0


def _add_generation_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint path or Hub id (default: bundled BlueLM-nano)")
    parser.add_argument(
        "--think", action=argparse.BooleanOptionalAction, default=True, help="thinking mode (default: on)"
    )
    parser.add_argument("--budget", type=at_least(0), default=None, help="thinking-token budget (default: unlimited)")
    parser.add_argument(
        "--release-vision",
        action="store_true",
        help="exports only: free the vision encoder after each image is encoded (less memory while decoding)",
    )


def build_parser() -> argparse.ArgumentParser:
    from bluelm_hf import __version__

    parser = argparse.ArgumentParser(
        prog="bluelm-hf", description=__doc__, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"bluelm-hf {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, print the full traceback")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="presets and their parameter counts")
    info.set_defaults(func=cmd_info)

    chat = sub.add_parser("chat", help="ask a question about an image (default: nano + bundled example)")
    chat.add_argument("question", nargs="?", default=None, type=_question, help=f"default: {DEFAULT_QUESTION!r}")
    chat.add_argument("--image", default=None, help="image file (default: the bundled example strip)")
    chat.add_argument("--max-new-tokens", type=at_least(1), default=256)
    _add_generation_args(chat)
    chat.set_defaults(func=cmd_chat)

    evaluate = sub.add_parser("eval", help="accuracy on the nano task's held-out split")
    evaluate.add_argument("--n", type=at_least(1), default=500, help="held-out questions (default 500)")
    evaluate.add_argument(
        "--batch-size",
        type=at_least(1),
        default=None,
        help="default 32; an export traced for one batch size (int8 KV, ExecuTorch: 1) always runs at that size",
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON line")
    _add_generation_args(evaluate)
    evaluate.set_defaults(func=cmd_eval)

    assemble = sub.add_parser(
        "assemble", help="build a BlueLM checkpoint from a SigLIP vision tower and a causal LM (projector untrained)"
    )
    assemble.add_argument("vision_model", help="SigLIP/SigLIP2 checkpoint (path or Hub id)")
    assemble.add_argument("lm", help="causal LM with its tokenizer (path or Hub id)")
    assemble.add_argument("out", help="output folder")
    assemble.add_argument("--dtype", default=None, help="one dtype for the whole model (default: the LM's)")
    assemble.add_argument(
        "--max-grid-size", type=at_least(1), default=4, help="AnyRes grid limit (default 4: up to 4x4 tiles)"
    )
    assemble.set_defaults(func=cmd_assemble)

    from .export import add_export_subcommand
    from .model_card import add_card_subcommand

    add_export_subcommand(sub)
    add_card_subcommand(sub)
    for subparser in sub.choices.values():  # `bluelm-hf chat --debug` as well as `bluelm-hf --debug chat`
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                               help="on an error, print the full traceback")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one command and returns its exit code (see EXIT_CODES): an error is one line on stderr, not a
    traceback, unless --debug is given."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"bluelm-hf {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"bluelm-hf {args.command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
