"""Users' datasets for the recipes: loading, mixing, validation and thinking-mode rows, in TRL's conversational
VLM format.

Every loader ends in the same shape: a `datasets.Dataset` whose `messages` column is a list of turns
`{"role", "content": [{"type", "text"}, ...], "reasoning_content"}` and whose `images` column is a list of images
(empty for text-only rows), so text and image rows of several sources mix in one dataset and one batch.

Sources (`load_conversations`):

- a `save_to_disk` folder (a `Dataset` or a `DatasetDict`, whose `split` is taken);
- a JSON, JSONL, Parquet or CSV file; image paths in its `images` (or `image`) column are relative to the file.
  In CSV, `messages` is a JSON string and `images` a JSON list or one path;
- an image folder with `metadata.jsonl` / `metadata.csv` / `metadata.parquet` (the `datasets` imagefolder
  layout: a `file_name` column and the row's `messages`);
- anything else `datasets.load_dataset` takes (a Hub id, with `name` as its config).

Thinking-mode fusion comes from the data: an assistant turn with a `reasoning_content`, or whose text starts with
`<think>...</think>`, trains thinking mode (the chat template renders `[|BlueThink|]<think>...</think>`); a turn
without one trains non-thinking mode. `repeat_long_cot` repeats long chain-of-thought rows (the paper trains
normal CoT 3 epochs and long CoT 9: `num_train_epochs=3` and `long_cot_repeat=3`).

Bad rows raise `DatasetFormatError` naming the source, the row and what is wrong, before any training starts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .configuration_bluelm_v import IMAGE_TOKEN, THINK_END_TOKEN, THINK_START_TOKEN

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
ROLES = ("system", "user", "assistant")


class DatasetFormatError(ValueError):
    """A dataset that the recipes cannot train on; the message names the source, the row and the problem."""


def message_features():
    """The Arrow schema of a `messages` column (one schema per column, so every turn has the same keys)."""
    from datasets import List, Value

    return List(
        {
            "role": Value("string"),
            "content": List({"type": Value("string"), "text": Value("string")}),
            "reasoning_content": Value("string"),
        }
    )


# ------------------------------------------------------------------------------------------------ loading
def load_conversations(
    path: str, name: str | None = None, split: str = "train", columns: Sequence[str] | None = None, **load_kwargs
):
    """One source as a `Dataset` with `messages` and `images` columns, validated (see the module docstring).

    `columns` (a mixture entry's `columns:`, as in TRL's `get_dataset`) keeps only those columns of the source before
    anything else, e.g. `[messages, images]` to drop columns that other sources of a mixture lack. `load_kwargs`
    (e.g. `data_files`, `data_dir` of a mixture entry) go to `datasets.load_dataset` for a Hub id or a folder of data
    files; a local file or image folder is loaded whole."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    local = Path(path)
    base_dir = None
    if local.is_dir() and ((local / "state.json").exists() or (local / "dataset_dict.json").exists()):
        dataset = load_from_disk(str(local))
        if isinstance(dataset, DatasetDict):
            dataset = _split(dataset, split, path)
    elif local.is_file():
        builder = FILE_BUILDERS.get(local.suffix.lower())
        if builder is None:
            raise DatasetFormatError(
                f"{path}: unknown file type {local.suffix!r}; use one of {sorted(FILE_BUILDERS)}, "
                "a save_to_disk folder or an image folder with metadata"
            )
        try:
            dataset = load_dataset(builder, data_files=str(local), split="train")
        except (StopIteration, ValueError) as error:  # what `datasets` raises for a file without rows
            if isinstance(error, ValueError) and "corresponds to no data" not in str(error):
                raise
            raise DatasetFormatError(f"{path}: the file has no rows") from None
        base_dir = local.resolve().parent
    elif local.is_dir() and any((local / m).exists() for m in METADATA_FILES):
        dataset = load_dataset("imagefolder", data_dir=str(local), split="train")
    elif local.is_dir() and not any(local.iterdir()):
        raise DatasetFormatError(f"{path}: the folder is empty")
    else:
        dataset = load_dataset(path, name=name, **load_kwargs)
        if isinstance(dataset, DatasetDict):
            dataset = _split(dataset, split, path)
    if not isinstance(dataset, Dataset):
        raise DatasetFormatError(f"{path}: streaming datasets are not supported by the BlueLM recipes yet")
    if columns is not None:
        missing = [c for c in columns if c not in dataset.column_names]
        if missing:
            raise DatasetFormatError(f"{path}: `columns` names {missing}, which it lacks; it has {dataset.column_names}")
        dataset = dataset.select_columns(list(columns))
    return to_conversations(dataset, source=str(path), base_dir=base_dir)


