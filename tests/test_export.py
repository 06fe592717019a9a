"""Tests of bluelm_hf.export (ONNX / ExecuTorch export, quantization, verification) and bluelm_hf.ort_runner.

One tiny random BlueLM is saved to a temporary directory and exported to float32 ONNX once (module fixture, ~35 s:
torch.export + the ONNX conversion dominate); the int8 / int4 exports quantize that export (`quantize_export`, a few
seconds each), and the full `export_model(quant="mixed")` path runs once more. The tiny model is initialised with
large weights so that its greedy continuation is not one repeated token, which would make "identical tokens" a weak
check.
"""

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

from bluelm_hf import BlueLMVForConditionalGeneration, BlueLMVImageProcessor, BlueLMVProcessor
from bluelm_hf.assemble import add_bluelm_special_tokens

from conftest import TILE, random_image, tiny_config

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from bluelm_hf.export import (  # noqa: E402
    BNB_SKIP_MODULES,
    ExportVerificationError,
    add_export_subcommand,
    bnb_config,
    export_main,
    export_model,
    quantize_export,
    verify_export,
)
from bluelm_hf.ort_runner import MANIFEST_FILE, OrtBlueLM  # noqa: E402

HAS_EXECUTORCH = importlib.util.find_spec("executorch") is not None


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    torch.manual_seed(0)
    token_ids = add_bluelm_special_tokens(tiny_tokenizer)
    config = tiny_config(token_ids, vocab_size=len(tiny_tokenizer))
    config.text_config.initializer_range = 0.2  # peakier logits: a varied greedy continuation
    model = BlueLMVForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tiny_tokenizer.eos_token_id
    model.generation_config.pad_token_id = tiny_tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    image_processor = BlueLMVImageProcessor(tile_size=TILE, max_grid_size=3, max_image_side=4 * TILE)
    processor = BlueLMVProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer)
    path = tmp_path_factory.mktemp("tiny_bluelm")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def fp32_export(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "fp32"
    report = export_model(model_dir, out, format="onnx", quant="none", verify=True, verify_tokens=12)
    return out, report


@pytest.fixture(scope="module")
def runner(fp32_export):
    return OrtBlueLM.from_pretrained(fp32_export[0], num_threads=1)


@pytest.fixture(scope="module")
def torch_model(model_dir):
    from bluelm_hf.export import load_for_export

    return load_for_export(model_dir)


def _inputs(processor, question="How many red cells are there?", image=True, thinking=False, suffix=""):
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": question}]
    text = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, enable_thinking=thinking
    )
    images = [random_image(2 * TILE + 10, TILE, seed=1)] if image else None
    return processor(text=[text + suffix], images=images, return_tensors="pt")


# ---------------------------------------------------------------------------------------------------- fp32


def test_fp32_export_layout_and_verification(fp32_export):
    out, report = fp32_export
    verification = report["verification"]
    assert verification["passed"], verification["failures"]
    assert verification["max_abs_diff_logits"] < 1e-3
    assert verification["greedy_identical"]
    assert verification["greedy_tokens_export"] == verification["greedy_tokens_pytorch"]
    assert len(set(verification["greedy_tokens_pytorch"])) > 1, "the tiny model should not repeat one token"
    assert verification["image_tiles"] > 1  # the AnyRes grid plus the thumbnail go through one dynamic batch

    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert set(manifest["components"]) == {"vision_encoder", "embed_tokens", "decoder"}
    decoder = manifest["components"]["decoder"]
    names = [i["name"] for i in decoder["inputs"]]
    assert names[:3] == ["inputs_embeds", "attention_mask", "position_ids"]
    assert "past_key_values.0.key" in names and "past_key_values.1.value" in names
    assert [o["name"] for o in decoder["outputs"]][:2] == ["logits", "present.0.key"]
    assert decoder["inputs"][0]["shape"][:2] == ["batch_size", "sequence_length"]
    assert manifest["components"]["vision_encoder"]["inputs"][0]["shape"][0] == "num_tiles"
    for entry in manifest["components"].values():
        for file in entry["files"]:
            assert (out / file).is_file()
    # self-contained: processor, tokenizer, config and chat template next to the graphs
    for file in ("config.json", "tokenizer.json", "processor_config.json", "export.json"):
        assert (out / file).is_file(), file
    assert not list(out.glob("*.safetensors"))


