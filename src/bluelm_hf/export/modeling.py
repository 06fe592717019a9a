"""A BlueLM export as a `GenerationMixin` model: `transformers.exporters` runners (ONNX Runtime or ExecuTorch) for the
three graphs, and transformers' own `generate` around them.

```python
>>> model = BlueLMVExportedForConditionalGeneration.from_pretrained("bluelm-onnx")
>>> processor = AutoProcessor.from_pretrained("bluelm-onnx")
>>> model.generate(**processor(text=..., images=..., return_tensors="pt"), max_new_tokens=64, thinking_budget=32)
```

Everything `generate` does (greedy / sampling, `min_new_tokens`, stopping criteria, streamers, the thinking budget)
applies unchanged: the forward pass is the only part that runs the export. The KV cache is transformers'
`DynamicCache`, holding the decoder's `present.*` outputs (int8 for an int8-KV export).

`release_vision=True` frees the vision encoder's runtime session once an image is encoded, as the BlueLM-V-3B paper
does on the phone (the ViT and the LLM are never resident together while decoding); the next image opens it again.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
from pathlib import Path

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..modeling_bluelm_v import BlueLMVForConditionalGeneration, BlueLMVPreTrainedModel
from .destination import MANIFEST_FILE

COMPONENTS = ("vision_encoder", "embed_tokens", "decoder")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int8": torch.int8, "uint8": torch.uint8}


def read_manifest(export_dir: str | os.PathLike) -> dict:
    """`bluelm_export.json` of an export directory, with clear errors for a missing or broken one."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise FileNotFoundError(f"Export directory {export_dir} does not exist")
    path = export_dir / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{export_dir} has no {MANIFEST_FILE}: not a BlueLM export (create one with `bluelm-hf export`)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    missing = [name for name in COMPONENTS if name not in manifest.get("components", {})]
    if missing:
        raise ValueError(f"{path} lists no {missing} component(s)")
    return manifest


