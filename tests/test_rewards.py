"""Tests of bluelm_hf.rewards: the rule-based GRPO rewards and Group Overlong's properties."""

import math
import pickle
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from bluelm_hf import nano_task
from bluelm_hf.processing_bluelm_v import default_chat_template
from bluelm_hf.rewards import (
    REWARD_FUNCS,
    accuracy_reward,
    answers_match,
    build_reward_funcs,
    completion_text,
    format_reward,
    get_reward_func,
    group_overlong_reward,
    prompt_key,
    repetition_reward,
    soft_overlong_punishment,
)

THINK_PROMPT = "[|Human|]:How many red cells?[|AI|]:[|BlueThink|]"
PLAIN_PROMPT = "[|Human|]:How many red cells?[|AI|]:"
RIGHT, WRONG = "<think>red 1 blue red 2 so 2</think>2", "<think>red 1 blue so 1</think>1"


def conversational(text):
    return [{"role": "assistant", "content": text}]


# ------------------------------------------------------------------------------------------------ completions


def test_completion_text_reads_both_formats():
    assert completion_text("a") == "a"
    assert completion_text(conversational("a")) == "a"
    blocks = [{"type": "text", "text": "a"}, {"type": "image"}]
    assert completion_text([{"role": "assistant", "content": blocks}]) == "a"
    # a response parser's split is put back, so rewards see one format
    assert completion_text([{"role": "assistant", "content": "2", "reasoning_content": "r"}]) == "<think>r</think>2"
    assert completion_text([{"role": "assistant", "content": None}]) == ""
    assert completion_text([{"role": "tool", "content": "x"}]) == ""
    assert completion_text(None) == completion_text(42) == completion_text([]) == ""
    with_tool = [
        {"role": "assistant", "content": "call"},
        {"role": "tool", "content": "4"},
        {"role": "assistant", "content": "4"},
    ]
    assert completion_text(with_tool) == "4"


# ------------------------------------------------------------------------------------------------ accuracy


@pytest.mark.parametrize(
    ("prediction", "reference", "match"),
    [
        ("3", "3.0", True),
        (" 3 ", "3", True),
        ("3.", "3", True),
        ("1,000", "1000", True),
        ("1/2", "0.5", True),
        ("-.5", "-0.5", True),
        ("３", "3", True),  # full-width digit
        ("Red", "red", True),
        ("red.", "red", True),
        ("3", "4", False),
        ("", "", False),  # an empty answer is never right
        ("1e3", "1000", False),  # no exponents (a huge one would hang Fraction)
        ("1/0", "1/0", True),  # equal as text, even though not a number
        ("0.1", "1", False),
    ],
)
def test_answers_match(prediction, reference, match):
    assert answers_match(prediction, reference) is match


def test_accuracy_reward_reads_the_answer_part():
    completions = [
        RIGHT,
        RIGHT + "</s>",
        "  2.0 ",  # non-thinking mode
        "<think>red 1 blue red 2 so 2",  # cut off inside the reasoning: no answer yet
        "<think>so 2</think>1",
        "red 1 blue red 2 so 2</think>2",  # the prompt ended with <think>
    ]
    got = accuracy_reward([THINK_PROMPT] * 6, completions, answer=["2"] * 6, eos_token="</s>")
    assert got == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert accuracy_reward([THINK_PROMPT] * 2, [conversational(RIGHT)] * 2, answer=["2", None]) == [1.0, None]
    assert accuracy_reward([PLAIN_PROMPT], ["2"], answer=[2]) == [1.0]  # non-string answers are compared as text


def test_accuracy_reward_custom_score_fn():
    completions = ["<think>red 1 red 2 so red</think>RED!", "<think>so red</think>blue"]
    assert accuracy_reward(None, completions, answer=["red"] * 2, score_fn=nano_task.score) == [1.0, 0.0]
    half = accuracy_reward(None, ["x"], answer=["y"], score_fn=lambda prediction, reference: 0.5)
    assert half == [0.5]


def test_accuracy_reward_needs_one_answer_per_completion():
    with pytest.raises(ValueError, match="2 answers for 3 completions"):
        accuracy_reward(None, ["1"] * 3, answer=["1"] * 2)


