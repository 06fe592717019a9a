"""ExecuTorch export through ExecuTorch's own runner: one multi-method `model.pte` that
`executorch.extension.llm.runner.MultimodalRunner` (the C++ runner of ExecuTorch's Android / iOS apps, here through its
Python binding) loads and generates from, greedy-equal to PyTorch on BlueLM-nano's held-out questions, with AnyRes
tiles as its images and the thinking budget applied through its `generate` / `stop` / prefill.

The shipped nano is exported once (module fixture, the slow part: torch.export + XNNPACK lowering, with its
verification) with a 256-position KV cache.
"""

import importlib.util
import json

import pytest
import torch

from bluelm_hf import NANO, nano_task

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("executorch") is None, reason="executorch is not installed (pip install executorch)"
)

QUESTIONS = 3  # held-out nano questions (their images give 5, 9 and 5 tiles: multi-tile grids + thumbnail)
MAX_NEW_TOKENS = 40


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from bluelm_hf.export import export_model

    out = tmp_path_factory.mktemp("et") / "nano-pte"
    export_model(NANO, out, format="executorch", max_cache_len=256)
    return out


@pytest.fixture(scope="module")
def nano():
    from bluelm_hf.export import load_for_export

    return load_for_export(NANO)


@pytest.fixture(scope="module")
def runner(export_dir):
    from bluelm_hf.export.executorch import load_runner

    return load_runner(export_dir)


def _batch(processor, question, image, thinking):
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True,
        enable_thinking=thinking,
    )
    return processor(text=[text], images=[image], return_tensors="pt")


def _questions():
    rows = nano_task.make_eval_set(QUESTIONS)
    return [(row["question"], row["image"]) for row in rows]


def test_one_pte_with_the_runners_methods_and_metadata(export_dir, nano):
    from executorch.runtime import Runtime

    model, _ = nano
    manifest = json.loads((export_dir / "bluelm_export.json").read_text())
    assert "export.json" not in manifest["written_files"] and sorted(p.name for p in export_dir.iterdir()) == sorted(
        manifest["written_files"]
    )
    assert [f for f in manifest["written_files"] if f.endswith(".pte")] == ["model.pte"]
    assert "tokenizer.json" in manifest["written_files"]
    assert manifest["runner"]["methods"] == {
        "vision_encoder": "vision_encoder",
        "embed_tokens": "token_embedding",
        "decoder": "text_decoder",
    }
    program = Runtime.get().load_program(export_dir / "model.pte")
    names = set(program.method_names)
    assert {"vision_encoder", "token_embedding", "text_decoder"} <= names
    constants = {
        name: program.load_method(name).execute([]) for name in names if name.startswith(("get_", "use_", "enable_"))
    }
    assert constants["get_max_context_len"] == [256] and constants["get_max_seq_len"] == [256]
    assert constants["get_eos_ids"] == [1] == model.generation_config.eos_token_id
    assert constants["use_kv_cache"] == [True] and constants["enable_dynamic_shape"] == [True]
    assert constants["get_tokens_per_tile"] == [model.config.image_tokens_per_tile] == [4]
    assert constants["get_image_token_id"] == [model.config.image_token_id]
    assert constants["get_think_start_id"] == [model.config.think_start_token_id]
    assert constants["get_think_end_id"] == [model.config.think_end_token_id]
    assert constants["get_tile_size"] == [model.config.vision_config.image_size]
    # the runner feeds one tile as float (1, 3, T, T); the decoder takes (embeds, cache_position)
    vision = program.metadata("vision_encoder")
    assert list(vision.input_tensor_meta(0).sizes()) == [1, 3, 112, 112]
    assert program.metadata("text_decoder").num_inputs() == 2
    # the export's verification: logits + 32 EOS-suppressed tokens, and the runner's own greedy run
    verification = manifest["verification"]
    assert verification["passed"] and verification["new_tokens"] >= 32 and verification["eos_suppressed"]
    assert verification["multimodal_runner"]["passed"]


@pytest.mark.parametrize("thinking, budget", [(False, None), (True, None), (True, 4), (True, 0)])
def test_multimodal_runner_greedy_equals_pytorch(export_dir, nano, runner, thinking, budget):
    from bluelm_hf.export.executorch import runner_generate, runner_inputs

    model, processor = nano
    tiles = []
    for question, image in _questions():
        batch = _batch(processor, question, image, thinking)
        tiles.append(batch["pixel_values"].shape[0])
        prompt = batch["input_ids"].shape[1]
        extra = {} if budget is None else {"thinking_budget": budget}
        with torch.no_grad():
            want = model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, **extra)[0, prompt:]
        pieces = []
        runner.reset()
        got = runner_generate(runner, runner_inputs(batch, model.config), processor.tokenizer, model.config,
                              MAX_NEW_TOKENS, budget, generation_config=model.generation_config,
                              token_callback=pieces.append)  # fmt: skip
        assert got["token_ids"] == want.tolist(), (question, thinking, budget)
        # what the runner itself emitted, token by token: all of it, but a forced </think> (prefilled, not emitted)
        emitted = [processor.tokenizer.decode([t]) for t in want.tolist()]
        if pieces != emitted:
            assert budget is not None and "</think>" in emitted
            emitted.remove("</think>")
            assert pieces == emitted
        if budget is not None:
            reasoning = want.tolist().index(model.config.think_end_token_id) - 1  # tokens after <think>
            assert reasoning <= budget
    assert max(tiles) > 1


