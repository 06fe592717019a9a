"""ExecuTorch: one multi-method `.pte` that ExecuTorch's own `MultimodalRunner` loads and runs.

    bluelm-hf export path/to/bluelm bluelm-pte --format executorch

writes `model.pte` with the methods and constant methods `executorch.extension.llm.runner.MultimodalRunner` (the C++
runner its Android / iOS apps link, here through its Python binding) looks up:

    vision_encoder   one AnyRes tile, (1, 3, T, T) float32 normalized as the processor does
                     -> (1, tokens_per_tile, hidden): SigLIP tower, 2x2 downsampler, MLP projector
    token_embedding  input_ids (1, seq) int64 -> (1, seq, hidden)
    text_decoder     inputs_embeds (1, seq, hidden), cache_position (seq,) int64 -> logits (1, seq, vocab);
                     the KV cache lives in the program (transformers' `StaticCache` as mutable buffers)
    get_max_seq_len, get_max_context_len, get_eos_ids, get_bos_id, get_vocab_size, use_kv_cache,
    enable_dynamic_shape (the runner's metadata), and BlueLM's own: get_image_token_id, get_tokens_per_tile,
    get_tile_size, get_think_start_id, get_think_end_id

next to `tokenizer.json` (the runner's HF tokenizer loader reads it). AnyRes tiles go to the runner as images: every
row of the processor's `pixel_values` (grid tiles row-major, then the thumbnail, image after image) is one
`make_image_input`, in place of its `tokens_per_tile` `<image>` placeholders (`runner_inputs`). The thinking budget
runs through the runner's own `generate` and `prefill` (`runner_generate`).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch
from torch import nn

from .wrappers import EmbedTokensForExport, VisionEncoderForExport, kv_shape

PTE_FILE = "model.pte"
TOKENIZER_FILE = "tokenizer.json"
#: Our component name -> the method name `MultimodalRunner` looks up (executorch/extension/llm/runner/constants.h).
METHODS = {"vision_encoder": "vision_encoder", "embed_tokens": "token_embedding", "decoder": "text_decoder"}
LAYOUT = "executorch-multimodal-runner"


class TextDecoderForExecutorch(nn.Module):
    """inputs_embeds (1, seq, hidden), cache_position (seq,) -> logits (1, seq, vocab), the KV cache held in the
    program: transformers' `TorchExportableModuleWithStaticCache` (a `StaticCache` registered as buffers, the
    signature `executorch/extension/llm/runner` calls) over the BlueLM model without its image merge."""

    def __init__(self, model, max_cache_len: int):
        super().__init__()
        from transformers.integrations.executorch import TorchExportableModuleWithStaticCache

        # The wrapper reads the cache settings from the generation config; a copy, so the model's own is untouched.
        saved = model.generation_config
        model.generation_config = copy.deepcopy(saved)
        model.generation_config.use_cache = True
        model.generation_config.cache_implementation = "static"
        try:
            self.decoder = TorchExportableModuleWithStaticCache(model, batch_size=1, max_cache_len=max_cache_len)
        finally:
            model.generation_config = saved

    def forward(self, inputs_embeds, cache_position):
        return self.decoder(inputs_embeds=inputs_embeds, cache_position=cache_position)


def runner_metadata(model, processor, max_seq_len: int, max_cache_len: int) -> dict:
    """The constant methods of the `.pte`: what `MultimodalRunner` reads (llm_runner_helper.cpp `get_llm_metadata`,
    `get_eos_ids`) plus the BlueLM ids an app needs to build the runner's inputs."""
    config = model.config
    tokenizer = processor.tokenizer
    eos = model.generation_config.eos_token_id
    eos = eos if eos is not None else tokenizer.eos_token_id
    eos_ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos_ids[0]
    return {
        "get_max_seq_len": int(max_seq_len),
        "get_max_context_len": int(max_cache_len),
        "get_eos_ids": eos_ids,
        "get_bos_id": int(bos),
        "get_vocab_size": int(config.text_config.vocab_size),
        "use_kv_cache": True,
        "enable_dynamic_shape": True,
        "get_image_token_id": int(config.image_token_id),
        "get_tokens_per_tile": int(config.image_tokens_per_tile),
        "get_tile_size": int(config.vision_config.image_size),
        "get_think_start_id": int(config.think_start_token_id),
        "get_think_end_id": int(config.think_end_token_id),
    }


