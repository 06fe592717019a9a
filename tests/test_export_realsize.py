"""The export's real-size path (`export_model(low_memory=True)`, quantizing from disk), on a tiny model.

The 2.9B run itself is bench/bench_export_realsize.py; these check, in seconds, what it relies on: a bfloat16 checkpoint
exported one component in float32 at a time gives the graphs the float32 path gives, traced Linears read the model's
own tensors (no folded copy of every weight), the in-graph MatMulNBits pass packs exactly as ONNX Runtime's quantizer,
and an unverified `quantize_export` loads no weights.
"""

import json

import numpy as np
import pytest
import torch

from bluelm_hf import BlueLMVForConditionalGeneration, BlueLMVImageProcessor, BlueLMVProcessor
from bluelm_hf.assemble import add_bluelm_special_tokens

from conftest import TILE, tiny_config

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx_ir = pytest.importorskip("onnx_ir")

from bluelm_hf.export import MANIFEST_FILE, export_model, quantize_export  # noqa: E402
from bluelm_hf.export import exporter as exporter_module  # noqa: E402
from bluelm_hf.export.quantization import matmul_nbits_in_place  # noqa: E402


def _save(tiny_tokenizer, path, dtype):
    torch.manual_seed(0)
    config = tiny_config(add_bluelm_special_tokens(tiny_tokenizer), vocab_size=len(tiny_tokenizer))
    config.text_config.initializer_range = 0.2
    model = BlueLMVForConditionalGeneration(config).to(dtype).eval()
    model.generation_config.eos_token_id = tiny_tokenizer.eos_token_id
    model.generation_config.pad_token_id = tiny_tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    image_processor = BlueLMVImageProcessor(tile_size=TILE, max_grid_size=3, max_image_side=4 * TILE)
    model.save_pretrained(path)
    BlueLMVProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory, tiny_tokenizer):
    return _save(tiny_tokenizer, tmp_path_factory.mktemp("tiny_bf16"), torch.bfloat16)


@pytest.fixture(scope="module")
def low_memory_export(bf16_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "fp32"
    return out, export_model(bf16_dir, out, quant="none", low_memory=True, verify=True)


def _initializers(path):
    program = onnx_ir.load(str(path))
    return {name: value.const_value.numpy() for name, value in program.graph.initializers.items()}


def test_low_memory_export_of_a_bf16_checkpoint_verifies(low_memory_export):
    out, report = low_memory_export
    assert report["verification"]["passed"], report["verification"]["failures"]
    assert report["verification"]["greedy_identical"]
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    tool = json.loads((out / "export.json").read_text())
    assert sorted(tool["components"]) == ["decoder", "embed_tokens", "vision_encoder"]
    # the trace metadata is kept
    assert all(entry["metadata"]["export_config"]["dynamic"] for entry in tool["components"].values())
    assert sorted(manifest["written_files"]) == sorted(p.name for p in out.iterdir())
    assert not [p for p in out.iterdir() if p.name.startswith(".bluelm-export-")]  # no staging left


def test_low_memory_graphs_equal_the_float32_path(low_memory_export, bf16_dir, tmp_path):
    """Same weights (the bf16 values in float32), same graph: the low-memory path changes only when things happen."""
    out, _ = low_memory_export
    export_model(bf16_dir, tmp_path / "plain", quant="none", verify=False)
    for name in ("vision_encoder", "embed_tokens", "decoder"):
        low, plain = _initializers(out / f"{name}.onnx"), _initializers(tmp_path / "plain" / f"{name}.onnx")
        assert low.keys() == plain.keys()
        for key in low:
            np.testing.assert_array_equal(low[key], plain[key], err_msg=f"{name}: {key}")


def test_traced_linears_read_the_model_tensors(bf16_dir):
    """No folded `Transpose(W)` copies: each MatMul weight of the traced decoder is the model's own tensor."""
    from transformers.exporters import OnnxConfig, OnnxExporter

    from bluelm_hf.export.wrappers import DecoderForExport, dynamic_shapes, sample_inputs

    model = BlueLMVForConditionalGeneration.from_pretrained(bf16_dir, dtype=torch.float32).eval()
    decoder = DecoderForExport(model).eval()
    linears = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)]
    before = [m.weight.detach().clone() for m in linears]
    samples, shapes = sample_inputs(model), dynamic_shapes(model)
    with exporter_module._linear_weights_as_matmul_operands(decoder):
        config = OnnxConfig(dynamic=True, dynamic_shapes=shapes["decoder"])
        program = OnnxExporter().export(decoder, samples["decoder"], config).components["model"].program
        pointers = {m.weight.data_ptr() for m in linears}
        matmuls = [node for node in program.graph if node.op_type == "MatMul"]
        weights = [node.inputs[1] for node in matmuls if node.inputs[1].is_initializer()]
        assert len(weights) == len(linears)  # every Linear (the tied lm_head included) is a MatMul on an initializer
        assert {w.const_value.raw.data_ptr() for w in weights} == pointers  # onnx_ir.TorchTensor: no copy
    for module, weight in zip(linears, before):  # restored on exit
        assert "forward" not in module.__dict__
        torch.testing.assert_close(module.weight, weight, rtol=0, atol=0)


