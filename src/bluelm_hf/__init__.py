"""bluelm-hf: Hugging Face-native BlueLM-2.5-3B / BlueLM-V-3B.

Importing the package registers the `bluelm_v` model type with the Auto classes, so
`AutoConfig`, `AutoModelForImageTextToText`, `AutoProcessor`, `AutoImageProcessor` and
`pipeline("image-text-to-text")` work without `trust_remote_code`.
"""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import transformers
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

# From its module: transformers 5.16 and 5.17 gate the top-level `transformers.AutoImageProcessor` on torchvision
# (the module's text names the torchvision backend), though the class itself needs only PIL.
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from .configuration_bluelm_v import PRESETS, SPECIAL_TOKENS, BlueLMVConfig
from .image_processing_bluelm_v import BlueLMVImageProcessor, select_best_grid
from .image_processing_pil_bluelm_v import BlueLMVImageProcessorPil
from .modeling_bluelm_v import BlueLMVForConditionalGeneration, BlueLMVModel, BlueLMVPreTrainedModel
from .processing_bluelm_v import BlueLMVProcessor

try:
    __version__ = version("bluelm-hf")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

#: The bundled BlueLM-nano checkpoint (loads offline by path).
NANO = Path(__file__).with_name("nano")

AutoConfig.register(BlueLMVConfig.model_type, BlueLMVConfig, exist_ok=True)
AutoModel.register(BlueLMVConfig, BlueLMVModel, exist_ok=True)
AutoModelForImageTextToText.register(BlueLMVConfig, BlueLMVForConditionalGeneration, exist_ok=True)
if hasattr(transformers, "AutoModelForMultimodalLM"):
    transformers.AutoModelForMultimodalLM.register(BlueLMVConfig, BlueLMVForConditionalGeneration, exist_ok=True)
AutoImageProcessor.register(
    BlueLMVConfig,
    image_processor_classes={"torchvision": BlueLMVImageProcessor, "pil": BlueLMVImageProcessorPil},
    exist_ok=True,
)
AutoProcessor.register(BlueLMVConfig, BlueLMVProcessor, exist_ok=True)

# save_pretrained writes `auto_map` and copies these classes' code files next to the weights, so a
# checkpoint also loads with trust_remote_code=True where bluelm_hf is not installed.
# BlueLMVConfig.save_pretrained completes the map (AutoModel too, and both image processor backends).
BlueLMVConfig.register_for_auto_class("AutoConfig")
BlueLMVModel.register_for_auto_class("AutoModel")
BlueLMVForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
BlueLMVImageProcessor.register_for_auto_class("AutoImageProcessor")
BlueLMVImageProcessorPil.register_for_auto_class("AutoImageProcessor")
BlueLMVProcessor.register_for_auto_class("AutoProcessor")

from .assemble import assemble_bluelm  # noqa: E402  (needs the registrations above)

__all__ = [
    "NANO",
    "PRESETS",
    "SPECIAL_TOKENS",
    "BlueLMVConfig",
    "BlueLMVForConditionalGeneration",
    "BlueLMVImageProcessor",
    "BlueLMVImageProcessorPil",
    "BlueLMVModel",
    "BlueLMVPreTrainedModel",
    "BlueLMVProcessor",
    "assemble_bluelm",
    "select_best_grid",
]
