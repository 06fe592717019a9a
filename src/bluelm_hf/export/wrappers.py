"""The three graphs of a BlueLM export, as `nn.Module`s over the PyTorch model's own submodules.

    vision_encoder   pixel_values (num_tiles, 3, T, T)           -> image_features (num_image_tokens, hidden)
    embed_tokens     input_ids (batch, seq), image_features       -> inputs_embeds (batch, seq, hidden), images merged
    (ExecuTorch: pixel_values (num_tiles, 3, T, T) -> (num_tiles, tokens_per_tile, hidden); input_ids only)
    decoder          inputs_embeds, attention_mask, position_ids,
                     past_key_values.{i}.key / .value             -> logits, present.{i}.key / .value
"""

from __future__ import annotations

import torch
from torch import nn


class VisionEncoderForExport(nn.Module):
    """pixel_values (num_tiles, 3, T, T) -> image_features (num_tiles, tokens_per_tile, hidden): ViT, downsampler, MLP.

    With `flat_features`, image_features is (num_tiles * tokens_per_tile, hidden), rows in `<image>` order: the layout
    onnxruntime-genai needs. genai gives a vision output of rank 2 the shape (num_image_tokens, hidden), whatever the
    number of images, and hands it to the embedding graph as is; rank 3 would be (pixel_values.shape[0],
    num_image_tokens, hidden), which cannot hold AnyRes tiles, and genai feeds a text-only prompt's empty features
    as rank 2 (docs/export.md). The PyTorch model runs the same computation in chunks of `vision_batch_size` tiles;
    the graph takes any number of tiles (the exported model chunks them the same way)."""

    def __init__(self, model, flat_features: bool = False):
        super().__init__()
        self.vision_tower = model.model.vision_tower
        self.multi_modal_projector = model.model.multi_modal_projector
        self.flat_features = flat_features

    def forward(self, pixel_values):
        hidden = self.vision_tower(pixel_values=pixel_values, return_dict=True).last_hidden_state
        features = self.multi_modal_projector(hidden)
        if self.flat_features:
            features = features.reshape(-1, features.shape[-1])
        return {"image_features": features}


class EmbedTokensForExport(nn.Module):
    """input_ids (batch, seq) -> inputs_embeds (batch, seq, hidden)."""

    def __init__(self, model):
        super().__init__()
        self.embed_tokens = model.model.language_model.get_input_embeddings()

    def forward(self, input_ids):
        return {"inputs_embeds": self.embed_tokens(input_ids)}


class EmbedTokensAndImagesForExport(EmbedTokensForExport):
    """input_ids (batch, seq), image_features (num_image_tokens, hidden) -> inputs_embeds (batch, seq, hidden) with
    the image features in the `<image>` positions, row-major (`masked_scatter` in `BlueLMVModel.forward`): the
    embedding graph onnxruntime-genai expects. Written as a gather from [zeros; features] so that no features (a decode
    step, a text-only prompt: image_features (0, hidden)) is a valid input."""

    def __init__(self, model):
        super().__init__(model)
        self.image_token_id = model.config.image_token_id

    def forward(self, input_ids, image_features):
        embeds = self.embed_tokens(input_ids)
        is_image = (input_ids == self.image_token_id).reshape(-1).long()
        rows = torch.cat([embeds.new_zeros(1, embeds.shape[-1]), image_features])
        merged = rows[torch.cumsum(is_image, 0) * is_image].reshape(embeds.shape)
        return {"inputs_embeds": torch.where((input_ids == self.image_token_id).unsqueeze(-1), merged, embeds)}


class DecoderForExport(nn.Module):
    """The LLM + lm_head over a KV cache given as flat tensors.

    inputs_embeds (batch, seq, hidden), attention_mask (batch, past + seq), position_ids (batch, seq),
    past_key_values = [{"key": (batch, kv_heads, past, head_dim), "value": ...}] * num_layers
    -> {"logits": (batch, seq, vocab), "present": [{"key": (batch, kv_heads, past + seq, head_dim), ...}]}.
    Traced, the leaves are named `past_key_values.{i}.key` / `present.{i}.key`: the onnxruntime-genai and
    transformers.js convention."""

    def __init__(self, model):
        super().__init__()
        self.language_model = model.model.language_model
        self.lm_head = model.lm_head
        self.text_config = model.config.text_config

    def forward(self, inputs_embeds, attention_mask, position_ids, past_key_values):
        from transformers import DynamicCache

        cache = DynamicCache([(layer["key"], layer["value"]) for layer in past_key_values], config=self.text_config)
        outputs = self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, cache=cache
        )
        logits = self.lm_head(outputs.last_hidden_state)
        present = [{"key": layer.keys, "value": layer.values} for layer in outputs.cache.layers]
        return {"logits": logits, "present": present}


def kv_shape(model) -> tuple[int, int, int]:
    text = model.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    return text.num_hidden_layers, kv_heads, head_dim


def sample_inputs(
    model, batch: int = 2, seq: int = 3, past: int = 5, tiles: int = 3, flat_features: bool = False
) -> dict[str, dict]:
    """Trace inputs with distinct sizes > 1 on every dynamic axis (torch.export specializes 0 / 1 and equal sizes).
    `flat_features`: the onnxruntime-genai layout (`VisionEncoderForExport(flat_features=True)`,
    `EmbedTokensAndImagesForExport`)."""
    num_layers, kv_heads, head_dim = kv_shape(model)
    text = model.config.text_config
    tile = model.config.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, text.vocab_size, (batch, seq + past), generator=generator)
    vision = {"pixel_values": torch.randn(tiles, 3, tile, tile, generator=generator)}
    if flat_features:
        # 12 image features merged into prompt rows of 14 tokens: 12 / batch per row.
        features = torch.randn(12, text.hidden_size, generator=generator)
        input_ids = torch.randint(0, text.vocab_size, (batch, 14), generator=generator)
        input_ids[input_ids == model.config.image_token_id] = 0
        input_ids[:, : 12 // batch] = model.config.image_token_id
        embed = {"input_ids": input_ids, "image_features": features}
    else:
        embed = {"input_ids": input_ids}
    return {
        "vision_encoder": vision,
        "embed_tokens": embed,
        "decoder": {
            "inputs_embeds": torch.randn(batch, seq, text.hidden_size, generator=generator),
            "attention_mask": torch.ones(batch, past + seq, dtype=torch.long),
            "position_ids": torch.arange(past, past + seq).expand(batch, seq).clone(),
            "past_key_values": [
                {
                    "key": torch.randn(batch, kv_heads, past, head_dim, generator=generator),
                    "value": torch.randn(batch, kv_heads, past, head_dim, generator=generator),
                }
                for _ in range(num_layers)
            ],
        },
    }


def dynamic_shapes(model, static_batch: bool = False, flat_features: bool = False) -> dict[str, dict]:
    """Dynamic axes as `Dim.AUTO`: explicit `Dim`s cannot say `attention_mask.shape[1] == past + seq`."""
    auto = torch.export.Dim.AUTO
    num_layers = kv_shape(model)[0]
    batch = {} if static_batch else {0: auto}
    embed = {"input_ids": {0: auto, 1: auto}}
    if flat_features:
        embed["image_features"] = {0: auto}
    return {
        "vision_encoder": {"pixel_values": {0: auto}},
        "embed_tokens": embed,
        "decoder": {
            "inputs_embeds": {**batch, 1: auto},
            "attention_mask": {**batch, 1: auto},
            "position_ids": {**batch, 1: auto},
            "past_key_values": [{"key": {**batch, 2: auto}, "value": {**batch, 2: auto}} for _ in range(num_layers)],
        },
    }
