"""`genai_config.json`: what onnxruntime-genai (0.18) needs to load an ONNX export and generate from it.

    model = onnxruntime_genai.Model(export_dir)
    inputs = onnxruntime_genai.NamedTensors()
    inputs["input_ids"] = batch["input_ids"]                      # the HF processor's output, as numpy
    inputs["pixel_values"] = batch["pixel_values"][None]          # (num_images=1, num_tiles, 3, T, T)
    inputs["num_image_tokens"] = np.array([(batch["input_ids"] == image_token_id).sum()])

genai only accepts its own model types, so the export declares itself `phi3v`: the type whose pipeline is the same
vision -> embedding (with the image merge) -> decoder split. Nothing of Phi-3-vision's is used when the inputs come from
the HF processor (genai's own C++ image processor for that type would be wrong for BlueLM: do not call
`model.create_multimodal_processor()`). docs/export.md says what else genai cannot take.
"""

from __future__ import annotations

GENAI_CONFIG_FILE = "genai_config.json"
GENAI_MODEL_TYPE = "phi3v"


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
