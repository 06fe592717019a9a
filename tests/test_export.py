"""Tests of bluelm_hf.export: ONNX / ExecuTorch export, quantization, verification, the output folder, and the
exported model (`BlueLMVExportedForConditionalGeneration`: transformers' `generate` over `transformers.exporters`
runners).

One tiny random BlueLM is saved to a temporary directory and exported to float32 ONNX once (module fixture: torch.export
and the ONNX conversion dominate); the int8 / int4 exports quantize that export (`quantize_export`, a few seconds
each), and the full `export_model(quant="mixed")` path runs once more. The tiny model is initialised with large weights
so that its greedy continuation is not one repeated token, which would make "identical tokens" a weak check.
"""

import errno
import importlib.util
import json
import shutil

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from bluelm_hf import BlueLMVForConditionalGeneration, BlueLMVImageProcessor, BlueLMVProcessor
from bluelm_hf.assemble import add_bluelm_special_tokens

from conftest import TILE, random_image, tiny_config

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from bluelm_hf.export import (  # noqa: E402
    MANIFEST_FILE,
    MIN_VERIFY_TOKENS,
    BlueLMVExportedForConditionalGeneration,
    ExportDestinationError,
    ExportVerificationError,
    add_export_subcommand,
    export_main,
    export_model,
    quantize_export,
    verify_export,
)

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
    report = export_model(model_dir, out, format="onnx", quant="none", verify=True)
    return out, report


@pytest.fixture(scope="module")
def exported(fp32_export):
    return BlueLMVExportedForConditionalGeneration.from_pretrained(fp32_export[0], num_threads=1)


@pytest.fixture(scope="module")
def torch_model(model_dir):
    from bluelm_hf.export import load_for_export

    return load_for_export(model_dir)


def _inputs(processor, question="How many red cells are there?", image=True, thinking=False, suffix="", image_seed=1):
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": question}]
    text = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, enable_thinking=thinking
    )
    images = [random_image(2 * TILE + 10, TILE, seed=image_seed)] if image else None
    return processor(text=[text + suffix], images=images, return_tensors="pt")


def _both(model, exported, batch, **kwargs):
    """`generate` of the PyTorch model and of the export, same kwargs (greedy unless told)."""
    kwargs.setdefault("do_sample", False)
    with torch.no_grad():
        return model.generate(**batch, **kwargs), exported.generate(**batch, **kwargs)


# ---------------------------------------------------------------------------------------------------- fp32


def test_fp32_export_layout_and_verification(fp32_export):
    out, report = fp32_export
    verification = report["verification"]
    assert verification["passed"], verification["failures"]
    assert verification["max_abs_diff_logits"] < 1e-3
    assert verification["greedy_identical"]
    assert verification["greedy_tokens_export"] == verification["greedy_tokens_pytorch"]
    assert verification["new_tokens"] == len(verification["greedy_tokens_pytorch"]) == MIN_VERIFY_TOKENS
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
    # onnxruntime-genai's layout: every tile in, one row per image token out, the image merge in the embedding graph
    vision = manifest["components"]["vision_encoder"]
    assert vision["inputs"][0]["shape"] == ["num_tiles", 3, TILE, TILE]
    assert len(vision["outputs"][0]["shape"]) == 2
    embed_inputs = manifest["components"]["embed_tokens"]["inputs"]
    hidden = manifest["model"]["hidden_size"]
    assert [(i["name"], i["shape"]) for i in embed_inputs] == [
        ("input_ids", ["batch_size", "sequence_length"]),
        ("image_features", ["num_image_tokens", hidden]),
    ]
    genai = json.loads((out / "genai_config.json").read_text())["model"]
    assert genai["embedding"]["inputs"] == {"input_ids": "input_ids", "image_features": "image_features"}
    assert genai["decoder"]["num_hidden_layers"] == manifest["kv_cache"]["num_layers"]
    for entry in manifest["components"].values():
        for file in entry["files"]:
            assert (out / file).is_file()
    # self-contained: processor, tokenizer, config and chat template next to the graphs
    for file in ("config.json", "tokenizer.json", "processor_config.json", "export.json", "genai_config.json"):
        assert (out / file).is_file(), file
    assert not list(out.glob("*.safetensors"))
    # every file in the folder is one the export recorded writing (what --overwrite may remove), and no staging left
    assert sorted(manifest["written_files"]) == sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def test_export_graphs_carry_no_debug_metadata(fp32_export):
    """torch.onnx's per-node FX / stack-trace metadata is stripped (it was a fifth of nano's mixed export)."""
    import onnx

    out, _ = fp32_export
    for name in ("vision_encoder", "embed_tokens", "decoder"):
        graph = onnx.load(str(out / f"{name}.onnx"), load_external_data=False).graph
        assert len(graph.node) > 0
        assert [n.name for n in graph.node if len(n.metadata_props)] == []


