"""Users' datasets through the recipes: every input format trains, text and image rows share a batch, thinking-mode
fusion comes from the data, and bad rows get an error naming the row."""

import copy
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import random_image

from bluelm_hf.data import DatasetFormatError, load_conversations, mix, repeat_long_cot, to_prompts

ROOT = Path(__file__).resolve().parents[1]

# A user's conversations: image rows (string contents, block contents, a <think> prefix, reasoning_content) and
# text-only rows.
ROWS = [
    {"messages": [{"role": "user", "content": "What colour is it?"},
                  {"role": "assistant", "content": "<think>the square is red</think>Red."}], "images": ["img/0.png"]},
    {"messages": [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello."}], "images": []},
    {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "2"}], "reasoning_content": "one two"}],
     "images": ["img/1.png"]},
    {"messages": [{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "1 2 3"}],
     "images": []},
]  # fmt: skip


def write_images(folder: Path, n: int = 2) -> None:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        random_image(60 + 20 * i, 50, seed=i).save(folder / "img" / f"{i}.png")


def write_jsonl(path: Path, rows=ROWS) -> Path:
    write_images(path.parent)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_format(kind: str, folder: Path) -> Path:
    """ROWS in one of the accepted input formats, written by the test; returns what --dataset_name gets."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        return write_jsonl(folder / "data.jsonl")
    write_images(folder)
    if kind == "json":
        (folder / "data.json").write_text(json.dumps(ROWS))
        return folder / "data.json"
    if kind == "parquet":
        pd.DataFrame({"messages": [json.dumps(r["messages"]) for r in ROWS],
                      "images": [r["images"] for r in ROWS]}).to_parquet(folder / "data.parquet")  # fmt: skip
        return folder / "data.parquet"
    if kind == "csv":
        pd.DataFrame({"messages": [json.dumps(r["messages"]) for r in ROWS],
                      "images": [json.dumps(r["images"]) for r in ROWS]}).to_csv(folder / "data.csv", index=False)  # fmt: skip
        return folder / "data.csv"
    if kind == "save_to_disk":
        dataset = load_conversations(str(write_jsonl(folder / "src" / "data.jsonl")))
        dataset.save_to_disk(str(folder / "disk"))
        return folder / "disk"
    if kind == "imagefolder":
        rows = [{"file_name": f"img/{i}.png", "messages": ROWS[2 * i]["messages"]} for i in range(2)]
        for row in rows:  # one image per row, placed by the loader
            row["messages"] = [{**m, "content": m["content"]} for m in row["messages"]]
        rows[1]["messages"] = [{"role": "user", "content": "How many?"},
                               {"role": "assistant", "content": "2", "reasoning_content": "one two"}]  # fmt: skip
        (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return folder
    raise AssertionError(kind)


# ------------------------------------------------------------------------------------------------ recipes
def load_recipe(name: str):
    """recipes/<name>.py as a module (it pins CPU kernels through os.environ; restored so other tests do not see it)."""
    saved = dict(os.environ)
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    os.environ.clear()
    os.environ.update(saved)
    return module


@pytest.fixture(scope="module")
def sft_recipe():
    return load_recipe("sft")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_model, tiny_processor):
    """The conftest tiny BlueLM saved as a checkpoint for --model_name_or_path."""
    path = tmp_path_factory.mktemp("tiny-bluelm")
    tiny_model.save_pretrained(path)
    copy.deepcopy(tiny_processor).save_pretrained(path)
    return path


def recipe_args(out: Path, *extra: str) -> list[str]:
    return [
        "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2", "--learning_rate", "1e-3",
        "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true",
        "--assistant_only_loss", "true", "--activation_checkpointing", "false", "--dataloader_num_workers", "0",
        "--disable_tqdm", "true", "--bf16", "false", *extra,
    ]  # fmt: skip


def run_sft(recipe, args: list[str]):
    from trl import DatasetMixtureConfig, ModelConfig, SFTConfig, TrlParser

    parsed = TrlParser((recipe.BlueLMSFTArguments, SFTConfig, ModelConfig, DatasetMixtureConfig)).parse_args_and_config(
        args
    )
    recipe.main(*parsed)
    return parsed


def trained(out: Path, start: Path) -> bool:
    from safetensors.torch import load_file

    before, after = load_file(start / "model.safetensors"), load_file(out / "model.safetensors")
    return any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv", "save_to_disk", "imagefolder"])
def test_each_input_format_trains_two_steps(tmp_path, kind, sft_recipe, tiny_checkpoint):
    source = write_format(kind, tmp_path / "data")
    out = tmp_path / "out"
    run_sft(sft_recipe, recipe_args(out, "--model_name_or_path", str(tiny_checkpoint), "--dataset_name", str(source)))
    assert trained(out, tiny_checkpoint)


def test_a_mixture_interleaves_with_the_given_probabilities(tmp_path, sft_recipe, tiny_checkpoint):
    images = write_jsonl(tmp_path / "images" / "data.jsonl", [ROWS[0], ROWS[2]] * 30)
    texts = write_jsonl(tmp_path / "texts" / "data.jsonl", [ROWS[1], ROWS[3]] * 30)
    mixed = mix([load_conversations(str(images)), load_conversations(str(texts))], [0.6, 0.4], seed=0)
    share = sum(bool(row) for row in mixed["images"]) / len(mixed)
    assert 0.45 < share < 0.75, share  # 6:4 image:text, drawn at random
    assert 0 < sum(not row for row in mixed["images"])

    config = tmp_path / "mix.yaml"
    config.write_text(
        f"datasets:\n  - path: {images}\n    fraction: 0.6\n  - path: {texts}\n    fraction: 0.4\n"
    )
    out = tmp_path / "out"
    run_sft(sft_recipe, ["--config", str(config), *recipe_args(out, "--model_name_or_path", str(tiny_checkpoint))])
    assert trained(out, tiny_checkpoint)


def test_a_mixture_entry_keeps_its_columns(tmp_path):
    """A mixture entry's `columns:` (TRL's DatasetConfig) selects the source's columns first: two sources with other
    extra columns mix to `messages` + `images` only; a column the source lacks is named in the error."""
    from trl import DatasetMixtureConfig, ScriptArguments, TrlParser

    from bluelm_hf.data import load_training_data

    images = write_jsonl(tmp_path / "images" / "data.jsonl", [{**r, "id": i} for i, r in enumerate([ROWS[0], ROWS[2]] * 4)])
    texts = write_jsonl(tmp_path / "texts" / "data.jsonl", [{**r, "lang": "en"} for r in [ROWS[1], ROWS[3]] * 4])

    def load(columns: str):
        config = tmp_path / "mix.yaml"
        config.write_text(f"datasets:\n  - path: {images}\n{columns}  - path: {texts}\n{columns}")
        script_args, mixture = TrlParser((ScriptArguments, DatasetMixtureConfig)).parse_args_and_config(
            ["--config", str(config)]
        )
        return load_training_data(script_args, mixture)[0]

    train = load("    columns: [messages, images]\n")
    assert train.column_names == ["messages", "images"] and len(train) == 16
    assert set(load("").column_names) == {"messages", "images", "id", "lang"}  # interleaving fills in None
    with pytest.raises(DatasetFormatError, match=r"images.data.jsonl: `columns` names \['answer'\], which it lacks"):
        load("    columns: [messages, answer]\n")


def test_text_and_image_rows_share_one_batch(tmp_path, tiny_model, tiny_processor):
    """TRL's vision collator on [image row, text row]: one padded batch with pixel values for the image row only,
    labels on the assistant tokens only, and a finite loss from the model."""
    from trl import SFTConfig, SFTTrainer

    dataset = load_conversations(str(write_jsonl(tmp_path / "data.jsonl")))
    args = SFTConfig(output_dir=str(tmp_path / "o"), assistant_only_loss=True, report_to="none", use_cpu=True,
                     activation_checkpointing=False)  # fmt: skip
    trainer = SFTTrainer(model=copy.deepcopy(tiny_model), args=args, train_dataset=dataset,
                         processing_class=copy.deepcopy(tiny_processor))  # fmt: skip
    rows = [dict(dataset[0]), dict(dataset[1])]
    batch = trainer.data_collator(rows)
    tokenizer = tiny_processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids(tiny_processor.image_token)
    assert (batch["input_ids"][0] == image_id).any() and not (batch["input_ids"][1] == image_id).any()
    assert batch["pixel_values"].shape[0] >= 2  # the image row's tiles (+ thumbnail); none for the text row
    for i, answer in enumerate(("Red.", "Hello.")):
        labelled = tokenizer.decode(batch["input_ids"][i][batch["labels"][i] != -100])
        assert answer in labelled and "[|Human|]" not in labelled, labelled
    assert "the square is red" in tokenizer.decode(batch["input_ids"][0][batch["labels"][0] != -100])
    model_inputs = {k: v for k, v in batch.items() if k != "labels"}
    loss = trainer.model(**model_inputs, labels=batch["labels"]).loss
    assert torch.isfinite(loss)


# -------------------------------------------------------------------------------------- thinking-mode fusion
def test_think_prefix_and_reasoning_content_train_thinking_mode(tmp_path, tiny_processor):
    dataset = load_conversations(str(write_jsonl(tmp_path / "data.jsonl")))
    assistant = [row["messages"][-1] for row in dataset]
    assert [a["reasoning_content"] for a in assistant] == ["the square is red", None, "one two", None]
    assert assistant[0]["content"] == [{"type": "text", "text": "Red."}]
    rendered = [tiny_processor.apply_chat_template(row["messages"], tokenize=False) for row in dataset]
    assert "[|BlueThink|]<think>the square is red</think>Red." in rendered[0]
    assert "<think>" not in rendered[1] and "[|BlueThink|]" not in rendered[1]


def test_long_cot_rows_repeat(tmp_path, tiny_processor):
    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning_content": r}]}
        for r in ("short", "a much longer chain of thought " * 5, None)
    ]
    path = tmp_path / "cot.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = load_conversations(str(path))
    repeated = repeat_long_cot(dataset, tiny_processor.tokenizer, min_tokens=10, repeat=3)
    reasoning = [row[-1]["reasoning_content"] for row in repeated["messages"]]
    assert len(repeated) == 5 and reasoning.count(rows[1]["messages"][1]["reasoning_content"]) == 3
    assert reasoning.count("short") == 1 and reasoning.count(None) == 1
    assert repeat_long_cot(dataset, tiny_processor.tokenizer, 10, 1) is dataset
    with pytest.raises(DatasetFormatError, match="long_cot_min_tokens must be an int > 0"):
        repeat_long_cot(dataset, tiny_processor.tokenizer, 0, 3)


def test_grpo_prompts_come_from_the_conversations(tmp_path):
    prompts = to_prompts(load_conversations(str(write_jsonl(tmp_path / "data.jsonl"))))
    assert prompts["answer"] == ["Red.", "Hello.", "2", "1 2 3"]
    assert prompts["thinking"] == [True, False, True, False]
    assert [turn["role"] for turn in prompts[0]["prompt"]] == ["user"]
    assert len(prompts[0]["images"]) == 1 and prompts[1]["images"] == []
    assert "completion" not in prompts.column_names
    with_completions = to_prompts(load_conversations(str(write_jsonl(tmp_path / "data.jsonl"))), completions=True)
    reasoning = [c[0]["reasoning_content"] for c in with_completions["completion"]]
    assert reasoning == ["the square is red", None, "one two", None]
    assert [c[0]["content"][0]["text"] for c in with_completions["completion"]] == ["Red.", "Hello.", "2", "1 2 3"]
    with pytest.raises(DatasetFormatError, match=r"needs the column\(s\) \['completion'\]"):
        to_prompts(prompts, completions=True)


def test_llava_style_image_placeholders_keep_their_places(tmp_path, tiny_processor):
    """String contents that mark images with `<image>` (LLaVA-style data) get an image block at each mark, so the
    rendered prompt is the one the data wrote; a literal `<image>` would be marked as user text and never see the
    image. Rows without marks keep TRL's placement (images in front of the first user turn)."""
    rows = [
        {"messages": [{"role": "user", "content": "Compare <image> and\n<image>, please."},
                      {"role": "assistant", "content": "Same."}], "images": ["img/0.png", "img/1.png"]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>\nWhat?"},
                      {"role": "assistant", "content": "A square."}], "images": ["img/0.png"]},
        ROWS[0],
    ]  # fmt: skip
    dataset = load_conversations(str(write_jsonl(tmp_path / "data.jsonl", rows)))
    user = [next(m for m in row["messages"] if m["role"] == "user")["content"] for row in dataset]
    assert [b["type"] for b in user[0]] == ["text", "image", "text", "image", "text"]
    assert [b["text"] for b in user[0] if b["type"] == "text"] == ["Compare ", " and\n", ", please."]
    assert [b["type"] for b in user[1]] == ["image", "text"] and user[1][1]["text"] == "\nWhat?"
    assert [b["type"] for b in user[2]] == ["image", "text"]  # no marks: TRL's placement
    rendered = tiny_processor.apply_chat_template(dataset[0]["messages"], tokenize=False)
    assert "[|Human|]:Compare <image> and\n<image>, please." in rendered, rendered
    inputs = tiny_processor(text=[rendered], images=dataset[0]["images"])
    image_processor = tiny_processor.image_processor
    per_image = [image_processor.get_number_of_image_tokens(i.height, i.width) for i in dataset[0]["images"]]
    assert inputs["input_ids"][0].count(tiny_processor.image_token_id) == sum(per_image)
    with pytest.raises(DatasetFormatError, match=r"row 0: 2 image block\(s\) in the messages but 1 image\(s\)"):
        load_conversations(str(write_jsonl(tmp_path / "bad.jsonl", [{**rows[0], "images": ["img/0.png"]}])))


