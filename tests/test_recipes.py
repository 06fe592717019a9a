"""The pipeline presets (recipes/stages/*.yaml) on CPU at tiny scale, a chain of two stages end to end, GRPO's
reward loading, and the worked example of recipes/README.md run as written."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_data import ROWS, load_recipe, run_sft, tiny_checkpoint, write_jsonl  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]
STAGES = ROOT / "recipes" / "stages"
CPU = ["--use_cpu", "true", "--bf16", "false", "--activation_checkpointing", "false", "--per_device_train_batch_size",
       "2", "--max_steps", "2", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
       "--logging_steps", "1", "--dataloader_num_workers", "0"]  # fmt: skip
DATA = ("captions", "image_text", "text", "reasoning", "long", "sft", "rl")


@pytest.fixture(scope="module")
def grpo_recipe():
    return load_recipe("grpo")


@pytest.fixture(scope="module")
def sft_recipe():
    return load_recipe("sft")


@pytest.fixture
def stage_data(tmp_path, monkeypatch):
    """data/<name>.jsonl for every preset, in the working directory the presets' relative paths point into."""
    for name in DATA:
        rows = [r for r in ROWS if r["images"]] if name in ("captions", "image_text") else ROWS
        if name == "text":
            rows = [r for r in ROWS if not r["images"]]
        write_jsonl(tmp_path / "data" / f"{name}.jsonl", rows * 2)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_grpo(recipe, args: list[str]):
    from trl import DatasetMixtureConfig, GRPOConfig, ModelConfig, TrlParser

    parsed = TrlParser((recipe.BlueLMGRPOArguments, GRPOConfig, ModelConfig, DatasetMixtureConfig)).parse_args_and_config(
        args
    )
    recipe.main(*parsed)
    return parsed


def changed(before: dict, after: dict, part: str) -> bool:
    names = [n for n in before if f".{part}." in n or n.startswith(f"{part}.")]
    assert names, part
    return any(not torch.equal(before[n], after[n]) for n in names)


@pytest.mark.parametrize("stage", sorted(p.name for p in STAGES.glob("[0-9]_*.yaml")))
def test_every_stage_preset_runs_on_cpu(stage, stage_data, sft_recipe, grpo_recipe, tiny_checkpoint, capsys):
    out = stage_data / "out"
    args = ["--config", str(STAGES / stage), *CPU, "--model_name_or_path", str(tiny_checkpoint), "--output_dir", str(out)]
    if stage.startswith("6_"):
        run_grpo(grpo_recipe, [*args, "--num_generations", "2", "--max_completion_length", "8"])
    else:
        run_sft(sft_recipe, args)
    before, after = load_file(tiny_checkpoint / "model.safetensors"), load_file(out / "model.safetensors")
    if stage.startswith("6_"):  # a random tiny policy earns no reward spread, so no update: check the rewards ran
        logged = capsys.readouterr().out
        for name in ("accuracy_reward", "format_reward", "repetition_penalty_reward", "group_overlong_reward"):
            assert f"'rewards/{name}/mean'" in logged, logged[-2000:]
    elif stage.startswith("1_"):  # adapter alignment: the projector only
        assert changed(before, after, "multi_modal_projector")
        assert not changed(before, after, "vision_tower") and not changed(before, after, "language_model")
    else:
        assert changed(before, after, "language_model")
    if stage.startswith("4_"):
        text = json.loads((out / "config.json").read_text())["text_config"]
        assert text["max_position_embeddings"] == 32768
        assert text["rope_parameters"] == {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 32.0,
                                           "original_max_position_embeddings": 1024}  # fmt: skip


def test_each_stage_loads_the_one_before():
    from yaml import safe_load

    presets = [safe_load(p.read_text()) for p in sorted(STAGES.glob("[0-9]_*.yaml"))]
    assert len(presets) == 6 and [p["model_name_or_path"] for p in presets[1:]] == [p["output_dir"] for p in presets[:-1]]
    distill = safe_load((STAGES / "distill.yaml").read_text())  # optional, between SFT and GRPO (tests/test_distill.py)
    assert distill["model_name_or_path"] == presets[4]["output_dir"]
    assert presets[1]["vision_lr_decay"] == 0.9 and [d["fraction"] for d in presets[1]["datasets"]] == [0.6, 0.4]