def _split(dataset_dict, split: str, path: str):
    if split not in dataset_dict:
        raise DatasetFormatError(f"{path}: no split {split!r}; it has {sorted(dataset_dict)}")
    return dataset_dict[split]


def mix(datasets: Sequence, probabilities: Sequence[float] | None = None, seed: int = 0):
    """Interleaves `datasets` (`datasets.interleave_datasets`), drawing from each with `probabilities` (normalised;
    e.g. 0.6 image rows / 0.4 text rows, the paper's joint stage) until the first runs out, so no row repeats."""
    from datasets import interleave_datasets

    if len(datasets) == 1:
        return datasets[0]
    if probabilities is not None:
        if len(probabilities) != len(datasets) or any(p is None or not p >= 0 for p in probabilities):
            raise DatasetFormatError(
                f"a mixture needs one probability >= 0 per dataset: got {list(probabilities)} for {len(datasets)}"
            )
        total = float(sum(probabilities))
        if not total > 0:
            raise DatasetFormatError(f"mixture probabilities sum to {total}; at least one must be > 0")
        probabilities = [p / total for p in probabilities]
    return interleave_datasets(
        list(datasets), probabilities=probabilities, seed=seed, stopping_strategy="first_exhausted"
    )


def load_training_data(script_args, dataset_args=None, seed: int = 0):
    """The (train, eval or None) datasets of a recipe, from TRL's `ScriptArguments` (`--dataset_name`,
    `--dataset_config`, `--dataset_train_split`, `--dataset_test_split`) or its `DatasetMixtureConfig` (a
    `datasets:` list in the YAML, each entry's `fraction` its probability in the mixture)."""
    entries = list(getattr(dataset_args, "datasets", None) or [])
    if entries:
        parts = [
            load_conversations(
                e.path, e.name, e.split, e.columns, **({"data_files": e.data_files} if e.data_files else {}),
                **({"data_dir": e.data_dir} if e.data_dir else {}),
            )
            for e in entries
        ]
        fractions = [e.fraction for e in entries]
        if any(f is not None for f in fractions) and any(f is None for f in fractions):
            raise DatasetFormatError("`fraction` must be set for every dataset of the mixture or for none")
        train = mix(parts, None if fractions[0] is None else fractions, seed=seed)
        return train, None
    if not script_args.dataset_name:
        raise DatasetFormatError(
            "no training data: pass --dataset_name (a save_to_disk folder, a JSON/JSONL/Parquet/CSV file, an image "
            "folder with metadata, or a Hub id), or a `datasets:` list in the YAML config"
        )
    name, config = script_args.dataset_name, script_args.dataset_config
    train = load_conversations(name, config, script_args.dataset_train_split)
    test = None
    test_split = script_args.dataset_test_split
    local = Path(name)
    # Local files, image folders and a saved `Dataset` are one split; a saved `DatasetDict` or a Hub id may have more.
    has_splits = (local / "dataset_dict.json").exists() if local.exists() else True
    if test_split and has_splits:
        try:
            test = load_conversations(name, config, test_split)
        except (DatasetFormatError, ValueError) as error:
            if f"split {test_split!r}" not in str(error) and "Unknown split" not in str(error):
                raise
    return train, test


