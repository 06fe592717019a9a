"""The nano task (bluelm_hf.nano_task): generator, splits, answers; and the nano recipe's SFT rows and tokenizer
(recipes/nano/nano_data.py)."""

import re
from collections import Counter

import numpy as np
import pytest
from datasets import Image as ImageFeature
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import nano_data  # recipes/nano, on sys.path by conftest

from bluelm_hf import nano_task
from bluelm_hf.configuration_bluelm_v import SPECIAL_TOKENS
from bluelm_hf.nano_task import COLOURS, draw_sample

PALETTE = list(COLOURS)


def image_bytes(dataset) -> list[bytes]:
    return [row["bytes"] for row in dataset.cast_column("image", ImageFeature(decode=False))["image"]]


# ------------------------------------------------------------------------------------ generator
def test_same_seed_same_data_other_seed_other_data():
    a, b, c = (nano_task.make_dataset(12, seed=s) for s in (3, 3, 4))
    assert image_bytes(a) == image_bytes(b)
    texts = ("question", "thinking", "answer", "messages_think", "messages_no_think")
    assert all(a[col] == b[col] for col in texts)
    assert image_bytes(a) != image_bytes(c)
    assert [a["question"], a["thinking"]] != [c["question"], c["thinking"]]
    # Sample i does not depend on how many samples are drawn.
    assert image_bytes(nano_task.make_dataset(5, seed=3)) == image_bytes(a)[:5]


def test_train_and_eval_never_share_a_colour_sequence():
    train = [draw_sample(0, i, "train") for i in range(2000)]
    held_out = [draw_sample(nano_task.NANO_EVAL_SEED, i, "eval") for i in range(2000)]
    train_keys = {nano_task.content_key(s.colours) for s in train}
    eval_keys = {nano_task.content_key(s.colours) for s in held_out}
    assert train_keys.isdisjoint(eval_keys)
    assert {nano_task.split_of(s.colours) for s in train} == {"train"}
    assert {nano_task.split_of(s.colours) for s in held_out} == {"eval"}
    # Disjoint by construction, not because the eval split is tiny: it holds ~EVAL_PERCENT % of sequences.
    assert len(eval_keys) > 500
    # make_eval_set is the eval stream of NANO_EVAL_SEED.
    assert nano_task.make_eval_set(4)["colours"] == [list(s.colours) for s in held_out[:4]]
    for n in (0, -2, 2.0):  # datasets' own error was `Keys mismatch` between features and an empty table
        with pytest.raises(ValueError, match=rf"a nano eval set needs n >= 1 samples, got {n!r}"):
            nano_task.make_eval_set(n)
    with pytest.raises(ValueError, match="split"):
        draw_sample(0, 0, "test")


def test_sizes_aspect_ratios_and_questions_cover_the_design():
    samples = [draw_sample(1, i) for i in range(2000)]
    ratios = np.array([s.width / s.height for s in samples])
    assert ratios.min() >= 1 / 4 and ratios.max() <= 4
    assert ratios.min() < 0.3 and ratios.max() > 3.3  # both extremes, both orientations
    long_sides = np.array([max(s.width, s.height) for s in samples])
    assert long_sides.max() <= 4 * nano_task.TILE_SIZE and (long_sides > 3 * nano_task.TILE_SIZE).mean() > 0.2
    assert (long_sides % nano_task.TILE_SIZE != 0).mean() > 0.8  # jittered off the tile grid
    assert Counter(len(s.cells) for s in samples).keys() == set(range(2, 9))
    assert set(Counter(s.kind for s in samples)) == set(nano_task.QUESTION_KINDS)
    assert {s.answer for s in samples} >= {str(k) for k in range(9)} | set(PALETTE)


