"""The chat template (chat_template.jinja) is the single source of the prompt format."""

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bluelm_hf.processing_bluelm_v import default_chat_template

SAFE_TEXT = st.text(
    alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd", "Zs", "Po")), min_size=1, max_size=30
).filter(lambda s: s.strip() and "<" not in s and "[" not in s)


def render(tokenizer, messages, **kwargs):
    return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=default_chat_template(), **kwargs)


def test_single_turn_both_modes(tiny_tokenizer):
    messages = [{"role": "user", "content": "How many red cells?"}]
    assert render(tiny_tokenizer, messages, add_generation_prompt=True) == "[|Human|]:How many red cells?[|AI|]:"
    assert (
        render(tiny_tokenizer, messages, add_generation_prompt=True, enable_thinking=True)
        == "[|Human|]:How many red cells?[|AI|]:[|BlueThink|]"
    )
    assert (
        render(tiny_tokenizer, messages, add_generation_prompt=True, enable_thinking=False)
        == "[|Human|]:How many red cells?[|AI|]:"
    )


def test_system_images_and_history_drop_reasoning(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token
    messages = [
        {"role": "system", "content": "You are BlueLM."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Count red."}]},
        {"role": "assistant", "content": "2", "reasoning_content": "red blue red"},
        {"role": "user", "content": [{"type": "text", "text": "And blue?"}, {"type": "image", "url": "x.png"}]},
        {"role": "assistant", "content": "<think>blue once</think>1"},
    ]
    text = render(tiny_tokenizer, messages)
    assert text == (
        "You are BlueLM.[|Human|]:<image>Count red.[|AI|]:2" + eos
        + "[|Human|]:And blue?<image>[|AI|]:[|BlueThink|]<think>blue once</think>1" + eos
    )


def test_generation_markers_give_assistant_mask(tiny_tokenizer):
    messages = [
        {"role": "user", "content": "Count red."},
        {"role": "assistant", "content": "2", "reasoning_content": "red blue red"},
    ]
    out = tiny_tokenizer.apply_chat_template(
        messages, chat_template=default_chat_template(), return_assistant_tokens_mask=True, return_dict=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    assistant = tiny_tokenizer.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)
    prompt = tiny_tokenizer.decode([i for i, m in zip(ids, mask) if not m], skip_special_tokens=False)
    assert assistant.replace(" ", "") == ("<think>redbluered</think>2" + tiny_tokenizer.eos_token)
    assert prompt.replace(" ", "") == "[|Human|]:Countred.[|AI|]:[|BlueThink|]"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    turns=st.lists(st.tuples(SAFE_TEXT, SAFE_TEXT, st.one_of(st.none(), SAFE_TEXT)), min_size=1, max_size=4),
    n_images=st.integers(0, 2),
    thinking=st.booleans(),
)
def test_template_properties(tiny_tokenizer, turns, n_images, thinking):
    messages = []
    for i, (question, answer, reasoning) in enumerate(turns):
        content = [{"type": "image"}] * (n_images if i == 0 else 0) + [{"type": "text", "text": question}]
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": answer, "reasoning_content": reasoning})
    history = render(tiny_tokenizer, messages)
    # every turn appears once, answers end with eos, images become placeholders
    assert history.count("[|Human|]:") == len(turns)
    assert history.count("[|AI|]:") == len(turns)
    assert history.count(tiny_tokenizer.eos_token) == len(turns)
    assert history.count("<image>") == n_images
    # only the final turn may keep its reasoning
    last_reasoning = turns[-1][2]
    expect_think = 1 if last_reasoning and last_reasoning.strip() else 0
    assert history.count("<think>") == expect_think == history.count("</think>")
    assert history.count("[|BlueThink|]") == expect_think
    # a generation prompt extends the conversation text and ends with the mode switch
    prompt = render(tiny_tokenizer, messages + [{"role": "user", "content": "Next?"}], add_generation_prompt=True, enable_thinking=thinking)
    assert prompt.endswith("[|Human|]:Next?[|AI|]:" + ("[|BlueThink|]" if thinking else ""))
    # earlier turns lose their reasoning once a new user turn follows
    assert "<think>" not in prompt


@pytest.mark.parametrize("content", ["", None])
def test_empty_assistant_content(tiny_tokenizer, content):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": content}]
    assert render(tiny_tokenizer, messages) == "[|Human|]:hi[|AI|]:" + tiny_tokenizer.eos_token


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(SAFE_TEXT, SAFE_TEXT, st.one_of(st.none(), SAFE_TEXT), st.booleans(), st.integers(8, 200)),
        min_size=1,
        max_size=3,
    )
)
@example(rows=[("0", "0\xa0", None, False, 8)])  # a no-break space the tokenizer keeps apart
@example(rows=[("Count red", "2", "red blue red", True, 150), ("Any?", "no", None, True, 9)])
def test_processor_assistant_mask_is_transformers_mask(tiny_processor, rows):
    """BlueLMVProcessor hands transformers' assistant-mask walk a list instead of a tensor (speed); same mask."""
    from unittest import mock

    import torch
    from transformers.processing_utils import ProcessorMixin

    from bluelm_hf.processing_bluelm_v import BlueLMVProcessor
    from conftest import random_image

    conversations = []
    for i, (question, answer, reasoning, with_image, side) in enumerate(rows):
        content = [{"type": "image", "image": random_image(side, 2 * side, seed=i)}] if with_image else []
        content.append({"type": "text", "text": question})
        conversations.append(
            [
                {"role": "user", "content": content},
                {"role": "assistant", "content": [{"type": "text", "text": answer}], "reasoning_content": reasoning},
            ]
        )

    def masks():
        return tiny_processor.apply_chat_template(
            conversations,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            return_assistant_tokens_mask=True,
            processor_kwargs={"padding": True},
        )

    out = masks()
    with mock.patch.object(
        BlueLMVProcessor, "_adjust_assistant_masks_indices", ProcessorMixin._adjust_assistant_masks_indices
    ):
        reference = masks()
    assert torch.equal(out["input_ids"], reference["input_ids"])
    assert torch.equal(out["assistant_masks"], reference["assistant_masks"])
    tokenizer = tiny_processor.tokenizer
    for ids, mask, (_, answer, reasoning, _, _) in zip(out["input_ids"], out["assistant_masks"], rows):
        assistant = tokenizer.decode(ids[mask.bool()], skip_special_tokens=False)
        think = f"<think>{reasoning}</think>" if reasoning else ""
        assert "".join(assistant.split()) == "".join((think + answer + tokenizer.eos_token).split())