def cache_lengths(config, max_seq_len: int | None = None, max_cache_len: int | None = None) -> tuple[int, int]:
    """`(max_seq_len, max_cache_len)` of a `.pte` with their defaults (`max_position_embeddings`, then
    `max_cache_len`); a ValueError with the numbers unless 2 <= max_seq_len <= max_cache_len <= positions."""
    positions = int(getattr(config.text_config, "max_position_embeddings", 4096))
    max_cache_len = positions if max_cache_len is None else int(max_cache_len)
    max_seq_len = max_cache_len if max_seq_len is None else int(max_seq_len)
    if not 2 <= max_seq_len <= max_cache_len <= positions:
        raise ValueError(
            f"need 2 <= max_seq_len ({max_seq_len}) <= max_cache_len ({max_cache_len}) <= max_position_embeddings "
            f"({positions})"
        )
    return max_seq_len, max_cache_len


def export_multimodal_program(model, processor, max_seq_len: int | None = None, max_cache_len: int | None = None):
    """`(ExecutorchProgramManager, metadata)`: the three methods traced with transformers' exporter machinery
    (`DynamoExporter.export_program` under the ExecuTorch patches and FX fixes `ExecutorchExporter` applies), lowered
    together to XNNPACK with `to_edge_transform_and_lower`, so they share one `.pte`.

    max_cache_len: KV-cache positions (prompt + generated), default `max_position_embeddings`; max_seq_len: the
    longest single prefill, default `max_cache_len`. ExecuTorch plans memory for the largest shapes."""
    try:
        from transformers.exporters import ExecutorchConfig, ExecutorchExporter

        exporter = ExecutorchExporter()
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir.program import to_edge_transform_and_lower
    except (ImportError, ModuleNotFoundError) as error:
        from .exporter import _executorch_missing_message

        raise ImportError(_executorch_missing_message(error)) from error
    from transformers.exporters.exporter_dynamo import DynamoExporter
    from transformers.exporters.exporter_executorch import _get_edge_compile_config
    from transformers.exporters.utils import apply_fx_node_fixes, apply_fx_program_fixes, apply_patches

    text = model.config.text_config
    max_seq_len, max_cache_len = cache_lengths(model.config, max_seq_len, max_cache_len)
    model = model.eval().requires_grad_(False)
    tile = model.config.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    Dim = torch.export.Dim
    seq = Dim("sequence_length", min=1, max=max_seq_len)
    tokens = Dim("ids_length", min=1, max=max_seq_len)
    methods = {
        "vision_encoder": (
            VisionEncoderForExport(model),
            {"pixel_values": torch.randn(1, 3, tile, tile, generator=generator)},
            None,
        ),
        "embed_tokens": (
            EmbedTokensForExport(model),
            {"input_ids": torch.randint(0, text.vocab_size, (1, 3), generator=generator)},
            {"input_ids": {1: tokens}},
        ),
        "decoder": (
            TextDecoderForExecutorch(model, max_cache_len),
            {
                "inputs_embeds": torch.randn(1, 3, text.hidden_size, generator=generator),
                "cache_position": torch.arange(3),
            },
            {"inputs_embeds": {1: seq}, "cache_position": {0: seq}},
        ),
    }
    programs = {}
    with apply_patches("executorch"), apply_patches("executorch.xnnpack"):
        for name, (module, inputs, shapes) in methods.items():
            config = ExecutorchConfig(
                dynamic=shapes is not None,
                dynamic_shapes=shapes,
                # Strict (Dynamo) tracing sees the StaticCache tensors as the buffers they are registered as, so their
                # updates become buffer mutations; non-strict lifts them as constants and lowering fails.
                strict=name == "decoder",
                backend="xnnpack",
                prefer_deferred_runtime_asserts_over_guards=True,
            )
            program, _ = DynamoExporter.export_program(exporter, module.eval(), inputs, config)
            apply_fx_program_fixes("executorch", program)
            apply_fx_node_fixes("executorch", program.graph_module)
            programs[METHODS[name]] = program
        metadata = runner_metadata(model, processor, max_seq_len, max_cache_len)
        edge = to_edge_transform_and_lower(
            programs,
            partitioner={method: [XnnpackPartitioner()] for method in programs},
            compile_config=_get_edge_compile_config("xnnpack"),
            constant_methods=metadata,
        )
        manager = edge.to_executorch()
    return manager, metadata