def recover_cells(image: Image.Image) -> list[str]:
    """Reads the cells back from pixels: runs of non-background along the long axis, nearest palette colour."""
    pixels = np.asarray(image).astype(int)
    flat = pixels.reshape(-1, 3)
    values, counts = np.unique(flat, axis=0, return_counts=True)
    background = values[counts.argmax()]
    foreground = np.abs(pixels - background).sum(-1) > 60
    horizontal = image.width >= image.height
    occupied = foreground.any(axis=0 if horizontal else 1)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], occupied.astype(int), [0]])))
    palette = np.array(list(COLOURS.values()))
    colours = []
    for start, stop in zip(edges[::2], edges[1::2]):
        band = pixels[:, start:stop] if horizontal else pixels[start:stop]
        mask = foreground[:, start:stop] if horizontal else foreground[start:stop]
        rgb = np.median(band[mask], axis=0)
        colours.append(PALETTE[int(np.abs(palette - rgb).sum(-1).argmin())])
    return colours


def answer_from_question(question: str, colours: list[str]) -> str:
    """An independent reading of the four question templates."""
    if m := re.fullmatch(r"How many (\w+) cells\?", question):
        return str(colours.count(m[1]))
    if m := re.fullmatch(r"How many cells are (\w+) or (\w+)\?", question):
        return str(colours.count(m[1]) + colours.count(m[2]))
    if question == "How many cells?":
        return str(len(colours))
    assert question == "Which colour is most common?"
    (top, n_top), *rest = Counter(colours).most_common()
    assert not rest or rest[0][1] < n_top, "a 'most' question needs a unique answer"
    return top


def test_answers_and_traces_match_the_rendered_pixels():
    dataset = nano_task.make_dataset(40, seed=5)
    for row in dataset:
        colours = recover_cells(row["image"])
        assert colours == row["colours"]
        assert row["answer"] == answer_from_question(row["question"], colours)
        words = row["thinking"].split()
        assert [w for w in words[:-2] if w in COLOURS] == colours
        assert words[-2:] == ["so", row["answer"]]


@settings(max_examples=200, deadline=None)
@given(
    colours=st.lists(st.sampled_from(PALETTE), min_size=2, max_size=8),
    kind=st.sampled_from(nano_task.QUESTION_KINDS),
    targets=st.lists(st.sampled_from(PALETTE), min_size=2, max_size=2, unique=True),
)
def test_traces_are_a_running_tally_that_ends_in_the_answer(colours, kind, targets):
    targets = tuple(targets[:1]) if kind == "count" else tuple(targets) if kind == "count_any" else ()
    if kind == "most" and nano_task.most_common(colours) is None:
        with pytest.raises(ValueError, match="tie"):
            nano_task.answer_for(colours, kind, targets)
        return
    answer = nano_task.answer_for(colours, kind, targets)
    assert answer == answer_from_question(nano_task.question_text(kind, targets), colours)
    words = nano_task.thinking_trace(colours, kind, targets).split()
    assert words[-2:] == ["so", answer]
    assert [w for w in words[:-2] if w in COLOURS] == colours
    tallies = [int(w) for w in words[:-2] if w.isdigit()]
    if kind == "most":
        assert max(tallies) == Counter(colours)[answer]
    else:
        assert tallies == list(range(1, int(answer) + 1))
    # The verbose style says the same at greater length.
    concise = words
    verbose = nano_task.thinking_trace(colours, kind, targets, style="verbose").split()
    # Every cell is announced as "cell <position>" before its colour; without those markers the verbose trace is
    # the concise one, word for word.
    positions = [i for i, w in enumerate(verbose) if w == "cell"]
    assert [verbose[i + 1] for i in positions] == [str(k) for k in range(1, len(colours) + 1)]
    assert [verbose[i + 2] for i in positions] == list(colours)
    dropped = {i for p in positions for i in (p, p + 1)}
    assert [w for i, w in enumerate(verbose) if i not in dropped] == concise
    assert len(verbose) == len(concise) + 2 * len(colours)
    with pytest.raises(ValueError, match="trace style"):
        nano_task.thinking_trace(colours, kind, targets, style="terse")