def test_export_graphs_carry_no_debug_metadata(fp32_export):
    """torch.onnx's per-node FX / stack-trace metadata is stripped (it was a fifth of nano's mixed export)."""
    import onnx

    out, _ = fp32_export
    for name in ("vision_encoder", "embed_tokens", "decoder"):
        graph = onnx.load(str(out / f"{name}.onnx"), load_external_data=False).graph
        assert len(graph.node) > 0
        assert [n.name for n in graph.node if len(n.metadata_props)] == []


def test_runner_matches_pytorch_generate(runner, torch_model):
    model, processor = torch_model
    batch = _inputs(processor)
    with torch.no_grad():
        expected = model.generate(**batch, max_new_tokens=10, do_sample=False)
    result = runner.generate(**{k: v for k, v in batch.items()}, max_new_tokens=10)
    assert result.sequences.tolist() == expected.tolist()
    assert result.timings["prefill_s"] > 0


def test_runner_min_new_tokens_keeps_eos_out_like_pytorch(runner, torch_model):
    """min_new_tokens: EOS cannot be chosen before that many new tokens, in the runner as in transformers' generate;
    an EOS-ending prompt then decodes the same continuation in both."""
    model, processor = torch_model
    batch = _inputs(processor)
    with torch.no_grad():
        first = int(model(**batch).logits[0, -1].argmax())
    eos_ids = [first]  # the greedy first token as EOS: keeping it out changes the result
    with torch.no_grad():
        plain = model.generate(**batch, max_new_tokens=6, do_sample=False, eos_token_id=eos_ids)
        expected = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False, eos_token_id=eos_ids)
    result = runner.generate(**batch, max_new_tokens=6, min_new_tokens=6, eos_token_id=eos_ids)
    assert plain.shape[1] == batch["input_ids"].shape[1] + 1  # stopped at once
    assert result.sequences.tolist() == expected.tolist()
    assert first not in result.new_tokens[0].tolist()


def test_inference_load_and_generate_drive_an_export_like_pytorch(fp32_export, model_dir):
    """`bluelm_hf.inference.load(EXPORT)` gives an OrtBlueLM that `generate` / `evaluate_nano` / `bluelm-hf eval`
    use unchanged: same parsed completions as the PyTorch checkpoint."""
    from bluelm_hf.inference import generate, load

    export, _ = load(fp32_export[0])
    assert isinstance(export, OrtBlueLM)
    model, processor = load(model_dir)
    images = [random_image(2 * TILE + 10, TILE, seed=1), None]
    questions = ["How many red cells are there?", "What is in the picture?"]
    for thinking in (False, True):
        got = generate(export, export.processor, questions, images, thinking=thinking, max_new_tokens=8)
        want = generate(model, processor, questions, images, thinking=thinking, max_new_tokens=8)
        assert got == want


