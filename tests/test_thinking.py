"""Tests of bluelm_hf.thinking: the thinking budget, parse_response and ThinkingStreamer.

The model is a tiny random llama. A random model never reasons, so `ScriptedThinker` (placed before the budget
processor) stands in for a trained one: after `[|BlueThink|]` it writes `<think>`, then it closes the block by itself
after `natural` tokens (or earlier, right after one of `stop_words`, which makes beams diverge), never writes tags,
pad or the early-stop message tokens otherwise. It reads everything from `input_ids`, so beam search may reorder
rows. Whatever the budget processor forces comes after it and wins. Every generate with a budget also checks each
row at each step against a plain-Python reference (`Audited`), so beam reordering cannot hide a wrong state.
"""

import threading

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedTokenizerFast,
)

from bluelm_hf.configuration_bluelm_v import THINK_END_TOKEN, THINK_MODE_TOKEN, THINK_START_TOKEN
from bluelm_hf.thinking import (
    ThinkingBudgetLogitsProcessor,
    ThinkingChunk,
    ThinkingStreamer,
    ThinkingStreamParser,
    MAX_THINKING_BUDGET,
    build_thinking_budget_processor,
    parse_response,
    response_template,
    validate_thinking_budget,
)

PAD, EOS, BLUETHINK, THINK, END, HUMAN, AI = range(7)
MSG = (7, 8)  # the early-stop message of the multi-token closing sequence; the fake model never writes these
WORDS = list(range(9, 64))
STOP_WORDS = (9, 10, 11, 12, 13, 14)
VOCAB = 65  # + <unk> for the tokenizer
NEG_INF = -float("inf")


@pytest.fixture(scope="module")
def nano_processor():
    from transformers import AutoProcessor

    from bluelm_hf import NANO

    return AutoProcessor.from_pretrained(NANO)


@pytest.fixture(scope="module")
def model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-wide model only loses from threads
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=PAD,
        bos_token_id=None,
        eos_token_id=None,
    )
    yield LlamaForCausalLM(config).eval()
    torch.set_num_threads(threads)