class MultimodalExport:
    """What `export_model(format="executorch")` saves: `model.pte`, the config files and, when the model directory
    has none, the processor's `tokenizer.json` (the file `MultimodalRunner` is given)."""

    def __init__(self, manager, metadata: dict, model, processor):
        self.manager, self.metadata = manager, metadata
        self.config, self.generation_config, self.processor = model.config, model.generation_config, processor

    def save_pretrained(self, out_dir) -> None:
        out_dir = Path(out_dir)
        with open(out_dir / PTE_FILE, "wb") as file:
            self.manager.write_to_file(file)
        self.config.save_pretrained(out_dir)
        if self.generation_config is not None:
            self.generation_config.save_pretrained(out_dir)
        if not (out_dir / TOKENIZER_FILE).exists():
            backend = getattr(self.processor.tokenizer, "backend_tokenizer", None)
            if backend is None:
                raise ValueError(
                    "MultimodalRunner needs the tokenizer as tokenizer.json (a fast / `tokenizers` tokenizer); "
                    f"{type(self.processor.tokenizer).__name__} has none"
                )
            backend.save(str(out_dir / TOKENIZER_FILE))


def manifest_entries(model, metadata: dict, out_dir: Path) -> tuple[dict, dict]:
    """`(components, runner)` of bluelm_export.json for a `model.pte`: the three methods (under our component names,
    each with the .pte method it is) and how `MultimodalRunner` is fed."""
    num_layers, kv_heads, head_dim = kv_shape(model)
    text = model.config.text_config
    hidden = text.hidden_size
    tile = model.config.vision_config.image_size
    tokens = model.config.image_tokens_per_tile
    size = (out_dir / PTE_FILE).stat().st_size
    none = {"method": "none", "weights": "float32"}

    def entry(name, inputs, outputs, _size):
        # every method is in the one program: size_bytes is the whole model.pte's for each (counted once in total)
        return {"file": PTE_FILE, "method": METHODS[name], "files": [PTE_FILE], "size_bytes": size,
                "inputs": inputs, "outputs": outputs, "quantization": none}  # fmt: skip

    components = {
        "vision_encoder": entry(
            "vision_encoder",
            [{"name": "pixel_values", "dtype": "float32", "shape": [1, 3, tile, tile]}],
            [{"name": "image_features", "dtype": "float32", "shape": [1, tokens, hidden]}],
            size,
        ),
        "embed_tokens": entry(
            "embed_tokens",
            [{"name": "input_ids", "dtype": "int64", "shape": [1, "sequence_length"]}],
            [{"name": "inputs_embeds", "dtype": "float32", "shape": [1, "sequence_length", hidden]}],
            size,
        ),
        "decoder": entry(
            "decoder",
            [
                {"name": "inputs_embeds", "dtype": "float32", "shape": [1, "sequence_length", hidden]},
                {"name": "cache_position", "dtype": "int64", "shape": ["sequence_length"]},
            ],
            [{"name": "logits", "dtype": "float32", "shape": [1, "sequence_length", text.vocab_size]}],
            size,
        ),
    }
    runner = {
        "layout": LAYOUT,
        "program": PTE_FILE,
        "size_bytes": size,
        "tokenizer": TOKENIZER_FILE,
        "methods": dict(METHODS),
        "constant_methods": metadata,
        "kv_cache": f"in the program: StaticCache buffers, {num_layers} layers x (1, {kv_heads}, "
        f"{metadata['get_max_context_len']}, {head_dim}) float32 keys and values",
        "image_inputs": "one make_image_input per row of the processor's pixel_values (float32 (3, T, T), "
        "normalized; grid tiles row-major, then the thumbnail, image after image), in place of its "
        f"{tokens} <image> placeholders; bluelm_hf.export.executorch.runner_inputs builds them",
    }
    return components, runner


