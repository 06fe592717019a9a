"""Shared fixtures: a tiny BlueLM built on the fly (no Hub access); and the order the test files run in.

`python -m pytest` runs the files on pytest-xdist workers (`-n auto --dist loadfile` in pyproject.toml: one file a
worker, so a file's module fixtures are built once), at most `MAX_WORKERS`, the slowest files first so that the
workers finish together; `-n 0` runs everything in one process.
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bluelm_hf
from bluelm_hf import BlueLMVConfig, BlueLMVForConditionalGeneration, BlueLMVImageProcessor, BlueLMVProcessor
from bluelm_hf.assemble import add_bluelm_special_tokens

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes" / "nano"))  # the nano's tokenizer trainer
from nano_data import train_tokenizer  # noqa: E402

MAX_WORKERS = 4  # each worker holds torch and a few models; several tests start two training processes
# Longest first (each file's total of pytest --durations, 2-core CI), so the short files fill in at the end and the
# workers finish together; a file not named here runs after these.
SLOWEST_FIRST = ("test_training.py", "test_distributed.py", "test_export_executorch.py", "test_vllm.py",
                 "test_recipes.py", "test_export.py", "test_space.py", "test_export_realsize.py", "test_grpo.py",
                 "test_nano_checkpoint.py", "test_serving.py", "test_cli.py", "test_modeling.py",
                 "test_transformers_battery.py", "test_assemble.py", "test_model_card.py", "test_data.py",
                 "test_nano_task.py", "test_thinking.py", "test_distill.py", "test_image_processing.py",
                 "test_rewards.py", "test_image_loading.py", "test_processing.py", "test_chat_template.py",
                 "test_layout.py")  # fmt: skip


def pytest_xdist_auto_num_workers(config):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOWEST_FIRST)))  # stable: the rest keep their order


TILE = 56  # 4x4 patches of 14 px -> 2x2 merged -> 4 tokens per tile
CORPUS = [
    "How many red cells are there? There are 3 red cells.",
    "What is in the picture? A blue square and a green circle.",
    "Let me count: red, blue, red. So the answer is 2.",
    "The quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9.",
] * 4


def tiny_config(token_ids: dict, vocab_size: int, **kwargs) -> BlueLMVConfig:
    defaults = dict(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            patch_size=14,
            image_size=TILE,
            vision_use_head=False,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
        ),
        max_grid_size=3,
        max_image_side=4 * TILE,
        vision_batch_size=3,
        **token_ids,
    )
    defaults.update(kwargs)
    return BlueLMVConfig(**defaults)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    tokenizer = train_tokenizer(CORPUS, vocab_size=200)
    add_bluelm_special_tokens(tokenizer)
    return tokenizer


@pytest.fixture(scope="session")
def tiny_processor(tiny_tokenizer):
    image_processor = BlueLMVImageProcessor(tile_size=TILE, max_grid_size=3, max_image_side=4 * TILE)
    return BlueLMVProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    torch.manual_seed(0)
    token_ids = add_bluelm_special_tokens(tiny_tokenizer)
    config = tiny_config(token_ids, vocab_size=len(tiny_tokenizer))
    model = BlueLMVForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tiny_tokenizer.eos_token_id
    model.generation_config.pad_token_id = tiny_tokenizer.pad_token_id
    return model


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


__all__ = ["bluelm_hf", "random_image", "tiny_config"]