# ---------------------------------------------------------------------------------------------------- generate


def test_exported_model_generates_like_pytorch(exported, torch_model):
    model, processor = torch_model
    want, got = _both(model, exported, _inputs(processor), max_new_tokens=10)
    assert got.tolist() == want.tolist()
    assert len(set(got[0, -10:].tolist())) > 1


def test_left_padded_batch_with_and_without_image(exported, torch_model):
    model, processor = torch_model
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}],
            add_generation_prompt=True,
        ),
        processor.apply_chat_template([{"role": "user", "content": "Count: red, blue."}], add_generation_prompt=True),
    ]
    batch = processor(
        text=texts, images=[random_image(TILE, 2 * TILE, seed=3)], return_tensors="pt", padding=True,
        padding_side="left",
    )
    assert (batch["attention_mask"][1] == 0).any()  # the text-only row is padded
    want, got = _both(model, exported, batch, max_new_tokens=6)
    assert got.tolist() == want.tolist()


def test_min_new_tokens_keeps_eos_out_like_pytorch(exported, torch_model):
    """EOS = the greedy first token: without min_new_tokens both stop at once, with it both decode 6 tokens."""
    model, processor = torch_model
    batch = _inputs(processor)
    with torch.no_grad():
        first = int(model(**batch).logits[0, -1].argmax())
    plain_want, plain_got = _both(model, exported, batch, max_new_tokens=6, eos_token_id=[first])
    assert plain_got.tolist() == plain_want.tolist()
    assert plain_got.shape[1] == batch["input_ids"].shape[1] + 1
    want, got = _both(model, exported, batch, max_new_tokens=6, min_new_tokens=6, eos_token_id=[first])
    assert got.tolist() == want.tolist()
    assert got.shape[1] == batch["input_ids"].shape[1] + 6
    assert first not in got[0, batch["input_ids"].shape[1] :].tolist()


def test_thinking_budget_applies_through_generate(exported, torch_model):
    model, processor = torch_model
    think_end = model.config.think_end_token_id
    # A random model never opens <think> by itself: start the block in the prompt, as a trained model would.
    batch = _inputs(processor, thinking=True, suffix="<think>")
    for budget in (0, 3):
        want, got = _both(model, exported, batch, max_new_tokens=8, thinking_budget=budget)
        assert got.tolist() == want.tolist()
        new = got[0, batch["input_ids"].shape[1] :].tolist()
        assert think_end in new and new.index(think_end) == budget, new


