"""`assemble_bluelm` / `bluelm-hf assemble` at real widths: a SigLIP so400m-patch14-384-shaped vision tower and a
Qwen3-1.7B-shaped LM (real hidden sizes, heads, vocabulary and generation defaults; one layer each so it fits in CI),
random weights, saved locally. No Hub."""

import json

import pytest
import torch
from conftest import random_image

from nano_data import train_tokenizer  # recipes/nano, on sys.path by conftest

QWEN3_GENERATION = dict(do_sample=True, temperature=0.6, top_k=20, top_p=0.95, eos_token_id=[151645, 151643],
                        bos_token_id=151643, pad_token_id=151643)  # fmt: skip


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """(vision dir, LM dir): so400m-384 widths in fp32 (as SigLIP ships), Qwen3-1.7B widths in bf16 (as Qwen ships)."""
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    vision_config = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=1,
                                       num_attention_heads=16, patch_size=14, image_size=384)  # fmt: skip
    SiglipVisionModel(vision_config).save_pretrained(root / "siglip")
    text_config = Qwen3Config(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=1,
                              num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                              tie_word_embeddings=True, initializer_range=0.02)  # fmt: skip
    with torch.device("cpu"):
        lm = Qwen3ForCausalLM(text_config).to(torch.bfloat16)
    lm.generation_config = GenerationConfig(**QWEN3_GENERATION)
    lm.save_pretrained(root / "qwen")
    del lm
    tokenizer = train_tokenizer(["How many red cells? 3. Hello there."] * 4, vocab_size=300)
    tokenizer.save_pretrained(root / "qwen")
    return root / "siglip", root / "qwen"


@pytest.fixture(scope="module")
def assembled(parts, tmp_path_factory):
    from bluelm_hf.cli import main

    out = tmp_path_factory.mktemp("assembled")
    assert main(["assemble", str(parts[0]), str(parts[1]), str(out)]) == 0
    return out


@pytest.mark.slow
def test_one_dtype_the_lms(parts):
    from bluelm_hf.assemble import assemble_bluelm

    model, processor = assemble_bluelm(str(parts[0]), str(parts[1]))
    dtypes = {name.split(".")[1] if name.startswith("model.") else name.split(".")[0]: p.dtype
              for name, p in model.named_parameters()}  # fmt: skip
    assert set(dtypes.values()) == {torch.bfloat16}, dtypes
    # An image forward works (it failed with "mat1 and mat2 must have the same dtype" before).
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many red cells?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[random_image(384, 384)], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    # Qwen's 151,936 embedding rows are kept (they have room for BlueLM's tokens): not shrunk to the tokenizer.
    assert model.get_input_embeddings().weight.shape == (151936, 2048)
    # The projector is initialised from initializer_range (0.02), not PyTorch's default kaiming-uniform.
    weight = model.multi_modal_projector.linear_1.weight.float()
    assert weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert float(model.multi_modal_projector.linear_1.bias.detach().abs().max()) == 0.0

    fp32, _ = assemble_bluelm(str(parts[0]), str(parts[1]), dtype="float32")
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}
    with pytest.raises(ValueError, match="unknown dtype 'bf17'"):
        assemble_bluelm(str(parts[0]), str(parts[1]), dtype="bf17")


@pytest.mark.slow
def test_saved_checkpoint_reloads_in_its_dtype_with_the_lms_generation_defaults(assembled):
    from transformers import AutoModelForImageTextToText, GenerationConfig

    config = json.loads((assembled / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    generation = GenerationConfig.from_pretrained(assembled)
    assert (generation.do_sample, generation.temperature, generation.top_k, generation.top_p) == (True, 0.6, 20, 0.95)
    eos = generation.eos_token_id
    assert 151645 in eos and 151643 in eos, eos  # Qwen's eos list, plus the tokenizer's own eos
    model = AutoModelForImageTextToText.from_pretrained(assembled)  # no dtype given: the saved one
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
