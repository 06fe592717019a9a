"""BlueLM-V in vLLM: its Transformers modeling backend, fed whole images.

`BlueLMVProcessor` leaves `image_grids` out of its outputs (see `BlueLMVProcessor.unused_input_names`), so
`get_image_features` returns one feature block per tile, while the backend expects one entry per image. Joined into
one `(tiles x tokens_per_tile, hidden)` tensor, the backend splits it per image itself, by each image's tile count
(`num_image_patches` from the processor's `_get_num_multimodal_tokens`).
"""

import torch
from vllm.model_executor.models.transformers import TransformersMultiModalForCausalLM
from vllm.model_executor.models.transformers.multimodal import (
    MultiModalDummyInputsBuilder,
    MultiModalProcessingInfo,
    MultiModalProcessor,
)
from vllm.multimodal import MULTIMODAL_REGISTRY


@MULTIMODAL_REGISTRY.register_processor(
    MultiModalProcessor, info=MultiModalProcessingInfo, dummy_inputs=MultiModalDummyInputsBuilder
)
class BlueLMVForConditionalGeneration(TransformersMultiModalForCausalLM):
    def _get_features(self, modality: str, pixel_values: torch.Tensor, **kwargs):
        features = super()._get_features(modality, pixel_values, **kwargs)
        return features if isinstance(features, torch.Tensor) else torch.cat(list(features), dim=0)