@pytest.mark.parametrize("name, text", [("e.jsonl", ""), ("w.jsonl", "\n\n"), ("e.json", "[]"),
                                        ("e.csv", "messages,images\n")])  # fmt: skip
def test_a_file_without_rows_is_a_clear_error(tmp_path, name, text):
    """`datasets` raises a bare StopIteration (empty JSONL) or 'Instruction "train" corresponds to no data'."""
    (tmp_path / name).write_text(text)
    with pytest.raises(DatasetFormatError, match=rf"{name}: the file has no rows"):
        load_conversations(str(tmp_path / name))


# ------------------------------------------------------------------------------------------------ bad data
def _bad(tmp_path, rows):
    write_images(tmp_path)
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


USER_IMAGE = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}
ANSWER = {"role": "assistant", "content": "a"}


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"conversation": [ANSWER]}], r"no `messages` column; it has \['conversation'\]"),
        ([{"messages": ROWS[1]["messages"]}, {"messages": [USER_IMAGE, ANSWER]}],
         r"row 1: 1 image block\(s\) but the dataset has no `images` column"),
        ([ROWS[1], {"messages": [USER_IMAGE, ANSWER], "images": ["img/missing.png"]}],
         r"row 1: image 0 'img/missing.png' does not exist \(relative to .*\)"),
        ([ROWS[1], {"messages": [USER_IMAGE, {**USER_IMAGE, "role": "user"}, ANSWER], "images": ["img/0.png"]}],
         r"row 1: 2 image block\(s\) in the messages but 1 image\(s\) in `images`"),
        ([ROWS[1], {"messages": [], "images": []}], r"row 1: the conversation is empty"),
        ([ROWS[1], {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>hm a"}],
                    "images": []}], r"row 1, turn 1: assistant text has 1 <think> and 0 </think>"),
        ([{"messages": [{"role": "user", "content": "q"}], "images": []}], r"row 0: the conversation has no assistant"),
    ],
    ids=["no-messages", "no-images-column", "missing-image", "more-blocks-than-images", "empty", "unclosed-think",
         "no-assistant"],
)  # fmt: skip
def test_bad_data_names_the_row_and_the_problem(tmp_path, rows, message):
    with pytest.raises(DatasetFormatError, match=message):
        load_conversations(_bad(tmp_path, rows))