class ScriptedThinker(LogitsProcessor):
    """A thinking policy on top of a random LM; see the module docstring.

    natural: per prompt (or per row), how many tokens a think block runs before the model closes it itself.
    second: (gap, natural) -> after the first close and `gap` answer tokens, open one more block of `natural` tokens.
    """

    def __init__(self, natural, stop_words=(), second=None):
        self.natural, self.stop_words, self.second = list(natural), set(stop_words), second
        self.prompt_len = None

    def _next(self, ids: list[int], natural: int) -> int | None:
        if ids[-1] == BLUETHINK:
            return THINK
        tags = [i for i, t in enumerate(ids) if t in (THINK, END)]
        if not tags:
            return None
        last = tags[-1]
        generated_blocks = ids[self.prompt_len :].count(THINK)
        if ids[last] == THINK:
            thought = len(ids) - 1 - last
            if self.second is not None and generated_blocks == 2:
                natural = self.second[1]
            if thought >= natural or (thought and ids[-1] in self.stop_words):
                return END
        elif self.second is not None and generated_blocks == 1 and len(ids) - 1 - last == self.second[0]:
            return THINK
        return None

    def __call__(self, input_ids, scores):
        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1]
        rows = input_ids.shape[0]
        natural = torch.tensor(self.natural).repeat_interleave(rows // len(self.natural)).tolist()
        scores = scores.clone()
        scores[:, [PAD, EOS, BLUETHINK, THINK, END, HUMAN, AI, *MSG, VOCAB - 1]] = NEG_INF
        for row, ids in enumerate(input_ids.tolist()):
            token = self._next(ids, natural[row])
            if token is not None:
                scores[row] = NEG_INF
                scores[row, token] = 0.0
        return scores


def reference_forced_token(ids: list[int], prompt_len: int, budget: int, end_sequence: list[int]) -> int | None:
    """What the budget processor must force for one row, by walking its tokens (plain Python, no shortcuts)."""
    is_open, opened_at = False, None
    for i, token in enumerate(ids[:prompt_len]):
        if token == THINK and not is_open:
            is_open, opened_at = True, i
        elif token == END:
            is_open = False
    used = block = prompt_len - 1 - opened_at if is_open else 0
    allowed = max(budget, used)
    for token in ids[prompt_len:]:
        if token == THINK and not is_open:  # a new block gets what is left
            is_open, block, allowed = True, 0, max(budget - used, 0)
        elif token == END:
            is_open = False
        elif is_open:  # reasoning, a stray <think> inside the block included
            used, block = used + 1, block + 1
    if not is_open or block < allowed:
        return None
    return end_sequence[min(block - allowed, len(end_sequence) - 1)]


class Audited(LogitsProcessor):
    """Runs the budget processor and checks every row of every step against `reference_forced_token`."""

    def __init__(self, processor: ThinkingBudgetLogitsProcessor):
        self.processor, self.prompt_len = processor, None

    def __call__(self, input_ids, scores):
        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1]
        out = self.processor(input_ids, scores)
        budgets = self.processor.thinking_budget
        budgets = budgets.repeat_interleave(input_ids.shape[0] // len(budgets)).tolist()
        for row, ids in enumerate(input_ids.tolist()):
            token = reference_forced_token(ids, self.prompt_len, budgets[row], self.processor.end_sequence_ids)
            if token is None:
                assert torch.equal(out[row], scores[row])
            else:
                assert out[row, token] == 0 and out[row].isfinite().sum() == 1
        return out


def left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    return ids, (ids != PAD).long()  # PAD is never content


def generate(model, prompts, natural, budget=None, end_sequence=None, seed=0, max_new_tokens=12, **kwargs):
    """Returns the generated part, `(rows, new_tokens)` as lists, with the script alone or script + budget."""
    ids, mask = left_pad(prompts)
    processors = [ScriptedThinker(natural, **kwargs.pop("script", {}))]
    if budget is not None:
        processors.append(Audited(ThinkingBudgetLogitsProcessor(budget, THINK, END, end_sequence)))
    config = GenerationConfig(max_new_tokens=max_new_tokens, pad_token_id=PAD, eos_token_id=None, **kwargs)
    torch.manual_seed(seed)
    out = model.generate(
        input_ids=ids, attention_mask=mask, generation_config=config, logits_processor=LogitsProcessorList(processors)
    )
    return out[:, ids.shape[1] :].tolist()


def think_block(generated: list[int]) -> list[int]:
    """Tokens between the first <think> and the first </think> of a generated row."""
    start = generated.index(THINK)
    return generated[start + 1 : generated.index(END, start)]


def natural_close(thought: list[int], natural: int) -> bool:
    """Whether the scripted model closes a block after `thought`."""
    return len(thought) >= natural or (len(thought) > 0 and thought[-1] in STOP_WORDS)


def check_budget_row(generated, natural, budget, end_sequence):
    """The invariants of one thinking row generated with script + budget; returns whether it was forced."""
    assert generated[0] == THINK and generated.count(THINK) == 1 and generated.count(END) == 1
    block = think_block(generated)
    message = list(end_sequence[:-1])
    forced = bool(message) and block[len(block) - len(message) :] == message
    free = block[: len(block) - len(message)] if forced else block
    assert not any(t in MSG for t in free)
    assert len(free) <= budget  # the budget holds
    # no natural close was skipped, and the processor closed it only when the budget ran out
    assert not any(natural_close(free[:c], natural) for c in range(len(free)))
    assert natural_close(free, natural) or len(free) == budget
    if forced or len(free) < budget:
        assert forced == (len(free) == budget)
    return forced


# ---------------------------------------------------------------------------------------------------- properties

prompt_strategy = st.fixed_dictionaries(
    {
        "words": st.lists(st.sampled_from(WORDS[10:]), min_size=1, max_size=5),
        "pad": st.integers(0, 3),  # extra left padding on top of the batch's own
        "thinking": st.booleans(),
        "natural": st.integers(0, 10),
        "budget": st.integers(0, 10),
    }
)
decoding_strategy = st.one_of(
    st.just({"do_sample": False}),
    st.fixed_dictionaries(
        {
            "do_sample": st.just(True),
            "temperature": st.sampled_from([0.7, 1.0, 1.5]),
            "top_k": st.sampled_from([0, 5]),
            "top_p": st.sampled_from([1.0, 0.9]),
        }
    ),
)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    prompts=st.lists(prompt_strategy, min_size=1, max_size=4),
    decoding=decoding_strategy,
    end_sequence=st.sampled_from([[END], [*MSG, END]]),
    seed=st.integers(0, 2**16),
)
def test_budget_properties(model, prompts, decoding, end_sequence, seed):
    token_prompts = [
        [PAD] * p["pad"] + [HUMAN, *p["words"], AI] + ([BLUETHINK] if p["thinking"] else []) for p in prompts
    ]
    natural = [p["natural"] for p in prompts]
    budget = [p["budget"] for p in prompts]
    script = {"stop_words": STOP_WORDS}
    run = dict(seed=seed, script=script, max_new_tokens=15, **decoding)  # room for 1 + 10 + 3 tags/message tokens
    free = generate(model, token_prompts, natural, **run)
    capped = generate(model, token_prompts, natural, budget, end_sequence, **run)

    for p, free_row, capped_row in zip(prompts, free, capped):
        if not p["thinking"]:
            assert THINK not in capped_row and END not in capped_row
            assert capped_row == free_row
            continue
        check_budget_row(capped_row, p["natural"], p["budget"], end_sequence)
        if len(think_block(free_row)) < p["budget"]:
            assert capped_row == free_row  # bit-identical when the budget is not reached


