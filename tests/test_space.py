"""The demo Space (spaces/bluelm-demo/app.py): its AnyRes helpers, its Gradio API, and the page in a real browser.

The API and browser tests serve a *scripted* BlueLM saved to a temp dir: a real checkpoint (saved, loaded with
`bluelm_hf.inference.load`, nano-shaped processor) whose weights are set so greedy decoding is a fixed table of
next tokens, so every reply is known in advance:

    thinking:      [|BlueThink|] -> <think> red 1 blue 2 green 3 so </think> 3 </s>
    non-thinking:  [|AI|]:       -> 2 </s>

and a thinking budget of b cuts the reasoning to its first b tokens. Screenshots of the browser test are written to
artifacts/screenshots/ (gitignored).
"""

import importlib.util
import os
import re
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no analytics or version-check requests
gr = pytest.importorskip("gradio", reason="the demo needs gradio: pip install 'bluelm-hf[demo]'")
gradio_client = pytest.importorskip("gradio_client", reason="pip install 'bluelm-hf[demo]'")

import bluelm_hf  # noqa: E402
from bluelm_hf import BlueLMVConfig, BlueLMVImageProcessorPil, nano_task  # noqa: E402
from bluelm_hf.assemble import init_from_scratch  # noqa: E402
from bluelm_hf.configuration_bluelm_v import (  # noqa: E402
    AI_TOKEN,
    THINK_END_TOKEN,
    THINK_MODE_TOKEN,
    THINK_START_TOKEN,
)
from bluelm_hf.inference import load  # noqa: E402
import nano_data  # noqa: E402 (recipes/nano, on sys.path by conftest)

pytestmark = [
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),  # the bomb upload, on purpose
    # gradio's queue on pandas 3: not ours to fix
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword is deprecated)"),
]

REPO = Path(__file__).resolve().parents[1]
APP_PATH = REPO / "spaces" / "bluelm-demo" / "app.py"
SCREENSHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")

REASONING_TOKENS = ("red", " 1", " blue", " 2", " green", " 3", " so")
REASONING = "".join(REASONING_TOKENS)
THINKING_ANSWER, PLAIN_ANSWER = "3", "2"
QUESTION = "How many red cells?"


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def app():
    spec = importlib.util.spec_from_file_location("bluelm_space_app", APP_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scripted_model(transitions: list[tuple[int, int]], model) -> None:
    """Makes greedy decoding follow `transitions` (token -> next token) whatever the context.

    With every attention and MLP output projection zeroed, the residual stream at a position is its token's
    embedding, so the logits depend on the last token only. The scripted tokens get orthogonal embeddings of RMS 1
    (unchanged by the final RMSNorm) and the head scores next = 20 for each (previous, next) pair, 0 elsewhere.
    """
    language_model = model.model.language_model
    vocab, hidden = language_model.embed_tokens.weight.shape
    states = sorted({previous for previous, _ in transitions})
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(hidden, len(states), generator=generator))
    with torch.no_grad():
        embeddings = torch.randn(vocab, hidden, generator=generator)
        embeddings /= embeddings.pow(2).mean(dim=1, keepdim=True).sqrt()
        for column, token in enumerate(states):
            embeddings[token] = basis[:, column] * hidden**0.5
        head = torch.zeros(vocab, hidden)
        for previous, following in transitions:
            head[following] += 20 * embeddings[previous] / hidden
        language_model.embed_tokens.weight.copy_(embeddings)
        model.lm_head.weight.copy_(head)
        for layer in language_model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()


