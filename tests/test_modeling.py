import copy
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import TILE, random_image, tiny_config
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    LlamaConfig,
    LlamaForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
    pipeline,
)

from bluelm_hf import PRESETS, BlueLMVConfig, BlueLMVForConditionalGeneration, assemble_bluelm
from bluelm_hf.assemble import add_bluelm_special_tokens

ROWS = [
    # (text, images): 0, 1 and 2 images, different aspect ratios
    ("[|Human|]:What is the quick brown fox?[|AI|]:", []),
    ("[|Human|]:<image>How many red cells?[|AI|]:", [(4 * TILE, TILE)]),
    ("[|Human|]:<image>and<image>Let me count.[|AI|]:", [(TILE, 3 * TILE), (2 * TILE, 2 * TILE)]),
]


def batch_inputs(processor, rows, padding_side="right", with_grids=False):
    """The processor's output for `rows`; `with_grids` adds the image processor's `image_grids` for the model."""
    texts = [t for t, _ in rows]
    images = [random_image(w, h, seed=i) for i, (_, sizes) in enumerate(rows) for (w, h) in sizes]
    processor.tokenizer.padding_side = padding_side
    batch = processor(text=texts, images=images or None, return_tensors="pt", padding=True)
    if with_grids:
        batch["image_grids"] = processor.image_processor(images, return_tensors="pt")["image_grids"]
    return batch


def test_processor_output_has_only_model_inputs(tiny_processor):
    """Trainers forward every processor key to the model (TRL's GRPO log-prob function takes no image_grids)."""
    batch = batch_inputs(tiny_processor, ROWS)
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values"}
    tiled = tiny_processor.image_processor([random_image(4 * TILE, TILE)], return_tensors="pt")
    assert tiled["num_patches"].tolist() == [tiny_processor.image_processor.get_num_tiles(TILE, 4 * TILE)]


def position_ids_from_mask(mask):
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_forward_equals_per_row(tiny_model, tiny_processor, padding_side):
    batch = batch_inputs(tiny_processor, ROWS, padding_side)
    with torch.no_grad():
        logits = tiny_model(**batch, position_ids=position_ids_from_mask(batch["attention_mask"])).logits
    for i, row in enumerate(ROWS):
        texts, sizes = row  # same images as in the batch (seeded by row index)
        images = [random_image(w, h, seed=i) for (w, h) in sizes]
        single = tiny_processor(text=[texts], images=images or None, return_tensors="pt")
        with torch.no_grad():
            ref = tiny_model(**single).logits[0]
        mask = batch["attention_mask"][i].bool()
        torch.testing.assert_close(logits[i][mask], ref, atol=1e-5, rtol=1e-4)


def test_processor_expands_placeholders(tiny_processor):
    batch = batch_inputs(tiny_processor, ROWS, with_grids=True)
    ids = batch["input_ids"]
    per_tile = tiny_processor.image_processor.get_tokens_per_tile()
    grids = batch["image_grids"].tolist()
    # row 1: a 4:1 image; row 2: two images
    tiles = [tiny_processor.image_processor.get_num_tiles_from_grid(g) for g in grids]
    assert batch["pixel_values"].shape == (sum(tiles), 3, TILE, TILE)
    image_id = tiny_processor.image_token_id
    assert (ids[0] == image_id).sum() == 0
    assert (ids[1] == image_id).sum() == tiles[0] * per_tile
    assert (ids[2] == image_id).sum() == (tiles[1] + tiles[2]) * per_tile
    start = tiny_processor.tokenizer.convert_tokens_to_ids("<im_start>")
    end = tiny_processor.tokenizer.convert_tokens_to_ids("<im_end>")
    assert (ids[2] == start).sum() == 2 and (ids[2] == end).sum() == 2


def test_image_count_mismatch_is_a_clear_error(tiny_processor):
    with pytest.raises(ValueError, match=r"2 <image> tokens.*1 images"):
        tiny_processor(text=["<image><image>hi"], images=[random_image(TILE, TILE)], return_tensors="pt")


