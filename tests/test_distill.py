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
    from trl import DatasetMixtureConfig, ModelConfig, TrlParser

    from bluelm_hf.distillation import BlueLMDistillConfig

    parser = TrlParser((recipe.BlueLMDistillArguments, BlueLMDistillConfig, ModelConfig, DatasetMixtureConfig))
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


def test_off_policy_distils_on_the_rows_own_completions(tmp_path, distill_recipe, checkpoints, monkeypatch):
    """--lmbda 0: the student never generates; every completion the loss sees is a row's last assistant turn as the
    chat template renders it, after a prompt that ends in that row's own mode (thinking rows with [|BlueThink|])."""
    from bluelm_hf.distillation import BlueLMDistillationTrainer

    student, teacher = checkpoints
    data = write_jsonl(tmp_path / "data.jsonl", ROWS * 2)
    generated, seen = [], []
    monkeypatch.setattr(BlueLMDistillationTrainer, "_generate_single_turn", lambda self, *a, **k: generated.append(a))
    original = BlueLMDistillationTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        decode = self.processing_class.tokenizer.decode
        for prompt, mask, ids, keep in zip(inputs["prompt_ids"], inputs["prompt_mask"], inputs["completion_ids"],
                                           inputs["completion_mask"]):  # fmt: skip
            seen.append((decode(prompt[mask.bool()]), decode(ids[keep.bool()])))
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(BlueLMDistillationTrainer, "compute_loss", spy)
    widths = []  # the LLM width of every image forward
    original_features = BlueLMVModel.get_image_features

    def features_spy(self, pixel_values, *args, **kwargs):
        widths.append(self.config.text_config.hidden_size)
        return original_features(self, pixel_values, *args, **kwargs)

    monkeypatch.setattr(BlueLMVModel, "get_image_features", features_spy)
    run_distill(distill_recipe, [*CPU, "--model_name_or_path", str(student), "--teacher_model_name_or_path",
                                 str(teacher), "--dataset_name", str(data), "--output_dir", str(tmp_path / "out"),
                                 "--max_completion_length", "32", "--lmbda", "0", "--max_steps", "4"])  # fmt: skip
    assert generated == []
    assert {32, 64} <= set(widths), widths  # the images reached the student and the teacher
    expected = {"<think>the square is red</think>Red.</s>": "[|AI|]:[|BlueThink|]", "Hello.</s>": "[|AI|]:",
                "<think>one two</think>2</s>": "[|AI|]:[|BlueThink|]", "1 2 3</s>": "[|AI|]:"}  # fmt: skip
    assert len(seen) == 8 and {completion for _, completion in seen} == set(expected), seen
    for prompt, completion in seen:
        assert prompt.endswith(expected[completion]) and prompt.startswith("[|Human|]:"), (prompt, completion)


def test_lmbda_is_checked(tmp_path, distill_recipe, checkpoints):
    from bluelm_hf.distillation import BlueLMDistillConfig, BlueLMDistillationTrainer

    with pytest.raises(ValueError, match=r"lmbda must be in \[0, 1\].*got 1.5"):
        BlueLMDistillConfig(output_dir=str(tmp_path), lmbda=1.5)
    student, teacher = checkpoints
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor

    prompts = Dataset.from_list([{"prompt": [{"role": "user", "content": "Hi"}]}] * 2)
    with pytest.raises(ValueError, match=r"lmbda=0.5 distils on the dataset's completions.*no `completion` column"):
        BlueLMDistillationTrainer(
            model=AutoModelForImageTextToText.from_pretrained(student),
            teacher_model=AutoModelForImageTextToText.from_pretrained(teacher),
            args=BlueLMDistillConfig(output_dir=str(tmp_path), lmbda=0.5, use_cpu=True, bf16=False, report_to="none"),
            train_dataset=prompts,
            processing_class=AutoProcessor.from_pretrained(student),
        )