class MultimodalProgram:
    """The methods of a `model.pte` as the three runners `BlueLMVExportedForConditionalGeneration` calls (the
    interface of `transformers.exporters.ExportedModel`: `runners`, `config`, `generation_config`, `device`), run
    with `executorch.runtime`, so transformers' `generate` (and the export's verification) drive the same program the
    `MultimodalRunner` runs.

    The KV cache lives in the program, so the `decoder` runner takes `past_key_values` only for their length (the
    start position, `cache_position = past + arange(seq)`) and returns `present` as (1, kv_heads, length, 1)
    placeholders: transformers' cache then counts positions and holds no copy of the keys and values. Batch 1, no
    padding."""

    def __init__(self, export_dir, manifest: dict):
        from executorch.runtime import Runtime
        from transformers import AutoConfig, GenerationConfig

        export_dir = Path(export_dir)
        runner = manifest["runner"]
        program = Runtime.get().load_program(export_dir / runner["program"])
        self._methods = {name: program.load_method(method) for name, method in runner["methods"].items()}
        self._max_context = int(runner["constant_methods"]["get_max_context_len"])
        self._max_seq = int(runner["constant_methods"]["get_max_seq_len"])
        kv = manifest["kv_cache"]
        self._num_layers, self._kv_heads = kv["num_layers"], kv["num_kv_heads"]
        self.config = AutoConfig.from_pretrained(export_dir)
        self.generation_config = (
            GenerationConfig.from_pretrained(export_dir) if (export_dir / "generation_config.json").is_file() else None
        )
        self.device = torch.device("cpu")
        self.runners = {"vision_encoder": self._vision, "embed_tokens": self._embed, "decoder": self._decoder}

    def _vision(self, pixel_values):
        tiles = [self._methods["vision_encoder"].execute([tile[None].float().contiguous()])[0] for tile in pixel_values]
        return {"image_features": torch.cat(tiles)}

    def _embed(self, input_ids):
        return {"inputs_embeds": self._methods["embed_tokens"].execute([input_ids.long().contiguous()])[0]}

    def _decoder(self, inputs_embeds, attention_mask, position_ids, past_key_values):
        past, seq = past_key_values[0]["key"].shape[2], inputs_embeds.shape[1]
        if not bool(attention_mask.bool().all()):
            raise ValueError("The ExecuTorch program's KV cache has no padding: pass unpadded prompts, one at a time")
        if past + seq > self._max_context or seq > self._max_seq:
            raise ValueError(
                f"{past} cached + {seq} new positions exceed the program's KV cache of {self._max_context} positions "
                f"(or {seq} > its longest prefill, {self._max_seq}); export with a larger max_cache_len / max_seq_len"
            )
        cache_position = torch.arange(past, past + seq)
        if not torch.equal(position_ids.reshape(-1).cpu(), cache_position):
            raise ValueError(
                f"position_ids {position_ids.tolist()} are not the cache positions {past}..{past + seq - 1}"
            )
        logits = self._methods["decoder"].execute([inputs_embeds.float().contiguous(), cache_position])[0]
        # one float per position and head: transformers' cache counts a layer with no elements as empty
        width = torch.zeros(1, self._kv_heads, past + seq, 1)
        return {"logits": logits, "present": [{"key": width, "value": width} for _ in range(self._num_layers)]}


# ---------------------------------------------------------------------------------------------------- the runner


def load_runner(export_dir):
    """`MultimodalRunner(model.pte, tokenizer.json)`: ExecuTorch's own runner over an export."""
    from executorch.extension.llm.runner import MultimodalRunner

    export_dir = Path(export_dir)
    for name in (PTE_FILE, TOKENIZER_FILE):
        if not (export_dir / name).is_file():
            raise FileNotFoundError(
                f"{export_dir} has no {name}: not an ExecuTorch export for MultimodalRunner "
                "(`bluelm-hf export MODEL OUT --format executorch` writes one)"
            )
    return MultimodalRunner(str(export_dir / PTE_FILE), str(export_dir / TOKENIZER_FILE))