# ------------------------------------------------------------------------------------------------ format


@pytest.mark.parametrize(
    ("completion", "thinking", "ok"),
    [
        (RIGHT, True, 1.0),
        (RIGHT + "</s>", True, 1.0),
        (" \n" + RIGHT + "\n", True, 1.0),
        ("<think>r</think>", True, 0.0),  # no answer
        ("<think> </think>2", True, 0.0),  # empty reasoning (the template renders it as a non-thinking turn)
        ("<think>red 1", True, 0.0),  # cut off
        ("2", True, 0.0),  # no thinking in thinking mode
        ("x<think>r</think>2", True, 0.0),  # not at the start
        ("<think>r</think>2</think>", True, 0.0),
        ("<think>r<think>r</think>2", True, 0.0),
        ("<think>r</think>2[|Human|]:more", True, 0.0),  # wrote the next turn
        ("2", False, 1.0),
        ("2</s>", False, 1.0),
        (RIGHT, False, 0.0),
        ("2</think>", False, 0.0),
        ("", False, 0.0),
        ("</s>", False, 0.0),
        ("[|BlueThink|]2", False, 0.0),
    ],
)
def test_format_reward(completion, thinking, ok):
    prompt = THINK_PROMPT if thinking else PLAIN_PROMPT
    assert format_reward([prompt], [completion], eos_token="</s>") == [ok]  # mode from the prompt
    # mode from the column
    assert format_reward([None], [conversational(completion)], thinking=[thinking], eos_token="</s>") == [ok]


def test_eos_comes_from_the_argument_not_a_constant():
    # Only the EOS string passed in is removed: "</s>" is plain text for a tokenizer whose EOS is "<|end|>".
    assert format_reward([PLAIN_PROMPT], ["</s>"]) == [1.0]
    assert format_reward([PLAIN_PROMPT], ["</s>"], eos_token="</s>") == [0.0]
    assert format_reward([PLAIN_PROMPT], ["<|end|>"], eos_token="<|end|>") == [0.0]
    assert accuracy_reward(None, ["2<|end|>"], answer=["2"]) == [0.0]
    (accuracy, fmt), _ = build_reward_funcs({"accuracy": 1.0, "format": 1.0}, eos_token="<|end|>")
    assert accuracy(None, ["2<|end|>"], answer=["2"]) == [1.0]
    assert fmt([PLAIN_PROMPT], ["<|end|>"]) == [0.0]
    assert accuracy.keywords == fmt.keywords == {"eos_token": "<|end|>"}


def test_format_reward_mode_sources():
    messages = [{"role": "user", "content": "How many red cells?"}]
    # the column wins over the prompt; non-bool column values (e.g. nano's reasoning traces) are ignored
    assert format_reward([THINK_PROMPT] * 2, ["2", "2"], thinking=[False, "red 1 so 1"]) == [1.0, 0.0]
    # conversational prompt, no column: mode unknown, either well-formed shape counts
    assert format_reward([messages] * 4, ["2", RIGHT, "<think>r", ""]) == [1.0, 1.0, 0.0, 0.0]
    # one bool for all rows (an option mirroring chat_template_kwargs)
    assert format_reward([messages] * 2, ["2", RIGHT], thinking=True) == [0.0, 1.0]
    (strict,), _ = build_reward_funcs({"format": 1.0}, options={"format": {"thinking": True}})
    assert strict([messages] * 2, ["2", RIGHT]) == [0.0, 1.0]


def test_format_reward_mode_from_the_chat_template(tiny_tokenizer):
    """The prompts the chat template renders set the mode, and the tags survive TRL's `skip_special_tokens` decode."""
    messages = [{"role": "user", "content": "How many red cells?"}]
    prompts = [
        tiny_tokenizer.apply_chat_template(
            messages, tokenize=False, chat_template=default_chat_template(), add_generation_prompt=True, **kwargs
        )
        for kwargs in ({"enable_thinking": True}, {})
    ]
    ids = tiny_tokenizer.encode(RIGHT + tiny_tokenizer.eos_token, add_special_tokens=False)
    decoded = tiny_tokenizer.decode(ids, skip_special_tokens=True)
    assert format_reward(prompts, [decoded, decoded]) == [1.0, 0.0]