def test_images_kept_in_their_own_channels_are_a_clear_model_error(tiny_model, tiny_processor):
    """do_convert_rgb=False through the processor gives RGBA tiles; the 3-channel tower says so, with the numbers."""
    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 256, (TILE, TILE, 4), dtype=np.uint8), "RGBA")
    batch = tiny_processor(text=["<image>hi"], images=[rgba], return_tensors="pt", do_convert_rgb=False,
                           image_mean=[0.5] * 4, image_std=[0.5] * 4)
    assert batch["pixel_values"].shape[1] == 4
    with pytest.raises(ValueError, match=r"shape \(num_tiles, 3, height, width\).*num_channels is 3.*\(1, 4, 56, 56\)"):
        tiny_model(**batch)
    rgb = tiny_processor(text=["<image>hi"], images=[rgba], return_tensors="pt")  # the default converts
    assert tiny_model(**rgb).logits.shape[:2] == rgb["input_ids"].shape


def test_model_rejects_features_placeholder_mismatch(tiny_model, tiny_processor):
    batch = batch_inputs(tiny_processor, ROWS[1:2], with_grids=True)
    ids = batch["input_ids"].clone()
    ids[0, (ids[0] == tiny_processor.image_token_id).nonzero()[0]] = 5
    with pytest.raises(ValueError, match=r"image tokens but the images give"):
        tiny_model(input_ids=ids, pixel_values=batch["pixel_values"], image_grids=batch["image_grids"])
    with pytest.raises(ValueError, match=r"image_grids describe \d+ tiles"):
        tiny_model(**{**batch, "pixel_values": batch["pixel_values"][:-1]})
    # Image tokens without features are not the model's error: generate runs assisted decoding's first pass that way.
    # The user who forgot the image gets the processor's error (test_forgotten_image_is_a_processor_error).
    with torch.no_grad():
        assert tiny_model(input_ids=batch["input_ids"]).logits.shape[:2] == batch["input_ids"].shape


def test_forgotten_image_is_a_processor_error(tiny_processor):
    with pytest.raises(ValueError, match=r"Found total 1 <image> tokens and 0 images"):
        tiny_processor(text=["[|Human|]:<image>How many red cells?[|AI|]:"], return_tensors="pt")


def strip_left_padding(row, mask_row):
    return row[mask_row.bool()] if mask_row is not None else row


@pytest.fixture(scope="module")
def nano():
    from bluelm_hf import NANO
    from bluelm_hf.inference import load

    return load(NANO)


def nano_rows(processor, n: int, seed: int = 5):
    """(prompt, image) of `n` held-out nano questions: the trained nano's answers depend on the image (a random tiny
    model answers the same tokens whatever it sees)."""
    from bluelm_hf import nano_task

    data = nano_task.make_dataset(n, seed=seed, split="eval")
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in data["question"]]
    return [(processor.apply_chat_template(m, add_generation_prompt=True), im) for m, im in zip(messages, data["image"])]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_beams=2),
        dict(num_beams=2, num_return_sequences=2),
        dict(do_sample=True, top_k=1, num_return_sequences=3),  # top-1 sampling is greedy, with 3 copies per row
    ],
    ids=["beams", "beams-return-2", "sample-return-3"],
)
def test_beams_and_return_sequences_keep_each_rows_images(nano, kwargs):
    """Each returned sequence equals generating its row alone: generate repeats each row's own image features."""
    model, processor = nano
    rows = nano_rows(processor, 3)
    processor.tokenizer.padding_side = "left"
    batch = processor(text=[t for t, _ in rows], images=[im for _, im in rows], padding=True, return_tensors="pt")
    common = dict(max_new_tokens=8, min_new_tokens=8, **kwargs)
    out = model.generate(**batch, **common)
    copies = kwargs.get("num_return_sequences", 1)
    assert out.shape[0] == len(rows) * copies
    new = out[:, batch["input_ids"].shape[1] :]
    alone = []
    for text, image in rows:
        single = processor(text=[text], images=[image], return_tensors="pt")
        alone.append(model.generate(**single, **common)[:, single["input_ids"].shape[1] :])
        assert torch.equal(new[len(alone) * copies - copies : len(alone) * copies], alone[-1]), (new, alone)
    assert len({tuple(a[0].tolist()) for a in alone}) > 1  # the rows' answers differ: a swapped image would show