def test_runner_text_only_and_batch(runner, torch_model):
    """Left-padded batch: one row with an image, one without; same tokens as PyTorch."""
    model, processor = torch_model
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}],
            add_generation_prompt=True,
        ),
        processor.apply_chat_template([{"role": "user", "content": "Count: red, blue."}], add_generation_prompt=True),
    ]
    processor.tokenizer.padding_side = "left"
    batch = processor(text=texts, images=[random_image(TILE, 2 * TILE, seed=3)], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model.generate(**batch, max_new_tokens=6, do_sample=False)
    result = runner.generate(**batch, max_new_tokens=6)
    assert result.sequences.tolist() == expected.tolist()


def test_runner_thinking_modes_and_budget(runner, torch_model):
    model, processor = torch_model
    think_start, think_end = model.config.think_start_token_id, model.config.think_end_token_id

    on = runner.build_inputs("How many?", random_image(80, 60), enable_thinking=True)
    off = runner.build_inputs("How many?", random_image(80, 60), enable_thinking=False)
    assert on["input_ids"][0, -1] == model.config.think_mode_token_id
    assert off["input_ids"][0, -1] != model.config.think_mode_token_id
    answer = runner.chat("How many?", random_image(80, 60), enable_thinking=False, max_new_tokens=5)
    assert set(answer) >= {"reasoning_content", "content", "text", "num_thinking_tokens"}

    # A random model never opens <think> by itself: start the block in the prompt, as a trained model would.
    batch = _inputs(processor, thinking=True, suffix="<think>")
    for budget in (0, 3):
        result = runner.generate(**batch, max_new_tokens=8, thinking_budget=budget)
        new = result.new_tokens[0].tolist()
        assert think_end in new and new.index(think_end) == budget, new
        assert think_start not in new[: budget + 1]
        with torch.no_grad():
            expected = model.generate(**batch, max_new_tokens=8, do_sample=False, thinking_budget=budget)
        assert result.sequences.tolist() == expected.tolist()
        parsed = runner.parse_completion(result.new_tokens[0])
        assert parsed["num_thinking_tokens"] == 0  # the block opened in the prompt, the answer follows </think>


def test_runner_streaming(runner, torch_model):
    from bluelm_hf.thinking import ThinkingStreamer

    _, processor = torch_model
    batch = _inputs(processor)
    chunks = []
    result = runner.generate(**batch, max_new_tokens=8, streamer=chunks.append)
    text = processor.tokenizer.decode(result.new_tokens[0], skip_special_tokens=False)
    assert "".join(chunks) == text

    streamer = ThinkingStreamer(processor.tokenizer, skip_prompt=True)
    runner.generate(**_inputs(processor, thinking=True, suffix="<think>"), max_new_tokens=6, thinking_budget=2,
                    streamer=streamer)
    kinds = [chunk.kind for chunk in streamer]
    assert kinds and kinds[0] == "reasoning"


def test_runner_sampling_is_seeded(runner, torch_model):
    _, processor = torch_model
    batch = _inputs(processor)
    a = runner.generate(**batch, max_new_tokens=6, do_sample=True, temperature=1.5, top_k=20, seed=7)
    b = runner.generate(**batch, max_new_tokens=6, do_sample=True, temperature=1.5, top_k=20, seed=7)
    assert a.sequences.tolist() == b.sequences.tolist()


def test_runner_release_vision(fp32_export, runner, torch_model):
    _, processor = torch_model
    lean = OrtBlueLM.from_pretrained(fp32_export[0], release_vision=True, num_threads=1)
    assert "vision_encoder" not in lean.components
    batch = _inputs(processor)
    assert lean.generate(**batch, max_new_tokens=4).sequences.tolist() == runner.generate(
        **batch, max_new_tokens=4
    ).sequences.tolist()


# ---------------------------------------------------------------------------------------------------- quantized


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantized_exports_are_smaller_and_verified(fp32_export, tmp_path, quant):
    out, fp32_report = fp32_export
    report = quantize_export(out, tmp_path / quant, quant, verify_tokens=8)
    assert report["verification"]["passed"], report["verification"]["failures"]
    assert report["total_size_bytes"] < fp32_report["total_size_bytes"]
    manifest = json.loads((tmp_path / quant / MANIFEST_FILE).read_text())
    decoder = manifest["components"]["decoder"]["quantization"]
    assert (decoder["method"], decoder["bits"]) == ("onnxruntime.MatMulNBits", 8 if quant == "int8" else 4)
    vision = manifest["components"]["vision_encoder"]["quantization"]["method"]
    assert vision == ("onnxruntime.MatMulNBits + onnxruntime.quantize_dynamic" if quant == "int8" else "none")
    assert manifest["components"]["decoder"]["size_bytes"] < fp32_report["sizes"]["decoder"]
    # the quantized export runs the whole chat path
    runner = OrtBlueLM.from_pretrained(tmp_path / quant, num_threads=1)
    assert runner.chat("How many?", random_image(90, 70), max_new_tokens=4)["text"] is not None


@pytest.mark.slow
def test_mixed_export_end_to_end(model_dir, fp32_export, tmp_path):
    """The paper's recipe through the full export_model path: vision int8, LLM int4 (MatMulNBits block 32)."""
    report = export_model(model_dir, tmp_path / "mixed", quant="mixed", verify_tokens=8)
    assert report["verification"]["passed"]
    assert report["total_size_bytes"] < fp32_export[1]["total_size_bytes"]
    manifest = json.loads((tmp_path / "mixed" / MANIFEST_FILE).read_text())
    vision = manifest["components"]["vision_encoder"]["quantization"]
    assert [(step["method"], step.get("bits")) for step in vision["steps"]] == [
        ("onnxruntime.MatMulNBits", 8),
        ("onnxruntime.quantize_dynamic", None),
    ]
    assert manifest["components"]["decoder"]["quantization"]["bits"] == 4
    assert manifest["components"]["decoder"]["quantization"]["block_size"] == 32


@pytest.mark.slow
def test_int8_kv_cache_export(model_dir, tmp_path, torch_model):
    """ONNX Runtime's GroupQueryAttention with an int8 cache (batch-1 decoder)."""
    report = export_model(model_dir, tmp_path / "kv8", quant="none", kv_cache="int8", verify_tokens=8)
    assert report["verification"]["passed"], report["verification"]["failures"]
    runner = OrtBlueLM.from_pretrained(tmp_path / "kv8", num_threads=1)
    assert runner.components["decoder"].input_dtypes["past_key_values.0.key"] == np.int8
    _, processor = torch_model
    with pytest.raises(ValueError, match="batch size 1"):
        runner.generate(np.ones((2, 4), np.int64), max_new_tokens=1)


@pytest.mark.slow
def test_eval_runs_a_batch_1_export_at_batch_1(model_dir, tmp_path, capsys):
    """`bluelm-hf eval` picks the batch size the decoder was traced for instead of failing on its default 32."""
    import json

    from bluelm_hf.cli import main

    export_model(model_dir, tmp_path / "kv8", quant="none", kv_cache="int8", verify_tokens=2)
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "kv8"), "--n", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 3 and 0.0 <= result["accuracy"] <= 1.0


