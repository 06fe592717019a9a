"""transformers' own common test mixins run against a tiny BlueLM, as an in-tree model's tests would run them.

The mixins come from the transformers sdist at the installed version (`.ci/fetch_transformers_tests.sh` puts its
`tests/*.py` into the gitignored `.transformers_tests/hf_tests`). The tiny config is built the way
`tests/models/llava_next` and `tests/models/lfm2_vl` build theirs: a 2-layer llama and a 2-layer SigLIP, one 1x1-grid
image per sample.

What the sdist lacks, and so what cannot run here (PyPI's sdist is the only source of transformers' tests reachable
from CI; its repository is not):
- `tests/generation/test_utils.py`: `GenerationTesterMixin` is an empty stand-in, so none of its generate tests run.
  tests/test_modeling.py covers beams, `num_return_sequences`, assisted decoding and cache/no-cache equality.
- `tests/exporters/test_export.py`: `ExportTesterMixin` (ModelTesterMixin's base) is an empty stand-in.
- `tests/utils/test_configuration_utils.py`: `config_common_kwargs` is `{}`, so ConfigTester's check that every
  common `PreTrainedConfig` kwarg round-trips runs over no kwargs.
- `tests/utils/tiny_model_summary.json`: `{}`, so PipelineTesterMixin skips its tasks ("not in tiny_model_summary",
  the Hub's tiny models); tests/test_modeling.py runs the image-text-to-text pipeline on the nano.
- `utils/fetch_hub_objects_for_ci.py`: `url_to_local_path` maps the mixins' Hub image URLs to a local PNG (a smooth
  synthetic picture; there is no network in tests).
`test_pipeline_mixin.py` also reads `src/transformers`: a link to the installed package.
"""

import json
import os
import sys
import types
import unittest
from pathlib import Path

import numpy as np
import pytest
import torch
from parameterized import parameterized
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
BATTERY = ROOT / ".transformers_tests"

if not (BATTERY / "hf_tests" / "test_modeling_common.py").exists():
    reason = (
        f"transformers' test mixins are not in {BATTERY}: run `bash .ci/fetch_transformers_tests.sh` "
        "(it downloads the transformers sdist of the installed version from PyPI)"
    )
    if os.environ.get("CI"):
        raise RuntimeError(reason + "; .ci/run must fetch them before pytest")
    pytest.skip(reason, allow_module_level=True)


def _install_stand_ins() -> None:
    """The modules the mixins import that the sdist does not ship (see the module docstring)."""

    def module(name: str, **attributes) -> None:
        mod = types.ModuleType(name)
        mod.__dict__.update(attributes)
        sys.modules[name] = mod

    class GenerationTesterMixin:
        """Stand-in: tests/generation/test_utils.py is not in the sdist."""

    class ExportTesterMixin:
        """Stand-in: tests/exporters/test_export.py is not in the sdist."""

    module("hf_tests.generation")
    module("hf_tests.generation.test_utils", GenerationTesterMixin=GenerationTesterMixin)
    module("hf_tests.exporters")
    module("hf_tests.exporters.test_export", ExportTesterMixin=ExportTesterMixin)
    module("hf_tests.utils")
    module("hf_tests.utils.test_configuration_utils", config_common_kwargs={})

    image_path = BATTERY / "photo_stand_in.png"  # smooth, like the COCO photo it stands in for
    if not image_path.exists():
        y, x = np.mgrid[0:480, 0:640] / np.array([480.0, 640.0])[:, None, None]
        rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x + 4 * y)], axis=-1)
        Image.fromarray((255 * rgb).astype(np.uint8)).save(image_path)

    def url_to_local_path(url: str) -> str:
        return str(image_path) if url.lower().endswith((".png", ".jpg", ".jpeg")) else url

    module("fetch_hub_objects_for_ci", url_to_local_path=url_to_local_path)

    import transformers  # test_pipeline_mixin imports ../src/transformers: the installed one, whose sdist this is

    source = BATTERY / "src" / "transformers"
    if not source.exists():
        source.parent.mkdir(parents=True, exist_ok=True)
        source.symlink_to(Path(transformers.__file__).parent, target_is_directory=True)

    summary = BATTERY / "tests" / "utils" / "tiny_model_summary.json"  # test_pipeline_mixin reads ../tests/utils/
    summary.parent.mkdir(parents=True, exist_ok=True)
    if not summary.exists():
        summary.write_text(json.dumps({}))