def test_budget_is_what_cuts_the_reasoning(export_dir, nano, runner):
    """The unbudgeted answer of the first question thinks for more than 4 tokens: budget 4 really cuts it."""
    from bluelm_hf.export.executorch import runner_generate, runner_inputs

    model, processor = nano
    question, image = _questions()[0]
    batch = _batch(processor, question, image, True)
    inputs = lambda: runner_inputs(batch, model.config)  # noqa: E731
    runner.reset()
    free = runner_generate(runner, inputs(), processor.tokenizer, model.config, MAX_NEW_TOKENS)["token_ids"]
    runner.reset()
    cut = runner_generate(runner, inputs(), processor.tokenizer, model.config, MAX_NEW_TOKENS, 4)["token_ids"]
    end = model.config.think_end_token_id
    assert free.index(end) > 5 and cut.index(end) == 5 and cut[:5] == free[:5]


def test_text_inputs_generate_like_token_inputs(export_dir, nano, runner):
    """An app holding strings passes make_text_input; the runner's HF tokenizer (tokenizer.json) gives the same ids."""
    from bluelm_hf.export.executorch import runner_generate, runner_inputs

    model, processor = nano
    question, image = _questions()[1]
    batch = _batch(processor, question, image, True)
    results = []
    for text_inputs_with in (None, processor.tokenizer):
        inputs = runner_inputs(batch, model.config, text_inputs_with=text_inputs_with)
        assert any(item.is_text() for item in inputs) == (text_inputs_with is not None)
        runner.reset()
        results.append(runner_generate(runner, inputs, processor.tokenizer, model.config, MAX_NEW_TOKENS)["token_ids"])
    assert results[0] == results[1]


def test_bad_inputs_get_clear_errors(export_dir, nano, runner):
    from executorch.extension.llm.runner import GenerationConfig, make_image_input, make_token_input

    from bluelm_hf.export.executorch import runner_inputs

    model, processor = nano
    question, image = _questions()[0]
    batch = dict(_batch(processor, question, image, False))
    tiles = batch["pixel_values"].shape[0]
    more = {**batch, "pixel_values": torch.cat([batch["pixel_values"], batch["pixel_values"][:1]])}
    with pytest.raises(ValueError, match=rf"{tiles * 4} <image> placeholders but pixel_values has {tiles + 1} tiles"):
        runner_inputs(more, model.config)
    with pytest.raises(ValueError, match="one prompt at a time"):
        runner_inputs({**batch, "input_ids": batch["input_ids"].repeat(2, 1)}, model.config)
    # ExecuTorch's runner itself refuses an image the vision_encoder was not exported for (uint8, wrong size)
    settings = GenerationConfig(echo=False, max_new_tokens=2, temperature=0.0)
    for bad in (torch.zeros(3, 112, 112, dtype=torch.uint8), torch.zeros(3, 56, 56)):
        runner.reset()
        with pytest.raises(RuntimeError):
            runner.generate([make_token_input([2]), make_image_input(bad)], settings)
    runner.reset()
    pieces = []
    runner.generate([make_token_input(batch["input_ids"][0, :3].tolist())], settings, pieces.append)
    assert len(pieces) == 2  # still usable after the errors


def test_exported_model_generate_runs_the_pte(export_dir, nano):
    """`BlueLMVExportedForConditionalGeneration` (transformers' generate) over the same program's methods."""
    from bluelm_hf.inference import generate, load

    model, processor = nano
    export, export_processor = load(export_dir)
    assert export.static_batch == 1
    question, image = _questions()[2]
    for kwargs in (dict(thinking=False, max_new_tokens=8, min_new_tokens=8), dict(thinking=True, thinking_budget=3)):
        got = generate(export, export_processor, [question], [image], **kwargs)
        want = generate(model, processor, [question], [image], **kwargs)
        assert got == want and got[0]["text"]
    with pytest.raises(ValueError, match="batch size 1"):
        generate(export, export_processor, [question, question], [image, image], max_new_tokens=2)