# ------------------------------------------------------------------------------------------------ rows
def to_conversations(dataset, source: str = "dataset", base_dir: Path | None = None, check_files: bool = True):
    """`dataset` with `messages` normalised and `images` (list of images, `[]` for text rows) added or resolved.

    String contents become text blocks, with one image block per image in front of the first user turn (as
    TRL's `prepare_multimodal_messages` does), or, where they mark places with `<image>` (LLaVA-style), one image
    block at each place; an assistant text `<think>R</think>A` becomes
    `reasoning_content=R, content=A`. Relative image paths are resolved against `base_dir` (the data file's
    folder). Raises `DatasetFormatError` naming the row for every problem listed in the module docstring.
    """
    from datasets import Image as ImageFeature
    from datasets import List

    columns = dataset.column_names
    if len(dataset) == 0:
        raise DatasetFormatError(f"{source}: the dataset has no rows")
    if "messages" not in columns:
        hint = " (a GRPO prompt dataset: use recipes/grpo.py)" if "prompt" in columns else ""
        raise DatasetFormatError(
            f"{source}: no `messages` column{hint}; it has {columns}. Rows must be TRL's conversational format: "
            '`messages` = [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}], plus `images`'
        )
    if "image" in columns and "images" not in columns:
        dataset = dataset.cast_column("image", ImageFeature(decode=False)) if _is_image(dataset, "image") else dataset
        dataset = dataset.map(lambda row: {"images": [row["image"]] if row["image"] is not None else []},
                              remove_columns=["image"])  # fmt: skip
        columns = dataset.column_names
    images = dataset.cast_column("images", List(ImageFeature(decode=False))) if _is_image(dataset, "images") else None
    raw_images = (images if images is not None else dataset)["images"] if "images" in columns else None

    new_messages, new_images = [], []
    changed = dataset.features["messages"] != message_features()
    for i, messages in enumerate(dataset["messages"]):
        where = f"{source}, row {i}"
        row_images = _row_images(raw_images[i] if raw_images is not None else None, where, base_dir, check_files)
        turns, row_changed = normalise_messages(messages, len(row_images), where, has_images_column=raw_images is not None)
        changed |= row_changed
        new_messages.append(turns)
        new_images.append(row_images)

    if "images" not in columns or images is None or changed or base_dir is not None:
        from datasets import Dataset, Features, concatenate_datasets

        features = Features({"messages": message_features(), "images": List(ImageFeature())})
        rebuilt = Dataset.from_dict({"messages": new_messages, "images": new_images}, features=features)
        others = [c for c in columns if c not in ("messages", "images")]
        dataset = concatenate_datasets([rebuilt, dataset.select_columns(others)], axis=1) if others else rebuilt
    return dataset


def _is_image(dataset, column: str) -> bool:
    from datasets import Image as ImageFeature

    feature = dataset.features.get(column)
    inner = getattr(feature, "feature", feature)
    return isinstance(inner, ImageFeature)


def _row_images(value: Any, where: str, base_dir: Path | None, check_files: bool) -> list:
    """A row's images as `datasets` Image values (`{"bytes", "path"}`), paths resolved and checked."""
    if value is None:
        return []
    if isinstance(value, str):  # CSV: a JSON list, or one path
        value = json.loads(value) if value.strip().startswith("[") else ([value] if value.strip() else [])
    if isinstance(value, dict):
        value = [value]
    out = []
    for k, image in enumerate(value):
        if isinstance(image, str):
            image = {"bytes": None, "path": image}
        if not isinstance(image, dict):
            raise DatasetFormatError(f"{where}: image {k} is a {type(image).__name__}; expected a path or an image")
        if image.get("bytes") is None:
            path = image.get("path")
            if not path:
                raise DatasetFormatError(f"{where}: image {k} has neither bytes nor a path")
            resolved = Path(path) if base_dir is None or Path(path).is_absolute() else base_dir / path
            if check_files and not resolved.is_file():
                relative = f" (relative to {base_dir})" if base_dir is not None and not Path(path).is_absolute() else ""
                raise DatasetFormatError(f"{where}: image {k} {path!r} does not exist{relative}")
            image = {"bytes": None, "path": str(resolved)}
        out.append(image)
    return out