def test_streamer_and_stopping_criteria_apply_through_generate(exported, torch_model):
    _, processor = torch_model
    batch = _inputs(processor)
    printed = []

    class Collect(TextStreamer):
        def on_finalized_text(self, text, stream_end=False):
            printed.append(text)

    out = exported.generate(
        **batch, max_new_tokens=8, min_new_tokens=8, do_sample=False,
        streamer=Collect(processor.tokenizer, skip_prompt=True),
    )
    new = out[0, batch["input_ids"].shape[1] :]
    assert "".join(printed) == processor.tokenizer.decode(new, skip_special_tokens=True)

    class StopAfter(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= batch["input_ids"].shape[1] + 3)

    stopped = exported.generate(
        **batch, max_new_tokens=8, min_new_tokens=8, do_sample=False, stopping_criteria=StoppingCriteriaList([StopAfter()])
    )
    assert stopped.tolist() == out[:, : batch["input_ids"].shape[1] + 3].tolist()


def test_sampling_matches_pytorch_under_one_seed(exported, torch_model):
    model, processor = torch_model
    batch = _inputs(processor)
    kwargs = dict(max_new_tokens=6, do_sample=True, temperature=1.5, top_k=20)
    torch.manual_seed(7)
    want = model.generate(**batch, **kwargs)
    torch.manual_seed(7)
    got = exported.generate(**batch, **kwargs)
    assert got.tolist() == want.tolist()
    torch.manual_seed(8)
    assert exported.generate(**batch, **kwargs).tolist() != got.tolist()


def test_inference_load_and_generate_drive_an_export_like_pytorch(fp32_export, model_dir):
    """`inference.load(EXPORT)` gives the exported model; `inference.generate` (used by `bluelm-hf eval`, `chat`
    and the Space) parses the same completions as from the PyTorch checkpoint, thinking tokens counted, and leaves
    the caller's processor as it was."""
    from transformers import LogitsProcessor, LogitsProcessorList

    from bluelm_hf.inference import build_prompts, generate, load, user_message

    export, export_processor = load(fp32_export[0])
    assert isinstance(export, BlueLMVExportedForConditionalGeneration)
    model, processor = load(model_dir)
    think_start = model.config.think_start_token_id

    class OpenThinkFirst(LogitsProcessor):
        """A random model never opens <think>: force it as the first new token, as a trained model would."""

        def __init__(self, prompt_length):
            self.prompt_length = prompt_length

        def __call__(self, input_ids, scores):
            if input_ids.shape[1] == self.prompt_length:
                scores = torch.full_like(scores, -float("inf"))
                scores[:, think_start] = 0.0
            return scores

    images = [random_image(2 * TILE + 10, TILE, seed=1), None]
    questions = ["How many red cells are there?", "What is in the picture?"]
    for proc in (processor, export_processor):
        proc.tokenizer.padding_side = "right"
    got = generate(export, export_processor, questions, images, thinking=False, max_new_tokens=8, min_new_tokens=8)
    want = generate(model, processor, questions, images, thinking=False, max_new_tokens=8, min_new_tokens=8)
    assert got == want
    assert all(row["text"] for row in got)
    assert export_processor.tokenizer.padding_side == processor.tokenizer.padding_side == "right"

    prompts = build_prompts(processor, [[user_message(questions[0], 1)]], True)
    prompt_length = processor(text=prompts, images=[images[0]], return_tensors="pt")["input_ids"].shape[1]
    processors = LogitsProcessorList([OpenThinkFirst(prompt_length)])
    kwargs = dict(thinking=True, thinking_budget=3, max_new_tokens=10, min_new_tokens=10)
    got = generate(export, export_processor, questions[:1], images[:1], logits_processor=processors, **kwargs)
    want = generate(model, processor, questions[:1], images[:1], logits_processor=processors, **kwargs)
    assert got == want
    assert got[0]["num_thinking_tokens"] == 3
    assert got[0]["reasoning_content"].strip() and got[0]["content"].strip()
    assert got[0]["text"].startswith("<think>")


# ---------------------------------------------------------------------------------------------------- verification