def _save_scripted_model(path: Path, reasoning_ends_turn: bool = False) -> Path:
    """Saves the scripted BlueLM to `path`; with `reasoning_ends_turn`, thinking goes <think> red 1 ... so </s>
    (the turn ends inside the reasoning, with no answer)."""
    tokenizer = nano_data.train_tokenizer(nano_data.tokenizer_corpus(n=50))
    text_config = dict(model_type="llama", hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                       tie_word_embeddings=False)

    def config(vocab_size, **kwargs):  # nano's vision tower and AnyRes settings, a one-layer untied LLM
        return BlueLMVConfig.nano(vocab_size, text_config={**text_config, "vocab_size": vocab_size},
                                  tie_word_embeddings=False, **kwargs)

    model, processor = init_from_scratch(tokenizer, config_factory=config)

    def token_id(text: str) -> int:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert len(ids) == 1, f"{text!r} is {len(ids)} tokens in the nano tokenizer; the script needs single tokens"
        return ids[0]

    special = tokenizer.convert_tokens_to_ids
    ending = [] if reasoning_ends_turn else [special(THINK_END_TOKEN), token_id(THINKING_ANSWER)]
    thinking = [special(THINK_MODE_TOKEN), special(THINK_START_TOKEN), *map(token_id, REASONING_TOKENS), *ending,
                tokenizer.eos_token_id]
    plain = [special(AI_TOKEN), token_id(PLAIN_ANSWER), tokenizer.eos_token_id]
    assert len(set(thinking[:-1])) == len(thinking) - 1 and token_id(PLAIN_ANSWER) not in thinking
    _scripted_model([*zip(thinking, thinking[1:]), *zip(plain, plain[1:])], model)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def scripted_model_dir(tmp_path_factory) -> Path:
    return _save_scripted_model(tmp_path_factory.mktemp("scripted-bluelm"))


@pytest.fixture(scope="module")
def processor(scripted_model_dir):
    return load(scripted_model_dir)[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(app, demo):
    """Serves `demo` on 127.0.0.1 (offline, no share link) from a background thread; yields its URL."""
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, share=False, prevent_thread_lock=True, quiet=True,
                **app.LAUNCH_KWARGS)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def server(app, scripted_model_dir):
    with serve(app, app.build_demo(str(scripted_model_dir), max_new_tokens=64)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server, verbose=False, download_files=True)


def _ask(client, text: str, files=(), history=(), thinking=True, unlimited=True, budget=16, stream=False):
    message = {"text": text, "files": [gradio_client.handle_file(str(f)) for f in files]}
    job = client.submit(message, list(history), thinking, unlimited, budget, api_name="/chat")
    result = job.result()
    return (result, job.outputs()) if stream else result


def _thoughts(history) -> list[dict]:
    return [m for m in history if (m.get("metadata") or {}).get("title") == "Thinking"]


def _text(message) -> str:
    return "".join(block.get("text", "") for block in message["content"] if block.get("type") == "text")


def _resend(history) -> list[dict]:
    """A history returned by the client, with its (downloaded) files wrapped for upload again."""
    wrap = gradio_client.handle_file
    return [
        {**message, "content": [{**block, "file": wrap(block["file"])} if block.get("type") == "file" else block
                                for block in message["content"]]}
        for message in history
    ]


def _png(path: Path, image: Image.Image) -> Path:
    image.save(path)
    return path