def normalise_messages(
    messages: Any, num_images: int, where: str = "row", has_images_column: bool = True
) -> tuple[list[dict], bool]:
    """(turns in the `message_features` schema, whether anything changed); `DatasetFormatError` on a bad row."""
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as error:
            raise DatasetFormatError(f"{where}: `messages` is a string that is not JSON ({error})") from None
    if not messages:
        raise DatasetFormatError(f"{where}: the conversation is empty (no messages)")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise DatasetFormatError(f"{where}: `messages` must be a list of {{'role', 'content'}} turns")
    changed = False
    string_contents = all(isinstance(m.get("content"), str) for m in messages)
    # LLaVA-style rows mark where each image goes with `<image>` in string contents: those places are kept. Without
    # any, the images go in front of the first user turn, as TRL's `prepare_multimodal_messages` puts them.
    placeholders = string_contents and any(IMAGE_TOKEN in m["content"] for m in messages)
    images_placed = False
    turns = []
    for t, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLES:
            raise DatasetFormatError(f"{where}, turn {t}: role {role!r}; expected one of {ROLES}")
        content = message.get("content")
        if isinstance(content, str):
            changed = True
            if placeholders:
                blocks = _placeholder_blocks(content)
            else:
                blocks = [{"type": "text", "text": content}]
                if role == "user" and string_contents and not images_placed:
                    blocks = [{"type": "image", "text": None}] * num_images + blocks
                    images_placed = True
        elif isinstance(content, list):
            blocks = []
            for block in content:
                kind = block.get("type") if isinstance(block, dict) else None
                if kind not in ("text", "image"):
                    raise DatasetFormatError(f"{where}, turn {t}: content block {block!r}; expected type text or image")
                blocks.append({"type": kind, "text": block.get("text") if kind == "text" else None})
                changed |= set(block) != {"type", "text"}
        elif content is None:
            changed = True
            blocks = []
        else:
            raise DatasetFormatError(f"{where}, turn {t}: content is a {type(content).__name__}; expected str or list")
        reasoning = message.get("reasoning_content") or None
        changed |= set(message) != {"role", "content", "reasoning_content"}
        if role == "assistant":
            blocks, reasoning, split_think = _split_think(blocks, reasoning, f"{where}, turn {t}")
            changed |= split_think
        turns.append({"role": role, "content": blocks, "reasoning_content": reasoning})
    if not any(turn["role"] == "assistant" for turn in turns):
        raise DatasetFormatError(f"{where}: the conversation has no assistant turn to train on")
    if all(not b.get("text") and b["type"] == "text" for turn in turns for b in turn["content"]) and not num_images:
        raise DatasetFormatError(f"{where}: the conversation is empty (every turn has empty text)")
    blocks = sum(b["type"] == "image" for turn in turns for b in turn["content"])
    if blocks and not has_images_column:
        raise DatasetFormatError(f"{where}: {blocks} image block(s) but the dataset has no `images` column")
    if blocks > num_images:
        raise DatasetFormatError(f"{where}: {blocks} image block(s) in the messages but {num_images} image(s) in `images`")
    if blocks < num_images:
        raise DatasetFormatError(
            f"{where}: {num_images} image(s) in `images` but only {blocks} image block(s) in the messages"
        )
    return turns, changed


def _placeholder_blocks(text: str) -> list[dict]:
    """`"<image>\\nWhat is it?"` as an image block and the text around it (empty texts dropped)."""
    blocks = []
    for k, part in enumerate(text.split(IMAGE_TOKEN)):
        if k:
            blocks.append({"type": "image", "text": None})
        if part:
            blocks.append({"type": "text", "text": part})
    return blocks


def _split_think(blocks: list[dict], reasoning: str | None, where: str) -> tuple[list[dict], str | None, bool]:
    """An assistant turn's `<think>R</think>A` text prefix moved to `reasoning_content`; unclosed tags refused."""
    texts = [b["text"] or "" for b in blocks if b["type"] == "text"]
    text = "".join(texts)
    opened, closed = text.count(THINK_START_TOKEN), text.count(THINK_END_TOKEN)
    if opened != closed or opened > 1:
        raise DatasetFormatError(
            f"{where}: assistant text has {opened} {THINK_START_TOKEN} and {closed} {THINK_END_TOKEN}; a thinking "
            f"turn is one {THINK_START_TOKEN}reasoning{THINK_END_TOKEN} prefix (or put the reasoning in "
            f"`reasoning_content`): {text[:80]!r}"
        )
    if not opened:
        return blocks, reasoning, False
    stripped = text.lstrip()
    if not stripped.startswith(THINK_START_TOKEN):
        raise DatasetFormatError(f"{where}: {THINK_START_TOKEN} must open the assistant text, got {text[:80]!r}")
    if reasoning:
        raise DatasetFormatError(f"{where}: the turn has both `reasoning_content` and a {THINK_START_TOKEN} block")
    inner, _, answer = stripped[len(THINK_START_TOKEN) :].partition(THINK_END_TOKEN)
    return [{"type": "text", "text": answer.lstrip("\n")}], inner.strip() or None, True


