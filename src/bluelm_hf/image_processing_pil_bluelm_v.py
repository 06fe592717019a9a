"""AnyRes image processor of the BlueLM-V family, PIL/NumPy backend.

The AnyRes plan, loading and tiling live in `image_processing_bluelm_v.py` (`BlueLMVImageProcessingMixin`); this
backend supplies only NumPy array allocation and arithmetic. Same output as `BlueLMVImageProcessor` up to resampling.
Shipped next to checkpoints as remote code.
"""

import numpy as np
from transformers.image_processing_backends import PilBackend

from .image_processing_bluelm_v import BlueLMVImageProcessingMixin, BlueLMVImageProcessorKwargs


class BlueLMVImageProcessorPil(BlueLMVImageProcessingMixin, PilBackend):
    """BlueLM-V AnyRes image processor, PIL/NumPy backend. See `image_processing_bluelm_v.py`."""

    @staticmethod
    def _empty(shape, like: np.ndarray, float32: bool = False) -> np.ndarray:
        return np.empty(shape, dtype=np.float32 if float32 else like.dtype)

    @staticmethod
    def _affine_(array: np.ndarray, multiplier: float, offset: float) -> None:
        array *= multiplier
        array += offset

    @staticmethod
    def _permute(array: np.ndarray, dims) -> np.ndarray:
        return array.transpose(*dims)


__all__ = ["BlueLMVImageProcessorKwargs", "BlueLMVImageProcessorPil"]
