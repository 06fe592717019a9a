"""Assemble a BlueLM-V model from pretrained parts.

vivo released no BlueLM weights, so the path users take is: a pretrained SigLIP/SigLIP2 vision tower
(e.g. `google/siglip2-so400m-patch14-384`) + any causal LM with its tokenizer (e.g. `Qwen/Qwen3-1.7B`),
joined by a freshly initialised downsampler+MLP projector, then trained (recipes/).
"""

import copy

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, SiglipVisionModel

from .configuration_bluelm_v import SPECIAL_TOKENS, TOKEN_ID_FIELDS, BlueLMVConfig
from .image_processing_bluelm_v import BlueLMVImageProcessor
from .modeling_bluelm_v import BlueLMVForConditionalGeneration, BlueLMVMultiModalProjector
from .processing_bluelm_v import BlueLMVProcessor, default_chat_template
from .thinking import response_template

_VISION_MODEL_TYPES = ("siglip", "siglip_vision_model")


def add_bluelm_special_tokens(tokenizer) -> dict[str, int]:
    """Add every BlueLM special token (one id each) and return the token-id fields of `BlueLMVConfig`."""
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return {field: tokenizer.convert_tokens_to_ids(token) for field, token in TOKEN_ID_FIELDS.items()}


def assemble_bluelm(
    vision_model: str,
    text_model: str,
    *,
    dtype: torch.dtype | str | None = None,
    **config_kwargs,
) -> tuple[BlueLMVForConditionalGeneration, BlueLMVProcessor]:
    """Build a BlueLM-V model and processor from a pretrained SigLIP vision tower and a causal LM.

    Args:
        vision_model: path or Hub id of a fixed-resolution SigLIP/SigLIP2 checkpoint (full or vision-only).
        text_model: path or Hub id of a causal LM with its tokenizer.
        dtype: one dtype for the whole model (default: the LM's saved dtype, e.g. bfloat16 for Qwen3). The vision
            tower, projector and LLM are all cast to it and the config records it, so an image forward never mixes
            dtypes and a reload keeps it.
        **config_kwargs: `BlueLMVConfig` fields, e.g. `max_grid_size=3`, `projector_hidden_size=...`.

    The BlueLM special tokens are added to the tokenizer and the LLM embeddings grown if they have no room for
    them (never shrunk: Qwen's 151,936 rows stay); the projector is freshly initialised from the config's
    `initializer_range` (the LM's); the LM's generation defaults (sampling settings, eos list) are kept. Returns
    `(model, processor)`, both ready for `save_pretrained`.
    """
    vision_type = AutoConfig.from_pretrained(vision_model).model_type
    if vision_type not in _VISION_MODEL_TYPES:
        raise ValueError(
            f"{vision_model!r} is a {vision_type!r} model; BlueLM needs a fixed-resolution SigLIP/SigLIP2 "
            f"vision tower ({' or '.join(_VISION_MODEL_TYPES)}), e.g. google/siglip2-so400m-patch14-384"
        )
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'bfloat16', 'float16' or 'float32'")
        dtype = getattr(torch, dtype)
    text = AutoModelForCausalLM.from_pretrained(text_model, dtype=dtype if dtype is not None else "auto")
    dtype = text.dtype if dtype in (None, "auto") else dtype
    text = text.to(dtype)
    vision = SiglipVisionModel.from_pretrained(vision_model, vision_use_head=False, dtype=dtype).to(dtype)
    tokenizer = AutoTokenizer.from_pretrained(text_model)
    token_ids = add_bluelm_special_tokens(tokenizer)

    config = BlueLMVConfig(
        vision_config=vision.config.to_dict(),
        text_config=text.config.to_dict(),
        tie_word_embeddings=bool(getattr(text.config, "tie_word_embeddings", False)),
        **token_ids,
        **config_kwargs,
    )
    for part in (config, config.vision_config, config.text_config):
        part.dtype = dtype
    with torch.device("meta"):
        model = BlueLMVForConditionalGeneration(config)
    # Reuse the loaded modules instead of copying weights: no second copy of a 3B model in memory.
    model.model.vision_tower = vision
    model.model.language_model = text.model
    model.lm_head = text.lm_head
    projector = BlueLMVMultiModalProjector(config)
    projector.apply(model._init_weights)  # normal(0, initializer_range), zero bias, as a from-config model
    model.model.multi_modal_projector = projector.to(dtype)
    if config.tie_word_embeddings:
        model.tie_weights()
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.generation_config = copy.deepcopy(text.generation_config)
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id not in eos:
        eos.insert(0, tokenizer.eos_token_id)
    model.generation_config.eos_token_id = eos[0] if len(eos) == 1 else eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    return model, build_processor(config, tokenizer)


def build_processor(config: BlueLMVConfig, tokenizer) -> BlueLMVProcessor:
    """The processor matching `config`'s tile size and AnyRes settings, with the BlueLM chat template."""
    image_processor = BlueLMVImageProcessor(
        tile_size=config.vision_config.image_size,
        patch_size=config.vision_config.patch_size,
        downsample_factor=config.downsample_factor,
        max_grid_size=config.max_grid_size,
        max_image_side=config.max_image_side,
        anyres_alpha=config.anyres_alpha,
        use_thumbnail=config.use_thumbnail,
    )
    tokenizer.chat_template = default_chat_template()
    tokenizer.response_template = response_template(tokenizer.eos_token)  # tokenizer/processor.parse_response, serve
    return BlueLMVProcessor(image_processor=image_processor, tokenizer=tokenizer)


def init_from_scratch(
    tokenizer, config_factory=BlueLMVConfig.nano, seed: int = 0, **config_kwargs
) -> tuple[BlueLMVForConditionalGeneration, BlueLMVProcessor]:
    """A randomly initialised BlueLM (default: the BlueLM-nano shape) for `tokenizer`, plus its processor."""
    token_ids = add_bluelm_special_tokens(tokenizer)
    config = config_factory(vocab_size=len(tokenizer), **token_ids, **config_kwargs)
    torch.manual_seed(seed)
    model = BlueLMVForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model, build_processor(config, tokenizer)


__all__ = ["add_bluelm_special_tokens", "assemble_bluelm", "build_processor", "init_from_scratch"]