def test_verification_fails_loudly_on_a_wrong_export(fp32_export, exported, torch_model):
    """A broken export (another model's weights) raises with the report attached."""
    out, _ = fp32_export
    model, processor = torch_model
    other = BlueLMVForConditionalGeneration(model.config).eval()
    torch.manual_seed(1)
    for p in other.parameters():
        torch.nn.init.normal_(p, std=0.5)
    other.generation_config = model.generation_config
    with pytest.raises(ExportVerificationError) as error:
        verify_export(out, other, processor, exported=exported)
    assert not error.value.report["passed"]
    assert error.value.report["max_abs_diff_logits"] > 1e-3


def test_verification_of_fewer_than_32_tokens_says_so_and_fails(fp32_export, exported, torch_model):
    model, processor = torch_model
    with pytest.raises(ExportVerificationError, match=f"only 8 greedy tokens compared.*at least {MIN_VERIFY_TOKENS}"):
        verify_export(fp32_export[0], model, processor, exported=exported, tokens=8)


def test_verification_suppresses_eos_on_both_sides(fp32_export, exported, torch_model, monkeypatch):
    """EOS = the greedy first token on both sides (what made `--quant mixed` pass after 2 tokens): the check still
    compares 32 tokens."""
    model, processor = torch_model
    from bluelm_hf.export.verification import verification_sample

    sample = verification_sample(model, processor)
    with torch.no_grad():
        first = int(model(**sample).logits[0, -1].argmax())
    monkeypatch.setattr(model.generation_config, "eos_token_id", first)
    monkeypatch.setattr(exported.generation_config, "eos_token_id", first)
    report = verify_export(fp32_export[0], model, processor, exported=exported, sample=sample)
    assert report["passed"] and report["new_tokens"] == MIN_VERIFY_TOKENS
    assert first not in report["greedy_tokens_pytorch"]


# ---------------------------------------------------------------------------------------------------- quantized


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantized_exports_are_smaller_and_verified(fp32_export, torch_model, tmp_path, quant):
    from bluelm_hf.inference import build_prompts, generate, user_message

    out, fp32_report = fp32_export
    report = quantize_export(out, tmp_path / quant, quant)
    verification = report["verification"]
    assert verification["passed"], verification["failures"]
    assert verification["new_tokens"] == MIN_VERIFY_TOKENS
    assert verification["teacher_forced_top1_agreement"] >= 0.25  # chance: 1 / vocab; int4 of a random tiny model: 0.44
    assert report["total_size_bytes"] < fp32_report["total_size_bytes"]
    manifest = json.loads((tmp_path / quant / MANIFEST_FILE).read_text())
    decoder = manifest["components"]["decoder"]["quantization"]
    assert (decoder["method"], decoder["bits"]) == ("onnxruntime.MatMulNBits", 8 if quant == "int8" else 4)
    vision = manifest["components"]["vision_encoder"]["quantization"]["method"]
    assert vision == ("onnxruntime.MatMulNBits + onnxruntime.quantize_dynamic" if quant == "int8" else "none")
    assert manifest["components"]["decoder"]["size_bytes"] < fp32_report["sizes"]["decoder"]
    # the quantized export runs the whole chat path: its parsed text is what its own generate decoded
    model = BlueLMVExportedForConditionalGeneration.from_pretrained(tmp_path / quant, num_threads=1)
    _, processor = torch_model
    image = random_image(90, 70)
    [chat] = generate(model, processor, ["How many?"], [image], thinking=False, max_new_tokens=4, min_new_tokens=4)
    prompts = build_prompts(processor, [[user_message("How many?", 1)]], False)
    batch = processor(text=prompts, images=[image], return_tensors="pt")
    ids = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)[0, batch["input_ids"].shape[1] :]
    assert len(ids) == 4
    assert chat["text"] == processor.tokenizer.decode(ids, skip_special_tokens=False) != ""