# ------------------------------------------------------------------------------------------------ repetition


def test_repetition_reward():
    assert repetition_reward(None, ["a b c d e f", "", "a a", conversational("a b")]) == [0.0, 0.0, 0.0, 0.0]
    assert repetition_reward(None, ["a b c a b c"]) == [pytest.approx(-0.25)]  # 4 trigrams, 3 unique
    assert repetition_reward(None, ["A b C a B c"], max_penalty=-0.5) == [pytest.approx(-0.125)]  # case-insensitive
    assert repetition_reward(None, ["go " * 200], ngram_size=2) == [pytest.approx(-(1 - 1 / 199))]
    # CJK characters count as words, so unspaced Chinese loops are caught too
    assert repetition_reward(None, ["我想一想我想一想我想一想"]) == [pytest.approx(-(1 - 4 / 10))]
    assert repetition_reward(None, ["蓝心大模型"]) == [0.0]


def test_repetition_reward_rejects_bad_options():
    with pytest.raises(ValueError, match="max_penalty must be <= 0"):
        repetition_reward(None, ["a"], max_penalty=0.5)
    with pytest.raises(ValueError, match="ngram_size"):
        get_reward_func("repetition", ngram_size=0)


# ------------------------------------------------------------------------------------------------ Group Overlong


def group_batch(groups, answer="2"):
    """Batch for a list of groups, each a list of (length, correct); lengths are carried by completion_ids."""
    prompts, completions, answers, ids = [], [], [], []
    for g, group in enumerate(groups):
        for length, correct in group:
            prompts.append(f"[|Human|]:question {g}[|AI|]:[|BlueThink|]")
            completions.append(f"<think>r</think>{answer if correct else 'wrong'}")
            answers.append(answer)
            ids.append([7] * length)
    return dict(prompts=prompts, completions=completions, answer=answers, completion_ids=ids)


GROUP = st.lists(st.tuples(st.integers(1, 4000), st.booleans()), min_size=1, max_size=8)
GROUPS = st.lists(GROUP, min_size=1, max_size=4)


def test_group_overlong_tolerance_is_a_free_margin():
    # shortest correct 100: with tolerance 0.25 up to 125 is free, and 150 pays for its 25 tokens beyond the margin
    batch = group_batch([[(100, True), (120, True), (125, True), (150, True), (200, True), (30, False)]])
    rewards = group_overlong_reward(**batch, tolerance=0.25)
    assert rewards == pytest.approx([0.0, 0.0, 0.0, -0.5 * 25 / 150, -0.5 * 75 / 200, 0.0])
    assert group_overlong_reward(**batch)[1] == pytest.approx(-0.5 * 20 / 120)  # tolerance 0 charges every token
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tolerance"):
            get_reward_func("group_overlong", tolerance=bad)


def test_group_overlong_example():
    # correct lengths 100, 150, 400; the shortest correct sets the bar, wrong ones are length-neutral
    batch = group_batch([[(100, True), (150, True), (400, True), (20, False), (900, False)]])
    rewards = group_overlong_reward(**batch)
    assert rewards == pytest.approx([0.0, -0.5 * 50 / 150, -0.5 * 300 / 400, 0.0, 0.0])
    assert group_overlong_reward(**batch, length_penalty=1.0)[2] == pytest.approx(-0.75)


@settings(max_examples=150, deadline=None)
@given(GROUPS, st.sampled_from([0.0, 0.1, 0.25, 1.0]))
def test_group_overlong_properties(groups, tolerance):
    rewards = group_overlong_reward(**group_batch(groups), tolerance=tolerance)
    start = 0
    for group in groups:
        group_rewards = rewards[start : start + len(group)]
        start += len(group)
        correct = [(length, r) for (length, ok), r in zip(group, group_rewards) if ok]
        assert all(-0.5 <= r <= 0.0 for r in group_rewards)  # bounds
        # among correct completions, shorter never gets less
        for length_a, reward_a in correct:
            for length_b, reward_b in correct:
                if length_a < length_b:
                    assert reward_a >= reward_b
        # the shortest correct one is never penalised
        if correct:
            assert max(r for _, r in correct) == 0.0
        # incorrect ones are length-neutral: never gain from being short, never lose from being long
        assert all(r == 0.0 for (_, ok), r in zip(group, group_rewards) if not ok)