@settings(max_examples=40, deadline=None, derandomize=True)
@given(data=st.data())
def test_processor_matches_reference_on_arbitrary_ids(data):
    """Any ids, stray and nested tags included, with rows shuffled within each prompt between steps like beams."""
    token = st.sampled_from([THINK, END, 20, 21, 22])
    prompts_n, per_prompt = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    prompts = [data.draw(st.lists(token, min_size=1, max_size=6)) for _ in range(prompts_n)]
    budget = data.draw(st.lists(st.integers(0, 4), min_size=prompts_n, max_size=prompts_n))
    end_sequence = data.draw(st.sampled_from([[END], [*MSG, END]]))
    audited = Audited(ThinkingBudgetLogitsProcessor(budget, THINK, END, end_sequence))
    ids = left_pad(prompts)[0].repeat_interleave(per_prompt, dim=0)
    rows = ids.shape[0]
    for _ in range(data.draw(st.integers(1, 12))):
        audited(ids, torch.randn(rows, VOCAB))
        shuffles = [data.draw(st.permutations(range(per_prompt))) for _ in range(prompts_n)]
        order = torch.tensor([g * per_prompt + i for g, shuffle in enumerate(shuffles) for i in shuffle])
        new_tokens = torch.tensor(data.draw(st.lists(token, min_size=rows, max_size=rows)))
        ids = torch.cat([ids[order], new_tokens[:, None]], dim=1)


# ---------------------------------------------------------------------------------------------------- cases

THINKING_PROMPTS = [[HUMAN, 20, 21, AI, BLUETHINK], [HUMAN, 22, AI, BLUETHINK]]


def test_budget_zero_closes_right_after_think(model):
    rows = generate(model, THINKING_PROMPTS, [6, 6], budget=0)
    for row in rows:
        assert row[:2] == [THINK, END] and row.count(END) == 1


def test_multi_token_closing_sequence(model):
    rows = generate(model, THINKING_PROMPTS, [9, 2], budget=4, end_sequence=[*MSG, END])
    assert rows[0][:8] == [THINK, *rows[0][1:5], *MSG, END]  # 4 free tokens, then the message and </think>
    assert think_block(rows[1]) == think_block(generate(model, THINKING_PROMPTS, [9, 2])[1])  # closed by itself
    assert not any(t in MSG for t in rows[1])