def test_verification_fails_loudly_on_a_wrong_export(fp32_export, torch_model, tmp_path):
    """A broken export (another model's weights) raises with the report attached."""
    out, _ = fp32_export
    model, processor = torch_model
    other = BlueLMVForConditionalGeneration(model.config).eval()
    torch.manual_seed(1)
    for p in other.parameters():
        torch.nn.init.normal_(p, std=0.5)
    other.generation_config = model.generation_config
    with pytest.raises(ExportVerificationError) as error:
        verify_export(out, other, processor, max_new_tokens=4)
    assert not error.value.report["passed"]
    assert error.value.report["max_abs_diff_logits"] > 1e-3


# ---------------------------------------------------------------------------------------------------- errors


def test_bad_requests_are_refused_before_loading(tmp_path, model_dir):
    with pytest.raises(ValueError, match="not supported for format='executorch'"):
        export_model(model_dir, tmp_path / "a", format="executorch", quant="mixed")
    with pytest.raises(ValueError, match="float32 only"):
        export_model(model_dir, tmp_path / "a", format="executorch", quant="int8")
    with pytest.raises(ValueError, match="Unknown export format"):
        export_model(model_dir, tmp_path / "a", format="tflite")
    with pytest.raises(ValueError, match="Unknown quantization"):
        export_model(model_dir, tmp_path / "a", quant="int2")
    with pytest.raises(ValueError, match="kv_cache='int8' is only implemented for format='onnx'"):
        export_model(model_dir, tmp_path / "a", format="executorch", kv_cache="int8")
    assert not (tmp_path / "a").exists()


