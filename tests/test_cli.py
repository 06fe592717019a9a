"""The `bluelm-hf` command line (bluelm_hf.cli): what a user sees when something is wrong, and what it needs installed."""

import json
import shutil
import subprocess
import sys

import pytest

import bluelm_hf
from bluelm_hf.cli import main

needs_nano = pytest.mark.skipif(not (bluelm_hf.NANO / "config.json").exists(), reason="BlueLM-nano is not bundled")

# The optional extras of pyproject.toml (train, export, demo, quant, dev) and what they pull in.
# Not yaml: huggingface_hub, a base dependency, needs it.
EXTRAS = ("gradio", "gradio_client", "trl", "peft", "accelerate", "datasets", "onnx", "onnxruntime", "onnxscript",
          "onnx_ir", "executorch", "bitsandbytes", "pytest", "hypothesis", "playwright")


def _run(*argv: str, env=None, prelude: str = "") -> subprocess.CompletedProcess:
    """`bluelm-hf ARGV` in a fresh interpreter (after `prelude`), as a user runs it."""
    code = f"{prelude}\nimport sys\nfrom bluelm_hf.cli import main\nsys.exit(main({list(argv)!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)


@needs_nano
def test_an_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")  # a 0-byte image file
    result = _run("chat", "--image", str(empty), "--max-new-tokens", "1")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    # Not ours: transformers' tqdm bar, and torch's pytree warnings when transformers imports torchao (export extra).
    noise = ("Loading weights", "torch/utils/_pytree.py")
    (line,) = [line for line in result.stderr.splitlines() if line and not any(n in line for n in noise)]
    assert line.startswith("bluelm-hf chat: error: ") and "empty.png" in line and "not in an image format" in line
    assert "--debug" in line
    # --debug lets the error through, so the interpreter prints its traceback (in-process: no second model load)
    with pytest.raises(ValueError, match="not in an image format"):
        main(["chat", "--image", str(empty), "--max-new-tokens", "1", "--debug"])


def test_an_empty_question_is_a_usage_error(capsys):
    for question in ("", "   "):
        with pytest.raises(SystemExit) as exit_info:
            main(["chat", question])
        assert exit_info.value.code == 2
        assert "the question is empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["chat", "--budget", "-3"], "--budget: must be >= 0, got -3"),
        (["chat", "--max-new-tokens", "0"], "--max-new-tokens: must be >= 1, got 0"),
        (["chat", "--budget", "1.5"], "--budget: expected a whole number >= 0, got '1.5'"),
        (["eval", "--n", "0"], "--n: must be >= 1, got 0"),
        (["eval", "--batch-size", "-1"], "--batch-size: must be >= 1, got -1"),
        (["eval", "--budget", "-1"], "--budget: must be >= 0, got -1"),
        (["assemble", "v", "l", "out", "--max-grid-size", "0"], "--max-grid-size: must be >= 1, got 0"),
        (["card", "model", "--run-eval", "--n", "0"], "--n: must be >= 1, got 0"),
    ],
)
def test_an_out_of_range_count_is_a_usage_error_before_any_model_loads(capsys, monkeypatch, argv, message):
    """Once `eval --n 0` crashed deep inside datasets (`ValueError: Keys mismatch`) and `chat --budget -3` loaded the
    model before refusing; every count is now checked by argparse (exit 2, the flag and the number)."""
    import bluelm_hf.inference

    monkeypatch.setattr(bluelm_hf.inference, "load", lambda *a, **k: pytest.fail("loaded a model first"))
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def _checkpoint_copy(tmp_path):
    """A copy of the bundled nano's files, without weights (the checks under test run before any are read)."""
    path = tmp_path / "checkpoint"
    shutil.copytree(bluelm_hf.NANO, path, ignore=shutil.ignore_patterns("*.safetensors"))
    return path


@needs_nano
@pytest.mark.parametrize("command", [["chat"], ["eval", "--n", "1"]])
def test_another_model_type_is_named(tmp_path, capsys, command):
    path = _checkpoint_copy(tmp_path)
    # a small llama config: were it loaded, the BlueLM weights would not fit it
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 64,
              "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 512}
    (path / "config.json").write_text(json.dumps(config))
    assert main([*command, "--model", str(path)]) == 1
    err = capsys.readouterr().err
    assert "holds a 'llama' model" in err and "not a BlueLM one ('bluelm_v')" in err


@needs_nano
def test_missing_tokenizer_files_are_named(tmp_path, capsys):
    path = _checkpoint_copy(tmp_path)
    (path / "tokenizer.json").unlink()
    assert main(["chat", "--model", str(path)]) == 1
    err = capsys.readouterr().err
    assert "has no tokenizer: none of tokenizer.json, tokenizer.model is there" in err
    assert "sentencepiece" not in err


@needs_nano
def test_chat_needs_no_extras():
    """README: `pip install -e . && bluelm-hf chat` (no extras). Every optional dependency is made unimportable, the way
    a base install lacks it (`sys.modules[name] = None`: `import` fails and `find_spec` says it is absent)."""
    block = f"import sys\nfor name in {EXTRAS!r}:\n    sys.modules[name] = None"
    result = _run("chat", "--no-think", "--max-new-tokens", "8", prelude=block)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "answer: " in result.stdout
    probe = subprocess.run([sys.executable, "-c", f"{block}\nimport gradio"], capture_output=True, text=True)
    assert probe.returncode != 0 and "import of gradio halted" in probe.stderr  # the blocking itself works