# ---------------------------------------------------------------------------------------------- pure helpers
def test_grid_lines_lie_on_the_tile_boundaries(app):
    canvas = Image.new("RGB", (3 * 112, 2 * 112), (0, 0, 0))
    canvas.paste(Image.new("RGB", (336, 180), (120, 120, 120)), (0, (224 - 180) // 2))
    grid = app.draw_anyres_grid(canvas, (336, 180), tile_size=112, line_width=2)
    assert grid.size == (3 * 112, 2 * 112)
    pixels = np.asarray(grid)
    magenta = np.array(app.GRID_COLOUR)
    for k in range(1, 3):  # interior column boundaries straddle both tiles
        assert (pixels[150, k * 112 - 1] == magenta).all() and (pixels[150, k * 112] == magenta).all()
    assert (pixels[112, 50] == magenta).all()  # the row boundary
    assert (pixels[:, 0] == magenta).all() and (pixels[:, -1] == magenta).all()  # outer border
    assert (pixels[0] == magenta).all() and (pixels[-1] == magenta).all()
    for row in range(2):  # tile interiors are the picture: grey inside the resized image, black padding outside
        for col in range(3):
            assert tuple(pixels[row * 112 + 56, col * 112 + 56]) == (120, 120, 120)
    top = (224 - 180) // 2
    assert tuple(pixels[top // 2, 200]) == (0, 0, 0)  # padding above the image
    assert tuple(pixels[top, 200]) == app.IMAGE_EDGE_COLOUR  # the resized image's edge


def test_view_is_the_processors_output(app):
    """The drawn tiles and thumbnail are the processor's own pixel_values (undone to 8-bit), laid out by its
    image_grids: the Space has no resize-and-pad of its own (issue 19)."""
    image_processor = BlueLMVImageProcessorPil(tile_size=112, max_grid_size=4, max_image_side=448)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (130, 370, 3), dtype=np.uint8))
    out = image_processor(images=[image], return_tensors="np")
    tiles = (out["pixel_values"] * 0.5 + 0.5) * 255  # undo SigLIP normalisation
    canvas, thumbnail = app.tiles_as_images(out, image_processor)
    rows, cols = (int(v) for v in out["image_grids"][0])
    assert canvas.size == (cols * 112, rows * 112)
    pixels = np.asarray(canvas, dtype=np.float32)
    for index in range(rows * cols):
        row, col = divmod(index, cols)
        drawn = pixels[row * 112 : (row + 1) * 112, col * 112 : (col + 1) * 112].transpose(2, 0, 1)
        assert np.abs(drawn - tiles[index]).max() <= 0.5 + 1e-3, f"tile {index} differs from the processor's"
    assert np.abs(np.asarray(thumbnail, dtype=np.float32).transpose(2, 0, 1) - tiles[-1]).max() <= 0.5 + 1e-3
    # the view follows the processor's settings, not a copy of them: a 2-tile limit gives at most a 2-tile grid
    small = BlueLMVImageProcessorPil(tile_size=112, max_grid_size=2, max_image_side=448)
    grid, _, summary = app.anyres_view(image, small)
    assert f"= {small.get_number_of_image_tokens(130, 370)} image tokens" in summary
    assert grid.size[0] <= 2 * 112


def test_single_tile_has_no_thumbnail(app):
    image_processor = BlueLMVImageProcessorPil(tile_size=112, max_grid_size=4, max_image_side=448)
    grid, thumbnail, summary = app.anyres_view(Image.new("RGB", (100, 100)), image_processor)
    assert grid.size == (112, 112) and thumbnail is None and "no thumbnail for a single tile" in summary


@pytest.mark.parametrize("size", [(448, 112), (100, 100), (640, 480), (300, 900)])
def test_token_count_is_the_processors(app, processor, size):
    image = Image.new("RGB", size, (10, 200, 30))
    grid, thumbnail, summary = app.anyres_view(image, processor.image_processor)
    expected = processor.image_processor.get_number_of_image_tokens(image.height, image.width)
    prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}]}])
    input_ids = processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"][0]
    in_prompt = (input_ids == processor.image_token_id).sum()
    assert int(in_prompt) == expected
    assert f"= {expected} image tokens" in summary
    plan = processor.image_processor.get_anyres_plan(image.height, image.width)
    assert f"{plan.num_tiles} tiles × {processor.image_processor.get_tokens_per_tile()} tokens" in summary
    assert grid.size == (plan.num_cols * 112, plan.num_rows * 112)
    assert (thumbnail is None) == (not plan.has_thumbnail)


def test_summary_mentions_the_side_limit(app):
    image_processor = BlueLMVImageProcessorPil(tile_size=112, max_grid_size=4, max_image_side=448)
    assert "longer side first scaled to 448 px" in app.anyres_view(Image.new("RGB", (1200, 300)), image_processor)[2]
    assert "first scaled" not in app.anyres_view(Image.new("RGB", (400, 300)), image_processor)[2]


def test_no_answer_note(app):
    assert "used all 64 new tokens" in app.no_answer_note("red 1", steps=64, max_new_tokens=64)
    assert app.no_answer_note("red 1", steps=8, max_new_tokens=64) == (
        "the model ended its turn after 8 tokens of reasoning without one")
    assert app.no_answer_note("", steps=1, max_new_tokens=64) == "the model ended its turn after 1 token without one"