@pytest.mark.slow
def test_mixed_export_end_to_end(model_dir, fp32_export, tmp_path):
    """The paper's recipe through the full export_model path: vision int8, LLM int4 (MatMulNBits block 32)."""
    report = export_model(model_dir, tmp_path / "mixed", quant="mixed")
    assert report["verification"]["passed"]
    assert report["verification"]["new_tokens"] == MIN_VERIFY_TOKENS
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
def test_int8_kv_cache_export_and_eval_at_batch_1(tmp_path, capsys):
    """ONNX Runtime's GroupQueryAttention with an int8 cache (batch-1 decoder), on the shipped nano: `bluelm-hf eval`
    runs it at batch 1 and scores the held-out questions as the PyTorch nano does."""
    import torch as _torch

    import bluelm_hf
    from bluelm_hf.cli import main
    from bluelm_hf.evaluation import evaluate_nano
    from bluelm_hf.inference import load

    report = export_model(bluelm_hf.NANO, tmp_path / "kv8", quant="none", kv_cache="int8")
    assert report["verification"]["passed"], report["verification"]["failures"]
    export, processor = load(tmp_path / "kv8")
    assert export.static_batch == 1
    assert export._past_dtypes["past_key_values.0.key"] == _torch.int8
    with pytest.raises(ValueError, match="batch size 1"):
        export(input_ids=_torch.ones((2, 4), dtype=_torch.long))
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "kv8"), "--n", "6", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model, nano_processor = load(None)
    want = evaluate_nano(model, nano_processor, n=6)
    assert result["n"] == 6
    assert result["accuracy"] == want["accuracy"] >= 0.5


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
    # A verification that could never pass: refused up front, not after a whole export is written (exit 2 said
    # "nothing written" over a full export).
    for tokens in (0, MIN_VERIFY_TOKENS - 1):
        with pytest.raises(ValueError, match=rf"verify_tokens={tokens}: .* at least {MIN_VERIFY_TOKENS}"):
            export_model(model_dir, tmp_path / "a", verify_tokens=tokens)
    with pytest.raises(ValueError, match=rf"verify_tokens=5: .* at least {MIN_VERIFY_TOKENS}"):
        quantize_export(tmp_path / "no-export", tmp_path / "a", "int8", verify_tokens=5)
    # The KV-cache length of a .pte, checked against the model's positions before out_dir exists (0 was taken as
    # "the default" by the CLI).
    for length in (0, 1, 10**6):
        with pytest.raises(ValueError, match=rf"max_cache_len \({length}\) <= max_position_embeddings \(\d+\)"):
            export_model(model_dir, tmp_path / "a", format="executorch", max_cache_len=length)
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


# ---------------------------------------------------------------------------------------------------- output folder


def _cli(argv):
    import argparse

    parser = argparse.ArgumentParser(prog="bluelm-hf")
    add_export_subcommand(parser.add_subparsers(dest="command"))
    return export_main(parser.parse_args(["export", *argv]))


def test_overwrite_never_removes_a_file_no_export_recorded(tmp_path, model_dir, capsys):
    """`mkdir d; echo '{}' > d/export.json; echo x > d/thesis.tex; bluelm-hf export M d --overwrite --no-verify`
    used to delete thesis.tex: a folder holding an export.json was taken for an export and removed whole."""
    out = tmp_path / "d"
    out.mkdir()
    (out / "export.json").write_text("{}")
    (out / "thesis.tex").write_text("x")
    assert _cli([str(model_dir), str(out), "--overwrite", "--no-verify"]) == 3
    assert "holds no record of an earlier export" in capsys.readouterr().out
    assert (out / "thesis.tex").read_text() == "x" and (out / "export.json").read_text() == "{}"
    (out / MANIFEST_FILE).write_text("{}")  # a manifest without the list of written files is no licence either
    assert _cli([str(model_dir), str(out), "--overwrite", "--no-verify"]) == 3
    assert (out / "thesis.tex").read_text() == "x"
    assert sorted(p.name for p in out.iterdir()) == ["bluelm_export.json", "export.json", "thesis.tex"]