def test_bad_model_dirs(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_model(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        export_model(tmp_path / "empty", tmp_path / "out")
    broken = tmp_path / "broken_config"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="could not be read"):
        export_model(broken, tmp_path / "out")
    corrupt = tmp_path / "corrupt_weights"
    shutil.copytree(model_dir, corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="Could not load the model weights"):
        export_model(corrupt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_output_dir_needs_overwrite(tmp_path, model_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_model(model_dir, out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(FileExistsError, match="holds no previous export"):
        export_model(model_dir, out, overwrite=True)  # --overwrite never wipes a directory that is not an export
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="overwrite the model directory"):
        export_model(model_dir, model_dir, overwrite=True)


def test_runner_rejects_a_non_export(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match="not a BlueLM export"):
        OrtBlueLM.from_pretrained(model_dir)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OrtBlueLM.from_pretrained(tmp_path / "nothing")


def test_cli_subcommand(tmp_path, model_dir, capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="bluelm-hf")
    add_export_subcommand(parser.add_subparsers(dest="command"))
    argv = ["export", str(model_dir), str(tmp_path / "x"), "--format", "executorch", "--quant", "int4"]
    args = parser.parse_args(argv)
    assert args.func is export_main
    assert export_main(args) == 2
    assert "not supported" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["export", str(model_dir), str(tmp_path / "x"), "--quant", "int3"])


# ---------------------------------------------------------------------------------------------------- ExecuTorch


@pytest.mark.slow
@pytest.mark.skipif(not HAS_EXECUTORCH, reason="executorch is not installed (pip install executorch)")
def test_executorch_export(model_dir, tmp_path, torch_model):
    report = export_model(model_dir, tmp_path / "et", format="executorch", verify_tokens=6)
    assert report["verification"]["passed"], report["verification"]["failures"]
    assert (tmp_path / "et" / "decoder.pte").is_file()
    runner = OrtBlueLM.from_pretrained(tmp_path / "et")
    assert runner.chat("How many?", random_image(90, 70), max_new_tokens=3)["text"] is not None


def test_executorch_missing_is_a_clear_error(model_dir, tmp_path, monkeypatch):
    import transformers.exporters

    class Missing:
        def __init__(self):
            raise ModuleNotFoundError("No module named 'executorch'")

    monkeypatch.setattr(transformers.exporters, "ExecutorchExporter", Missing, raising=False)
    with pytest.raises(ImportError, match=r"needs the `executorch` package .*pip install executorch"):
        export_model(model_dir, tmp_path / "et", format="executorch")
    assert not (tmp_path / "et" / "decoder.pte").exists()


# ---------------------------------------------------------------------------------------------------- bitsandbytes


def test_bnb_config_quantizes_the_llm_only(model_dir):
    bnb = pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForImageTextToText

    try:
        config = bnb_config(load_in_4bit=True)
        model = AutoModelForImageTextToText.from_pretrained(model_dir, quantization_config=config)
    except Exception as error:  # pragma: no cover - depends on the bitsandbytes build
        pytest.skip(f"bitsandbytes cannot quantize on this machine: {error}")
    quantized = [name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)]
    assert quantized and all(name.startswith("model.language_model.") for name in quantized)
    assert type(model.lm_head) is torch.nn.Linear
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.model.vision_tower.modules())
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.model.multi_modal_projector.modules())
    assert bnb_config(load_in_8bit=True).llm_int8_skip_modules == BNB_SKIP_MODULES
    ids = torch.tensor([[5, 6, 7]])
    assert torch.isfinite(model(input_ids=ids).logits).all()
