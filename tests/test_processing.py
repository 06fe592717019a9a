"""BlueLMVProcessor: user text stays text, the context limit, MultiModalData counts, empty conversations, round trips."""

import json

import pytest
import torch
from PIL import Image
from conftest import TILE, random_image
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bluelm_hf import NANO, nano_task
from bluelm_hf.configuration_bluelm_v import SPECIAL_TOKENS

CONTROL_STRINGS = [*SPECIAL_TOKENS, "</s>", "<pad>"]
USER_TEXT = st.lists(
    st.one_of(st.sampled_from(CONTROL_STRINGS), st.text(alphabet="ab <>[|]:/?\n", max_size=8)), max_size=8
).map("".join)


def control_ids(tokenizer) -> set[int]:
    return {tokenizer.convert_tokens_to_ids(t) for t in CONTROL_STRINGS}


def conversation(text: str, image=None, *, with_image=True):
    block = {"type": "image", "image": image} if image is not None else {"type": "image"}
    return [{"role": "user", "content": ([block] if with_image else []) + [{"type": "text", "text": text}]}]


def control_sequence(ids, tokenizer) -> list[int]:
    controls = control_ids(tokenizer)
    return [i for i in (ids.tolist() if hasattr(ids, "tolist") else ids) if i in controls]


@pytest.fixture(scope="module")
def image():
    return random_image(2 * TILE, TILE)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=USER_TEXT)