def test_assisted_decoding_with_an_image_prompt(tiny_model, tiny_processor):
    """transformers runs the assistant's first forward without image inputs; the result is plain greedy's."""
    batch = batch_inputs(tiny_processor, ROWS[1:2])
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assisted = tiny_model.generate(**batch, assistant_model=tiny_model, **kwargs)
    assert torch.equal(assisted, tiny_model.generate(**batch, **kwargs))


def test_image_features_return_vision_hidden_states_and_attentions(tiny_model, tiny_processor):
    batch = batch_inputs(tiny_processor, ROWS, with_grids=True)
    eager = BlueLMVForConditionalGeneration._from_config(copy.deepcopy(tiny_model.config), attn_implementation="eager")
    eager.load_state_dict(tiny_model.state_dict())  # sdpa returns no attention weights
    with torch.no_grad():
        out = eager.get_image_features(
            batch["pixel_values"], batch["image_grids"], output_hidden_states=True, output_attentions=True
        )
    layers = tiny_model.config.vision_config.num_hidden_layers
    num_tiles = batch["pixel_values"].shape[0]  # > vision_batch_size: the chunks' layers are joined
    assert num_tiles > tiny_model.config.vision_batch_size
    assert len(out.hidden_states) == layers + 1 and len(out.attentions) == layers
    assert out.hidden_states[-1].shape[0] == num_tiles and out.attentions[0].shape[0] == num_tiles
    assert [len(f) for f in out.pooler_output] == [
        tiny_processor.image_processor.get_num_tiles_from_grid(g) * tiny_model.config.image_tokens_per_tile
        for g in batch["image_grids"]
    ]


def test_generate_rejects_a_prompt_longer_than_the_context(tiny_model, tiny_processor):
    context = tiny_model.config.text_config.max_position_embeddings
    text = "[|Human|]:<image>" + "the quick brown fox " * context + "[|AI|]:"
    batch = tiny_processor(text=[text], images=[random_image(4 * TILE, TILE)], return_tensors="pt")
    length, n_image = batch["input_ids"].shape[1], int((batch["input_ids"] == tiny_processor.image_token_id).sum())
    with pytest.raises(ValueError, match=rf"prompt has {length} tokens \({n_image} of them image tokens\).*context is {context}"):
        tiny_model.generate(**batch, max_new_tokens=2)


def test_loading_a_checkpoint_of_another_model_type_is_a_clear_error(tmp_path):
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
    llm.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"holds a 'llama' checkpoint, not a 'bluelm_v' one"):
        BlueLMVForConditionalGeneration.from_pretrained(tmp_path)


def test_greedy_generation_with_and_without_cache(tiny_model, tiny_processor):
    batch = batch_inputs(tiny_processor, ROWS, padding_side="left")
    kwargs = dict(max_new_tokens=8, do_sample=False, min_new_tokens=8)
    with_cache = tiny_model.generate(**batch, **kwargs)
    without = tiny_model.generate(**batch, use_cache=False, **kwargs)
    assert with_cache.shape[1] == batch["input_ids"].shape[1] + 8
    assert torch.equal(with_cache, without)


