"""`genai_config.json`: what onnxruntime-genai (0.18) needs to load an ONNX export and generate from it, and
`genai_inputs`, the HF processor's output as genai's `NamedTensors`.

    model = onnxruntime_genai.Model(export_dir)
    generator = onnxruntime_genai.Generator(model, onnxruntime_genai.GeneratorParams(model))
    generator.set_inputs(genai_inputs(processor(text=[prompt], images=[image]), config.image_token_id))

By hand, `genai_inputs` is:

    inputs = onnxruntime_genai.NamedTensors()
    inputs["input_ids"] = batch["input_ids"].astype(np.int32)     # int32: genai reads the buffer as int32 whatever
    inputs["pixel_values"] = batch["pixel_values"]                # (num_tiles, 3, T, T), every image's tiles
    inputs["num_image_tokens"] = np.array([(batch["input_ids"] == image_token_id).sum()], dtype=np.int64)

`input_ids` must be int32: `Generator::SetInputs` takes the tensor's data as `int32_t` without looking at its type, so
the processor's int64 ids are read as [id, 0, id, 0, ...] (the tokens then differ from PyTorch's from the first one).
genai only accepts its own model types, so the export declares itself `phi3v`: the type whose pipeline is the same
vision -> embedding (with the image merge) -> decoder split. Nothing of Phi-3-vision's is used when the inputs come from
the HF processor (genai's own C++ image processor for that type would be wrong for BlueLM: do not call
`model.create_multimodal_processor()`). docs/export.md says what else genai cannot take.
"""

from __future__ import annotations

GENAI_CONFIG_FILE = "genai_config.json"
GENAI_MODEL_TYPE = "phi3v"


def genai_inputs(batch, image_token_id: int):
    """`onnxruntime_genai.NamedTensors` for `Generator.set_inputs` from a BlueLM processor's output (numpy or torch;
    one prompt; a text-only prompt has no `pixel_values`). `image_token_id`: `config.image_token_id`."""
    import numpy as np
    import onnxruntime_genai as og

    def array(value):
        return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)

    input_ids = array(batch["input_ids"])
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError(
            f"genai_inputs takes one prompt, input_ids of shape (1, sequence_length); got {tuple(input_ids.shape)}"
        )
    if "attention_mask" in batch and not array(batch["attention_mask"]).all():
        raise ValueError("genai_inputs takes an unpadded prompt: attention_mask has zeros (genai has no padding input)")
    num_image_tokens = int((input_ids == image_token_id).sum())
    pixel_values = batch.get("pixel_values")
    if (pixel_values is None or not len(pixel_values)) != (num_image_tokens == 0):
        raise ValueError(
            f"The prompt has {num_image_tokens} image tokens but "
            f"{'no' if pixel_values is None else len(pixel_values)} pixel_values tiles: build both with the BlueLM "
            "processor, from the same text and images"
        )
    inputs = og.NamedTensors()
    inputs["input_ids"] = np.ascontiguousarray(input_ids, dtype=np.int32)
    if num_image_tokens:
        inputs["pixel_values"] = np.ascontiguousarray(array(pixel_values), dtype=np.float32)
        inputs["num_image_tokens"] = np.array([num_image_tokens], dtype=np.int64)
    return inputs


def genai_config(manifest: dict) -> dict:
    """The config for an export described by `manifest` (bluelm_export.json): float32-KV ONNX exports only."""
    model, kv, components = manifest["model"], manifest["kv_cache"], manifest["components"]
    eos = model["eos_token_id"]
    return {
        "model": {
            "type": GENAI_MODEL_TYPE,
            "context_length": model.get("max_position_embeddings") or 4096,
            "eos_token_id": eos,
            "pad_token_id": model["pad_token_id"] if model["pad_token_id"] is not None else eos,
            "vocab_size": model["vocab_size"],
            "vision": {
                "filename": components["vision_encoder"]["file"],
                "inputs": {"pixel_values": "pixel_values"},
                "outputs": {"image_features": "image_features"},
            },
            "embedding": {
                "filename": components["embed_tokens"]["file"],
                "inputs": {"input_ids": "input_ids", "image_features": "image_features"},
                "outputs": {"inputs_embeds": "inputs_embeds"},
            },
            "decoder": {
                "filename": components["decoder"]["file"],
                "head_size": kv["head_dim"],
                "hidden_size": model["hidden_size"],
                "num_attention_heads": model.get("num_attention_heads", kv["num_kv_heads"]),
                "num_key_value_heads": kv["num_kv_heads"],
                "num_hidden_layers": kv["num_layers"],
                "inputs": {
                    "inputs_embeds": "inputs_embeds",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {
            "max_length": model.get("max_position_embeddings") or 4096,
            "do_sample": False,
            "num_beams": 1,
            "past_present_share_buffer": False,
        },
    }