def test_the_recipe_reports_bad_data_before_training(tmp_path, sft_recipe, tiny_checkpoint):
    path = _bad(tmp_path, [ROWS[1], {"messages": [USER_IMAGE, ANSWER], "images": ["img/nope.png"]}])
    with pytest.raises(DatasetFormatError, match=r"bad.jsonl, row 1: image 0 'img/nope.png' does not exist"):
        run_sft(sft_recipe, recipe_args(tmp_path / "o", "--model_name_or_path", str(tiny_checkpoint),
                                        "--dataset_name", path))  # fmt: skip
    with pytest.raises(ValueError, match="--model_name_or_path is required"):
        run_sft(sft_recipe, recipe_args(tmp_path / "o", "--dataset_name", path))
    with pytest.raises(DatasetFormatError, match="no training data: pass --dataset_name"):
        run_sft(sft_recipe, recipe_args(tmp_path / "o", "--model_name_or_path", str(tiny_checkpoint)))


def test_train_and_test_splits(tmp_path):
    """--dataset_train_split / --dataset_test_split pick the splits of a saved DatasetDict; a file or a saved
    Dataset is one split (no test set, rather than the training rows again)."""
    from datasets import DatasetDict
    from trl import ScriptArguments

    from bluelm_hf.data import load_training_data

    rows = load_conversations(str(write_jsonl(tmp_path / "src" / "data.jsonl")))
    DatasetDict({"train": rows.select([0, 1, 2]), "test": rows.select([3])}).save_to_disk(str(tmp_path / "dict"))
    rows.save_to_disk(str(tmp_path / "one"))
    train, test = load_training_data(ScriptArguments(dataset_name=str(tmp_path / "dict")))
    assert (len(train), len(test)) == (3, 1)
    for single in (tmp_path / "one", tmp_path / "src" / "data.jsonl"):
        train, test = load_training_data(ScriptArguments(dataset_name=str(single)))
        assert len(train) == 4 and test is None
    with pytest.raises(DatasetFormatError, match=r"no split 'validation'; it has \['test', 'train'\]"):
        load_training_data(ScriptArguments(dataset_name=str(tmp_path / "dict"), dataset_train_split="validation"))