def test_sdpa_and_eager_agree(tiny_tokenizer, tiny_processor):
    token_ids = add_bluelm_special_tokens(tiny_tokenizer)
    config = tiny_config(token_ids, vocab_size=len(tiny_tokenizer))
    torch.manual_seed(1)
    sdpa = BlueLMVForConditionalGeneration._from_config(copy.deepcopy(config), attn_implementation="sdpa").eval()
    eager = BlueLMVForConditionalGeneration._from_config(copy.deepcopy(config), attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.model.language_model.config._attn_implementation == "sdpa"
    assert eager.model.vision_tower.config._attn_implementation == "eager"
    batch = batch_inputs(tiny_processor, ROWS)
    with torch.no_grad():
        torch.testing.assert_close(sdpa(**batch).logits, eager(**batch).logits, atol=1e-5, rtol=1e-4)


def test_gradients_reach_every_part(tiny_tokenizer, tiny_processor):
    token_ids = add_bluelm_special_tokens(tiny_tokenizer)
    model = BlueLMVForConditionalGeneration(tiny_config(token_ids, vocab_size=len(tiny_tokenizer)))
    model.activation_checkpointing_enable()
    model.train()
    batch = batch_inputs(tiny_processor, ROWS)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model(**batch, labels=labels).loss.backward()
    for part in ("vision_tower", "multi_modal_projector", "language_model"):
        grads = [p.grad for p in getattr(model, part).parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), part
        assert sum(g.abs().sum() for g in grads) > 0, part


def test_save_load_roundtrip_bit_exact(tiny_model, tiny_processor, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    tiny_processor.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, BlueLMVConfig)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(processor).__name__ == "BlueLMVProcessor"
    batch = batch_inputs(tiny_processor, ROWS)
    batch2 = batch_inputs(processor, ROWS)
    assert torch.equal(batch["input_ids"], batch2["input_ids"])
    assert torch.equal(batch["pixel_values"], batch2["pixel_values"])
    with torch.no_grad():
        assert torch.equal(tiny_model(**batch).logits, model(**batch2).logits)


def test_trust_remote_code_without_package(tiny_model, tiny_processor, tmp_path):
    """The saved checkpoint ships its code: it loads where bluelm_hf cannot be imported."""
    ckpt = tmp_path / "ckpt"
    tiny_model.save_pretrained(ckpt)
    tiny_processor.save_pretrained(ckpt)
    for name in ("modeling_bluelm_v.py", "configuration_bluelm_v.py", "processing_bluelm_v.py"):
        assert (ckpt / name).exists(), name
    batch = batch_inputs(tiny_processor, ROWS[1:2])
    with torch.no_grad():
        expected = tiny_model(**batch).logits
    torch.save(expected, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys, builtins
        real_import = builtins.__import__
        def guarded(name, *a, **k):
            if name == "bluelm_hf" or name.startswith("bluelm_hf."):
                raise ImportError("bluelm_hf is hidden in this test")
            return real_import(name, *a, **k)
        builtins.__import__ = guarded
        import numpy as np, torch
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained({str(ckpt)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(ckpt)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 256, ({TILE}, {4 * TILE}, 3), dtype=np.uint8))
        batch = processor(text=[{ROWS[1][0]!r}], images=[image], return_tensors="pt")
        with torch.no_grad():
            logits = model(**batch).logits
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert torch.equal(logits, expected), (logits - expected).abs().max()
        print("REMOTE_OK")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE_OK" in result.stdout


def test_image_text_to_text_pipeline(tiny_model, tiny_processor):
    pipe = pipeline("image-text-to-text", model=tiny_model, processor=tiny_processor)
    messages = [
        {"role": "user", "content": [{"type": "image", "image": random_image(2 * TILE, TILE)}, {"type": "text", "text": "How many red cells?"}]}
    ]
    out = pipe(text=messages, max_new_tokens=4, do_sample=False)
    assert isinstance(out[0]["generated_text"], list)
    assert out[0]["generated_text"][-1]["role"] == "assistant"


def test_image_text_to_text_pipeline_sees_the_image():
    """The pipeline's answer, from the shipped nano, is generate's on the same image and differs from its answer about a
    blank image, so it fails when image features never reach the LLM (a random tiny model answers the same tokens
    whatever the image)."""
    from bluelm_hf import NANO, nano_task
    from bluelm_hf.inference import load

    model, processor = load(NANO)
    pipe = pipeline("image-text-to-text", model=model, processor=processor)
    example = nano_task.make_dataset(1, seed=5, split="eval")[0]
    kwargs = dict(max_new_tokens=12, do_sample=False)

    def answer(image):
        # With the tokenizer's response_template the pipeline returns the chat plus the parsed assistant turn.
        messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": example["question"]}]}]
        return pipe(text=messages, generate_kwargs=kwargs)[0]["generated_text"][-1]

    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": example["question"]}]}],
        add_generation_prompt=True,
    )
    batch = processor(text=[prompt], images=[example["image"]], return_tensors="pt")
    direct = model.generate(**batch, **kwargs)[0, batch["input_ids"].shape[1] :]
    assert answer(example["image"]) == processor.parse_response(direct)
    assert answer(example["image"]) != answer(Image.new("RGB", example["image"].size, "white"))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_counts(name):
    config = PRESETS[name]()
    with torch.device("meta"):
        model = BlueLMVForConditionalGeneration(config)
    total = sum(p.numel() for p in model.parameters())
    vit = sum(p.numel() for p in model.vision_tower.parameters())
    assert config.image_tokens_per_tile == 196
    assert 0.38e9 <= vit <= 0.43e9
    if name == "bluelm-2.5-3b":
        assert abs(total - 2.9e9) <= 0.03 * 2.9e9, total
        assert config.text_config.max_position_embeddings == 32768
        assert config.text_config.rope_parameters["rope_type"] == "yarn"
        assert config.max_grid_size == 4 and config.max_image_side == 1512
    else:
        llm = sum(p.numel() for p in model.language_model.parameters()) + model.lm_head.weight.numel()
        assert abs(llm - 2.7e9) <= 0.03 * 2.7e9, llm
        assert config.max_grid_size == 3


def test_no_split_modules_and_tied_embeddings(tiny_model):
    assert "LlamaDecoderLayer" in tiny_model._no_split_modules
    assert "SiglipEncoderLayer" in tiny_model._no_split_modules
    assert tiny_model.lm_head.weight.data_ptr() == tiny_model.get_input_embeddings().weight.data_ptr()


def test_untied_embeddings(tiny_tokenizer):
    token_ids = add_bluelm_special_tokens(tiny_tokenizer)
    config = tiny_config(token_ids, vocab_size=len(tiny_tokenizer), tie_word_embeddings=False)
    model = BlueLMVForConditionalGeneration(config)
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()


def test_assemble_from_pretrained_parts(tmp_path, tiny_tokenizer):
    """SigLIP vision tower + causal LM + tokenizer saved on the fly -> BlueLM, then save -> Auto-load."""
    vision = SiglipVisionModel(
        SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=TILE)
    )
    vision.save_pretrained(tmp_path / "vision")
    from nano_data import train_tokenizer
    from conftest import CORPUS

    tokenizer = train_tokenizer(CORPUS, vocab_size=150)
    n_before = len(tokenizer)
    llm = LlamaForCausalLM(
        LlamaConfig(vocab_size=n_before, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    )
    llm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")

    model, processor = assemble_bluelm(str(tmp_path / "vision"), str(tmp_path / "llm"), max_grid_size=2)
    assert model.config.max_grid_size == 2
    assert len(processor.tokenizer) >= n_before
    assert model.get_input_embeddings().weight.shape[0] == len(processor.tokenizer)
    for token in ("<image>", "[|BlueThink|]", "<think>", "</think>", "[|Human|]:", "[|AI|]:"):
        assert len(processor.tokenizer.encode(token, add_special_tokens=False)) == 1, token
    # the pretrained weights were kept
    torch.testing.assert_close(
        model.vision_tower.embeddings.patch_embedding.weight,
        vision.embeddings.patch_embedding.weight,
    )
    torch.testing.assert_close(model.lm_head.weight[:n_before], llm.lm_head.weight)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many red cells?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=True)
    batch = processor(text=[prompt], images=[random_image(2 * TILE, TILE)], return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 3 or out[0, -1] == processor.tokenizer.eos_token_id
    model.save_pretrained(tmp_path / "bluelm")
    processor.save_pretrained(tmp_path / "bluelm")
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "bluelm").eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)


