"""Run a BlueLM export (ONNX Runtime or ExecuTorch) from image + prompt, the way `model.generate` does.

An export directory (see `bluelm_hf.export` and docs/export.md) holds three graphs named in `bluelm_export.json`:

    vision_encoder   pixel_values (num_tiles, 3, T, T)           -> image_features (num_tiles, tokens_per_tile, hidden)
    embed_tokens     input_ids (batch, seq)                       -> inputs_embeds (batch, seq, hidden)
    decoder          inputs_embeds, attention_mask, position_ids,
                     past_key_values.{i}.key / .value             -> logits, present.{i}.key / .value

plus the processor / tokenizer / config files, so `OrtBlueLM.from_pretrained(export_dir)` needs nothing else.
Generation follows `transformers.GenerationMixin` for the parts BlueLM uses: left padding, greedy or sampling
(temperature / top-k / top-p), `eos_token_id`, `logits_processor`s (the thinking budget is
`bluelm_hf.thinking.ThinkingBudgetLogitsProcessor`, called on torch views of the ONNX Runtime logits) and a
`streamer` with the `put` / `end` protocol of `transformers.TextStreamer`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

MANIFEST_FILE = "bluelm_export.json"
COMPONENTS = ("vision_encoder", "embed_tokens", "decoder")

_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


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


# ---------------------------------------------------------------------------------------------------- backends


class OrtComponent:
    """One ONNX graph in an `onnxruntime.InferenceSession`; `run(feeds)` maps input names to output arrays."""

    def __init__(self, path: Path, session_options=None, providers: Sequence | None = None):
        import onnxruntime as ort

        if not path.is_file():
            raise FileNotFoundError(f"Missing exported graph {path}")
        self.path = path
        self.session = ort.InferenceSession(
            str(path), session_options, providers=list(providers or ["CPUExecutionProvider"])
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_dtypes = {i.name: _ORT_TO_NUMPY.get(i.type, np.float32) for i in self.session.get_inputs()}
        self.input_shapes = {i.name: i.shape for i in self.session.get_inputs()}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(None, {name: feeds[name] for name in self.input_names})
        return dict(zip(self.output_names, outputs))


class ExecutorchComponent:
    """One ExecuTorch `.pte` program run with `executorch.runtime`; inputs are flattened in traced order."""

    def __init__(self, path: Path, input_names: list[str], output_names: list[str], input_dtypes: dict, shapes: dict):
        try:
            from executorch.runtime import Runtime
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError(
                "Running an ExecuTorch export needs the `executorch` package (`pip install executorch`)"
            ) from error
        if not path.is_file():
            raise FileNotFoundError(f"Missing exported program {path}")
        self.path = path
        self.method = Runtime.get().load_program(str(path)).load_method("forward")
        self.input_names, self.output_names = input_names, output_names
        self.input_dtypes = {name: np.dtype(dtype).type for name, dtype in input_dtypes.items()}
        self.input_shapes = shapes

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # torch.from_numpy keeps numpy's strides, which are 0 on an empty (past length 0) array: ExecuTorch asserts.
        inputs = [
            torch.from_numpy(np.ascontiguousarray(feeds[name]))
            if feeds[name].size
            else torch.zeros(feeds[name].shape, dtype=torch.from_numpy(feeds[name]).dtype)
            for name in self.input_names
        ]
        outputs = self.method.execute(inputs)
        return {name: out.numpy() for name, out in zip(self.output_names, outputs)}


# ---------------------------------------------------------------------------------------------------- generation


@dataclass
class GenerationResult:
    """What `OrtBlueLM.generate` returns: like `GenerateDecoderOnlyOutput`, plus timings."""

    sequences: torch.LongTensor  # (batch, prompt_len + new_tokens), left-padded prompt then generated tokens
    prompt_length: int
    logits: list[torch.Tensor] = field(default_factory=list)  # one (batch, vocab) per step when return_logits
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def new_tokens(self) -> torch.LongTensor:
        return self.sequences[:, self.prompt_length :]


class _CallbackStreamer:
    """Adapts a `callback(text_chunk)` into the `put` / `end` streamer protocol (`TextStreamer`, prompt skipped)."""

    def __init__(self, tokenizer, callback: Callable[[str], Any]):
        from transformers import TextStreamer

        class _Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False):
                if text:
                    callback(text)

        self._streamer = _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=False)

    def put(self, value):
        self._streamer.put(value)

    def end(self):
        self._streamer.end()


class OrtBlueLM:
    """A BlueLM export loaded for inference: ONNX Runtime sessions (or ExecuTorch programs) + the processor.

    ```python
    >>> runner = OrtBlueLM.from_pretrained("bluelm-onnx")
    >>> runner.chat("How many red cells?", image, enable_thinking=True, thinking_budget=64)
    {'reasoning_content': '...', 'content': '...', 'text': '...', 'num_thinking_tokens': ...}
    ```
    """

    def __init__(self, export_dir: Path, manifest: dict, components: dict, processor, *, vision_factory=None):
        self.export_dir = export_dir
        self.manifest = manifest
        self.components = components
        self.processor = processor
        self.tokenizer = processor.tokenizer
        model = manifest["model"]
        self.model_info = model
        self.image_token_id = model["image_token_id"]
        self.hidden_size = model["hidden_size"]
        self.vision_batch_size = model.get("vision_batch_size") or 16
        kv = manifest["kv_cache"]
        self.num_layers, self.num_kv_heads, self.head_dim = kv["num_layers"], kv["num_kv_heads"], kv["head_dim"]
        self.static_batch = manifest["components"]["decoder"].get("static_batch_size")
        self._vision_factory = vision_factory  # set when the vision graph is loaded per call, then released
        self.last_timings: dict[str, float] = {}

    @property
    def config(self) -> SimpleNamespace:
        """The manifest's model facts (`image_token_id`, `think_start_token_id`, ...) as attributes, like a config."""
        return SimpleNamespace(**self.model_info)

    @property
    def device(self) -> torch.device:
        """Inputs are handed over on the CPU (as numpy); ONNX Runtime places them on its providers."""
        return torch.device("cpu")

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        export_dir: str | os.PathLike,
        *,
        providers: Sequence | None = None,
        num_threads: int | None = None,
        session_options=None,
        release_vision: bool = False,
        processor=None,
    ) -> OrtBlueLM:
        """Load an export directory written by `bluelm_hf.export.export_model`.

        providers: ONNX Runtime execution providers (default CPU). num_threads: intra-op threads per session
        (default: ONNX Runtime's choice). release_vision: open the vision graph only while encoding images and
        free it right after (the paper's "ViT freed after encoding"), trading load time for memory.
        """
        export_dir = Path(export_dir)
        manifest = read_manifest(export_dir)
        backend = manifest.get("format", "onnx")
        if processor is None:
            from transformers import AutoProcessor

            import bluelm_hf  # noqa: F401  (registers the BlueLM processor with the Auto classes)

            processor = AutoProcessor.from_pretrained(export_dir)

        if backend == "onnx":
            import onnxruntime as ort

            if session_options is None:
                session_options = ort.SessionOptions()
                if num_threads:
                    session_options.intra_op_num_threads = int(num_threads)

            def make(name):
                return OrtComponent(export_dir / manifest["components"][name]["file"], session_options, providers)

        elif backend == "executorch":

            def make(name):
                entry = manifest["components"][name]
                return ExecutorchComponent(
                    export_dir / entry["file"],
                    [i["name"] for i in entry["inputs"]],
                    [o["name"] for o in entry["outputs"]],
                    {i["name"]: i["dtype"] for i in entry["inputs"]},
                    {i["name"]: i["shape"] for i in entry["inputs"]},
                )

        else:
            raise ValueError(f"Unknown export format {backend!r} in {export_dir / MANIFEST_FILE}")

        components = {name: make(name) for name in ("embed_tokens", "decoder")}
        vision_factory = None
        if release_vision:
            vision_factory = lambda: make("vision_encoder")  # noqa: E731
        else:
            components["vision_encoder"] = make("vision_encoder")
        return cls(export_dir, manifest, components, processor, vision_factory=vision_factory)

    # ------------------------------------------------------------------ graph calls
    def encode_images(self, pixel_values: np.ndarray | torch.Tensor) -> np.ndarray:
        """(num_tiles, 3, T, T) -> (num_tiles, tokens_per_tile, hidden), tiles in chunks of `vision_batch_size`."""
        pixel_values = _to_numpy(pixel_values, np.float32)
        vision = self.components.get("vision_encoder")
        release = vision is None
        if release:
            vision = self._vision_factory()
        try:
            chunks = [
                vision.run({"pixel_values": pixel_values[start : start + self.vision_batch_size]})["image_features"]
                for start in range(0, pixel_values.shape[0], self.vision_batch_size)
            ]
        finally:
            if release:
                del vision
        return np.concatenate(chunks, axis=0)

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        return self.components["embed_tokens"].run({"input_ids": input_ids.astype(np.int64)})["inputs_embeds"]

    def empty_past(self, batch_size: int) -> dict[str, np.ndarray]:
        decoder = self.components["decoder"]
        past = {}
        for i in range(self.num_layers):
            for kind in ("key", "value"):
                name = f"past_key_values.{i}.{kind}"
                past[name] = np.zeros((batch_size, self.num_kv_heads, 0, self.head_dim), decoder.input_dtypes[name])
        return past

    def decode(
        self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, past: dict
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One decoder call; returns `(logits, present)` with `present` keyed as the next call's past inputs."""
        feeds = {
            "inputs_embeds": inputs_embeds.astype(np.float32, copy=False),
            "attention_mask": attention_mask.astype(np.int64, copy=False),
            "position_ids": position_ids.astype(np.int64, copy=False),
            **past,
        }
        outputs = self.components["decoder"].run(feeds)
        present = {
            name.replace("present.", "past_key_values.", 1): value
            for name, value in outputs.items()
            if name.startswith("present.")
        }
        return outputs["logits"], present

    def prefill_embeds(self, input_ids: np.ndarray, pixel_values=None) -> np.ndarray:
        """Token embeddings with the image features scattered into the `<image>` positions (row-major, like
        `masked_scatter` in the PyTorch model)."""
        embeds = self.embed(input_ids)
        image_positions = input_ids == self.image_token_id
        num_image_tokens = int(image_positions.sum())
        if pixel_values is not None and len(pixel_values):
            features = self.encode_images(pixel_values).reshape(-1, self.hidden_size)
            if features.shape[0] != num_image_tokens:
                raise ValueError(
                    f"The text has {num_image_tokens} image tokens but the images give {features.shape[0]} features; "
                    "build inputs with the BlueLM processor so each image placeholder is expanded to its tile count"
                )
            embeds[image_positions] = features.astype(embeds.dtype, copy=False)
        elif num_image_tokens:
            raise ValueError(f"The text has {num_image_tokens} image tokens but no pixel_values were given")
        return embeds

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        input_ids,
        attention_mask=None,
        pixel_values=None,
        image_grids=None,
        *,
        max_new_tokens: int = 256,
        min_new_tokens: int = 0,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        thinking_budget: int | Sequence[int] | None = None,
        logits_processor: Sequence | None = None,
        streamer=None,
        return_logits: bool = False,
        forced_tokens: Sequence[int] | None = None,
    ) -> GenerationResult:
        """Generate like `BlueLMVForConditionalGeneration.generate` (greedy by default).

        Takes the processor's output (`input_ids`, `attention_mask`, `pixel_values`, `image_grids`; left padding for
        a batch). `thinking_budget` adds a `ThinkingBudgetLogitsProcessor`; `streamer` is a `TextStreamer`-like
        object (`put` / `end`) or a callable receiving text chunks. `forced_tokens` feeds these tokens instead of
        the chosen ones (teacher forcing, used by the export verification); it implies `return_logits`.
        """
        from transformers import LogitsProcessorList

        input_ids = _to_numpy(input_ids, np.int64)
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        batch_size, prompt_length = input_ids.shape
        if self.static_batch is not None and batch_size != self.static_batch:
            raise ValueError(
                f"This export's decoder was traced for batch size {self.static_batch} (int8 KV-cache and ExecuTorch "
                f"exports are batch-1 only), got a batch of {batch_size}; run the prompts one by one"
            )
        attention_mask = (
            np.ones_like(input_ids) if attention_mask is None else _to_numpy(attention_mask, np.int64).copy()
        )
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {attention_mask.shape} does not match input_ids {input_ids.shape}")
        if streamer is not None and not hasattr(streamer, "put"):
            if not callable(streamer):
                raise TypeError("streamer must have put()/end() (like transformers.TextStreamer) or be a callable")
            streamer = _CallbackStreamer(self.tokenizer, streamer)
        if streamer is not None and batch_size > 1:
            raise ValueError("Streaming supports batch size 1")

        eos = self._eos_ids(eos_token_id)
        if pad_token_id is None:
            pad_token_id = self.model_info.get("pad_token_id")
        if pad_token_id is None:
            pad_token_id = eos[0] if eos else 0

        processors = LogitsProcessorList(list(logits_processor or []))
        if min_new_tokens and eos:  # as transformers does: EOS cannot be chosen before min_new_tokens new tokens
            from transformers import MinNewTokensLengthLogitsProcessor

            processors.append(MinNewTokensLengthLogitsProcessor(input_ids.shape[1], min_new_tokens, eos))
        if thinking_budget is not None:
            from .thinking import ThinkingBudgetLogitsProcessor

            processors.append(
                ThinkingBudgetLogitsProcessor(
                    thinking_budget,
                    self.model_info["think_start_token_id"],
                    self.model_info["think_end_token_id"],
                    end_sequence_ids=self.model_info.get("thinking_end_sequence_ids"),
                )
            )
        if do_sample:
            from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

            if temperature is not None and temperature != 1.0:
                processors.append(TemperatureLogitsWarper(temperature))
            if top_k:
                processors.append(TopKLogitsWarper(top_k))
            if top_p is not None and top_p < 1.0:
                processors.append(TopPLogitsWarper(top_p))
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        if forced_tokens is not None:
            return_logits = True
            forced_tokens = list(forced_tokens)
            max_new_tokens = min(max_new_tokens, len(forced_tokens))

        timings = {}
        start = time.perf_counter()
        if streamer is not None:
            streamer.put(torch.from_numpy(input_ids).cpu())
        # ---- prefill: vision, embeddings, decoder over the whole prompt
        embeds = self.prefill_embeds(input_ids, None if pixel_values is None else _to_numpy(pixel_values, np.float32))
        timings["vision_and_embed_s"] = time.perf_counter() - start
        position_ids = np.clip(np.cumsum(attention_mask, axis=1) - 1, 0, None)
        position_ids = np.where(attention_mask == 0, 1, position_ids)
        past = self.empty_past(batch_size)
        logits, past = self.decode(embeds, attention_mask, position_ids, past)
        next_logits = logits[:, -1, :]
        timings["prefill_s"] = time.perf_counter() - start  # time to first logits, vision included

        sequences = torch.from_numpy(input_ids)
        finished = torch.zeros(batch_size, dtype=torch.bool)
        collected = []
        last_position = position_ids[:, -1:]
        decode_start = time.perf_counter()
        steps = 0
        for step in range(max_new_tokens):
            scores = torch.from_numpy(np.asarray(next_logits, dtype=np.float32))
            if return_logits:
                collected.append(scores.clone())
            scores = processors(sequences, scores) if processors else scores
            if forced_tokens is not None:
                tokens = torch.full((batch_size,), forced_tokens[step], dtype=torch.long)
            elif do_sample:
                probs = torch.softmax(scores.float(), dim=-1)
                tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                tokens = scores.argmax(dim=-1)
            tokens = torch.where(finished, torch.full_like(tokens, pad_token_id), tokens)
            sequences = torch.cat([sequences, tokens[:, None]], dim=1)
            steps += 1
            if streamer is not None:
                streamer.put(tokens.cpu())
            if eos and forced_tokens is None:
                finished |= torch.isin(tokens, torch.tensor(eos))
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            # ---- one decode step
            token_ids = tokens.numpy()[:, None]
            attention_mask = np.concatenate([attention_mask, np.ones((batch_size, 1), np.int64)], axis=1)
            last_position = last_position + 1
            logits, past = self.decode(self.embed(token_ids), attention_mask, last_position, past)
            next_logits = logits[:, -1, :]
        if streamer is not None:
            streamer.end()
        decode_time = time.perf_counter() - decode_start
        timings["decode_s"] = decode_time
        timings["new_tokens"] = steps
        # Tokens produced by decoder steps (the first new token comes from the prefill logits).
        timings["decode_tokens_per_s"] = (steps - 1) / decode_time if steps > 1 and decode_time > 0 else float("nan")
        self.last_timings = timings
        return GenerationResult(sequences, prompt_length, collected, timings)

    def _eos_ids(self, eos_token_id) -> list[int]:
        if eos_token_id is None:
            eos_token_id = self.model_info.get("eos_token_id")
        if eos_token_id is None:
            return []
        return [int(eos_token_id)] if isinstance(eos_token_id, (int, np.integer)) else [int(i) for i in eos_token_id]

    # ------------------------------------------------------------------ chat helpers
    def build_inputs(self, questions: str | list[str], images=None, *, enable_thinking: bool = False):
        """Processor inputs for one question per image (None for text-only), BlueLM chat template, left padding."""
        single = isinstance(questions, str)
        questions = [questions] if single else list(questions)
        if images is None or not isinstance(images, (list, tuple)):
            images = [images] * len(questions) if single or images is None else images
        if len(images) != len(questions):
            raise ValueError(f"Got {len(questions)} questions but {len(images)} images")
        prompts = []
        for question, image in zip(questions, images):
            content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": question}]
            prompts.append(
                self.processor.apply_chat_template(
                    [{"role": "user", "content": content}], add_generation_prompt=True, enable_thinking=enable_thinking
                )
            )
        present = [image for image in images if image is not None]
        self.tokenizer.padding_side = "left"
        return self.processor(text=prompts, images=present or None, return_tensors="np", padding=True)

    def chat(
        self,
        questions: str | list[str],
        images=None,
        *,
        enable_thinking: bool = False,
        thinking_budget: int | Sequence[int] | None = None,
        max_new_tokens: int = 256,
        streamer=None,
        **generate_kwargs,
    ) -> dict | list[dict]:
        """Answer `questions` (str or list) about `images` (PIL image, list, or None); returns, per question,
        `reasoning_content`, `content`, `text` and `num_thinking_tokens` like `bluelm_hf.inference.generate`."""
        single = isinstance(questions, str)
        batch = self.build_inputs(questions, images, enable_thinking=enable_thinking)
        result = self.generate(
            batch["input_ids"],
            batch.get("attention_mask"),
            batch.get("pixel_values"),
            batch.get("image_grids"),
            max_new_tokens=max_new_tokens,
            thinking_budget=thinking_budget,
            streamer=streamer,
            **generate_kwargs,
        )
        parsed = [self.parse_completion(row) for row in result.new_tokens]
        return parsed[0] if single else parsed

    def parse_completion(self, ids) -> dict:
        """`reasoning_content` / `content` / `text` / `num_thinking_tokens` of generated ids (eos and pad cut)."""
        from .thinking import parse_response

        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        pad = self.tokenizer.pad_token_id
        eos = self._eos_ids(None)
        if pad is not None and pad not in eos:
            ids = [i for i in ids if i != pad]
        for e in eos:
            if e in ids:
                ids = ids[: ids.index(e)]
        start_id, end_id = self.model_info["think_start_token_id"], self.model_info["think_end_token_id"]
        num_thinking = 0
        if start_id in ids:
            start = ids.index(start_id) + 1
            end = ids.index(end_id, start) if end_id in ids[start:] else len(ids)
            num_thinking = end - start
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        parsed = parse_response(text, eos_token=self.tokenizer.eos_token)
        return {**parsed, "text": text, "num_thinking_tokens": num_thinking}


def _to_numpy(value, dtype) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value).astype(dtype, copy=False)


__all__ = ["GenerationResult", "MANIFEST_FILE", "OrtBlueLM", "read_manifest"]