# ------------------------------------------------------------------------------------------- thinking mode
def is_thinking_row(messages: list[dict]) -> bool:
    """Whether the row trains thinking mode: its last assistant turn has a `reasoning_content`."""
    assistant = [m for m in messages if m["role"] == "assistant"]
    return bool(assistant and assistant[-1].get("reasoning_content"))


def reasoning_lengths(dataset, tokenizer) -> list[int]:
    """Tokens of reasoning (over every assistant turn) per row; 0 for non-thinking rows."""
    return [
        sum(len(tokenizer(m["reasoning_content"], add_special_tokens=False)["input_ids"])
            for m in messages if m["role"] == "assistant" and m.get("reasoning_content"))
        for messages in dataset["messages"]
    ]  # fmt: skip


def repeat_long_cot(dataset, tokenizer, min_tokens: int, repeat: int):
    """`dataset` with every row whose reasoning has >= `min_tokens` tokens present `repeat` times (the copies
    follow the original rows; the trainer's sampler shuffles). `repeat=1` returns `dataset` unchanged."""
    if not isinstance(repeat, int) or repeat < 1:
        raise DatasetFormatError(f"long_cot_repeat must be an int >= 1, got {repeat!r}")
    if repeat == 1:
        return dataset
    if not (isinstance(min_tokens, int) and min_tokens > 0):
        raise DatasetFormatError(f"long_cot_min_tokens must be an int > 0 with long_cot_repeat > 1, got {min_tokens!r}")
    long_rows = [i for i, n in enumerate(reasoning_lengths(dataset, tokenizer)) if n >= min_tokens]
    indices = list(range(len(dataset))) + long_rows * (repeat - 1)
    return dataset.select(indices)


# --------------------------------------------------------------------------------------------------- GRPO
def to_prompts(dataset, source: str = "dataset", completions: bool = False):
    """A GRPO prompt dataset: `prompt` (the turns before the last assistant turn), `images`, `answer` (the last
    assistant turn's text, unless the dataset has an `answer` column) and `thinking` (whether that turn thinks).
    With `completions`, also `completion`: that last assistant turn, whole (TRL's conversational prompt-completion
    format; `bluelm_hf.distillation` distils on it).

    Takes a conversations dataset (from `load_conversations`) or one that already has a `prompt` column."""
    if "prompt" in dataset.column_names:
        needed = ("answer", "completion") if completions else ("answer",)
        missing = [c for c in needed if c not in dataset.column_names]
        if missing:
            raise DatasetFormatError(f"{source}: a prompt dataset needs the column(s) {missing} here")
        return dataset
    prompts, answers, thinking, last_turns = [], [], [], []
    for i, messages in enumerate(dataset["messages"]):
        last = max(k for k, m in enumerate(messages) if m["role"] == "assistant")
        if last == 0:
            raise DatasetFormatError(f"{source}, row {i}: no user turn before the assistant turn to prompt with")
        prompts.append(messages[:last])
        answers.append("".join(b["text"] or "" for b in messages[last]["content"] if b["type"] == "text").strip())
        thinking.append(bool(messages[last].get("reasoning_content")))
        last_turns.append(messages[last : last + 1])
    replaced = ("messages", "thinking", "prompt", "completion") if completions else ("messages", "thinking", "prompt")
    keep = [c for c in dataset.column_names if c not in replaced]
    dataset = dataset.select_columns(keep)
    dataset = dataset.add_column("prompt", prompts, feature=message_features())
    if completions:
        dataset = dataset.add_column("completion", last_turns, feature=message_features())
    if "answer" not in keep:
        dataset = dataset.add_column("answer", answers)
    return dataset.add_column("thinking", thinking)


__all__ = [
    "DatasetFormatError",
    "is_thinking_row",
    "load_conversations",
    "load_training_data",
    "message_features",
    "mix",
    "normalise_messages",
    "reasoning_lengths",
    "repeat_long_cot",
    "to_conversations",
    "to_prompts",
]