def test_upload_names_are_shortened(app):
    long = "a-very-long-name-" * 10 + ".png"
    shown = app.shown_name(f"/tmp/gradio/0123456789abcdef/{long}")
    assert len(shown) == app.SHOWN_NAME_CHARACTERS and shown.endswith(".png") and "gradio" not in shown
    assert app.shown_name("/tmp/gradio/0123/cells.png") == "cells.png"


def test_conversation_from_history(app):
    history = [
        {"role": "user", "content": [{"type": "file", "file": {"path": "a.png"}}]},
        {"role": "user", "content": [{"type": "text", "text": "How many cells?"}]},
        {"role": "assistant", "metadata": {"title": "Thinking"}, "content": [{"type": "text", "text": "red 1"}]},
        {"role": "assistant", "metadata": None, "content": [{"type": "text", "text": "1"}]},
        {"role": "user", "content": ["And blue?"]},
    ]
    conversation, paths = app.conversation_from_history(history)
    assert paths == ["a.png"]
    assert conversation == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many cells?"}]},
        {"role": "assistant", "content": "1"},
        {"role": "user", "content": [{"type": "text", "text": "And blue?"}]},
    ]


def test_resolve_budget_and_model(app, monkeypatch):
    assert app.resolve_budget(thinking=True, unlimited=False, budget=12.0) == 12
    assert app.resolve_budget(thinking=True, unlimited=True, budget=12) is None
    assert app.resolve_budget(thinking=False, unlimited=False, budget=12) is None
    monkeypatch.setenv("BLUELM_MODEL", "from-env")
    assert app.resolve_model(None) == "from-env" and app.resolve_model("given") == "given"
    monkeypatch.delenv("BLUELM_MODEL")
    assert app.resolve_model(None) is None


# ------------------------------------------------------------------------------------------------ Gradio API
def test_api_thinking_streams_reasoning_then_answer(client, processor):
    (history, _, grid, thumbnail, summary), updates = _ask(
        client, QUESTION, [nano_task.EXAMPLE_IMAGE_PATH], stream=True
    )
    assert [m["role"] for m in history] == ["user", "assistant", "assistant"]
    (thought,) = _thoughts(history)
    assert _text(thought) == REASONING
    assert thought["metadata"]["log"] == "7 tokens" and thought["metadata"].get("status") != "pending"
    assert _text(history[-1]) == THINKING_ANSWER
    # streamed: the reasoning grew token by token, and showed before any answer did
    thinking_updates = [
        update[0] for update in updates
        if (t := _thoughts(update[0])) and t[0]["metadata"].get("status") == "pending"
    ]
    partial = [_text(_thoughts(update)[0]) for update in thinking_updates]
    assert len(set(partial)) == len(REASONING_TOKENS) and all(REASONING.startswith(p) for p in partial)
    assert all(update[-1] is _thoughts(update)[0] for update in thinking_updates)  # no answer while thinking
    # the AnyRes view of the uploaded image
    example = Image.open(nano_task.EXAMPLE_IMAGE_PATH)
    tokens = processor.image_processor.get_number_of_image_tokens(example.height, example.width)
    assert f"= {tokens} image tokens" in summary
    assert Image.open(grid).size == (448, 112) and Image.open(thumbnail).size == (112, 112)


def test_api_non_thinking_has_no_reasoning(client):
    history = _ask(client, QUESTION, [nano_task.EXAMPLE_IMAGE_PATH], thinking=False)[0]
    assert not _thoughts(history)
    assert [m["role"] for m in history] == ["user", "assistant"] and _text(history[-1]) == PLAIN_ANSWER


@pytest.mark.parametrize("budget", [0, 1, 2, 5])
def test_api_budget_caps_reasoning(client, budget):
    history = _ask(client, QUESTION, [nano_task.EXAMPLE_IMAGE_PATH], unlimited=False, budget=budget)[0]
    assert _text(history[-1]) == THINKING_ANSWER
    if budget == 0:
        assert not _thoughts(history)  # <think></think> straight away: nothing to show
        return
    (thought,) = _thoughts(history)
    assert _text(thought) == "".join(REASONING_TOKENS[:budget])
    tokens = "1 token" if budget == 1 else f"{budget} tokens"  # not "1 tokens"
    assert thought["metadata"]["log"] == f"{tokens} of a {budget}-token budget"