def test_per_row_budgets_int_list_tensor(model):
    expected = [[3, 5], [3, 3], [1, 5]]
    for budget, lengths in zip([[3, 5], 3, torch.tensor([1, 5])], expected):
        rows = generate(model, THINKING_PROMPTS, [9, 9], budget=budget)
        assert [len(think_block(r)) for r in rows] == lengths


@pytest.mark.parametrize("do_sample", [False, True])
def test_beams_and_return_sequences(model, do_sample):
    """Per-prompt budgets expand over num_beams x rows; beams diverge (stop words) and get reordered."""
    kwargs = dict(num_beams=3, num_return_sequences=2, do_sample=do_sample, script={"stop_words": STOP_WORDS})
    rows = generate(model, THINKING_PROMPTS, [9, 9], budget=[2, 6], max_new_tokens=14, **kwargs)
    assert len(rows) == 4
    for row, budget in zip(rows, [2, 2, 6, 6]):
        check_budget_row(row, 9, budget, [END])
    # a budget that is never reached changes nothing
    free = generate(model, THINKING_PROMPTS, [5, 5], max_new_tokens=14, **kwargs)
    assert generate(model, THINKING_PROMPTS, [5, 5], budget=[20, 20], max_new_tokens=14, **kwargs) == free


def test_num_return_sequences_with_sampling(model):
    rows = generate(model, THINKING_PROMPTS, [9, 9], budget=[1, 4], do_sample=True, num_return_sequences=3)
    assert [len(think_block(r)) for r in rows] == [1, 1, 1, 4, 4, 4]


def test_continuation_prompt_counts_thinking_already_there(model):
    """The prompt ends inside an open <think> with k tokens; only budget - k more are allowed."""
    prompts = [[HUMAN, 20, AI, BLUETHINK, THINK, 30, 31, 32], [HUMAN, 20, AI, BLUETHINK, THINK, *range(30, 37)]]
    rows = generate(model, prompts, [20, 20], budget=5)
    assert END in rows[0] and rows[0].index(END) == 2  # 3 + 2 = 5
    assert rows[1][0] == END  # 7 > 5: closed at once
    assert THINK not in rows[0] + rows[1]


def test_closed_blocks_in_prompt_do_not_count(model):
    history = [HUMAN, 20, AI, BLUETHINK, THINK, 30, 31, 32, END, 40, HUMAN, 21, AI, BLUETHINK]
    rows = generate(model, [history], [9], budget=4)
    assert len(think_block(rows[0])) == 4


def test_non_thinking_rows_untouched(model):
    prompts = [[HUMAN, 20, 21, AI], [HUMAN, 22, AI, BLUETHINK, THINK, 30, END, 31, HUMAN, 23, AI]]
    for do_sample in (False, True):
        free = generate(model, prompts, [3, 3], do_sample=do_sample)
        assert generate(model, prompts, [3, 3], budget=0, do_sample=do_sample) == free
        assert not any(t in (THINK, END) for row in free for t in row)


@pytest.mark.parametrize(("budget", "first", "second"), [(6, 2, 4), (2, 2, 0), (1, 1, 0)])
def test_second_block_gets_what_is_left(model, budget, first, second):
    """The budget is per call: a block opened after a close gets only what the earlier blocks left."""
    script = {"second": (2, 10)}
    rows = generate(model, [THINKING_PROMPTS[0]], [2], budget=budget, script=script, max_new_tokens=24)
    row = rows[0]
    assert row.count(THINK) == 2 and row.count(END) == 2
    close = row.index(END)
    assert close - 1 == first
    second_start = row.index(THINK, close)
    assert row.index(END, second_start) - second_start - 1 == second


def test_processor_reused_across_generate_calls(model):
    ids, mask = left_pad(THINKING_PROMPTS)
    processor = ThinkingBudgetLogitsProcessor(2, THINK, END)
    config = GenerationConfig(max_new_tokens=8, pad_token_id=PAD, eos_token_id=None)
    for _ in range(2):
        processors = LogitsProcessorList([ScriptedThinker([9, 9]), processor])
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, logits_processor=processors)
        assert [len(think_block(r)) for r in out[:, ids.shape[1] :].tolist()] == [2, 2]