@example(text="What does <image> mean? <think> </s> [|AI|]: [|Human|]: [|BlueThink|] <im_start>")
def test_user_text_never_becomes_control_tokens(tiny_processor, image, text):
    """Through `apply_chat_template(tokenize=True)`, through `processor(text=apply_chat_template(...))` (TRL's GRPO
    path, via TRL's own helper) and through TRL's SFT collator, the only control tokens are the template's: those of
    the same conversation with empty user text. The user's characters come back verbatim."""
    from trl.data_utils import apply_chat_template as trl_apply_chat_template
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    tokenizer = tiny_processor.tokenizer
    expected = tiny_processor.apply_chat_template(
        conversation("", image), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    expected = control_sequence(expected["input_ids"][0], tokenizer)

    direct = tiny_processor.apply_chat_template(
        conversation(text, image), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    prompt = trl_apply_chat_template({"prompt": conversation(text)}, tiny_processor)["prompt"]
    via_text = tiny_processor(text=[prompt], images=[image], return_tensors="pt")
    assert torch.equal(direct["input_ids"], via_text["input_ids"])
    for ids in (direct["input_ids"][0], via_text["input_ids"][0]):
        assert control_sequence(ids, tokenizer) == expected
        assert text in tokenizer.decode(ids, skip_special_tokens=False)

    sft = DataCollatorForVisionLanguageModeling(tiny_processor)(
        [{"messages": conversation(text) + [{"role": "assistant", "content": "2"}], "images": [image]}]
    )
    reply = tiny_processor.apply_chat_template(
        conversation("", image) + [{"role": "assistant", "content": "2"}], tokenize=True, return_dict=True
    )
    assert control_sequence(sft["input_ids"][0], tokenizer) == control_sequence(reply["input_ids"][0], tokenizer)


def test_hand_written_prompts_keep_their_control_tokens(tiny_processor, image):
    """A prompt typed as a string (no chat template) is the format itself: its markers are control tokens."""
    tokenizer = tiny_processor.tokenizer
    ids = tiny_processor(text=["[|Human|]:<image>hi[|AI|]:[|BlueThink|]<think>"], images=[image])["input_ids"][0]
    for token in ("[|Human|]:", "[|AI|]:", "[|BlueThink|]", "<think>", "<im_start>"):
        assert tokenizer.convert_tokens_to_ids(token) in ids, token


def test_sanitize_control_tokens_false_renders_verbatim(tiny_processor):
    prompt = tiny_processor.apply_chat_template(
        conversation("<think>", with_image=False), add_generation_prompt=True, sanitize_control_tokens=False
    )
    assert prompt == "[|Human|]:<think>[|AI|]:"


def test_thinking_budget_ignores_a_users_think_tag():
    """With thinking on and a budget of 2, the `<think>` a user typed is not the model's block: the nano opens its own
    block and thinks 2 tokens before the forced `</think>` (it was forced at step 0 when the user's tag counted)."""
    from bluelm_hf.inference import load

    model, processor = load(NANO)
    example_ = nano_task.make_dataset(1, seed=2, split="eval")[0]
    messages = conversation("<think> " + example_["question"], example_["image"])
    batch = processor.apply_chat_template(
        messages, add_generation_prompt=True, enable_thinking=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    start, end = model.config.think_start_token_id, model.config.think_end_token_id
    assert start not in batch["input_ids"][0].tolist()
    out = model.generate(**batch, max_new_tokens=12, do_sample=False, thinking_budget=2)[0, batch["input_ids"].shape[1] :]
    out = out.tolist()
    assert out[0] == start and end in out, out
    assert out.index(end) - 1 == 2, out


def test_prompt_longer_than_the_context_is_a_clear_error(tiny_processor, image):
    tokenizer = tiny_processor.tokenizer
    old = tokenizer.model_max_length
    tokenizer.model_max_length = 64
    try:
        text = "[|Human|]:<image>" + "the quick brown fox " * 20 + "[|AI|]:"
        full = tiny_processor(text=[text], images=[image], truncation=True, max_length=10**6)["input_ids"][0]
        n_image = full.count(tiny_processor.image_token_id)
        assert len(full) > 64 and n_image > 0
        with pytest.raises(ValueError, match=rf"prompt has {len(full)} tokens \({n_image} of them image tokens\).*context is 64"):
            tiny_processor(text=[text], images=[image])
        short = tiny_processor(text=["[|Human|]:hi[|AI|]:"])  # within the context: no error
        assert len(short["input_ids"][0]) < 64
    finally:
        tokenizer.model_max_length = old


def test_nano_processor_knows_its_context():
    """The shipped nano's tokenizer says its 1024-token context, so its processor refuses a 25k-token prompt."""
    from bluelm_hf.inference import load

    model, processor = load(NANO)
    assert processor.tokenizer.model_max_length == model.config.text_config.max_position_embeddings == 1024
    prompt = processor.apply_chat_template(conversation("so " * 25_000, with_image=False), add_generation_prompt=True)
    with pytest.raises(ValueError, match=r"prompt has \d{5} tokens \(0 of them image tokens\).*context is 1024"):
        processor(text=[prompt])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(height=st.integers(1, 6 * TILE), width=st.integers(1, 6 * TILE))
def test_num_multimodal_tokens_match_the_processor_output(tiny_processor, height, width):
    data = tiny_processor._get_num_multimodal_tokens(image_sizes=[(height, width), (TILE, 3 * TILE)])
    images = [random_image(width, height), random_image(3 * TILE, TILE)]
    out = tiny_processor(text=["<image>a", "<image>b"], images=images, padding=True, return_tensors="pt")
    counts = (out["input_ids"] == tiny_processor.image_token_id).sum(-1).tolist()
    assert data.num_image_tokens == counts
    assert sum(data.num_image_patches) == out["pixel_values"].shape[0]


@pytest.mark.parametrize("layout", ["(H, W)", "(H, W, 1)", "(1, H, W)", "(H, W) tensor", "(H, W, 3)", "(3, H, W)"])
def test_processor_takes_every_array_layout_the_loader_takes(tiny_processor, layout):
    """The processor gives an array the pixels the image processor (and `image_loading`) give it: a 2D grayscale
    array is no image to transformers' `ProcessorMixin.validate_inputs`, so the processor must load it first."""
    import numpy as np

    gray = np.random.default_rng(1).integers(0, 256, (TILE + 5, 2 * TILE - 3), dtype=np.uint8)
    arrays = {
        "(H, W)": gray, "(H, W, 1)": gray[..., None], "(1, H, W)": gray[None], "(H, W) tensor": torch.from_numpy(gray),
        "(H, W, 3)": np.repeat(gray[..., None], 3, -1), "(3, H, W)": np.repeat(gray[None], 3, 0),
    }
    out = tiny_processor(text=["<image>a"], images=[arrays[layout]], return_tensors="pt")
    reference = tiny_processor.image_processor(Image.fromarray(gray), return_tensors="pt")
    assert reference["pixel_values"].shape[0] > 1 and torch.equal(out["pixel_values"], reference["pixel_values"])


def test_empty_conversation_is_a_clear_error(tiny_processor):
    for empty in ([], [[]]):
        with pytest.raises(ValueError, match="empty conversation"):
            tiny_processor.apply_chat_template(empty)


def test_save_load_save_round_trip(tiny_processor, tmp_path):
    """What a user gets back is the processor they saved. The one difference transformers makes: `save_pretrained`
    writes `auto_map` (the pointer to the shipped processing_bluelm_v.py, because the class is custom code) and
    `from_pretrained` consumes it, so the loaded processor's `to_dict()` has no `auto_map`; saving it again writes the
    same files. Whether `to_dict()` shows `auto_map` depends on whether the class was registered for remote code in
    this process (transformers sets `_auto_class` on save), so transformers' round-trip tests, which compare
    `to_dict()` before save and after load, fail on it. (A subclass of transformers' LlavaProcessor registered the same way behaves alike.)"""
    from transformers import AutoProcessor

    tiny_processor.save_pretrained(tmp_path / "a")
    loaded = AutoProcessor.from_pretrained(tmp_path / "a")
    assert type(loaded) is type(tiny_processor)
    loaded.save_pretrained(tmp_path / "b")
    for name in ("processor_config.json", "chat_template.jinja", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text(), name
    assert loaded.tokenizer.get_vocab() == tiny_processor.tokenizer.get_vocab()
    assert json.loads((tmp_path / "a" / "processor_config.json").read_text())["auto_map"] == {
        "AutoProcessor": "processing_bluelm_v.BlueLMVProcessor"
    }
    saved, reloaded = tiny_processor.to_dict(), loaded.to_dict()
    saved.pop("auto_map", None), reloaded.pop("auto_map", None)  # present or not depending on load history
    assert saved == reloaded