def test_assemble_rejects_non_siglip(tmp_path):
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
    llm.save_pretrained(tmp_path / "llm")
    with pytest.raises(ValueError, match="fixed-resolution SigLIP"):
        assemble_bluelm(str(tmp_path / "llm"), str(tmp_path / "llm"))


def test_vision_batch_size_does_not_change_features(tiny_model, tiny_processor):
    batch = batch_inputs(tiny_processor, ROWS, with_grids=True)
    with torch.no_grad():
        a = torch.cat(tiny_model.get_image_features(batch["pixel_values"], batch["image_grids"]).pooler_output)
        old = tiny_model.config.vision_batch_size
        tiny_model.config.vision_batch_size = 100
        try:
            b = torch.cat(tiny_model.get_image_features(batch["pixel_values"], batch["image_grids"]).pooler_output)
        finally:
            tiny_model.config.vision_batch_size = old
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_downsampler_pads_27_to_28():
    from bluelm_hf.modeling_bluelm_v import BlueLMVMultiModalProjector

    config = PRESETS["bluelm-2.5-3b"]()
    with torch.device("meta"):
        projector = BlueLMVMultiModalProjector(config)
    x = torch.arange(27 * 27, dtype=torch.float32).view(1, 729, 1).expand(1, 729, 1152).contiguous()
    merged = projector.downsample(x)
    assert merged.shape == (1, 196, 4 * 1152)
    # first merged token = patches (0,0),(0,1),(1,0),(1,1); last = (26,26) + 3 zero pads
    first = merged[0, 0].view(4, 1152)[:, 0].tolist()
    assert first == [0, 1, 27, 28]
    last = merged[0, -1].view(4, 1152)[:, 0].tolist()
    assert last == [27 * 27 - 1, 0, 0, 0]