@settings(max_examples=100, deadline=None)
@given(GROUP)
def test_group_overlong_correct_always_outranks_incorrect(group):
    batch = group_batch([group])
    totals = [a + g for a, g in zip(accuracy_reward(**batch), group_overlong_reward(**batch))]
    right = [t for (_, ok), t in zip(group, totals) if ok]
    wrong = [t for (_, ok), t in zip(group, totals) if not ok]
    if right and wrong:
        assert min(right) > max(wrong)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4000), st.lists(st.booleans(), min_size=1, max_size=8))
def test_group_overlong_equal_lengths_give_zero(length, correct):
    assert group_overlong_reward(**group_batch([[(length, ok) for ok in correct]])) == [0.0] * len(correct)


@settings(max_examples=100, deadline=None)
@given(GROUPS, st.integers(2, 50), st.sampled_from([0.0, 0.25]))
def test_group_overlong_is_scale_invariant(groups, k, tolerance):
    scaled = [[(length * k, ok) for length, ok in group] for group in groups]
    assert group_overlong_reward(**group_batch(scaled), tolerance=tolerance) == pytest.approx(
        group_overlong_reward(**group_batch(groups), tolerance=tolerance)
    )


@settings(max_examples=100, deadline=None)
@given(GROUPS, st.randoms(use_true_random=False), st.booleans())
def test_group_overlong_groups_by_prompt_not_position(groups, rng, conversational_prompts):
    batch = group_batch(groups)
    if conversational_prompts:
        batch["prompts"] = [[{"role": "user", "content": p}] for p in batch["prompts"]]
    batch["completions"] = [conversational(c) for c in batch["completions"]]
    batch["extra_column"] = list(range(len(batch["prompts"])))
    order = list(range(len(batch["prompts"])))
    rng.shuffle(order)
    shuffled = {key: [values[i] for i in order] for key, values in batch.items()}
    rewards = group_overlong_reward(**batch)
    assert group_overlong_reward(**shuffled) == [rewards[i] for i in order]


def test_group_overlong_prompt_id_column_wins():
    batch = group_batch([[(100, True)], [(200, True)]])  # two prompts: each alone in its group
    assert group_overlong_reward(**batch) == [0.0, 0.0]
    assert group_overlong_reward(**batch, prompt_id=[7, 7]) == [0.0, pytest.approx(-0.25)]
    by_id = group_overlong_reward(None, batch["completions"], batch["answer"], batch["completion_ids"], prompt_id="ab")
    assert by_id == [0.0, 0.0]  # a prompt_id per row: two groups again
    with pytest.raises(ValueError, match="needs the prompts"):
        group_overlong_reward(None, batch["completions"], batch["answer"])


def test_group_overlong_groups_images_by_pixels():
    """TRL decodes a dataset image once per generation: equal pixels are one prompt, other pixels another."""

    def prompt(colour):
        image = Image.new("RGB", (8, 8), colour)
        return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Count."}]}]

    assert prompt_key(prompt("red")) == prompt_key(prompt("red")) != prompt_key(prompt("blue"))
    assert prompt_key({"a": 1, "b": [None, 2.0]}) == prompt_key({"b": [None, 2.0], "a": 1})
    assert prompt_key(["ab", "c"]) != prompt_key(["a", "bc"]) != prompt_key("abc")
    completions = ["<think>so 2</think>2", RIGHT]
    same = group_overlong_reward([prompt("red"), prompt("red")], completions, ["2", "2"])
    other = group_overlong_reward([prompt("red"), prompt("blue")], completions, ["2", "2"])
    assert same[1] < 0 and other == [0.0, 0.0]


