"""Loading and batched chat generation shared by the CLI, evaluation and the demo Space."""

from pathlib import Path

import torch
from PIL import Image

DEFAULT_MAX_NEW_TOKENS = 256


def _looks_local(name: str) -> bool:
    """A name that is not on disk and that no Hub id looks like (`name` or `namespace/name`), or whose first
    component is a local directory (`runs/mistyped-run`): a mistyped local path, not a Hub lookup."""
    if name.count("/") > 1 or name.startswith((".", "/", "~")) or "\\" in name:
        return True
    return "/" in name and Path(name.split("/", 1)[0]).is_dir()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # a fast tokenizer, or a slow one's vocabulary


def _check_checkpoint_dir(path: Path) -> None:
    """Refuse, before anything is built, a directory that holds another model type or lacks its tokenizer (which
    transformers reports as a size mismatch, or as "You need to have sentencepiece or tiktoken installed")."""
    import json

    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (ValueError, AttributeError) as error:
        raise ValueError(f"{path / 'config.json'} is not a JSON object: {error}") from error
    if model_type != "bluelm_v":
        raise ValueError(
            f"{path} holds a {model_type!r} model (config.json's model_type), not a BlueLM one ('bluelm_v'); "
            "bluelm-hf loads BlueLM checkpoints only"
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{path} has no tokenizer: none of {', '.join(TOKENIZER_FILES)} is there. Save the processor beside "
            "the model (processor.save_pretrained(...) writes tokenizer.json)"
        )


def load(model: str | Path | None = None, dtype: torch.dtype | str | None = None, release_vision: bool = False):
    """Load `(model, processor)` from a path or Hub id; default: the bundled BlueLM-nano, offline.

    A directory written by `bluelm-hf export` loads as a `BlueLMVExportedForConditionalGeneration` (transformers'
    `generate` over ONNX Runtime or ExecuTorch), which `generate` / `evaluate_nano` / `bluelm-hf eval` / `chat`
    drive the same way as the PyTorch model. `release_vision` (exports only): free the vision encoder's session
    after each image is encoded (docs/export.md, "ViT freed after encoding").
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from . import NANO

    if model is not None and Path(model).expanduser().exists():
        path = Path(model).expanduser()
    else:
        path = str(model) if model is not None else None
    if isinstance(path, str) and _looks_local(path):
        raise FileNotFoundError(f"Model directory {path} does not exist (and it is not a Hub id `namespace/name`)")
    if path is None:
        if not (NANO / "config.json").exists():
            raise FileNotFoundError(
                f"BlueLM-nano is not bundled at {NANO}; pass a model path or Hub id, or train it with "
                "`python recipes/nano/prepare.py && python recipes/sft.py --config recipes/nano/sft.yaml`."
            )
        path = NANO
    if isinstance(path, Path):
        from .export import MANIFEST_FILE, BlueLMVExportedForConditionalGeneration

        if (path / MANIFEST_FILE).is_file():
            exported = BlueLMVExportedForConditionalGeneration.from_pretrained(path, release_vision=release_vision)
            return exported, AutoProcessor.from_pretrained(path)
    if release_vision:
        raise ValueError(
            f"release_vision applies to exports (a directory written by `bluelm-hf export`); {path} is not one"
        )
    if isinstance(path, Path):
        if not path.is_dir():
            raise FileNotFoundError(f"Model directory {path} does not exist")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a saved model directory")
        _check_checkpoint_dir(path)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    loaded = AutoModelForImageTextToText.from_pretrained(path, **kwargs).eval()
    processor = AutoProcessor.from_pretrained(path)
    return loaded, processor


def user_message(question: str, num_images: int = 1) -> dict:
    """A user turn with `num_images` image blocks followed by the question."""
    return {"role": "user", "content": [{"type": "image"}] * num_images + [{"type": "text", "text": question}]}


def build_prompts(processor, conversations: list[list[dict]], thinking: bool) -> list[str]:
    return [
        processor.apply_chat_template(conv, add_generation_prompt=True, enable_thinking=thinking)
        for conv in conversations
    ]


@torch.inference_mode()
def generate(
    model,
    processor,
    questions: list[str],
    images: list[Image.Image | None],
    *,
    thinking: bool = True,
    thinking_budget: int | list[int] | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    streamer=None,
    **generate_kwargs,
) -> list[dict]:
    """Answer one question per image (None for text-only) in one left-padded batch.

    Returns one dict per row: `reasoning_content`, `content` (see `thinking.parse_response`),
    `text` (the raw completion) and `num_thinking_tokens` (tokens strictly between <think> and </think>).
    """
    if len(questions) != len(images):
        raise ValueError(f"Got {len(questions)} questions but {len(images)} images")
    conversations = [[user_message(q, 0 if img is None else 1)] for q, img in zip(questions, images)]
    prompts = build_prompts(processor, conversations, thinking)
    present = [img for img in images if img is not None]
    # Left padding for this call only: the caller's processor keeps its own `padding_side`.
    batch = processor(
        text=prompts, images=present or None, return_tensors="pt", padding=True, padding_side="left"
    ).to(model.device)
    generate_kwargs.setdefault("do_sample", False)
    out = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        thinking_budget=thinking_budget,
        streamer=streamer,
        **generate_kwargs,
    )
    completions = out[:, batch["input_ids"].shape[1] :]
    return [_parse_completion(processor, row, model.config) for row in completions]


def stream_chat(
    model,
    processor,
    conversation: list[dict],
    images: list[Image.Image],
    *,
    thinking: bool = True,
    thinking_budget: int | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    **generate_kwargs,
):
    """Generate the next assistant turn of `conversation`, yielding `ThinkingChunk(kind, text)` as it streams.

    `kind` is "reasoning" or "answer"; `images` are the conversation's images in placeholder order.
    """
    from threading import Thread

    from .thinking import ThinkingStreamer

    prompt = build_prompts(processor, [conversation], thinking)[0]
    batch = processor(text=[prompt], images=images or None, return_tensors="pt").to(model.device)
    streamer = ThinkingStreamer(processor.tokenizer, timeout=600)
    generate_kwargs.setdefault("do_sample", False)
    kwargs = dict(
        **batch, max_new_tokens=max_new_tokens, thinking_budget=thinking_budget, streamer=streamer, **generate_kwargs
    )
    errors = []

    def run():
        try:
            with torch.inference_mode():
                model.generate(**kwargs)
        except BaseException as exc:  # surfaced to the caller below, never swallowed
            errors.append(exc)
            streamer.end()

    thread = Thread(target=run, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if errors:
        raise errors[0]


def _parse_completion(processor, ids: torch.Tensor, config) -> dict:
    from .thinking import parse_response

    tokenizer = processor.tokenizer
    ids = ids.tolist()
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        ids = [i for i in ids if i != tokenizer.pad_token_id]
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    num_thinking = 0
    if config.think_start_token_id in ids:
        start = ids.index(config.think_start_token_id) + 1
        end = ids.index(config.think_end_token_id, start) if config.think_end_token_id in ids[start:] else len(ids)
        num_thinking = end - start
    text = tokenizer.decode(ids, skip_special_tokens=False)
    return {**parse_response(text, eos_token=tokenizer.eos_token), "text": text, "num_thinking_tokens": num_thinking}


__all__ = ["generate", "load", "stream_chat", "user_message"]