def test_generate_thinking_budget_from_generation_config(tiny_model, tiny_processor):
    """`generation_config.thinking_budget` and `.thinking_end_sequence_ids` reach the budget processor (the way
    TRL's GRPOTrainer passes `generation_kwargs`)."""
    from transformers import GenerationConfig

    tokenizer = tiny_processor.tokenizer
    end = tokenizer.convert_tokens_to_ids("</think>")
    message = tokenizer.encode("So", add_special_tokens=False)
    prompt = torch.tensor([tokenizer.encode("[|Human|]:hi[|AI|]:[|BlueThink|]<think>", add_special_tokens=False)])
    config = GenerationConfig(
        max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id,
        thinking_budget=2, thinking_end_sequence_ids=[*message, end],
    )  # fmt: skip
    out = tiny_model.generate(input_ids=prompt, generation_config=config)[0, prompt.shape[1] :].tolist()
    # two reasoning tokens (this random model repeats <think>, which inside a block is reasoning), then the close
    assert out[2 : 2 + len(message) + 1] == [*message, end] and end not in out[:2]
    # an explicit argument wins over the generation config
    out = tiny_model.generate(input_ids=prompt, generation_config=config, thinking_budget=0)[0, prompt.shape[1] :]
    assert out[: len(message) + 1].tolist() == [*message, end]


def test_forward_compiles_as_one_graph(tiny_model, tiny_processor):
    """`_can_compile_fullgraph`: the forward with images traces without graph breaks, and generating with a static
    cache and a fullgraph-compiled forward gives eager's tokens. (Dynamo's `eager` backend: the graph capture is
    what is checked; no C++ compiler is needed.)"""
    import torch._dynamo

    assert type(tiny_model)._can_compile_fullgraph
    batch = batch_inputs(tiny_processor, ROWS, padding_side="left")
    torch._dynamo.reset()
    compiled = torch.compile(tiny_model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(**batch).logits, tiny_model(**batch).logits)
    kwargs = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, cache_implementation="static")
    expected = tiny_model.generate(**batch, **{**kwargs, "cache_implementation": None})
    model = copy.copy(tiny_model)
    model.forward = torch.compile(tiny_model.forward, fullgraph=True, backend="eager")
    assert torch.equal(model.generate(**batch, **kwargs), expected)