def test_group_overlong_lengths_without_completion_ids():
    """Characters of the whole completion (reasoning included) when TRL's token ids are absent."""
    short, long = "<think>so 2</think>2", "<think>red 1 blue red 2 so 2</think>2"
    rewards = group_overlong_reward([THINK_PROMPT] * 2, [short + "</s>", long], ["2", "2"], eos_token="</s>")
    assert rewards == [0.0, pytest.approx(-0.5 * (len(long) - len(short)) / len(long))]
    # the answer counts as much as the reasoning: moving reasoning past </think> does not dodge the penalty
    moved = "<think>so</think>red 1 blue red 2 so 2"
    last_word = lambda prediction, reference: prediction.split()[-1:] == [reference]  # noqa: E731
    assert group_overlong_reward([THINK_PROMPT] * 2, [short, moved], ["2", "2"], score_fn=last_word)[1] < -0.2
    # token ids, when given, are the length
    same_ids = group_overlong_reward([THINK_PROMPT] * 2, [short, long], ["2", "2"], completion_ids=[[1] * 3] * 2)
    assert same_ids == [0.0, 0.0]


def test_group_overlong_shares_the_accuracy_scorer():
    completions = ["<think>r</think>RED", "<think>longer reasoning</think>red"]
    # answers_match lower-cases too; a case-sensitive scorer makes only the second correct: nothing to compare
    assert group_overlong_reward([THINK_PROMPT] * 2, completions, ["red"] * 2)[1] < 0
    exact = group_overlong_reward([THINK_PROMPT] * 2, completions, ["red"] * 2, score_fn=lambda p, r: p == r)
    assert exact == [0.0, 0.0]


@pytest.mark.parametrize(("length", "expected"), [(10, 0.0), (80, 0.0), (90, -0.5), (100, -1.0), (150, -1.0)])
def test_soft_overlong_punishment(length, expected):
    assert soft_overlong_punishment(length, max_length=100, cache_length=20) == pytest.approx(expected)


def test_group_overlong_optional_cap():
    batch = group_batch([[(50, True), (90, True), (120, False)]])
    rewards = group_overlong_reward(**batch, max_length=100, cache_length=20)
    assert rewards == pytest.approx([0.0, -0.5 * 40 / 90 - 0.5, -1.0])
    assert group_overlong_reward(**batch, max_length=100)[1:] == pytest.approx([-0.5 * 40 / 90, -1.0])  # hard cap
    for bad in ({"max_length": 0}, {"max_length": 10, "cache_length": 11}, {"length_penalty": -1.0}):
        with pytest.raises(ValueError):
            get_reward_func("group_overlong", **bad)


@settings(max_examples=100, deadline=None)
@given(GROUPS, st.integers(1, 4000), st.integers(0, 4000))
def test_group_overlong_cap_adds_the_soft_punishment(groups, max_length, cache):
    batch, cache = group_batch(groups), min(cache, max_length)
    rewards = group_overlong_reward(**batch, max_length=max_length, cache_length=cache)
    uncapped = group_overlong_reward(**batch)
    lengths = [len(ids) for ids in batch["completion_ids"]]
    assert rewards == pytest.approx(
        [r + soft_overlong_punishment(n, max_length, cache) for r, n in zip(uncapped, lengths)]
    )
    assert all(-1.5 <= r <= 0.0 for r in rewards)


# ------------------------------------------------------------------------------------------------ robustness

FRAGMENTS = ["<think>", "</think>", "<thi", "nk>", "</", "</s>", "[|BlueThink|]", "[|AI|]:", "2", " 2.0", "\n", "思"]
TEXT = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=6)), max_size=12).map("".join)
COMPLETION = st.one_of(
    TEXT,
    st.none(),
    TEXT.map(conversational),
    st.builds(lambda t, r: [{"role": "assistant", "content": t, "reasoning_content": r}], TEXT, st.none() | TEXT),
    st.builds(lambda t: [{"role": "assistant", "content": [{"type": "text", "text": t}]}], TEXT),
    st.just([{"role": "assistant", "content": None}]),
    st.just([]),
)
PROMPT = st.one_of(
    st.sampled_from([THINK_PROMPT, PLAIN_PROMPT, "", None]), TEXT, TEXT.map(lambda t: [{"role": "user", "content": t}])
)
ROW = st.tuples(PROMPT, COMPLETION, st.none() | TEXT | st.integers(), st.none() | st.booleans() | TEXT)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(ROW, max_size=10),
    st.booleans(),
)
def test_rewards_never_raise_on_garbage(batch, with_ids):
    prompts = [p for p, _, _, _ in batch]
    completions = [c for _, c, _, _ in batch]
    columns = dict(answer=[a for _, _, a, _ in batch], thinking=[t for _, _, _, t in batch])
    if with_ids:
        columns["completion_ids"] = [list(range(len(completion_text(c)))) for c in completions]
    for name, func in REWARD_FUNCS.items():
        rewards = func(prompts, completions, **columns, trainer_state=None)
        assert len(rewards) == len(batch)
        assert all(r is None or (isinstance(r, float) and math.isfinite(r)) for r in rewards), name
    assert all(r in (0.0, 1.0) for r in format_reward(prompts, completions, **columns))
    assert all(-1.0 <= r <= 0.0 for r in repetition_reward(prompts, completions))
    assert all(-0.5 <= r <= 0.0 for r in group_overlong_reward(prompts, completions, **columns))