sys.path.insert(0, str(BATTERY))
_install_stand_ins()

from hf_tests.generation.test_utils import GenerationTesterMixin  # noqa: E402
from hf_tests.test_configuration_common import ConfigTester  # noqa: E402
from hf_tests.test_image_processing_common import ImageProcessingTester, ImageProcessingTestMixin  # noqa: E402
from hf_tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor  # noqa: E402
from hf_tests.test_pipeline_mixin import PipelineTesterMixin  # noqa: E402
from hf_tests.test_processing_common import ProcessorTesterMixin  # noqa: E402
from transformers.testing_utils import torch_device  # noqa: E402

from bluelm_hf import (  # noqa: E402
    BlueLMVConfig,
    BlueLMVForConditionalGeneration,
    BlueLMVImageProcessor,
    BlueLMVImageProcessorPil,
    BlueLMVModel,
    BlueLMVProcessor,
)
from bluelm_hf.assemble import add_bluelm_special_tokens  # noqa: E402
from nano_data import train_tokenizer  # noqa: E402 (recipes/nano, on sys.path by conftest)

IMAGE_TOKEN_ID = 3


class BlueLMVModelTester:
    """One 28-px tile per image (a 1x1 grid, no thumbnail): 4x4 patches of 7 px, merged 2x2 -> 4 image tokens."""

    def __init__(self, parent, batch_size=3, seq_length=10, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = is_training
        self.text_config = dict(
            model_type="llama", vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
            bos_token_id=1, eos_token_id=2, tie_word_embeddings=True,
        )  # fmt: skip
        self.vision_config = dict(
            model_type="siglip_vision_model", hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, patch_size=7, image_size=28, vision_use_head=False,
        )  # fmt: skip
        self.num_hidden_layers = self.text_config["num_hidden_layers"]
        self.hidden_size = self.text_config["hidden_size"]
        self.num_attention_heads = self.text_config["num_attention_heads"]
        self.vocab_size = self.text_config["vocab_size"]
        self.pad_token_id = 0
        self.image_size = self.vision_config["image_size"]
        self.num_image_tokens = 4

    def get_config(self):
        return BlueLMVConfig(
            text_config=self.text_config,
            vision_config=self.vision_config,
            image_token_id=IMAGE_TOKEN_ID,
            image_start_token_id=4,
            image_end_token_id=5,
            think_mode_token_id=6,
            think_start_token_id=7,
            think_end_token_id=8,
            max_grid_size=2,
            vision_batch_size=2,
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        pixel_values = floats_tensor([self.batch_size, 3, self.image_size, self.image_size])
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 10) + 10
        input_ids[:, 1 : 1 + self.num_image_tokens] = IMAGE_TOKEN_ID
        attention_mask = torch.ones_like(input_ids, device=torch_device)
        inputs = {
            "pixel_values": pixel_values,
            "image_grids": torch.ones(self.batch_size, 2, dtype=torch.long, device=torch_device),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
        }
        return config, inputs


class BlueLMVModelTest(ModelTesterMixin, GenerationTesterMixin, PipelineTesterMixin, unittest.TestCase):
    all_model_classes = (BlueLMVModel, BlueLMVForConditionalGeneration)
    pipeline_model_mapping = {"image-text-to-text": BlueLMVForConditionalGeneration}
    _is_composite = True
    test_resize_embeddings = True

    @classmethod
    def setUpClass(cls):
        # An in-tree model has these auto-mapping entries; the mixin reads them to tell the base model (no loss, so
        # no training tests) from the one with a head, and to give the latter labels.
        from transformers.models.auto import modeling_auto

        cls._mappings = (modeling_auto.MODEL_MAPPING_NAMES, modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
        for mapping, name in zip(cls._mappings, ("BlueLMVModel", "BlueLMVForConditionalGeneration")):
            mapping[BlueLMVConfig.model_type] = name

    @classmethod
    def tearDownClass(cls):
        for mapping in cls._mappings:
            mapping.pop(BlueLMVConfig.model_type, None)

    def setUp(self):
        self.model_tester = BlueLMVModelTester(self)
        self.config_tester = ConfigTester(self, config_class=BlueLMVConfig, has_text_modality=False)

    def test_config(self):
        self.config_tester.run_common_tests()


def _tiny_tokenizer():
    tokenizer = train_tokenizer(["How many red cells are there? There are 3 red cells."] * 4, vocab_size=200)
    add_bluelm_special_tokens(tokenizer)
    return tokenizer


class BlueLMVProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = BlueLMVProcessor

    @classmethod
    def _setup_tokenizer(cls):
        return _tiny_tokenizer()

    @classmethod
    def _setup_image_processor(cls):
        return BlueLMVImageProcessor(tile_size=28, patch_size=7, max_grid_size=2, max_image_side=56)

    @parameterized.expand([(1, "pt"), (2, "pt")])
    @unittest.skip(reason="BlueLM packs a variable number of AnyRes tiles per image along pixel_values' first axis "
                   "(as MiniMax-VL-01 and Inkling, which skip it too); tests/test_modeling.py checks the tile counts")
    def test_apply_chat_template_image(self, batch_size, return_tensors):
        pass

    @unittest.skip(reason="transformers' behaviour for a processor class saved as remote code: save_pretrained writes "
                   "auto_map and from_pretrained consumes it, so to_dict() differs by auto_map alone; "
                   "tests/test_processing.py::test_save_load_save_round_trip checks what users get")
    def test_processor_from_and_save_pretrained(self):
        pass

    @unittest.skip(reason="as test_processor_from_and_save_pretrained: to_dict() differs by auto_map alone")
    def test_processor_from_and_save_pretrained_as_nested_dict(self):
        pass

    def test_get_num_multimodal_tokens_matches_processor_call(self):
        """The mixin's check for both backends, with the saved settings and with call-time `images_kwargs`. The mixin
        also reloads with `size=2x`, which BlueLMVImageProcessor.from_pretrained refuses when the saved config has
        another `tile_size` (`size` is its alias): that step is left out here and reported to the image processor's
        owner."""
        from transformers import AutoImageProcessor

        for backend in ("torchvision", "pil"):
            with self.subTest(backend=backend):
                image_processor = AutoImageProcessor.from_pretrained(self.tmpdirname, backend=backend)
                processor = self.processor_class.from_pretrained(self.tmpdirname, image_processor=image_processor)
                self._check_num_image_tokens_match_processor_call(processor)
                self._check_num_image_tokens_match_processor_call(processor, images_kwargs={"max_grid_size": 1})


class BlueLMVImageProcessingTester(ImageProcessingTester):
    """A 1x1 AnyRes grid (`max_grid_size=1`): one 28-px tile per image, the `(batch, 3, tile, tile)` output the mixin
    expects. Multi-tile plans are tested in tests/test_image_processing.py."""

    def __init__(self, parent, **kwargs):
        kwargs.setdefault("tile_size", 28)
        kwargs.setdefault("patch_size", 7)
        kwargs.setdefault("max_grid_size", 1)
        kwargs.setdefault("size", {"height": 28, "width": 28})
        super().__init__(parent, **kwargs)
        # in-tree, the classes come from the auto mapping under the test folder's model name
        self.image_processing_classes = {"torchvision": BlueLMVImageProcessor, "pil": BlueLMVImageProcessorPil}

    def expected_output_image_shape(self, images):
        return self.num_channels, self.tile_size, self.tile_size

    def prepare_image_inputs(self, equal_resolution=False, numpify=False, torchify=False):
        from hf_tests.test_image_processing_common import prepare_image_inputs

        return prepare_image_inputs(
            batch_size=self.batch_size, num_channels=self.num_channels, min_resolution=self.min_resolution,
            max_resolution=self.max_resolution, equal_resolution=equal_resolution, numpify=numpify, torchify=torchify,
        )  # fmt: skip


class BlueLMVImageProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = BlueLMVImageProcessingTester