def _example_image_tokens(processor) -> int:
    example = Image.open(nano_task.EXAMPLE_IMAGE_PATH)
    return processor.image_processor.get_number_of_image_tokens(example.height, example.width)


def test_api_multi_turn_keeps_the_image(client, processor):
    first = _ask(client, QUESTION, [nano_task.EXAMPLE_IMAGE_PATH], thinking=False)[0]
    history, _, _, _, summary = _ask(client, "And how many cells?", history=_resend(first))
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant", "assistant"]
    assert _text(history[-1]) == THINKING_ANSWER
    # the earlier image is still the conversation's image
    assert f"= {_example_image_tokens(processor)} image tokens" in summary


def test_api_bad_inputs_are_errors_not_crashes(client, tmp_path):
    buffer = tmp_path / "ok.png"
    Image.new("RGB", (300, 200), (200, 30, 30)).save(buffer)
    cases = {
        "notes.txt": ("Invalid file type", b"just some text"),
        "garbage.png": ("not in an image format PIL recognises", b"this is not a png at all"),
        "truncated.png": ("truncated", buffer.read_bytes()[:300]),
    }
    for name, (expected, data) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(gradio_client.exceptions.AppError, match=expected):
            _ask(client, QUESTION, [tmp_path / name])
    # A decompression bomb: 144 M pixels in an 18 kB PNG, over PIL's 89 M-pixel limit.
    bomb = _png(tmp_path / "bomb.png", Image.new("1", (12_000, 12_000)))
    with pytest.raises(gradio_client.exceptions.AppError, match="'bomb.png' is too large") as error:
        _ask(client, QUESTION, [bomb])
    assert "MAX_IMAGE_PIXELS" not in str(error.value)  # advice for Python users, not for the web page's
    # A long name: the toast names the file, shortened, never the server's upload folder
    long = tmp_path / ("cells-" * 30 + ".png")
    long.write_bytes(b"not a png")
    with pytest.raises(gradio_client.exceptions.AppError, match="not in an image format") as error:
        _ask(client, QUESTION, [long])
    assert "gradio" not in str(error.value) and str(tmp_path) not in str(error.value) and "cells-cells" in str(error.value)
    with pytest.raises(gradio_client.exceptions.AppError, match="Type a question"):
        _ask(client, "   ", [nano_task.EXAMPLE_IMAGE_PATH])
    # ... and the app still answers
    assert _text(_ask(client, QUESTION, [buffer], thinking=False)[0][-1]) == PLAIN_ANSWER


def test_api_conversation_longer_than_the_context_is_an_error(client, tmp_path, processor):
    big = _png(tmp_path / "big.png", Image.new("RGB", (448, 448), (40, 90, 200)))
    tokens = processor.image_processor.get_number_of_image_tokens(448, 448)  # 17 tiles x 4 = 68
    copies = 1024 // tokens + 1
    assert copies * tokens > 1024  # the scripted model's context
    with pytest.raises(gradio_client.exceptions.AppError, match="this model's context is 1024"):
        _ask(client, QUESTION, [big] * copies)


def test_api_no_answer_note_says_how_generation_ended(app, scripted_model_dir, tmp_path):
    """The note blames max_new_tokens only when generation used them all (issue 15: it did so after an EOS)."""
    with serve(app, app.build_demo(str(scripted_model_dir), max_new_tokens=8)) as url:  # <think> + 7 reasoning
        history = _ask(gradio_client.Client(url, verbose=False), QUESTION, [nano_task.EXAMPLE_IMAGE_PATH], budget=8)[0]
    assert _text(history[-1]) == "_(no answer: the reasoning used all 8 new tokens; set a thinking budget or raise " \
                                 "--max-new-tokens)_"
    eos_inside = _save_scripted_model(tmp_path / "eos", reasoning_ends_turn=True)
    with serve(app, app.build_demo(str(eos_inside), max_new_tokens=64)) as url:
        history = _ask(gradio_client.Client(url, verbose=False), QUESTION, [nano_task.EXAMPLE_IMAGE_PATH])[0]
    assert _text(_thoughts(history)[0]) == REASONING
    # <think>, 7 reasoning tokens, </s>
    assert _text(history[-1]) == "_(no answer: the model ended its turn after 9 tokens of reasoning without one)_"