def test_sft_dataset_mixes_trace_styles_in_the_requested_ratio():
    dataset = nano_data.make_sft_dataset(40, seed=2, think_ratio=0.5, verbose_ratio=0.7)
    styles = dataset["trace_style"]
    assert [s is None for s in styles] == [not t for t in dataset["think"]]
    assert styles.count("verbose") == 14 and styles.count("concise") == 6
    for row in dataset:
        reasoning = row["messages"][1]["reasoning_content"]
        if row["trace_style"] is not None:
            assert (reasoning.split()[0] == "cell") == (row["trace_style"] == "verbose")
    # The default keeps every trace concise; ratios outside [0, 1] are refused.
    assert "verbose" not in nano_data.make_sft_dataset(8, seed=2)["trace_style"]
    with pytest.raises(ValueError, match="verbose_ratio"):
        nano_data.make_sft_dataset(4, verbose_ratio=-0.1)


def test_sft_dataset_is_the_same_rendered_in_several_processes():
    one = nano_data.make_sft_dataset(30, seed=3, verbose_ratio=0.5)
    for num_proc in (2, 7):
        assert nano_data.make_sft_dataset(30, seed=3, verbose_ratio=0.5, num_proc=num_proc).to_list() == one.to_list()
    assert len(nano_data.make_sft_dataset(2, num_proc=4)) == 2
    with pytest.raises(ValueError, match="num_proc must be >= 1, got 0"):
        nano_data.make_sft_dataset(4, num_proc=0)


def test_sft_dataset_mixes_modes_in_the_requested_ratio():
    dataset = nano_data.make_sft_dataset(40, seed=2, think_ratio=0.25)
    assert set(dataset.column_names) >= {"messages", "images"}
    assert sum(dataset["think"]) == 10
    for row in dataset:
        user, assistant = row["messages"]
        assert [block["type"] for block in user["content"]] == ["image", "text"]
        assert user["reasoning_content"] is None
        assert assistant["content"] == [{"type": "text", "text": row["answer"]}]
        assert bool(assistant["reasoning_content"]) == row["think"]
        assert len(row["images"]) == 1 and isinstance(row["images"][0], Image.Image)
    assert sum(nano_data.make_sft_dataset(6, think_ratio=0.0)["think"]) == 0
    assert sum(nano_data.make_sft_dataset(6, think_ratio=1.0)["think"]) == 6
    with pytest.raises(ValueError, match="think_ratio"):
        nano_data.make_sft_dataset(4, think_ratio=1.5)


def test_rows_render_through_the_chat_template(nano_tokenizer):
    from bluelm_hf.processing_bluelm_v import default_chat_template

    row = nano_task.make_dataset(1, seed=0)[0]
    render = lambda messages: nano_tokenizer.apply_chat_template(  # noqa: E731
        messages, tokenize=False, chat_template=default_chat_template()
    )
    prompt = f"[|Human|]:<image>{row['question']}[|AI|]:"
    assert render(row["messages_no_think"]) == f"{prompt}{row['answer']}</s>"
    assert render(row["messages_think"]) == f"{prompt}[|BlueThink|]<think>{row['thinking']}</think>{row['answer']}</s>"


def test_score_is_normalised_exact_match():
    assert nano_task.score(" 3.", "3") and nano_task.score("Red</s>", "red") and nano_task.score("red\n", "red")
    assert not nano_task.score("13", "3") and not nano_task.score("red blue", "red") and not nano_task.score("", "0")


def test_bundled_example_image_is_the_rendered_example():
    path = nano_task.EXAMPLE_IMAGE_PATH
    assert path.stat().st_size < 50_000
    with Image.open(path) as image:
        assert image.size == (448, 112)
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(nano_task.example_sample().render()))
        assert recover_cells(image) == list(nano_task.EXAMPLE_COLOURS)


# ------------------------------------------------------------------------------------ tokenizer
@pytest.fixture(scope="module")
def nano_tokenizer():
    return nano_data.train_tokenizer(nano_data.tokenizer_corpus(n=500, styles=nano_task.TRACE_STYLES))