def test_a_chain_of_two_stages(stage_data, sft_recipe, tiny_checkpoint):
    """Adapter alignment, then joint pretraining on the 6:4 mixture from the adapter's output: stage 2 starts from
    stage 1's weights (its projector), not from the assembled model."""
    one, two = stage_data / "stage1", stage_data / "stage2"
    run_sft(sft_recipe, ["--config", str(STAGES / "1_adapter.yaml"), *CPU,
                         "--model_name_or_path", str(tiny_checkpoint), "--output_dir", str(one)])  # fmt: skip
    run_sft(sft_recipe, ["--config", str(STAGES / "2_joint.yaml"), *CPU, "--learning_rate", "1e-12",
                         "--model_name_or_path", str(one), "--output_dir", str(two)])  # fmt: skip
    start, first, second = (load_file(p / "model.safetensors") for p in (tiny_checkpoint, one, two))
    assert changed(start, first, "multi_modal_projector") and not changed(start, first, "language_model")
    # A 1e-12 step leaves stage 2 next to its start: stage 1's projector, not the assembled model's.
    name = "model.multi_modal_projector.linear_1.weight"
    assert torch.allclose(second[name], first[name], atol=1e-6) and not torch.allclose(second[name], start[name])
    assert changed(first, second, "language_model") and changed(first, second, "vision_tower")


# ------------------------------------------------------------------------------------------------ GRPO rewards
def test_reward_funcs_are_dotted_paths_with_kwargs(grpo_recipe):
    funcs = grpo_recipe.load_reward_funcs(
        ["bluelm_hf.rewards.group_overlong_reward", "trl.rewards.get_repetition_penalty_reward", "think_format_reward"],
        json.dumps({"bluelm_hf.rewards.group_overlong_reward": {"tolerance": 0.25},
                    "trl.rewards.get_repetition_penalty_reward": {"ngram_size": 2}}),
    )  # fmt: skip
    assert funcs[0].__name__ == "group_overlong_reward" and funcs[0].keywords == {"tolerance": 0.25}
    assert funcs[1](completion_ids=[[1, 1, 1, 1]]) == [pytest.approx(-2 / 3)]  # TRL's token n-gram penalty, ngram_size 2
    from trl.rewards import think_format_reward

    assert funcs[2] is think_format_reward
    with pytest.raises(ValueError, match="could not load reward function 'bluelm_hf.rewards.nope'"):
        grpo_recipe.load_reward_funcs(["bluelm_hf.rewards.nope"])
    with pytest.raises(ValueError, match="could not load reward function 'nope'"):
        grpo_recipe.load_reward_funcs(["nope"])
    with pytest.raises(ValueError, match=r"--reward_kwargs names \['x.y'\]"):
        grpo_recipe.load_reward_funcs(["think_format_reward"], '{"x.y": {}}')


def test_grpo_refuses_mismatched_weights(stage_data, grpo_recipe, tiny_checkpoint):
    with pytest.raises(ValueError, match=r"3 --reward_weights for 4 --reward_funcs"):
        run_grpo(grpo_recipe, ["--config", str(STAGES / "6_grpo.yaml"), *CPU, "--num_generations", "2", "--reward_weights", "1", "1", "1",
                               "--model_name_or_path", str(tiny_checkpoint), "--output_dir", "o"])  # fmt: skip


# -------------------------------------------------------------------------------------------- worked example
@pytest.mark.slow
def test_the_readme_worked_example_runs_as_written(tmp_path):
    readme = (ROOT / "recipes" / "README.md").read_text()
    block = re.search(r"<!-- worked-example -->\n```bash\n(.*?)```", readme, flags=re.S).group(1)
    write_jsonl(tmp_path / "my_data" / "train.jsonl", ROWS * 2)
    (tmp_path / "recipes").symlink_to(ROOT / "recipes", target_is_directory=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    import bluelm_hf

    nano, adapter, sft, grpo = (load_file(p / "model.safetensors") for p in (
        bluelm_hf.NANO, tmp_path / "runs/my-adapter", tmp_path / "runs/my-sft", tmp_path / "runs/my-grpo"))  # fmt: skip
    assert changed(nano, adapter, "multi_modal_projector") and not changed(nano, adapter, "language_model")
    assert changed(adapter, sft, "language_model")
    assert "GRPO wall time" in result.stdout + result.stderr and grpo.keys() == sft.keys()