def _return_freed_memory() -> None:
    """Hand the heap memory freed with a session back to the OS (glibc keeps freed blocks for reuse, so the resident
    set would not drop); a no-op off glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class BlueLMVExportedForConditionalGeneration(BlueLMVForConditionalGeneration):
    """`BlueLMVForConditionalGeneration` over an export: its `generate` (transformers' plus `thinking_budget`), with a
    `forward` that runs the exported graphs instead of modules. `forward` and `generate` take the processor's output
    (`input_ids`, `attention_mask`, `pixel_values`, `image_grids`). It holds no weights: `model`, `lm_head` and the
    submodule properties of the PyTorch class do not exist here."""

    main_input_name = "input_ids"

    def __init__(
        self, config, exported, manifest: dict, release_vision: bool = False, runner_kwargs: dict | None = None
    ):
        BlueLMVPreTrainedModel.__init__(self, config)  # not the PyTorch model's __init__: no modules, no weights
        self.exported = exported  # transformers.exporters.ExportedModel, its runners loaded
        self.manifest = manifest
        self.release_vision = release_vision
        self._runner_kwargs = dict(runner_kwargs or {})  # device, providers, session_options: to reopen the vision one
        decoder = manifest["components"]["decoder"]
        self.static_batch = decoder.get("static_batch_size")  # int8 KV / ExecuTorch decoders: batch 1
        self._past_dtypes = {
            entry["name"]: _DTYPES.get(entry["dtype"], torch.float32)
            for entry in decoder["inputs"]
            if entry["name"].startswith("past_key_values.")
        }
        kv = manifest["kv_cache"]
        self._kv_shape = (kv["num_layers"], kv["num_kv_heads"], kv["head_dim"])
        # ONNX exports: the onnxruntime-genai layout (the image merge in the embedding graph)
        components = manifest["components"]
        self._merge_in_graph = any(i["name"] == "image_features" for i in components["embed_tokens"]["inputs"])
        if release_vision:
            if exported.export_format != "onnx":
                raise ValueError(
                    f"release_vision works on ONNX exports; this one is {exported.export_format}, whose runner keeps "
                    "the loaded program, so closing its vision method would free nothing"
                )
            self.release_vision_encoder()

    @classmethod
    def from_pretrained(
        cls,
        export_dir: str | os.PathLike,
        *,
        device=None,
        num_threads: int | None = None,
        release_vision: bool = False,
        **kwargs,
    ):
        """Load an export written by `bluelm_hf.export.export_model` with `ExportedModel.from_pretrained`.

        num_threads: ONNX Runtime intra-op threads per session (ONNX Runtime otherwise sizes its pool from every core
        of the machine). release_vision: free the vision encoder's session after each image is encoded (and until the
        first one), re-opening it for the next image: less memory while decoding, one session load per image. Other
        kwargs go to the backend's runner (`providers`, `session_options`)."""
        from transformers.exporters import ExportedModel

        import bluelm_hf  # noqa: F401  (registers bluelm_v with the Auto classes)

        manifest = read_manifest(export_dir)
        if num_threads and manifest.get("format", "onnx") == "onnx" and "session_options" not in kwargs:
            import onnxruntime as ort

            kwargs["session_options"] = ort.SessionOptions()
            kwargs["session_options"].intra_op_num_threads = int(num_threads)
        runner_kwargs = {"device": device, **kwargs}
        if manifest.get("runner", {}).get("layout") == "executorch-multimodal-runner":  # one model.pte
            from .executorch import MultimodalProgram

            if release_vision:
                raise ValueError("release_vision applies to ONNX exports (separate vision session); model.pte is one program")
            exported = MultimodalProgram(export_dir, manifest)
        else:
            exported = ExportedModel.from_pretrained(export_dir, device=device, local_files_only=True, **kwargs)
        model = cls(exported.config, exported, manifest, release_vision=release_vision, runner_kwargs=runner_kwargs)
        if exported.generation_config is not None:
            model.generation_config = exported.generation_config
        return model.eval()

    @property
    def device(self) -> torch.device:
        return self.exported.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def _run(self, name: str, **inputs):
        return self.exported.runners[name](**inputs)

    @property
    def vision_encoder_loaded(self) -> bool:
        """Whether the vision encoder's session is open (False after `release_vision_encoder`)."""
        return "vision_encoder" in self.exported.runners

    def release_vision_encoder(self) -> None:
        """Close the vision encoder's session (its weights and buffers go with it); `get_image_features` opens it
        again from the export's file when the next image comes."""
        self.exported.runners.pop("vision_encoder", None)
        gc.collect()
        _return_freed_memory()

    def _vision_runner(self):
        runners = self.exported.runners
        if "vision_encoder" not in runners:
            from transformers.exporters.auto import get_runner_class

            component = self.exported.components["vision_encoder"]
            runner_class = get_runner_class(self.exported.export_format)
            runners["vision_encoder"] = runner_class.from_program(
                component.program, component.metadata, **self._runner_kwargs
            )
        return runners["vision_encoder"]

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(num_tiles, 3, T, T) -> (num_tiles * tokens_per_tile, hidden), in chunks of `vision_batch_size` tiles."""
        chunk = self.config.vision_batch_size or len(pixel_values)
        tiles = [pixel_values[start : start + chunk].float() for start in range(0, len(pixel_values), chunk)]
        runner = self._vision_runner()
        features = [runner(pixel_values=tile)["image_features"] for tile in tiles]
        del runner
        if self.release_vision:
            self.release_vision_encoder()
        hidden = self.config.text_config.hidden_size
        return torch.cat([feature.reshape(-1, hidden) for feature in features])

    def _empty_past(self, batch_size: int) -> list[dict]:
        num_layers, kv_heads, head_dim = self._kv_shape
        return [
            {
                kind: torch.zeros(
                    batch_size,
                    kv_heads,
                    0,
                    head_dim,
                    dtype=self._past_dtypes.get(f"past_key_values.{i}.{kind}", torch.float32),
                )
                for kind in ("key", "value")
            }
            for i in range(num_layers)
        ]

    def forward(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        image_grids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """One decoder call over `input_ids` (the prompt, or the new tokens after it) with `cache` as the past."""
        batch_size, length = input_ids.shape
        if self.static_batch is not None and batch_size != self.static_batch:
            raise ValueError(
                f"This export's decoder was traced for batch size {self.static_batch} (int8 KV-cache and ExecuTorch "
                f"exports are batch-1 only), got a batch of {batch_size}; run the prompts one by one"
            )
        image_positions = input_ids == self.config.image_token_id
        hidden = self.config.text_config.hidden_size
        features = torch.zeros(0, hidden)
        if pixel_values is not None and len(pixel_values):
            features = self.get_image_features(pixel_values)
            if features.shape[0] != int(image_positions.sum()):
                raise ValueError(
                    f"The text has {int(image_positions.sum())} image tokens but the images give {features.shape[0]} "
                    "features; build inputs with the BlueLM processor so each placeholder is expanded to its tiles"
                )
        elif image_positions.any():
            raise ValueError(f"The text has {int(image_positions.sum())} image tokens but no pixel_values were given")
        if self._merge_in_graph:
            embeds = self._run("embed_tokens", input_ids=input_ids.long(), image_features=features)
            embeds = embeds["inputs_embeds"]
        else:
            embeds = self._run("embed_tokens", input_ids=input_ids.long())["inputs_embeds"]
            if len(features):
                embeds = embeds.masked_scatter(image_positions[..., None], features.to(embeds.dtype))

        past_length = cache.get_seq_length() if cache is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(batch_size, past_length + length, dtype=torch.long)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
        if past_length:
            past = [{"key": layer.keys, "value": layer.values} for layer in cache.layers]
        else:
            past = self._empty_past(batch_size)
        outputs = self._run(
            "decoder",
            inputs_embeds=embeds,
            attention_mask=attention_mask.long(),
            position_ids=position_ids.long(),
            past_key_values=past,
        )
        if cache is not None:
            for index, layer in enumerate(outputs["present"]):
                cache.update(layer["key"][:, :, past_length:], layer["value"][:, :, past_length:], index)
        return CausalLMOutputWithPast(logits=outputs["logits"], cache=cache)


__all__ = ["BlueLMVExportedForConditionalGeneration", "read_manifest"]