def test_forcing_does_not_modify_scores_in_place():
    processor = ThinkingBudgetLogitsProcessor(0, THINK, END)
    scores = torch.randn(1, VOCAB)
    original = scores.clone()
    out = processor(torch.tensor([[HUMAN, AI, THINK]]), scores)
    assert torch.equal(scores, original)
    assert out[0, END] == 0 and torch.isinf(out[0, :END]).all() and out.isfinite().sum() == 1


# ---------------------------------------------------------------------------------------------------- errors


def test_negative_budget():
    with pytest.raises(ValueError, match=r"must be >= 0.*-3"):
        ThinkingBudgetLogitsProcessor([2, -3], THINK, END)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(budget=st.one_of(st.integers(0, MAX_THINKING_BUDGET), st.lists(st.integers(0, MAX_THINKING_BUDGET), min_size=1)))
def test_valid_budgets_are_kept_exactly(budget):
    assert validate_thinking_budget(budget).tolist() == (budget if isinstance(budget, list) else [budget])


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    bad=st.one_of(
        st.integers(max_value=-1),
        st.integers(min_value=MAX_THINKING_BUDGET + 1),
        st.floats(allow_nan=False),
        st.integers(0, 10**6).map(str),
        st.booleans(),
        st.lists(st.integers(max_value=-1), min_size=1),
    )
)
def test_bad_budgets_raise_a_clear_error(bad):
    # before validation: 10**30 gave "Overflow when unpacking long long", "3" gave "new(): invalid data type 'str'"
    with pytest.raises(ValueError, match="thinking_budget") as error:
        ThinkingBudgetLogitsProcessor(bad, THINK, END)
    shown = bad[0] if isinstance(bad, list) else bad
    assert repr(shown) in str(error.value) or str(shown) in str(error.value)


def test_budget_list_length_mismatch(model):
    processor = ThinkingBudgetLogitsProcessor([1, 2, 3, 4], THINK, END)
    with pytest.raises(ValueError, match=r"4 values.*6 rows"):
        processor(torch.zeros(6, 3, dtype=torch.long), torch.zeros(6, VOCAB))
    with pytest.raises(ValueError, match=r"3 values.*4 rows"):
        generate(model, THINKING_PROMPTS, [2, 2], budget=[1, 2, 3], num_return_sequences=2, do_sample=True)


@pytest.mark.parametrize(
    "end_sequence", [[MSG[0]], [END, MSG[0], END], [THINK, END], []], ids=["no-end", "end-inside", "start", "empty"]
)
def test_bad_end_sequence(end_sequence):
    with pytest.raises(ValueError, match="end_sequence_ids"):
        ThinkingBudgetLogitsProcessor(2, THINK, END, end_sequence)


def test_build_from_config():
    config = GenerationConfig(think_start_token_id=THINK, think_end_token_id=END, thinking_end_sequence_ids=[*MSG, END])
    processor = build_thinking_budget_processor(config, 5)
    assert (processor.think_start_token_id, processor.end_sequence_ids) == (THINK, [*MSG, END])
    assert build_thinking_budget_processor(config, 5, end_sequence_ids=[END]).end_sequence_ids == [END]
    with pytest.raises(ValueError, match="think_start_token_id and think_end_token_id"):
        build_thinking_budget_processor(GenerationConfig(), 5)


# ---------------------------------------------------------------------------------------------------- tokenizer

SPECIALS = ["<pad>", "</s>", THINK_MODE_TOKEN, THINK_START_TOKEN, THINK_END_TOKEN, "[|Human|]:", "[|AI|]:"]