# ------------------------------------------------------------------------------------------------ composition


def test_build_reward_funcs():
    funcs, weights = build_reward_funcs(
        {"accuracy": 1.0, "format": 0.5, "repetition": 1, "group_overlong": 0.25},
        score_fn=nano_task.score,
        options={"repetition": {"ngram_size": 2}, "group_overlong": {"max_length": 64, "cache_length": 16}},
    )
    names = ["accuracy_reward", "format_reward", "repetition_reward", "group_overlong_reward"]
    assert [f.__name__ for f in funcs] == names
    assert weights == [1.0, 0.5, 1.0, 0.25]
    assert funcs[1] is format_reward  # no options: the plain function
    assert funcs[0].keywords == {"score_fn": nano_task.score}
    # picklable (TRL's async GRPO sends reward functions to a child process), and keeps its name
    restored = pickle.loads(pickle.dumps(funcs))
    assert [f.__name__ for f in restored] == [f.__name__ for f in funcs]
    assert restored[2](None, ["a a a"]) == funcs[2](None, ["a a a"]) == [pytest.approx(-0.5)]
    # TRL logs a partial under its wrapped function's name (trl.trainer.utils.get_callable_name): the same names
    assert all(getattr(f, "func", f).__name__ == f.__name__ for f in funcs)


def test_build_reward_funcs_rejects_bad_config():
    valid = "valid names are ['accuracy', 'format', 'repetition', 'group_overlong']"
    with pytest.raises(ValueError, match=rf"unknown reward name\(s\) \['length'\]; {re.escape(valid)}"):
        build_reward_funcs({"accuracy": 1.0, "length": 1.0})
    with pytest.raises(ValueError, match="no option"):
        build_reward_funcs({"repetition": 1.0}, options={"repetition": {"ngram": 2}})
    with pytest.raises(ValueError, match="no weight"):
        build_reward_funcs({"accuracy": 1.0}, options={"repetition": {"ngram_size": 2}})
    with pytest.raises(ValueError, match="finite number"):
        build_reward_funcs({"accuracy": float("nan")})
    with pytest.raises(ValueError, match="no rewards"):
        build_reward_funcs({})


def test_rewards_take_what_trl_passes():
    """The call `GRPOTrainer._calculate_rewards` (TRL 1.16) makes: every column, ids, state and logging hooks."""
    funcs, _ = build_reward_funcs({"accuracy": 1.0, "format": 1.0, "repetition": 1.0, "group_overlong": 1.0})
    n = 4
    kwargs = dict(
        prompts=[[{"role": "user", "content": "How many red cells?"}]] * n,
        completions=[conversational(c) for c in (RIGHT, "<think>red 1 red 2 so so 2</think>2", WRONG, "<think>red")],
        completion_ids=[[1] * 12, [1] * 20, [1] * 10, [1] * 64],
        answer=["2"] * n,
        image=[None] * n,
        thinking=["red 1 blue red 2 so 2"] * n,  # nano's trace column: not a mode flag
        trainer_state=object(),
        log_extra=lambda column, values: None,
        log_metric=lambda name, value: None,
    )
    out = {f.__name__: f(**kwargs) for f in funcs}
    assert out["accuracy_reward"] == [1.0, 1.0, 0.0, 0.0]
    assert out["format_reward"] == [1.0, 1.0, 1.0, 0.0]
    assert out["group_overlong_reward"] == [0.0, pytest.approx(-0.5 * 8 / 20), 0.0, 0.0]
    assert all(len(v) == n for v in out.values())