@pytest.mark.parametrize("bits", [4, 8])
def test_matmul_nbits_in_place_packs_like_onnxruntime(low_memory_export, bits):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    path = low_memory_export[0] / "decoder.onnx"
    ours = onnx_ir.load(str(path))
    count = matmul_nbits_in_place(ours, bits, 32, True, 4)
    program = onnx_ir.load(str(path))
    onnx_ir.external_data.load_to_model(program)
    proto = onnx_ir.to_proto(program)
    reference = MatMulNBitsQuantizer(proto, bits=bits, block_size=32, is_symmetric=True, accuracy_level=4)
    reference.process()
    theirs = onnx_ir.from_proto(reference.model.model)
    ours_nodes = [n for n in ours.graph if n.op_type == "MatMulNBits"]
    theirs_nodes = [n for n in theirs.graph if n.op_type == "MatMulNBits"]
    assert count == len(ours_nodes) == len(theirs_nodes) > 0
    for a, b in zip(ours_nodes, theirs_nodes):
        assert {k: v.value for k, v in a.attributes.items()} == {k: v.value for k, v in b.attributes.items()}
        assert [v.name for v in a.inputs] == [v.name for v in b.inputs]
        for x, y in zip(a.inputs[1:], b.inputs[1:]):
            np.testing.assert_array_equal(x.const_value.numpy(), y.const_value.numpy())
    assert not [n for n in ours.graph if n.op_type == "MatMul" and n.inputs[1].is_initializer()]
    assert ours.opset_imports["com.microsoft"] == 1


def test_unverified_quantize_export_loads_no_weights(low_memory_export, tmp_path, monkeypatch):
    from transformers import AutoModelForImageTextToText

    def refuse(*args, **kwargs):
        raise AssertionError("quantize_export(verify=False) loaded the model weights")

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", refuse)
    report = quantize_export(low_memory_export[0], tmp_path / "mixed", "mixed", verify=False)
    assert report["total_size_bytes"] < low_memory_export[1]["total_size_bytes"] / 2  # tiny: 0.37 (graph overhead)
    assert "verification" not in report


def test_low_memory_is_onnx_only(bf16_dir, tmp_path):
    with pytest.raises(ValueError, match="low_memory=True is implemented for format='onnx' only"):
        export_model(bf16_dir, tmp_path / "pte", format="executorch", low_memory=True)


def test_cli_low_memory_flag_reaches_the_exporter(bf16_dir, tmp_path, capsys):
    """`bluelm-hf export --low-memory` is the same request (here refused for ExecuTorch: exit 2, nothing written)."""
    import argparse

    from bluelm_hf.export import add_export_subcommand, export_main

    parser = argparse.ArgumentParser(prog="bluelm-hf")
    add_export_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", str(bf16_dir), str(tmp_path / "pte"), "--format", "executorch", "--low-memory"])
    assert args.low_memory
    assert export_main(args) == 2
    assert "low_memory=True is implemented for format='onnx' only" in capsys.readouterr().out
    assert not (tmp_path / "pte").exists()