def test_api_failed_generation_restores_the_chat(app, client, monkeypatch):
    """A turn that fails mid-generation leaves the chat as it was (the message back in the box), so later messages
    do not carry it and fail too."""
    def failing(*args, **kwargs):
        yield "reasoning", "red"
        raise RuntimeError("out of memory")

    first = _ask(client, QUESTION, [nano_task.EXAMPLE_IMAGE_PATH], thinking=False)[0]
    monkeypatch.setattr(app, "stream_chat", failing)
    job = client.submit({"text": "And blue?", "files": []}, _resend(first), True, True, 16, api_name="/chat")
    with pytest.raises(gradio_client.exceptions.AppError, match="Generation failed: RuntimeError: out of memory"):
        job.result()
    history, message = job.outputs()[-1][:2]
    assert [_text(m) for m in history] == [_text(m) for m in first]  # the failed turn is gone
    assert message["text"] == "And blue?"
    monkeypatch.undo()
    assert _text(_ask(client, "And blue?", history=_resend(history))[0][-1]) == THINKING_ANSWER


def test_api_control_strings_in_a_message_never_break_the_chat(client):
    """'<image>' typed by a user: answered as text, or refused with a clear message before the chat changes; either
    way the next turn works."""
    try:
        history = _ask(client, "What does <image> mean?", [nano_task.EXAMPLE_IMAGE_PATH], thinking=False)[0]
        assert _text(history[-1]) == PLAIN_ANSWER
    except gradio_client.exceptions.AppError as error:
        assert "This message cannot be sent" in str(error)
    assert _text(_ask(client, QUESTION, [nano_task.EXAMPLE_IMAGE_PATH], thinking=False)[0][-1]) == PLAIN_ANSWER


def test_anyres_panel_is_empty_before_an_upload(app, scripted_model_dir):
    demo = app.build_demo(str(scripted_model_dir))
    by_id = {getattr(block, "elem_id", None): block for block in demo.blocks.values()}
    assert by_id["anyres-grid"].value is None and by_id["anyres-thumbnail"].value is None
    assert by_id["anyres-summary"].value == app.NO_IMAGE_YET
    assert "No official BlueLM weights exist" in by_id["about"].value
    assert "only knows its synthetic task" not in by_id["about"].value  # said of the bundled nano only


def test_default_model_is_the_bundled_nano(app, monkeypatch):
    monkeypatch.delenv("BLUELM_MODEL", raising=False)
    if not (bluelm_hf.NANO / "config.json").exists():
        with pytest.raises(FileNotFoundError, match="BlueLM-nano is not bundled"):
            app.build_demo()
        return
    demo = app.build_demo(max_new_tokens=48)
    (about,) = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "about"]
    assert "only knows its synthetic task" in about.value and "gibberish" in about.value
    with serve(app, demo) as url:
        nano = gradio_client.Client(url, verbose=False)
        history = _ask(nano, QUESTION, [nano_task.EXAMPLE_IMAGE_PATH])[0]
        assert _thoughts(history) and _text(history[-1]).strip()
        history = _ask(nano, QUESTION, [nano_task.EXAMPLE_IMAGE_PATH], thinking=False)[0]
        assert not _thoughts(history) and _text(history[-1]).strip()


# ------------------------------------------------------------------------------------------------ the browser
def _browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; its browser download is not needed)")
    chromium = os.environ.get("BLUELM_CHROMIUM") or shutil.which("chromium") or str(CHROMIUM)
    if not Path(chromium).exists():
        pytest.skip(f"no Chromium at {chromium} (apt-get install chromium)")
    return sync_playwright, chromium


CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.slow
def test_browser_chat_thinking_and_budget(server, tmp_path, processor, app, monkeypatch):
    sync_playwright, chromium = _browser()
    from playwright.sync_api import expect

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1360, "height": 1100},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(30_000)
            expect.set_options(timeout=30_000)
            page.goto(server)
            box = page.locator("#prompt textarea")
            replies = page.locator("#chatbot .message-row.bot-row")  # a turn's bubble and answer share one row
            thoughts = page.locator("#chatbot .thought-group")

            def send(text: str, image: Path | None = None) -> None:
                if image is not None:
                    page.set_input_files("#prompt input[type=file]", str(image))
                    page.locator("#prompt img").first.wait_for()  # the upload has landed
                box.fill(text)
                box.press("Enter")

            def shot(name: str, full_page: bool = True) -> None:
                page.wait_for_timeout(700)  # let expand / toast animations finish; assertions never rely on this
                page.screenshot(path=str(SCREENSHOTS / name), full_page=full_page)

            def expect_answer(turn: int, answer: str) -> None:
                """Waits for reply `turn` to end in `answer` and for its event to finish (the progress tracker of
                the chat hidden again), so nothing re-renders under the checks that follow."""
                last = replies.nth(turn).locator('[data-testid="bot"]').last
                expect(last).to_have_attribute("aria-label", f"bot's message: {answer}")
                tracker = page.locator("#chatbot [data-testid=status-tracker]").first
                expect(tracker).to_have_class(re.compile(r"\bhide\b"))

            # 0. before any upload the AnyRes panel shows no image
            expect(page.locator("#anyres-summary")).to_contain_text("Upload an image to see how the model tiles it")
            expect(page.locator("#anyres-grid img")).to_have_count(0)

            # 1. thinking mode: a "Thinking" bubble (open, collapsible), then the answer; the AnyRes view of the upload
            send(QUESTION, nano_task.EXAMPLE_IMAGE_PATH)
            expect_answer(0, THINKING_ANSWER)
            expect(thoughts).to_have_count(1)
            expect(thoughts.first.locator(".duration")).to_contain_text("7 tokens")
            reasoning = thoughts.first.get_by_text(REASONING, exact=True)
            expect(reasoning).to_be_visible()
            thoughts.first.locator(".title").click()  # collapse ...
            expect(reasoning).to_be_hidden()
            thoughts.first.locator(".title").click()  # ... and open again
            expect(reasoning).to_be_visible()
            expect(page.locator("#anyres-summary")).to_contain_text(f"= {_example_image_tokens(processor)} image tokens")
            shot("01-thinking.png")

            # 2. non-thinking follow-up about the same image: an answer and no new bubble
            page.locator("#thinking input").uncheck()
            send("How many cells?")
            expect_answer(1, PLAIN_ANSWER)
            expect(thoughts).to_have_count(1)
            shot("02-non-thinking.png")

            # 3. thinking again with a 2-token budget: a second, shorter bubble
            page.locator("#thinking input").check()
            page.locator("#unlimited input").uncheck()
            budget = page.locator("#budget input[type=number]")
            expect(budget).to_be_enabled()
            budget.fill("2")
            budget.press("Enter")
            send(QUESTION)
            expect_answer(2, THINKING_ANSWER)
            expect(thoughts).to_have_count(2)
            expect(thoughts.last.locator(".duration")).to_contain_text("2 tokens of a 2-token budget")
            expect(thoughts.last.get_by_text("red 1", exact=True)).to_be_visible()
            shot("03-budget-2.png")

            # 4. a corrupt upload: an error toast, and the chat is untouched
            corrupt = tmp_path / "corrupt.png"
            corrupt.write_bytes(b"not an image")
            send(QUESTION, corrupt)
            expect(page.get_by_text("is not in an image format PIL recognises").first).to_be_visible()
            expect(replies).to_have_count(3)  # the chat is still there, not replaced by an error state
            expect(replies.nth(2)).to_be_visible()
            shot("04-bad-image.png", full_page=False)  # the toast is fixed to the viewport's top right
            page.locator("#prompt button[aria-label='Remove file']").click()  # the refused file stays until removed
            expect(page.locator("#prompt img")).to_have_count(0)

            # 5. a file the page itself refuses (not an image): the question is not sent about the previous image
            notes = tmp_path / "notes.txt"
            notes.write_text("just some text")
            page.set_input_files("#prompt input[type=file]", str(notes))
            expect(page.get_by_text("Invalid file type: notes.txt").first).to_be_visible()
            box.fill("How many blue cells?")
            box.press("Enter")
            expect(page.get_by_text("'notes.txt' could not be attached").first).to_be_visible()
            page.wait_for_timeout(1000)  # time for a wrongly sent question to show up
            expect(replies).to_have_count(3)
            expect(box).to_have_value("How many blue cells?")  # the message stays, to send again
            huge = tmp_path / "huge.png"  # over the 25 MB upload limit: refused by the page before any upload
            huge.write_bytes(bytes(26 * 2**20))
            page.set_input_files("#prompt input[type=file]", str(huge))
            expect(page.get_by_text("exceed the maximum allowed size").first).to_be_visible()
            box.press("Enter")
            expect(page.get_by_text("'huge.png' could not be attached").first).to_be_visible()
            page.wait_for_timeout(1000)
            expect(replies).to_have_count(3)
            shot("05-refused-upload.png", full_page=False)

            # 6. user text that looks like a control token: answered or refused, and the chat keeps working
            page.locator("#thinking input").uncheck()
            box.fill("What does <image> mean?")
            box.press("Enter")
            page.wait_for_timeout(1500)
            send("How many cells?")
            last = page.locator('#chatbot [data-testid="bot"]').last
            expect(last).to_have_attribute("aria-label", f"bot's message: {PLAIN_ANSWER}")
            expect(page.locator("#chatbot [data-testid=status-tracker]").first).to_have_class(re.compile(r"\bhide\b"))
            expect(page.locator("#chatbot .error")).to_have_count(0)
            shot("07-before-clear.png")

            # 7. Clear, pressed the moment a reply shows its answer (its event may still be sending updates), empties
            # the chat and the AnyRes panel for good: the next question starts a chat of one turn.
            turns = replies.count()
            send("How many cells?")
            expect(replies).to_have_count(turns + 1)
            expect(last).to_have_attribute("aria-label", f"bot's message: {PLAIN_ANSWER}")
            page.locator("#clear").click()
            expect(replies).to_have_count(0)
            expect(page.locator("#anyres-summary")).to_contain_text("Upload an image to see how the model tiles it")
            expect(page.locator("#anyres-grid img")).to_have_count(0)
            send("How many cells?", nano_task.EXAMPLE_IMAGE_PATH)
            expect_answer(0, PLAIN_ANSWER)
            expect(replies).to_have_count(1)  # a late update of the cleared chat would bring its turns back

            # 8. Clear during a reply that is still generating (each streamed piece 1.5 s apart) empties the chat at
            # once and cancels the reply: the generation stops and none of its updates comes after. (A Clear that
            # waited in the queue for the reply fails the first check; one that did not cancel it, the later ones.)
            pieces = []

            def slowed_stream_chat(*args, **kwargs):
                for piece in stream_chat(*args, **kwargs):
                    time.sleep(1.5)
                    pieces.append(piece)
                    yield piece

            stream_chat = app.stream_chat
            monkeypatch.setattr(app, "stream_chat", slowed_stream_chat)
            page.locator("#thinking input").check()
            page.locator("#unlimited input").check()  # the whole 7-token reasoning, 10+ s of pieces
            send(QUESTION)
            expect(thoughts).to_have_count(1)  # the reasoning is streaming
            page.locator("#clear").click()
            expect(replies).to_have_count(0, timeout=5_000)
            streamed = len(pieces)
            page.wait_for_timeout(3_500)  # two more pieces' time
            expect(replies).to_have_count(0, timeout=1_000)
            assert len(pieces) <= streamed + 1, f"the reply kept generating after Clear: {pieces}"
        finally:
            context.close()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
