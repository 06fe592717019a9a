"""Configuration of the BlueLM-V family (BlueLM-V-3B, BlueLM-2.5-3B).

`model_type` is "bluelm_v": vivo names the vision-language line "BlueLM-V"; BlueLM-2.5-3B keeps
the same ViT -> 2x2 downsampler -> MLP -> dense LLM layout, so one model type covers both.

This file is shipped next to `save_pretrained` checkpoints (remote code), so it only imports
transformers.
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig

try:  # transformers >= 5.20 builds sub-configs from `sub_configs_defaults`
    from transformers.configuration_utils import SubConfigSpec
except ImportError:  # older: `sub_configs` plus a dict -> config conversion in __post_init__
    SubConfigSpec = None

# The BlueLM special tokens. The chat template (chat_template.jinja) uses these strings.
IMAGE_TOKEN = "<image>"
IMAGE_START_TOKEN = "<im_start>"
IMAGE_END_TOKEN = "<im_end>"
THINK_MODE_TOKEN = "[|BlueThink|]"
THINK_START_TOKEN = "<think>"
THINK_END_TOKEN = "</think>"
HUMAN_TOKEN = "[|Human|]:"
AI_TOKEN = "[|AI|]:"
SPECIAL_TOKENS = [
    HUMAN_TOKEN,
    AI_TOKEN,
    THINK_MODE_TOKEN,
    THINK_START_TOKEN,
    THINK_END_TOKEN,
    IMAGE_START_TOKEN,
    IMAGE_TOKEN,
    IMAGE_END_TOKEN,
]
# The config field that holds each special token's id (`BlueLMVConfig.image_token_id` is the id of `<image>`, ...).
TOKEN_ID_FIELDS = {
    "image_token_id": IMAGE_TOKEN,
    "image_start_token_id": IMAGE_START_TOKEN,
    "image_end_token_id": IMAGE_END_TOKEN,
    "think_mode_token_id": THINK_MODE_TOKEN,
    "think_start_token_id": THINK_START_TOKEN,
    "think_end_token_id": THINK_END_TOKEN,
}

# SigLIP / SigLIP2 so400m-patch14-384 (fixed resolution, `siglip` architecture in transformers).
SIGLIP_SO400M_384 = dict(
    model_type="siglip_vision_model",
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    patch_size=14,
    image_size=384,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
    vision_use_head=False,
)
# BlueLM-3B's llama-style decoder as both 3B presets estimate it (vivo published parameter counts only): BlueLM's
# ~100K vocabulary, width 2560, 28 layers. Each preset adds where it differs.
BLUELM_3B_DECODER = dict(
    model_type="llama", vocab_size=100_096, hidden_size=2560, num_hidden_layers=28, rms_norm_eps=1e-6
)

# The Auto classes a BlueLM checkpoint loads through as remote code, and the classes in its code files.
AUTO_MAP = {
    "AutoConfig": "configuration_bluelm_v.BlueLMVConfig",
    "AutoModel": "modeling_bluelm_v.BlueLMVModel",
    "AutoModelForImageTextToText": "modeling_bluelm_v.BlueLMVForConditionalGeneration",
}
# The image processor's entry names a class per backend: transformers picks "pil" where torchvision is missing.
IMAGE_PROCESSOR_AUTO_MAP = {
    "torchvision": "image_processing_bluelm_v.BlueLMVImageProcessor",
    "pil": "image_processing_pil_bluelm_v.BlueLMVImageProcessorPil",
}


@strict
class BlueLMVConfig(PreTrainedConfig):
    r"""
    Configuration of a BlueLM-V model: a SigLIP/SigLIP2 vision tower, a 2x2 token downsampler plus a
    2-layer MLP (`multi_modal_projector`), and any decoder-only language model.

    vision_config (`dict` or `PreTrainedConfig`): SigLIP vision config (`siglip_vision_model`).
    text_config (`dict` or `PreTrainedConfig`): any decoder-only config (`llama`, `qwen3`, ...).
    image_token_id / image_start_token_id / image_end_token_id (`int`): ids of `<image>`, `<im_start>`, `<im_end>`.
    think_mode_token_id / think_start_token_id / think_end_token_id (`int`): ids of `[|BlueThink|]`, `<think>`, `</think>`.
    projector_hidden_act (`str`): activation between the two projector linears.
    projector_hidden_size (`int`, *optional*): width of the projector's hidden layer; defaults to the LLM width.
    projector_bias (`bool`): bias in the projector linears.
    downsample_factor (`int`): side of the token-merging window (2 -> 27x27 patches padded to 28x28 -> 196 tokens).
    vision_batch_size (`int`): tiles per ViT forward; all tiles of a batch are encoded in chunks of this size.
    max_grid_size (`int`): AnyRes grids go up to `max_grid_size` x `max_grid_size` tiles (4 for 2.5-3B, 3 for V-3B).
    max_image_side (`int`): images whose longer side exceeds this are downscaled before tiling (1512 for 2.5-3B).
    anyres_alpha (`float`): relaxed aspect-ratio matching threshold (BlueLM-V-3B Alg. 1, 0.1).
    use_thumbnail (`bool`): add a global thumbnail tile when the grid has more than one tile.
    """

    model_type = "bluelm_v"
    _sub_config_model_types = {"vision_config": "siglip_vision_model", "text_config": "llama"}
    if SubConfigSpec is not None:
        sub_configs_defaults = {
            key: SubConfigSpec(config_class=AutoConfig, model_type=model_type)
            for key, model_type in _sub_config_model_types.items()
        }
    else:
        sub_configs = dict.fromkeys(_sub_config_model_types, AutoConfig)

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int | None = None
    image_start_token_id: int | None = None
    image_end_token_id: int | None = None
    think_mode_token_id: int | None = None
    think_start_token_id: int | None = None
    think_end_token_id: int | None = None
    projector_hidden_act: str = "gelu"
    projector_hidden_size: int | None = None
    projector_bias: bool = True
    downsample_factor: int = 2
    vision_batch_size: int = 16
    max_grid_size: int = 4
    max_image_side: int = 1512
    anyres_alpha: float = 0.1
    use_thumbnail: bool = True
    tie_word_embeddings: bool = True

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Also writes the complete `auto_map` (`AUTO_MAP`), so the checkpoint loads with `trust_remote_code=True`
        through every Auto class where bluelm_hf is not installed (save_pretrained itself only adds the saved
        classes). Entries already set (e.g. `repo--module.Class` references) are kept."""
        self.auto_map = {**AUTO_MAP, **(getattr(self, "auto_map", None) or {})}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def __post_init__(self, **kwargs):
        if SubConfigSpec is None:
            from transformers import CONFIG_MAPPING

            for key, default_type in self._sub_config_model_types.items():
                value = getattr(self, key)
                if value is None or isinstance(value, dict):
                    value = dict(value or {})
                    setattr(self, key, CONFIG_MAPPING[value.pop("model_type", default_type)](**value))
        super().__post_init__(**kwargs)
        if self.projector_hidden_size is None:
            self.projector_hidden_size = self.text_config.hidden_size
        if self.downsample_factor < 1:
            raise ValueError(f"downsample_factor must be >= 1, got {self.downsample_factor}")
        if self.vision_batch_size < 1:
            raise ValueError(f"vision_batch_size must be >= 1, got {self.vision_batch_size}")

    @property
    def patches_per_side(self) -> int:
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def image_tokens_per_tile(self) -> int:
        """Tokens one tile contributes to the LLM (196 for so400m-patch14-384), counted by the image processor's
        `tokens_per_tile`."""
        from .image_processing_bluelm_v import tokens_per_tile

        vision = self.vision_config
        return tokens_per_tile(vision.image_size, vision.patch_size, self.downsample_factor)

    # ------------------------------------------------------------------ presets
    @classmethod
    def _preset(cls, kwargs: dict, **defaults) -> "BlueLMVConfig":
        """A preset: its `defaults`, each replaced where the caller passes the same keyword in `kwargs`."""
        return cls(**{**defaults, **kwargs})

    @classmethod
    def bluelm_2_5_3b(cls, **kwargs) -> "BlueLMVConfig":
        """BlueLM-2.5-3B shape: SigLIP2 so400m-patch14-384 + a llama-style ~2.5B decoder, 32K context (YaRN).

        vivo published parameter counts only (2.9B total, 2.5B dense LLM, 400M ViT). The LLM shape is our estimate
        that matches those counts: `BLUELM_3B_DECODER` with GQA 20/4 heads, SwiGLU 8192, tied embeddings, YaRN x4
        over an 8K native window.
        """
        text = dict(
            BLUELM_3B_DECODER,
            intermediate_size=8192,
            num_attention_heads=20,
            num_key_value_heads=4,
            head_dim=128,
            max_position_embeddings=32_768,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 1_000_000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        )
        return cls._preset(
            kwargs, vision_config=dict(SIGLIP_SO400M_384), text_config=text, max_grid_size=4, max_image_side=1512
        )

    @classmethod
    def bluelm_v_3b(cls, **kwargs) -> "BlueLMVConfig":
        """BlueLM-V-3B shape: SigLIP so400m-384 + a ~2.7B llama-style BlueLM decoder, grids up to 3x3.

        The LLM shape is an estimate matching the paper's 2.7B count: `BLUELM_3B_DECODER` with MHA 32 heads,
        SwiGLU 6912, untied embeddings; its context is the 4K of BlueLM-3B.
        """
        text = dict(
            BLUELM_3B_DECODER,
            num_attention_heads=32, num_key_value_heads=32,  # MHA
            intermediate_size=6912, max_position_embeddings=4096, tie_word_embeddings=False,
        )  # fmt: skip
        return cls._preset(
            kwargs,
            vision_config=dict(SIGLIP_SO400M_384),
            text_config=text,
            max_grid_size=3,
            max_image_side=1152,
            tie_word_embeddings=False,
        )

    @classmethod
    def nano(cls, vocab_size: int, **kwargs) -> "BlueLMVConfig":
        """BlueLM-nano: the same layout in miniature, trained from scratch on CPU by recipes/sft.py.

        112-px tiles of 4x4 patches (28 px) -> 2x2 merge -> 4 tokens per tile; grids up to 4x4 plus a thumbnail.
        The coarse patch keeps CPU training fast (~7 steps/s at batch 16 on 2 cores) while one 28-px patch still
        sees one cell of the nano task.
        """
        vision = dict(
            SIGLIP_SO400M_384,
            hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
            patch_size=28, image_size=112,
        )  # fmt: skip
        text = dict(
            model_type="llama", vocab_size=vocab_size, max_position_embeddings=1024, tie_word_embeddings=True,
            hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        )  # fmt: skip
        return cls._preset(
            kwargs, vision_config=vision, text_config=text, max_grid_size=4, max_image_side=448, vision_batch_size=64
        )


PRESETS = {
    "bluelm-2.5-3b": BlueLMVConfig.bluelm_2_5_3b,
    "bluelm-v-3b": BlueLMVConfig.bluelm_v_3b,
}

__all__ = ["AUTO_MAP", "IMAGE_PROCESSOR_AUTO_MAP", "BlueLMVConfig", "PRESETS", "SPECIAL_TOKENS", "TOKEN_ID_FIELDS"]
