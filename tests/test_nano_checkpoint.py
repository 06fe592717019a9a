"""The shipped BlueLM-nano checkpoint (`bluelm_hf.NANO`): it loads offline through the Auto classes, and a small
held-out eval clears floors that random weights cannot reach. The full-size numbers (500 questions, the budget
curve, 2000 no-think generations) are benchmarks: see BENCHMARKS.md and the checkpoint's model card."""

import os
import subprocess
import sys

import pytest
import torch

import bluelm_hf
from bluelm_hf import nano_task
from bluelm_hf.assemble import init_from_scratch
from bluelm_hf.evaluation import evaluate_nano
from bluelm_hf.inference import load

N = 96  # held-out questions per setting: ~10 s on 2 cores
THINK_FLOOR = 0.75  # random weights score ~0.1 (checked below), the shipped nano ~0.9 on 500 questions
GAP_FLOOR = 0.08  # thinking minus non-thinking; 0.2+ on 500 questions


@pytest.fixture(scope="module")
def nano():
    return load(str(bluelm_hf.NANO))


@pytest.fixture(scope="module")
def held_out():
    return nano_task.make_eval_set(N)


@pytest.fixture(scope="module")
def think_eval(nano, held_out):
    """The thinking-mode eval with no budget (greedy, so one run serves every test that compares against it)."""
    model, processor = nano
    return evaluate_nano(model, processor, dataset=held_out, thinking=True)


def test_loads_offline_through_auto_classes(nano):
    code = (
        "import torch, bluelm_hf\n"
        "from transformers import AutoModelForImageTextToText, AutoProcessor\n"
        "m = AutoModelForImageTextToText.from_pretrained(bluelm_hf.NANO)\n"
        "p = AutoProcessor.from_pretrained(bluelm_hf.NANO)\n"
        "assert type(m).__name__ == 'BlueLMVForConditionalGeneration', type(m)\n"
        "assert type(p).__name__ == 'BlueLMVProcessor', type(p)\n"
        "eos = m.generation_config.eos_token_id\n"
        "assert p.tokenizer.eos_token_id in (eos if isinstance(eos, list) else [eos]), eos\n"
        "print('params', sum(t.numel() for t in m.parameters()))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # the Auto classes load the same weights `inference.load` does
    assert f"params {sum(t.numel() for t in nano[0].parameters())}" in result.stdout.splitlines()


def test_small_eval_clears_floors_random_weights_cannot(nano, held_out, think_eval):
    model, processor = nano
    think = think_eval
    no_think = evaluate_nano(model, processor, dataset=held_out, thinking=False)
    assert think["accuracy"] >= THINK_FLOOR, think
    assert think["accuracy"] - no_think["accuracy"] >= GAP_FLOOR, (think, no_think)
    # the mode switch: every thinking row is <think>...</think>answer, no non-thinking row has a think tag
    assert think["well_formed"] == 1.0 and think["rows_with_think_tag"] == N, think
    assert no_think["well_formed"] == 1.0 and no_think["rows_with_think_tag"] == 0, no_think

    # The same eval on random weights of the same shape (and the same tokenizer) stays far below the floor.
    random_model, random_processor = init_from_scratch(processor.tokenizer, seed=1)
    random_think = evaluate_nano(random_model.eval(), random_processor, dataset=held_out, thinking=True)
    assert random_think["accuracy"] < THINK_FLOOR / 2, random_think


def test_budget_zero_is_worse_than_unlimited(nano, held_out, think_eval):
    model, processor = nano
    closed = evaluate_nano(model, processor, dataset=held_out, thinking=True, thinking_budget=0)
    full = think_eval
    assert closed["mean_thinking_tokens"] == 0.0
    assert full["accuracy"] - closed["accuracy"] >= GAP_FLOOR, (closed, full)


def test_bundled_example_runs_through_chat(nano):
    from bluelm_hf.inference import generate
    from PIL import Image

    model, processor = nano
    image = Image.open(nano_task.EXAMPLE_IMAGE_PATH)
    with torch.no_grad():
        out = generate(model, processor, ["How many cells?"], [image], thinking=True, max_new_tokens=64)[0]
    # the example holds 7 cells (nano_task.EXAMPLE_COLOURS): the trace counts them one by one
    assert len(nano_task.EXAMPLE_COLOURS) == 7
    assert out["content"].strip() == "7", out
    assert out["reasoning_content"].split()[-2:] == ["so", "7"], out


@pytest.mark.parametrize(
    "missing", ["runs/no-such-run/checkpoint-150", "runs/no-such-run", "./no-such-model", "/no/such/model"]
)
def test_a_mistyped_local_path_is_a_clear_error_not_a_hub_lookup(missing, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    # "runs/no-such-run" has the shape of a Hub id, but runs/ is a local directory
    with pytest.raises(FileNotFoundError, match=rf"Model directory {missing} does not exist"):
        load(missing)


def test_a_home_relative_path_that_exists_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "nano").symlink_to(bluelm_hf.NANO, target_is_directory=True)
    model, processor = load("~/models/nano")
    shipped = load(str(bluelm_hf.NANO))[0].state_dict()
    assert model.state_dict().keys() == shipped.keys()
    assert all(torch.equal(tensor, shipped[name]) for name, tensor in model.state_dict().items())


def test_model_card_states_the_recipe_the_yaml_holds():
    """The shipped weights are what `recipes/nano/sft.yaml` re-creates bit for bit (BENCHMARKS.md), so a change to
    the YAML (a seed, a step count) without re-training and re-shipping nano must not go unnoticed: the bundled
    card's hyperparameter table, rendered from the YAML when nano was shipped, must still equal it."""
    import re
    from pathlib import Path

    yaml = pytest.importorskip("yaml")
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "nano" / "sft.yaml"
    settings = yaml.safe_load(recipe.read_text())
    card = (bluelm_hf.NANO / "README.md").read_text()
    table = dict(re.findall(r"^\| `(\w+)` \| `(.*)` \|$", card, flags=re.M))
    assert table, "the bundled card has no hyperparameter table"
    assert table == {key: str(value) for key, value in settings.items()}
    assert f"# seed {settings['seed']}," in card, "the card's training command names another seed"


def test_eval_counts_with_the_shared_well_formed_check(monkeypatch):
    """`evaluate_nano` scores with `nano_task.score` and counts shapes with `rewards.is_well_formed` (canned outputs)."""
    from datasets import Dataset

    from bluelm_hf import evaluation

    texts = ["<think>red 1 so 1</think>1", "<think></think>1", "<think>red 1 so 1</think>1[|Human|]:more", "2"]
    outputs = [
        {"text": t, "content": t.rsplit("</think>", 1)[-1], "reasoning_content": "r", "num_thinking_tokens": 4}
        for t in texts
    ]
    monkeypatch.setattr(evaluation, "generate", lambda model, processor, questions, *a, **k: outputs[: len(questions)])
    rows = Dataset.from_dict({"question": ["q"] * 4, "image": [None] * 4, "answer": ["1", "1", "1", "1"]})
    think = evaluate_nano(object(), None, dataset=rows, thinking=True)
    assert think["well_formed"] == 0.25  # only the first: empty reasoning, a second turn and no think block fail
    assert think["accuracy"] == 0.5  # the two answers "1" are right; "1[|Human|]:more" and "2" are not
    assert think["rows_with_think_tag"] == 3 and think["mean_thinking_tokens"] == 4.0
    no_think = evaluate_nano(object(), None, dataset=rows, thinking=False)
    assert no_think["well_formed"] == 0.25  # only "2": no think tag, non-empty