def runner_inputs(batch, config, text_inputs_with=None) -> list:
    """The processor's output for one prompt (`input_ids` (1, L), `pixel_values` (tiles, 3, T, T)) as
    `MultimodalRunner` inputs: each run of `<image>` placeholders becomes `run / tokens_per_tile` image inputs, the
    next rows of `pixel_values` in order (grid tiles row-major, then the thumbnail, image after image), and the text
    between them token inputs (`make_token_input`: the processor's ids exactly) or, with `text_inputs_with=tokenizer`,
    text inputs (`make_text_input` of the decoded text, tokenized again by the runner's tokenizer, as an app that
    holds strings does). Raises ValueError when placeholders and tiles do not match."""
    from executorch.extension.llm.runner import make_image_input, make_text_input, make_token_input

    ids = batch["input_ids"]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"MultimodalRunner takes one prompt at a time; input_ids has shape {tuple(ids.shape)}")
    ids = ids[0].tolist()
    if "attention_mask" in batch and not bool(batch["attention_mask"].bool().all()):
        raise ValueError("the prompt is padded; MultimodalRunner takes one unpadded prompt")
    pixel_values = batch.get("pixel_values")
    tiles = 0 if pixel_values is None else int(pixel_values.shape[0])
    per_tile, image_id = int(config.image_tokens_per_tile), int(config.image_token_id)
    placeholders = sum(token == image_id for token in ids)
    if placeholders != tiles * per_tile:
        raise ValueError(
            f"the prompt has {placeholders} <image> placeholders but pixel_values has {tiles} tiles, which need "
            f"{tiles * per_tile} ({per_tile} per tile); build the prompt and the images with the BlueLM processor"
        )

    def text(chunk):
        if text_inputs_with is None:
            return make_token_input(chunk)
        return make_text_input(text_inputs_with.decode(chunk, skip_special_tokens=False))

    inputs, chunk, row, index = [], [], 0, 0
    while index < len(ids):
        if ids[index] != image_id:
            chunk.append(ids[index])
            index += 1
            continue
        run = next((j for j in range(index, len(ids)) if ids[j] != image_id), len(ids)) - index
        if run % per_tile:
            raise ValueError(
                f"a run of {run} <image> placeholders at position {index} is not whole tiles of {per_tile}"
            )
        if chunk:
            inputs.append(text(chunk))
            chunk = []
        for _ in range(run // per_tile):
            inputs.append(make_image_input(pixel_values[row].float().contiguous()))
            row += 1
        index += run
    if chunk:
        inputs.append(text(chunk))
    return inputs


@functools.lru_cache(maxsize=4)
def _piece_ids(tokenizer) -> "_PieceIds":
    return _PieceIds(tokenizer)


class _PieceIds:
    """The runner's token callback hands over each token's text (its tokenizer's `decode`); this maps it back to the
    id, from the HF tokenizer's single-token decodes (which the runner's HF tokenizer loader reproduces)."""

    def __init__(self, tokenizer):
        self.ids, self.ambiguous = {}, set()
        for index in range(len(tokenizer)):
            piece = tokenizer.decode([index], skip_special_tokens=False)
            if piece in self.ids:
                self.ambiguous.add(piece)
            self.ids.setdefault(piece, index)

    def __call__(self, piece: str) -> int:
        if piece in self.ambiguous or piece not in self.ids:
            raise ValueError(f"the runner emitted {piece!r}, which is no single token of this tokenizer (or several)")
        return self.ids[piece]


def _prompt_ids(inputs, tokenizer) -> list[int]:
    ids = []
    for item in inputs:
        if item.is_tokens():
            ids += list(item.get_tokens())
        elif item.is_text():
            ids += tokenizer.encode(item.get_text(), add_special_tokens=False)
    return ids


def runner_generate(
    runner,
    inputs: list,
    tokenizer,
    config,
    max_new_tokens: int = 64,
    thinking_budget: int | None = None,
    *,
    end_sequence_ids=None,
    generation_config=None,
    temperature: float = 0.0,
    token_callback=None,
) -> dict:
    """Generate with ExecuTorch's `MultimodalRunner` from `inputs` (`runner_inputs`), with BlueLM's thinking budget
    applied through the runner's own `generate` / `stop` / prefill: the same tokens as PyTorch's
    `generate(thinking_budget=N)` under greedy decoding (`temperature=0`).

    Without a budget this is one `runner.generate`. With one, the token callback counts the reasoning tokens (those
    strictly between `<think>` and `</think>`, over every think block, as `ThinkingBudgetLogitsProcessor` does) and
    calls `runner.stop()` once the budget is spent inside an open block; the closing sequence
    (`end_sequence_ids`, default the config's `thinking_end_sequence_ids` or `[</think>]`) is then prefilled behind
    the last emitted token (which the runner emits but has not fed yet) as the next `generate`'s input, and decoding
    goes on, up to `max_new_tokens` in all (forced tokens included, as in PyTorch). `config`: the BlueLM config (think
    token ids; `generation_config` for the EOS ids, else the tokenizer's). Returns `token_ids` (the
    generated ids, forced ones included) and `text` (their decode)."""
    from executorch.extension.llm.runner import GenerationConfig, make_token_input

    from ..thinking import validate_thinking_budget

    if thinking_budget is not None:
        validate_thinking_budget(thinking_budget)
        thinking_budget = int(thinking_budget)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    start_id, end_id = int(config.think_start_token_id), int(config.think_end_token_id)
    closing = end_sequence_ids or getattr(config, "thinking_end_sequence_ids", None) or [end_id]
    closing = [int(i) for i in closing]
    eos = tokenizer.eos_token_id if generation_config is None else generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
    piece_ids = _piece_ids(tokenizer)

    # Reasoning state, as ThinkingBudgetLogitsProcessor counts it: the prompt may end inside an open block.
    state = {"inside": False, "used": 0, "stopped": False}
    prompt = _prompt_ids(inputs, tokenizer)
    for token in prompt:
        if token == end_id:
            state["inside"], state["used"] = False, 0  # closed blocks of the prompt do not count
        elif token == start_id and not state["inside"]:
            state["inside"] = True
        elif state["inside"]:
            state["used"] += 1
    generated: list[int] = []

    def spent() -> bool:
        return thinking_budget is not None and state["inside"] and state["used"] >= thinking_budget

    def on_token(piece: str):
        token = piece_ids(piece)
        generated.append(token)
        if token == end_id and state["inside"]:
            state["inside"] = False
        elif token == start_id and not state["inside"]:
            state["inside"] = True
        elif state["inside"]:
            state["used"] += 1
        if token_callback is not None:
            token_callback(piece)
        if spent() and token not in eos:
            state["stopped"] = True
            runner.stop()

    def settings(count):
        return GenerationConfig(echo=False, max_new_tokens=count, temperature=temperature)

    pending = list(inputs)  # the next runner.generate's inputs
    if spent():  # the prompt already holds the whole budget: closed at once, as PyTorch does
        pending.append(make_token_input(closing[:max_new_tokens]))
        generated += closing[:max_new_tokens]
        state["inside"] = False
    while len(generated) < max_new_tokens:
        left = max_new_tokens - len(generated)
        # runner.stop() is not honoured for the first token of a generate (the one its prefill yields: the token
        # generator clears the flag when it starts), so a call whose first token could spend the budget emits it alone.
        could_spend = thinking_budget is not None and (
            state["used"] + 1 >= thinking_budget if state["inside"] else state["used"] >= thinking_budget
        )
        count = 1 if could_spend else left
        before, state["stopped"] = len(generated), False
        runner.generate(pending, settings(count), on_token)
        if len(generated) == before or generated[-1] in eos:
            break
        last = generated[-1]  # emitted by the runner, not yet in its KV cache
        if state["stopped"]:
            forced = closing[: max_new_tokens - len(generated)]
            generated += forced
            state["inside"] = False
            pending = [make_token_input([last, *forced])]
        elif len(generated) - before < count or count == left:
            break  # done: max_new_tokens, or the runner's context is full
        else:
            pending = [make_token_input([last])]
    return {"token_ids": generated, "text": tokenizer.decode(generated, skip_special_tokens=False)}


@torch.no_grad()
def verify_runner(export_dir, model, processor, sample, tokens: int) -> dict:
    """ExecuTorch's `MultimodalRunner` on the export against PyTorch: greedy, up to `tokens` new tokens, on `sample`
    and on the default verification picture in thinking mode (a longer answer from a trained model). The runner has
    no way to suppress EOS (no `min_new_tokens`), so both sides stop at EOS here; the EOS-suppressed comparison of at
    least 32 tokens is `verify_export`'s, on the same program's methods."""
    from .verification import verification_sample

    runner = load_runner(export_dir)
    runs = []
    for batch in (sample, verification_sample(model, processor, enable_thinking=True)):
        prompt = batch["input_ids"].shape[1]
        want = model.generate(**batch, max_new_tokens=tokens, do_sample=False)[0, prompt:].tolist()
        runner.reset()
        got = runner_generate(runner, runner_inputs(batch, model.config), processor.tokenizer, model.config, tokens,
                              generation_config=model.generation_config)["token_ids"]  # fmt: skip
        runs.append({"greedy_tokens_pytorch": want, "greedy_tokens_runner": got, "identical": got == want})
    return {
        "passed": all(run["identical"] for run in runs),
        "new_tokens": [len(run["greedy_tokens_runner"]) for run in runs],
        "eos_suppressed": False,
        "runs": runs,
    }