def test_overwrite_replaces_only_what_the_earlier_export_wrote(fp32_export, tmp_path):
    out = tmp_path / "q"
    quantize_export(fp32_export[0], out, "int8", verify=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        quantize_export(fp32_export[0], out, "int8", verify=False)
    (out / "notes").mkdir()
    (out / "notes" / "mine.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"1 file\(s\) the earlier export did not write \(notes/mine.txt\)"):
        quantize_export(fp32_export[0], out, "int4", overwrite=True, verify=False)
    assert (out / "notes" / "mine.txt").read_text() == "mine"
    assert json.loads((out / MANIFEST_FILE).read_text())["quant"] == "int8"  # refused before touching anything
    shutil.rmtree(out / "notes")
    # a file the earlier export recorded but this one does not write goes too
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    (out / "stale.onnx").write_text("old")
    manifest["written_files"].append("stale.onnx")
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    quantize_export(fp32_export[0], out, "int4", overwrite=True, verify=False)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["quant"] == "int4" and not (out / "stale.onnx").exists()
    assert sorted(manifest["written_files"]) == sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_destination_failures_are_one_line_exit_3_and_leave_nothing(fp32_export, tmp_path, monkeypatch, capsys, code):
    """A full, read-only or unwritable destination (simulated: the tests run as root) mid-write: one clear line, exit
    code 3 (1 is "verification failed"), no half-written export left."""
    import os

    from transformers.exporters.base import ExportedModel

    from bluelm_hf.export import cli

    def failing_save(self, directory, **kwargs):
        (directory / "decoder.onnx").write_bytes(b"partial")
        raise OSError(code, os.strerror(code), str(directory / "decoder.onnx.data"))

    monkeypatch.setattr(ExportedModel, "save_pretrained", failing_save)
    out = tmp_path / "full"
    with pytest.raises(ExportDestinationError, match=f"cannot write the export to {out}: .*{errno.errorcode[code]}"):
        quantize_export(fp32_export[0], out, "int8", verify=False)
    assert list(out.iterdir()) == []

    def export_model_failing(*args, **kwargs):
        return quantize_export(fp32_export[0], out, "int8", verify=False)

    monkeypatch.setattr(cli, "export_model", export_model_failing)
    assert _cli(["unused", str(out)]) == cli.EXIT_DESTINATION == 3
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith(f"error: cannot write the export to {out}: ")
    assert errno.errorcode[code] in printed[0]


def test_unusable_destination_path_is_exit_3(tmp_path, model_dir, capsys):
    (tmp_path / "file").write_text("x")
    assert _cli([str(model_dir), str(tmp_path / "file" / "out"), "--no-verify"]) == 3
    printed = capsys.readouterr().out
    assert "cannot write the export to" in printed and "ENOTDIR" in printed
    assert (tmp_path / "file").read_text() == "x"
    with pytest.raises(ValueError, match="overwrite the model directory"):
        export_model(model_dir, model_dir, overwrite=True)


def test_cli_exit_codes(tmp_path, model_dir, capsys):
    assert _cli([str(model_dir), str(tmp_path / "x"), "--format", "executorch", "--quant", "int4"]) == 2
    assert "not supported" in capsys.readouterr().out
    assert _cli([str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert _cli([str(model_dir), str(tmp_path / "x"), "--verify-tokens", "0"]) == 2
    assert "verify_tokens=0" in capsys.readouterr().out
    assert _cli([str(model_dir), str(tmp_path / "x"), "--format", "executorch", "--max-cache-len", "0"]) == 2
    assert "max_cache_len (0)" in capsys.readouterr().out
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        _cli([str(model_dir), str(tmp_path / "x"), "--quant", "int3"])


def test_exported_model_rejects_a_non_export(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match="not a BlueLM export"):
        BlueLMVExportedForConditionalGeneration.from_pretrained(model_dir)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BlueLMVExportedForConditionalGeneration.from_pretrained(tmp_path / "nothing")


# ---------------------------------------------------------------------------------------------------- ExecuTorch


# The ExecuTorch export itself (one model.pte for MultimodalRunner) is tested in tests/test_export_executorch.py.


def test_executorch_missing_is_a_clear_error(model_dir, tmp_path, monkeypatch):
    import transformers.exporters

    class Missing:
        def __init__(self):
            raise ModuleNotFoundError("No module named 'executorch'")

    monkeypatch.setattr(transformers.exporters, "ExecutorchExporter", Missing, raising=False)
    with pytest.raises(ImportError, match=r"needs the `executorch` package .*pip install executorch"):
        export_model(model_dir, tmp_path / "et", format="executorch")
    assert not (tmp_path / "et" / "model.pte").exists()


# ---------------------------------------------------------------------------------------------------- bitsandbytes


def test_trl_quantization_config_quantizes_the_llm_only(model_dir):
    """What docs/export.md claims: TRL's `get_quantization_config` (a plain `BitsAndBytesConfig`) leaves the ViT,
    the projector and the tied lm_head unquantized, through `_keep_in_fp32_modules` and transformers' skip list."""
    bnb = pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForImageTextToText
    from trl import ModelConfig, get_quantization_config

    config = get_quantization_config(ModelConfig(load_in_4bit=True, dtype="float32"))
    try:
        model = AutoModelForImageTextToText.from_pretrained(model_dir, quantization_config=config)
    except Exception as error:  # pragma: no cover - depends on the bitsandbytes build
        pytest.skip(f"bitsandbytes cannot quantize on this machine: {error}")
    quantized = [name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)]
    assert quantized and all(name.startswith("model.language_model.") for name in quantized)
    assert type(model.lm_head) is torch.nn.Linear
    assert torch.isfinite(model(input_ids=torch.tensor([[5, 6, 7]])).logits).all()


# ---------------------------------------------------------------------------------------------------- onnxruntime-genai


def _genai_greedy(export_dir, batch, image_token_id, tokens):
    """genai's own loop (`Model`, `Generator`, `set_inputs`, `generate_next_token`) over the processor's output."""
    og = pytest.importorskip("onnxruntime_genai")
    from bluelm_hf.export import genai_inputs

    genai = og.Model(str(export_dir))
    params = og.GeneratorParams(genai)
    length = batch["input_ids"].shape[1] + tokens
    params.set_search_options(max_length=length, min_length=length)
    generator = og.Generator(genai, params)
    generator.set_inputs(genai_inputs(batch, image_token_id))
    got = []
    while not generator.is_done():
        generator.generate_next_token()
        got.append(int(generator.get_next_tokens()[0]))
    return got


def _pytorch_greedy(model, batch, tokens):
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return out[0, batch["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize("images", [1, 0, 2], ids=["one-image", "text-only", "two-images"])
def test_onnxruntime_genai_decodes_the_tokens_pytorch_decodes(fp32_export, torch_model, images):
    """`onnxruntime_genai.Model(export_dir)` loads the export (genai_config.json, the merge in the embedding graph)
    and its greedy tokens are PyTorch's, from the HF processor's inputs: with an image (before: different from the
    first token, the int64 ids read as int32), text-only (before: `Invalid rank for input: image_features`) and two
    images of different tile counts in one prompt."""
    model, processor = torch_model
    content = [{"type": "image"}] * images + [{"type": "text", "text": "How many red cells are there?"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    pictures = [random_image(2 * TILE + 10, TILE, seed=1), random_image(TILE, TILE, seed=2)][:images]
    batch = processor(text=[text], images=pictures or None, return_tensors="pt")
    if images == 2:  # ragged: the two images have different tile counts
        tiles = [len(processor.image_processor(picture, return_tensors="pt")["pixel_values"]) for picture in pictures]
        assert tiles[0] != tiles[1] and sum(tiles) == len(batch["pixel_values"])
    want = _pytorch_greedy(model, batch, 12)
    assert len(set(want)) > 1
    assert _genai_greedy(fp32_export[0], batch, model.config.image_token_id, 12) == want


def test_genai_inputs_refuses_what_genai_would_misread(torch_model):
    pytest.importorskip("onnxruntime_genai")
    from bluelm_hf.export import genai_inputs

    model, processor = torch_model
    batch = _inputs(processor)
    image_token = model.config.image_token_id
    inputs = genai_inputs(batch, image_token)
    assert inputs is not None
    with pytest.raises(ValueError, match=r"one prompt, input_ids of shape \(1, sequence_length\); got \(2, "):
        genai_inputs({"input_ids": batch["input_ids"].repeat(2, 1)}, image_token)
    count = int((batch["input_ids"] == image_token).sum())
    with pytest.raises(ValueError, match=f"has {count} image tokens but no pixel_values"):
        genai_inputs({"input_ids": batch["input_ids"]}, image_token)
    mask = batch["attention_mask"].clone()
    mask[0, 0] = 0
    padded = {**batch, "attention_mask": mask}
    with pytest.raises(ValueError, match="attention_mask has zeros"):
        genai_inputs(padded, image_token)


# ---------------------------------------------------------------------------------------------------- ViT freed


def test_release_vision_frees_the_vision_session_and_generates_the_same(fp32_export, exported, torch_model):
    """`release_vision=True`: no vision session while decoding (closed at load and after each image), opened again
    for the next image; the tokens are the ones of the export that keeps it."""
    import weakref

    model, processor = torch_model
    lean = BlueLMVExportedForConditionalGeneration.from_pretrained(fp32_export[0], num_threads=1, release_vision=True)
    assert not lean.vision_encoder_loaded and "vision_encoder" in exported.exported.runners
    sessions = []
    real_runner = lean._vision_runner

    def spy():
        runner = real_runner()
        sessions.append(weakref.ref(runner.session))
        return runner

    lean._vision_runner = spy

    class SeesNoVision(StoppingCriteria):
        loaded = []

        def __call__(self, input_ids, scores, **kwargs):
            self.loaded.append(lean.vision_encoder_loaded)
            return torch.zeros(len(input_ids), dtype=torch.bool)

    watch = SeesNoVision()
    for seed in (1, 2):  # two images: the session is re-opened for the second
        batch = _inputs(processor, image_seed=seed)
        kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
        with torch.no_grad():
            want = exported.generate(**batch, **kwargs)
            got = lean.generate(**batch, **kwargs, stopping_criteria=StoppingCriteriaList([watch]))
        assert got.tolist() == want.tolist()
        assert not lean.vision_encoder_loaded
    assert len(watch.loaded) == 16 and not any(watch.loaded)  # never open during a decoding step
    assert len(sessions) == 2 and [ref() for ref in sessions] == [None, None]  # each session really freed

    import copy

    executorch = copy.copy(exported.exported)
    executorch.export_format = "executorch"  # its runner keeps the loaded program: nothing to free, so refused
    with pytest.raises(ValueError, match="release_vision works on ONNX exports; this one is executorch"):
        BlueLMVExportedForConditionalGeneration(exported.config, executorch, exported.manifest, release_vision=True)


def test_cli_release_vision_on_an_export_and_refused_on_a_checkpoint(fp32_export, model_dir, capsys):
    """`bluelm-hf eval --release-vision` on an export gives the same result as without; on a checkpoint it is a
    one-line error."""
    from bluelm_hf.cli import main

    results = []
    for flags in ([], ["--release-vision"]):
        assert main(["eval", "--model", str(fp32_export[0]), "--n", "3", "--no-think", "--json", *flags]) == 0
        results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert results[0] == results[1]
    assert main(["eval", "--model", str(model_dir), "--n", "1", "--release-vision"]) == 1
    assert f"release_vision applies to exports (a directory written by `bluelm-hf export`); {model_dir} is not one" in (
        capsys.readouterr().err
    )
