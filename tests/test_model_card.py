"""Model cards (bluelm_hf.model_card): rendered from a saved checkpoint and `bluelm-hf eval --json` results."""

import argparse
import json
import re

import pytest
import yaml

from bluelm_hf import model_card
from bluelm_hf.model_card import check_eval_results, load_eval_results, parameter_counts, render_card

EVAL = [  # the shape `bluelm-hf eval --json` prints; the values are arbitrary but distinctive
    {"accuracy": 0.318, "n": 500, "thinking": False, "thinking_budget": None, "mean_thinking_tokens": 0.0,
     "well_formed": 0.994, "rows_with_think_tag": 0, "model": "runs/nano-sft"},
    {"accuracy": 0.271, "n": 500, "thinking": True, "thinking_budget": 0, "mean_thinking_tokens": 0.0,
     "well_formed": 0.962, "rows_with_think_tag": 500, "model": "runs/nano-sft"},
    {"accuracy": 0.587, "n": 500, "thinking": True, "thinking_budget": 6, "mean_thinking_tokens": 5.93,
     "well_formed": 0.978, "rows_with_think_tag": 500, "model": "runs/nano-sft"},
    {"accuracy": 0.9137, "n": 500, "thinking": True, "thinking_budget": None, "mean_thinking_tokens": 11.46,
     "well_formed": 0.988, "rows_with_think_tag": 500, "model": "runs/nano-sft"},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model, tiny_processor):
    path = tmp_path_factory.mktemp("tiny-bluelm")
    tiny_model.save_pretrained(path)
    tiny_processor.save_pretrained(path)
    return path


def _metadata(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, "the card must start with a YAML front matter block"
    return yaml.safe_load(match.group(1))


def test_metadata_parses_as_yaml(model_dir):
    card = render_card(model_dir, EVAL, {"base_model": ["google/siglip2-so400m-patch14-384", "Qwen/Qwen3-1.7B"]},
                       model_id="someone/tiny-bluelm")
    meta = _metadata(card)
    assert meta["pipeline_tag"] == "image-text-to-text"
    assert meta["library_name"] == "transformers"
    assert meta["license"] == "apache-2.0"
    assert "bluelm" in meta["tags"] and "thinking-budget" in meta["tags"]
    assert meta["base_model"] == ["google/siglip2-so400m-patch14-384", "Qwen/Qwen3-1.7B"]
    (entry,) = meta["model-index"]
    assert entry["name"] == "tiny-bluelm"
    metrics = entry["results"][0]["metrics"]
    assert sorted(m["value"] for m in metrics) == sorted(round(r["accuracy"], 4) for r in EVAL)
    assert {m["type"] for m in metrics} == {"accuracy"}


def test_numbers_from_the_input_appear(model_dir):
    card = render_card(model_dir, EVAL, model_id="someone/tiny-bluelm")
    for text in ("31.8%", "27.1%", "58.7%", "91.4%", "5.9", "11.5", "99.4%", "| 500 |"):
        assert text in card, text
    budget_table = card.split("### Accuracy vs thinking budget")[1].split("Each row is one run of")[0]
    rows = [line for line in budget_table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows == [
        "| 0 | 27.1% | 0.0 |",
        "| 6 | 58.7% | 5.9 |",
        "| unlimited | 91.4% | 11.5 |",
        "| non-thinking mode, for reference | 31.8% | – |",
    ]
    assert "bluelm-hf eval --model runs/nano-sft --n 500 --think --budget 6 --json" in card
    assert 'from_pretrained("someone/tiny-bluelm")' in card


def test_checkpoint_facts_come_from_the_checkpoint(model_dir, tiny_model):
    counts = parameter_counts(model_dir)
    assert counts["total"] == sum(p.numel() for p in tiny_model.parameters())  # tied lm_head stored once
    assert counts["vision_tower"] == sum(p.numel() for p in tiny_model.model.vision_tower.parameters())
    card = render_card(model_dir, EVAL[:1])
    assert f"context {tiny_model.config.text_config.max_position_embeddings} tokens" in card
    assert f"{tiny_model.config.image_tokens_per_tile} tokens per tile" in card


def test_one_thinking_result_gives_no_budget_table(model_dir):
    card = render_card(model_dir, [EVAL[0], EVAL[3]])
    assert "Accuracy vs thinking budget" not in card
    assert "91.4%" in card and "31.8%" in card


@pytest.mark.parametrize("field", ["accuracy", "n", "thinking"])
def test_a_missing_field_is_a_clear_error(model_dir, field):
    broken = [dict(EVAL[0]), {k: v for k, v in EVAL[2].items() if k != field}]
    with pytest.raises(ValueError, match=rf"eval result 1 has no '{field}' field .*bluelm-hf eval --json"):
        render_card(model_dir, broken)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"accuracy": 91.3}, "accuracy must be a fraction in \\[0, 1\\], got 91.3"),
        ({"n": 0}, "n must be a positive number"),
        ({"thinking_budget": -1}, "thinking_budget must be null or an int >= 0"),
        ({"model": "other-model"}, "different models"),
        ({"thinking_budget": 0}, "more than one eval result for thinking, budget 0"),
    ],
)
def test_bad_results_are_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        check_eval_results([*EVAL[:2], {**EVAL[2], **change}])