def test_every_special_token_is_one_id(nano_tokenizer):
    reserved = ["<pad>", "</s>", *SPECIAL_TOKENS]
    for expected_id, token in enumerate(reserved):
        assert nano_tokenizer.encode(token, add_special_tokens=False) == [expected_id], token
    assert (nano_tokenizer.pad_token, nano_tokenizer.eos_token) == ("<pad>", "</s>")
    assert nano_tokenizer.image_token_id == nano_tokenizer.convert_tokens_to_ids("<image>")
    # The thinking markup is not "special": it survives skip_special_tokens (TRL decodes completions so).
    ids = nano_tokenizer.encode("[|AI|]:[|BlueThink|]<think>red 1 so 1</think>1</s>", add_special_tokens=False)
    assert nano_tokenizer.decode(ids, skip_special_tokens=True) == "[|BlueThink|]<think>red 1 so 1</think>1"


def test_tokenizer_round_trips_and_spends_one_token_per_word(nano_tokenizer, tmp_path):
    samples = [draw_sample(0, i) for i in range(200)]
    texts = [
        f"[|Human|]:<im_start><image><image><im_end>{s.question}"
        f"[|AI|]:[|BlueThink|]<think>{s.thinking}</think>{s.answer}</s>"
        for s in samples
    ]
    texts += ["How many purple cells?", "  two  spaces,\ttab\nnewline ", "héllo 世界 🙂", "a<think>b</think>c"]
    for text in texts:
        assert nano_tokenizer.decode(nano_tokenizer.encode(text, add_special_tokens=False)) == text
    # One token per word: a trace costs as many tokens as it has words, a question one more (the "?").
    for s in samples:
        for trace in (s.trace("concise"), s.trace("verbose")):
            assert len(nano_tokenizer.tokenize(trace)) == len(trace.split())
        assert len(nano_tokenizer.tokenize(s.question)) == len(s.question.split()) + 1
        assert len(nano_tokenizer.tokenize(s.answer)) == 1
    assert len(nano_tokenizer) < 400

    nano_tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    ids = nano_tokenizer.encode(texts[0], add_special_tokens=False)
    assert reloaded.encode(texts[0], add_special_tokens=False) == ids
    assert reloaded.decode(ids) == texts[0]


def test_tokenizer_corpus_holds_the_requested_trace_styles():
    concise = list(nano_data.tokenizer_corpus(n=20))
    both = list(nano_data.tokenizer_corpus(n=20, styles=("concise", "verbose")))
    assert not any(text.startswith("cell ") for text in concise)
    assert sum(text.startswith("cell ") for text in both) == 20
    assert [t for t in both if not t.startswith("cell ")] == concise
    with pytest.raises(ValueError, match="unknown trace style 'terse'"):
        list(nano_data.tokenizer_corpus(n=2, styles=("terse",)))


def test_the_nano_prepare_script_builds_the_shipped_tokenizer(tmp_path):
    """recipes/nano/prepare.py's defaults (concise traces, data seed 0, vocab 512) re-create the shipped tokenizer
    exactly: same BPE ids, so the same seeded init (BENCHMARKS.md: a different corpus gave a differently trained
    nano). Its init has the shipped nano's config."""
    import importlib.util
    import json
    from pathlib import Path

    from transformers import AutoTokenizer

    from bluelm_hf import NANO

    spec = importlib.util.spec_from_file_location("prepare", Path(__file__).parents[1] / "recipes/nano/prepare.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    args = prepare.build_parser().parse_args(["--output_dir", str(tmp_path), "--dataset_size", "4", "--grpo_size", "2"])
    prepare.main(args)
    shipped = AutoTokenizer.from_pretrained(NANO)
    rebuilt = AutoTokenizer.from_pretrained(tmp_path / "init")
    assert rebuilt.get_vocab() == shipped.get_vocab()
    assert rebuilt.backend_tokenizer.to_str() == shipped.backend_tokenizer.to_str()
    config = {k: v for k, v in json.loads((tmp_path / "init/config.json").read_text()).items() if k != "transformers_version"}
    # The trainer sets use_cache False in the config it saves; everything else is the init's.
    shipped_config = {k: v for k, v in json.loads((NANO / "config.json").read_text()).items()
                      if k not in ("transformers_version", "use_cache")}
    assert config == shipped_config