def make_tokenizer(specials=SPECIALS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose ids match the constants above (words `w9`..`w63`, `m7` `m8`)."""
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    vocab.update({"m7": 7, "m8": 8, **{f"w{i}": i for i in WORDS}, "<unk>": VOCAB - 1})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="</s>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in specials if t not in ("<pad>", "</s>")]})
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def test_from_tokenizer(tokenizer):
    processor = ThinkingBudgetLogitsProcessor.from_tokenizer(tokenizer, 7, early_stop_message="m7 m8")
    assert (processor.think_start_token_id, processor.think_end_token_id) == (THINK, END)
    assert processor.end_sequence_ids == [*MSG, END]
    assert ThinkingBudgetLogitsProcessor.from_tokenizer(tokenizer, 7).end_sequence_ids == [END]


def test_from_tokenizer_names_missing_tokens():
    backend = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    bare = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    with pytest.raises(ValueError, match=r"'<think>' and '</think>'"):
        ThinkingBudgetLogitsProcessor.from_tokenizer(bare, 5)
    bare.add_special_tokens({"additional_special_tokens": [THINK_START_TOKEN]})
    with pytest.raises(ValueError, match=r"no single token for '</think>'\."):
        ThinkingBudgetLogitsProcessor.from_tokenizer(bare, 5)
    with pytest.raises(ValueError, match="'</think>'"):
        ThinkingStreamer(bare)


# ---------------------------------------------------------------------------------------------------- parse_response

TAGS = (THINK_START_TOKEN, THINK_END_TOKEN, THINK_MODE_TOKEN, "</s>", "<pad>")
plain_text = st.text(max_size=40).filter(lambda s: not any(tag in s for tag in TAGS))
pieces = st.lists(st.one_of(plain_text, st.sampled_from([THINK_START_TOKEN, THINK_END_TOKEN])), max_size=8)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(reasoning=plain_text, answer=plain_text, mode_token=st.booleans(), eos=st.booleans(), pads=st.integers(0, 3))
def test_parse_response_round_trip(reasoning, answer, mode_token, eos, pads):
    prefix = THINK_MODE_TOKEN if mode_token else ""
    suffix = ("</s>" if eos else "") + "<pad>" * pads * eos  # a batched row: EOS, then padding
    expected = {"reasoning_content": reasoning.strip() or None, "content": answer.strip()}
    assert parse_response(f"{prefix}<think>{reasoning}</think>{answer}{suffix}") == expected
    # the prompt ended with <think>: the completion starts inside the block
    assert parse_response(f"{reasoning}</think>{answer}{suffix}", prefix="[|AI|]:<think>") == expected
    assert parse_response(f"<think>{reasoning}") == {"reasoning_content": reasoning.strip() or None, "content": ""}
    assert parse_response(f"{prefix}{answer}{suffix}") == {"reasoning_content": None, "content": answer.strip()}


@settings(max_examples=80, deadline=None, derandomize=True)
@given(parts=pieces, eos=st.booleans(), pads=st.integers(0, 3))
def test_parse_response_content_is_what_follows_the_last_think_end(parts, eos, pads):
    text = "".join(parts) + ("</s>" + "<pad>" * pads if eos else "")
    parsed = parse_response(text)
    assert not any(tag in parsed["content"] for tag in TAGS)
    # a <think> written inside an open block is reasoning text, as for the budget; nothing else leaks
    assert not any(tag in (parsed["reasoning_content"] or "") for tag in TAGS if tag != THINK_START_TOKEN)
    if THINK_END_TOKEN in parts and THINK_START_TOKEN not in parts[len(parts) - parts[::-1].index(THINK_END_TOKEN) :]:
        after_last_end = "".join(parts[len(parts) - parts[::-1].index(THINK_END_TOKEN) :])
        if after_last_end.strip():  # (a stray </think> at the very end leaves the answer before it)
            assert parsed["content"] == after_last_end.strip()


@settings(max_examples=40, deadline=None, derandomize=True)
@given(parts=pieces, eos=st.booleans(), pads=st.integers(0, 3))
def test_parse_response_equals_the_tokenizer_template_on_token_ids(nano_processor, parts, eos, pads):
    """thinking.parse_response (text) and tokenizer.parse_response (token ids, what `transformers serve` runs)
    follow the one response_template shipped in the tokenizer config."""
    text = "".join(parts) + ("</s>" + "<pad>" * pads if eos else "")
    tokenizer = nano_processor.tokenizer
    ids = tokenizer.encode(text, add_special_tokens=False)
    assume(ids)  # transformers reads an empty list as an empty batch
    by_ids = nano_processor.parse_response(ids)
    assert {"reasoning_content": by_ids.get("reasoning_content") or None, "content": by_ids.get("content", "")} == (
        parse_response(tokenizer.decode(ids, skip_special_tokens=False), eos_token=tokenizer.eos_token)
    )


@pytest.mark.parametrize(
    ("text", "reasoning", "content"),
    [
        ("<think>\nLet me see.\n</think>\n\nIt is 4.</s>", "Let me see.", "It is 4."),
        ("[|BlueThink|]<think>a</think>b", "a", "b"),
        ("<think></think>b", None, "b"),
        ("<think>   ", None, ""),
        ("just an answer</s></s>", None, "just an answer"),
        ("just an answer</s><pad><pad>", None, "just an answer"),
        # a </think> after the block was closed: the model reasoned on after a forced close; the answer follows it
        ("<think>a</think>so 2</think>2", "a", "2"),
        ("<think>a</think>so 2</think>2</s><pad>", "a", "2"),
        ("<think>a</think>2</think></s>", "a", "2"),
        ("<think>a</s><pad>", "a", ""),
    ],
)
def test_parse_response_cases(text, reasoning, content):
    assert parse_response(text) == {"reasoning_content": reasoning, "content": content}


def test_processor_parses_padded_batch_rows(nano_processor):
    tokenizer = nano_processor.tokenizer
    rows = [
        tokenizer.encode(text, add_special_tokens=False)
        for text in ("<think>red 1</think>1</s><pad><pad>", "<think>a</think>so 2</think>2</s>")
    ]
    assert tokenizer.response_template is not None  # shipped in the nano's tokenizer_config.json
    assert nano_processor.parse_response(torch.tensor(rows)) == [
        {"role": "assistant", "reasoning_content": "red 1", "content": "1"},
        {"role": "assistant", "reasoning_content": "a", "content": "2"},
    ]
    assert tokenizer.parse_response(rows[0], prefix="")["content"] == "1"


# ---------------------------------------------------------------------------------------------------- streaming


def stream(streamer, prompt, pieces):
    streamer.put(torch.tensor([prompt]))
    for piece in pieces:
        streamer.put(torch.tensor(piece))
    streamer.end()
    return list(streamer)


def joined(chunks, kind):
    """The field `kind` after replaying the chunks: appends, and `*_replace` chunks that replace what came before."""
    value = ""
    for k, text in chunks:
        if k == kind:
            value += text
        elif k == f"{kind}_replace":
            value = text
    return value


@pytest.mark.parametrize("skip_special_tokens", [True, False])
@pytest.mark.parametrize(
    "pieces",
    [
        [[THINK], [20], [21], [END], [30], [31], [EOS]],  # one token per step, as generate does
        [[THINK, 20, 21, END, 30], [31, EOS]],  # tags inside a chunk
        [[THINK, 20], [21, END], [30, 31, EOS]],  # a word held back at the boundary, then the tag
    ],
)
def test_streamer_separates_reasoning(tokenizer, pieces, skip_special_tokens):
    streamer = ThinkingStreamer(tokenizer, skip_special_tokens=skip_special_tokens)
    chunks = stream(streamer, [HUMAN, 40, AI, BLUETHINK], pieces)
    assert all(isinstance(c, ThinkingChunk) and c.text for c in chunks)
    assert joined(chunks, "reasoning") == "w20 w21"
    assert joined(chunks, "answer") == "w30 w31"  # the EOS is dropped, as parse_response drops it
    assert [c.kind for c in chunks] == sorted((c.kind for c in chunks), key=["reasoning", "answer"].index)
    assert not any(tag in c.text for c in chunks for tag in (THINK_START_TOKEN, THINK_END_TOKEN))


def test_streamer_stray_think_end_replaces_the_answer(tokenizer):
    """`<think>a</think>so 2</think>2`: the answer streamed before the second `</think>` is replaced, so the replayed
    stream is parse_response's answer (what follows the last `</think>`), not the two joined."""
    chunks = stream(ThinkingStreamer(tokenizer), [HUMAN, 40, AI, BLUETHINK], [[THINK], [20], [END], [30], [31], [END], [32], [EOS]])
    text = tokenizer.decode([THINK, 20, END, 30, 31, END, 32, EOS], skip_special_tokens=False)
    assert parse_response(text, eos_token=tokenizer.eos_token) == {"reasoning_content": "w20", "content": "w32"}
    assert joined(chunks, "reasoning") == "w20" and joined(chunks, "answer") == "w32"
    kinds = [k for k, _ in chunks]
    assert "answer_replace" in kinds and "w30" in joined(chunks[: kinds.index("answer_replace")], "answer")


PIECES = st.sampled_from(
    [THINK_START_TOKEN, THINK_END_TOKEN, THINK_MODE_TOKEN, "</s>", "<pad>", " ", "\n", "a", "so", "2", "<", "/", ">"]
)


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(PIECES, max_size=14), data=st.data())
def test_stream_parser_replays_to_parse_response(pieces, data):
    """Any text of tags, EOS, padding, words and tag fragments, cut into any chunks: the replayed stream equals
    parse_response of the whole text, and after every chunk it equals parse_response of the settled text so far."""
    text = "".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    deltas = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
    parser, chunks = ThinkingStreamParser("</s>"), []
    for delta in deltas:
        chunks += parser.feed(delta)
        so_far = parse_response(parser._settled(parser.text))
        assert (joined(chunks, "reasoning"), joined(chunks, "answer")) == (so_far["reasoning_content"] or "", so_far["content"])
    chunks += parser.finish()
    expected = parse_response(text)
    assert joined(chunks, "reasoning") == (expected["reasoning_content"] or "")
    assert joined(chunks, "answer") == expected["content"]
    assert all(c.text or c.kind.endswith("_replace") for c in chunks)