def test_not_a_model_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        render_card(tmp_path, EVAL)
    with pytest.raises(ValueError, match="no evaluation results"):
        check_eval_results([])


def test_eval_json_lines_are_read_with_their_source(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in EVAL[:2]) + "\n")
    results = load_eval_results([path])
    assert [r["accuracy"] for r in results] == [0.318, 0.271]
    (tmp_path / "list.json").write_text(json.dumps(EVAL[2:]))
    assert len(load_eval_results([tmp_path / "list.json"])) == 2
    path.write_text(json.dumps(EVAL[0]) + "\nnot json\n")
    with pytest.raises(ValueError, match=r"eval.jsonl:2 is not JSON"):
        load_eval_results([path])
    path.write_text(json.dumps({"n": 5, "thinking": True}) + "\n")
    with pytest.raises(ValueError, match=r"eval result 0 \(from .*eval.jsonl\) has no 'accuracy' field"):
        check_eval_results(load_eval_results([path]))


def _cli(argv):
    parser = argparse.ArgumentParser(prog="bluelm-hf")
    model_card.add_card_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_card_command_reads_eval_json(model_dir, tmp_path):
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in EVAL))
    recipe = tmp_path / "sft.yaml"
    recipe.write_text("learning_rate: 0.003\nmax_steps: 800\n")
    training = tmp_path / "training.json"
    training.write_text(json.dumps({"recipe": "python recipes/sft.py --config recipes/nano_sft.yaml",
                                    "hardware": "2-core CPU", "train_runtime_s": 1260}))
    out = tmp_path / "README.md"
    assert _cli(["card", str(model_dir), "--eval-json", str(eval_file), "--training-json", str(training),
                 "--recipe-config", str(recipe), "--out", str(out)]) == 0
    card = out.read_text()
    assert "58.7%" in card and "python recipes/sft.py --config recipes/nano_sft.yaml" in card
    assert "| `max_steps` | `800` |" in card and "training took 21.0 min" in card
    with pytest.raises(SystemExit, match="--eval-json"):
        _cli(["card", str(model_dir)])


@pytest.mark.slow  # three greedy evaluations of 64 tokens each
def test_card_from_a_real_evaluation(model_dir, tmp_path):
    """`card --run-eval` evaluates the checkpoint itself: the card's numbers are the evaluation's."""
    saved = tmp_path / "eval.jsonl"
    out = tmp_path / "README.md"
    assert _cli(["card", str(model_dir), "--run-eval", "--budgets", "0,unlimited", "--n", "2",
                 "--save-eval", str(saved), "--out", str(out)]) == 0
    results = load_eval_results([saved])
    assert [(r["thinking"], r["thinking_budget"]) for r in results] == [(False, None), (True, 0), (True, None)]
    card = out.read_text()
    for result in results:
        assert f"{100 * result['accuracy']:.1f}%" in card
    assert "### Accuracy vs thinking budget" in card


def test_bundled_nano_card(model_dir, monkeypatch):
    """The card of the bundled nano loads it by `bluelm_hf.NANO` and says what the toy is (tiny model standing in)."""
    import bluelm_hf

    monkeypatch.setattr(bluelm_hf, "NANO", model_dir)
    card = render_card(model_dir, [{**r, "model": "bluelm-nano (bundled)"} for r in EVAL])
    assert "from_pretrained(bluelm_hf.NANO)" in card and "BlueLM-nano is a toy" in card
    assert "bluelm-hf eval --n 500 --think --budget 6 --json" in card  # the bundled model needs no --model
    assert "export_model(bluelm_hf.NANO," in card
    assert _metadata(card)["model-index"][0]["name"] == "BlueLM-nano"


def test_card_code_runs(model_dir):
    """The card's Python usage, pipeline and streaming snippets run as written (export needs onnx: not run here)."""
    card = render_card(model_dir, EVAL, model_id=str(model_dir))
    blocks = re.findall(r"```python\n(.*?)```", card, re.S)
    runnable = [block for block in blocks if "export_model" not in block]
    assert len(runnable) == 3
    namespace = {}
    for block in runnable:
        exec(compile(block.replace("max_new_tokens=64", "max_new_tokens=8"), "<card>", "exec"), namespace)


def test_template_ships_as_package_data(model_dir, tmp_path):
    """`bluelm-hf card` works from an installed package: the template is package data, found beside the code."""
    import fnmatch
    import shutil
    import subprocess
    import sys
    import tomllib
    from pathlib import Path

    package = Path(model_card.__file__).parent
    relative = model_card.DEFAULT_TEMPLATE.relative_to(package).as_posix()
    globs = tomllib.loads((package.parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(fnmatch.fnmatch(relative, pattern) for pattern in globs["bluelm_hf"]), (relative, globs)
    # The package alone, away from the repository (as site-packages holds it), renders a card.
    site = tmp_path / "site"
    shutil.copytree(package, site / "bluelm_hf", ignore=shutil.ignore_patterns("__pycache__", "nano"))
    (tmp_path / "eval.json").write_text(json.dumps(EVAL))
    code = ("import json, sys; from bluelm_hf import model_card; "
            "print(model_card.render_card(sys.argv[1], json.load(open(sys.argv[2]))))")
    result = subprocess.run([sys.executable, "-c", code, str(model_dir), str(tmp_path / "eval.json")],
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "91.4%" in result.stdout
