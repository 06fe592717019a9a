"""recipes/distill.py: a BlueLM student distilled from a wider BlueLM teacher with TRL's DistillationTrainer, on a
user's JSONL with image and text rows; the images reach the teacher and the student."""

import copy
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file
from test_data import ROWS, load_recipe, write_jsonl
from test_recipes import CPU, changed

from bluelm_hf import BlueLMVForConditionalGeneration
from bluelm_hf.assemble import add_bluelm_special_tokens
from bluelm_hf.modeling_bluelm_v import BlueLMVModel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def distill_recipe():
    return load_recipe("distill")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_model, tiny_processor, tiny_tokenizer):
    """(student, teacher): the conftest tiny BlueLM, and one twice as wide with the same tokenizer."""
    root = tmp_path_factory.mktemp("distill")
    tiny_model.save_pretrained(root / "student")
    copy.deepcopy(tiny_processor).save_pretrained(root / "student")
    torch.manual_seed(1)
    text = dict(model_type="llama", vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip
    teacher = BlueLMVForConditionalGeneration(
        tiny_config(add_bluelm_special_tokens(tiny_tokenizer), len(tiny_tokenizer), text_config=text)
    )
    teacher.generation_config = copy.deepcopy(tiny_model.generation_config)
    teacher.save_pretrained(root / "teacher")
    return root / "student", root / "teacher"


def run_distill(recipe, args: list[str]):
    from trl import DatasetMixtureConfig, DistillationConfig, ModelConfig, TrlParser

    parser = TrlParser((recipe.BlueLMDistillArguments, DistillationConfig, ModelConfig, DatasetMixtureConfig))
    parsed = parser.parse_args_and_config(args)
    recipe.main(*parsed)
    return parsed


def test_distill_trains_the_student_with_images_reaching_both_models(tmp_path, distill_recipe, checkpoints,
                                                                     monkeypatch, capsys):  # fmt: skip
    student, teacher = checkpoints
    data = write_jsonl(tmp_path / "data.jsonl", ROWS * 2)
    seen = []  # (LLM width, grad enabled, tiles) of every image forward
    original = BlueLMVModel.get_image_features

    def spy(self, pixel_values, *args, **kwargs):
        seen.append((self.config.text_config.hidden_size, torch.is_grad_enabled(), pixel_values.shape[0]))
        return original(self, pixel_values, *args, **kwargs)

    monkeypatch.setattr(BlueLMVModel, "get_image_features", spy)
    out = tmp_path / "out"
    run_distill(distill_recipe, [*CPU, "--model_name_or_path", str(student), "--teacher_model_name_or_path",
                                 str(teacher), "--dataset_name", str(data), "--output_dir", str(out),
                                 "--max_completion_length", "8", "--learning_rate", "1e-2"])  # fmt: skip
    assert "Distillation wall time" in capsys.readouterr().out
    assert changed(load_file(student / "model.safetensors"), load_file(out / "model.safetensors"), "language_model")
    assert (out / "processor_config.json").exists() and (out / "generation_config.json").exists()
    assert any(width == 64 and tiles > 0 for width, _, tiles in seen), seen  # the teacher saw the images
    assert any(width == 32 and grad for width, grad, _ in seen), seen  # and the student's trained forward did


def test_distill_needs_a_teacher(tmp_path, distill_recipe, checkpoints):
    student, _ = checkpoints
    data = write_jsonl(tmp_path / "data.jsonl")
    with pytest.raises(ValueError, match="--teacher_model_name_or_path is required"):
        run_distill(distill_recipe, [*CPU, "--model_name_or_path", str(student), "--dataset_name", str(data),
                                     "--output_dir", str(tmp_path / "o")])  # fmt: skip
    with pytest.raises(ValueError, match="--model_name_or_path is required: the student"):
        run_distill(distill_recipe, [*CPU, "--dataset_name", str(data), "--output_dir", str(tmp_path / "o")])


def test_the_stage_preset_runs_on_cpu(tmp_path, distill_recipe, checkpoints, monkeypatch):
    """recipes/stages/distill.yaml at tiny scale (its 2.9B settings overridden for the CPU)."""
    student, teacher = checkpoints
    write_jsonl(tmp_path / "data" / "sft.jsonl", ROWS * 2)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    run_distill(distill_recipe, ["--config", str(ROOT / "recipes" / "stages" / "distill.yaml"), *CPU,
                                 "--model_name_or_path", str(student), "--teacher_model_name_or_path", str(teacher),
                                 "--output_dir", str(out), "--max_completion_length", "8"])  # fmt: skip
    assert (out / "model.safetensors").exists()