def test_streamer_prompt_ending_inside_think(tokenizer):
    streamer = ThinkingStreamer(tokenizer)
    chunks = stream(streamer, [HUMAN, 40, AI, BLUETHINK, THINK, 20], [[21], [END], [30]])
    assert joined(chunks, "reasoning") == "w21" and joined(chunks, "answer") == "w30"
    # the streamer resets after end(): a plain prompt starts in "answer"
    assert stream(streamer, [HUMAN, 40, AI], [[30], [31]]) == [("answer", "w30"), ("answer", " w31")]


def test_streamer_emits_prompt_when_asked(tokenizer):
    chunks = stream(ThinkingStreamer(tokenizer, skip_prompt=False), [HUMAN, 40, AI, BLUETHINK], [[THINK, 20, END, 30]])
    assert [c.kind for c in chunks] == ["prompt", "reasoning", "answer"]


def test_streamer_with_generate_matches_parse_response(model, tokenizer):
    ids, mask = left_pad([[HUMAN, 40, 41, AI, BLUETHINK]])
    streamer = ThinkingStreamer(tokenizer)
    config = GenerationConfig(max_new_tokens=12, pad_token_id=PAD, eos_token_id=None)
    result = {}

    def run():
        processors = LogitsProcessorList([ScriptedThinker([9]), ThinkingBudgetLogitsProcessor(4, THINK, END)])
        result["out"] = model.generate(
            input_ids=ids, attention_mask=mask, generation_config=config, logits_processor=processors, streamer=streamer
        )

    thread = threading.Thread(target=run)
    thread.start()
    chunks = list(streamer)
    thread.join()
    text = tokenizer.decode(result["out"][0, ids.shape[1] :], skip_special_tokens=False)
    parsed = parse_response(text)
    assert parsed["reasoning_content"] and parsed["content"]
    assert joined(chunks, "reasoning") == parsed["reasoning_content"]
    assert joined(chunks, "answer") == parsed["content"]


def test_shipped_nano_template_is_the_one_definition(nano_processor):
    tokenizer = nano_processor.tokenizer
    assert tokenizer.response_template == response_template(tokenizer.eos_token)
