"""BlueLM demo Space: chat about images with a BlueLM model, with thinking mode, a thinking budget and an AnyRes view.

Runs offline on the bundled BlueLM-nano by default. `BLUELM_MODEL=<path or Hub id>` or `--model` points it at any
BlueLM checkpoint:

    python app.py                          # BlueLM-nano, http://127.0.0.1:7860
    python app.py --model ./my-bluelm-3b --max-new-tokens 2048

The pure helpers (`tiles_as_images`, `draw_anyres_grid`, `anyres_*`, `conversation_from_history`, `resolve_budget`,
`no_answer_note`, `shown_name`) carry the logic and are unit-tested in tests/test_space.py; `build_demo` only wires them
to Gradio. The AnyRes view is drawn from the image processor's own output (`pixel_values`, `image_grids`) and counts.
"""

import argparse
import hashlib
import io
import os
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps
from transformers import LogitsProcessor, LogitsProcessorList

from bluelm_hf.inference import load, stream_chat
from bluelm_hf.nano_task import ASSETS_DIR, EXAMPLE_IMAGE_PATH

DEFAULT_MAX_NEW_TOKENS = 256
THINKING_TITLE = "Thinking"
GRID_COLOUR = (255, 0, 200)  # tile boundaries: magenta, far from every nano-task colour and rare in photos
IMAGE_EDGE_COLOUR = (0, 220, 255)  # edge of the resized image inside the black padding
EXAMPLE_QUESTION = "How many red cells?"
NO_IMAGE_YET = "Upload an image to see how the model tiles it."
SHOWN_NAME_CHARACTERS = 48  # longer upload names are shortened in messages

# The page refuses a non-image or oversized file itself (a toast) and the server never hears of it, so a question sent
# next would be answered about the previous image. The page remembers the names of the files offered to the message
# box; sending passes those that did not land to `check`, which refuses the message.
WATCH_UPLOADS_JS = """() => {
  window.bluelmOffered = [];
  const inPrompt = (event) => event.target instanceof Element && event.target.closest("#prompt") !== null;
  const offer = (files) => { for (const file of files || []) window.bluelmOffered.push(file.name); };
  document.addEventListener("change", (e) => { if (inPrompt(e) && e.target.type === "file") offer(e.target.files); }, true);
  document.addEventListener("drop", (e) => { if (inPrompt(e)) offer(e.dataTransfer && e.dataTransfer.files); }, true);
  document.addEventListener("paste", (e) => { if (inPrompt(e)) offer(e.clipboardData && e.clipboardData.files); }, true);
  document.addEventListener("click", (e) => {  // a removed file, or a cleared chat, is not a refused one
    if (e.target instanceof Element && e.target.closest("#prompt button[aria-label='Remove file'], #clear")) {
      window.bluelmOffered = [];
    }
  }, true);
}"""
SUBMIT_JS = """(message, history, thinking, refused) => {
  const sent = new Set(((message && message.files) || []).map((file) => file.orig_name));
  const missing = (window.bluelmOffered || []).filter((name) => !sent.has(name));
  window.bluelmOffered = [];
  return [message, history, thinking, missing.join("\\n")];
}"""


# ------------------------------------------------------------------------------------------------ AnyRes view
def tiles_as_images(features, image_processor) -> tuple[Image.Image, Image.Image | None]:
    """(canvas, thumbnail) of the first image in the processor's output `features` (`pixel_values`: (tiles, 3, t, t),
    normalized; `image_grids`: (rows, cols) per image): the grid tiles stitched back in row-major order, and the
    thumbnail tile (None for a single-tile grid). These are the pixels the model gets, undone to 8-bit RGB."""
    pixel_values = np.asarray(features["pixel_values"], dtype=np.float32)
    rows, cols = (int(v) for v in features["image_grids"][0])
    num_tiles = int(features["num_patches"][0])
    mean = np.asarray(image_processor.image_mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(image_processor.image_std, dtype=np.float32).reshape(1, -1, 1, 1)
    tiles = pixel_values[:num_tiles]
    if image_processor.do_normalize:
        tiles = tiles * std + mean
    if image_processor.do_rescale:
        tiles = tiles / image_processor.rescale_factor
    tiles = np.clip(np.rint(tiles), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)  # (tiles, t, t, 3)
    tile = tiles.shape[1]
    canvas = tiles[: rows * cols].reshape(rows, cols, tile, tile, 3).transpose(0, 2, 1, 3, 4)
    canvas = Image.fromarray(canvas.reshape(rows * tile, cols * tile, 3))
    thumbnail = Image.fromarray(tiles[rows * cols]) if num_tiles > rows * cols else None
    return canvas, thumbnail


def _label_font(tile_size: int):
    try:
        return ImageFont.load_default(size=max(10, tile_size // 8))
    except TypeError:  # Pillow built without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def draw_anyres_grid(canvas: Image.Image, resized_size: tuple[int, int], tile_size: int,
                     line_width: int | None = None) -> Image.Image:
    """A copy of the tile `canvas` with the tile boundaries drawn in GRID_COLOUR, the edge of the resized image
    (`resized_size`: width, height, centered in the canvas) in IMAGE_EDGE_COLOUR (inside it is the picture, outside it
    padding) and each tile's number in its top-left corner.

    A boundary at pixel column x = k * tile (0 < k < columns) covers columns x - line_width // 2 ... so it straddles
    both tiles; the outer border lies just inside the canvas. Same for rows.
    """
    canvas = canvas.copy()
    width, height = canvas.size
    num_rows, num_cols = height // tile_size, width // tile_size
    resized_width, resized_height = resized_size
    line_width = line_width or max(2, tile_size // 56)
    draw = ImageDraw.Draw(canvas)

    left, top = (width - resized_width) // 2, (height - resized_height) // 2
    if (resized_width, resized_height) != (width, height):
        draw.rectangle((left, top, left + resized_width - 1, top + resized_height - 1),
                       outline=IMAGE_EDGE_COLOUR, width=max(1, line_width // 2))

    def span(position: int, size: int) -> tuple[int, int]:
        start = min(max(position - line_width // 2, 0), size - line_width)
        return start, start + line_width - 1

    for k in range(num_cols + 1):
        x0, x1 = span(k * tile_size, width)
        draw.rectangle((x0, 0, x1, height - 1), fill=GRID_COLOUR)
    for k in range(num_rows + 1):
        y0, y1 = span(k * tile_size, height)
        draw.rectangle((0, y0, width - 1, y1), fill=GRID_COLOUR)

    font = _label_font(tile_size)
    for index in range(num_rows * num_cols):
        row, col = divmod(index, num_cols)  # tiles are fed row-major
        x, y = col * tile_size + 2 * line_width, row * tile_size + 2 * line_width
        box = draw.textbbox((x, y), str(index + 1), font=font)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
        draw.text((x, y), str(index + 1), fill=GRID_COLOUR, font=font)
    return canvas


def anyres_summary(width: int, height: int, image_processor, features) -> str:
    """Markdown: the grid, tiles x tokens per tile = image tokens (the processor's counts), and the resize/pad."""
    rows, cols = (int(v) for v in features["image_grids"][0])
    num_tiles = int(features["num_patches"][0])
    tokens = image_processor.get_number_of_image_tokens(height, width)
    plan = image_processor.get_anyres_plan(height, width)
    tile_size = image_processor.tile_size
    thumb = " + 1 thumbnail" if num_tiles > rows * cols else " (no thumbnail for a single tile)"
    side = image_processor.max_image_side
    limited = f" (longer side first scaled to {side} px)" if side is not None and max(width, height) > side else ""
    canvas_w, canvas_h = cols * tile_size, rows * tile_size
    return (
        f"**Grid {rows}×{cols}** (rows × columns) = {rows * cols} tiles{thumb}  \n"
        f"**{num_tiles} tiles × {image_processor.get_tokens_per_tile()} tokens = {tokens} image tokens**  \n"
        f"Image {width}×{height} px{limited} → resized to {plan.resized_width}×{plan.resized_height} on a "
        f"{canvas_w}×{canvas_h} canvas of {tile_size} px tiles, {canvas_w - plan.resized_width} px / "
        f"{canvas_h - plan.resized_height} px black padding (horizontal / vertical)."
    )


def save_png(image: Image.Image, directory: Path) -> str:
    """`image` as a PNG in `directory`, named by its content and written once (atomically).

    Streaming handlers yield the AnyRes view with every update; yielding a path rather than a PIL image keeps Gradio
    from re-encoding and rewriting the cached file (one name per content) while a client may be downloading it.
    """
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    path = directory / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
    if not path.exists():
        partial = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.partial")
        partial.write_bytes(data)
        partial.replace(path)
    return str(path)


def anyres_view(image: Image.Image, image_processor) -> tuple[Image.Image, Image.Image | None, str]:
    """(grid overlay, thumbnail, summary) of an upright `image`, drawn from the model's own image processor output."""
    features = image_processor(images=[image], return_tensors="np")
    canvas, thumbnail = tiles_as_images(features, image_processor)
    plan = image_processor.get_anyres_plan(image.height, image.width)
    grid = draw_anyres_grid(canvas, (plan.resized_width, plan.resized_height), image_processor.tile_size)
    return grid, thumbnail, anyres_summary(image.width, image.height, image_processor, features)


# ------------------------------------------------------------------------------------------------ chat logic
def shown_name(path: str | Path) -> str:
    """An upload's file name as messages show it: without the server's folder, long names shortened."""
    name = Path(path).name
    if len(name) <= SHOWN_NAME_CHARACTERS:
        return name
    keep = SHOWN_NAME_CHARACTERS - 1
    return name[: keep - keep // 3] + "…" + name[-(keep // 3):]


def load_image(path: str | Path, image_processor) -> Image.Image:
    """The upright image at `path` the model will see; gr.Error that names the upload (never the server's path) if it
    is not a usable image (not an image, corrupt, truncated, or too many pixels)."""
    name = shown_name(path)
    data = Path(path).read_bytes()  # as bytes, so no message of the image processor can name the server's path
    try:
        with Image.open(io.BytesIO(data)) as header:  # header only
            width, height = header.size
    except Image.DecompressionBombError:
        width = height = None
    except (OSError, ValueError):
        width = height = 0  # not an image: the image processor explains below
    limit = Image.MAX_IMAGE_PIXELS
    if width is None or (limit is not None and width * height > limit):
        size = "" if width is None else f" ({width}×{height} = {width * height} pixels)"
        raise gr.Error(f"{name!r} is too large{size}: this demo takes images of up to {limit} pixels. Downscale it "
                       "and upload it again.", title="Image too large", print_exception=False)
    try:
        image = image_processor.fetch_images(data)
        # fetch_images reads only the header; running the processor decodes every pixel through the same checks
        # generation will apply (truncated data, modes), so a bad file is refused before it reaches the chat.
        image_processor(images=[image])
        return ImageOps.exif_transpose(image)
    except (ValueError, OSError) as error:
        raise gr.Error(f"Could not use {name!r} as an image: {error}", title="Bad image",
                       print_exception=False) from error


def resolve_budget(thinking: bool, unlimited: bool, budget: float | None) -> int | None:
    """The `thinking_budget` for generate: None (no cap) when thinking is off or the budget is unlimited."""
    if not thinking or unlimited or budget is None:
        return None
    return max(0, int(budget))


def _blocks(content) -> list:
    """Gradio message content (a string, a file dict, or a list of those / typed blocks) as a list of blocks."""
    items = content if isinstance(content, (list, tuple)) else [content]
    blocks = []
    for item in items:
        if isinstance(item, str):
            blocks.append({"type": "text", "text": item})
        elif isinstance(item, dict) and item.get("type") == "text":
            blocks.append({"type": "text", "text": item.get("text") or ""})
        elif isinstance(item, dict) and isinstance(item.get("file"), dict):
            blocks.append({"type": "file", "path": item["file"].get("path")})
        elif isinstance(item, dict) and item.get("path"):
            blocks.append({"type": "file", "path": item["path"]})
    return blocks


def conversation_from_history(history: list[dict]) -> tuple[list[dict], list[str]]:
    """The model conversation and its image paths (in placeholder order) from the Chatbot's messages.

    Thought bubbles (assistant messages with a metadata title) are dropped: the chat template keeps reasoning only
    for the turn being generated. Consecutive messages of one role become one turn, so an image sent as its own
    message belongs to the question after it.
    """
    conversation, image_paths = [], []
    for message in history or []:
        role = message.get("role")
        metadata = message.get("metadata") or {}
        if role not in ("user", "assistant") or (role == "assistant" and metadata.get("title")):
            continue
        content = []
        for block in _blocks(message.get("content")):
            if block["type"] == "file" and role == "user":
                content.append({"type": "image"})
                image_paths.append(block["path"])
            elif block["type"] == "text" and block["text"].strip():
                content.append({"type": "text", "text": block["text"]})
        if role == "assistant":
            text = "".join(block["text"] for block in content if block["type"] == "text")
            if conversation and conversation[-1]["role"] == "assistant":
                conversation[-1]["content"] += "\n\n" + text
            else:
                conversation.append({"role": "assistant", "content": text})
        elif conversation and conversation[-1]["role"] == "user":
            conversation[-1]["content"] += content
        else:
            conversation.append({"role": "user", "content": content})
    return conversation, image_paths


def thought_message(reasoning: str, num_tokens: int | None, budget: int | None, seconds: float,
                    done: bool) -> gr.ChatMessage:
    """The collapsible reasoning bubble: open with a spinner while thinking, then open with its token count and time.

    `num_tokens` (None while streaming) is the reasoning re-tokenized, which is what the budget counts up to the
    tokenizer's merges."""
    log = "thinking…" if num_tokens is None else f"{num_tokens} token{'' if num_tokens == 1 else 's'}"
    if budget is not None:
        log += f" of a {budget}-token budget"
    metadata = {"title": THINKING_TITLE, "log": log}
    if done:  # no "status": the bubble stays open (reasoning is what this demo is for); "done" would collapse it
        metadata["duration"] = round(seconds, 2)
    else:
        metadata["status"] = "pending"  # open, with a spinner
    return gr.ChatMessage(role="assistant", content=reasoning, metadata=metadata)


class GenerationSteps(LogitsProcessor):
    """Leaves the scores alone and counts the generation steps (one per new token), so the app knows whether
    generation stopped at max_new_tokens or at the end of the turn. A logits processor, because both the PyTorch
    model and the ONNX Runtime runner take those."""

    def __init__(self):
        self.steps = 0

    def __call__(self, input_ids, scores):
        self.steps += 1
        return scores


def no_answer_note(reasoning: str, steps: int, max_new_tokens: int) -> str:
    """Why a reply has no answer: it ran out of new tokens (`steps` == `max_new_tokens`), inside its reasoning or not,
    or the model ended its turn early."""
    if steps >= max_new_tokens:
        if reasoning:
            return (f"the reasoning used all {max_new_tokens} new tokens; set a thinking budget or raise "
                    "--max-new-tokens")
        return f"the reply used all {max_new_tokens} new tokens; raise --max-new-tokens"
    after = f" after {steps} token{'' if steps == 1 else 's'}"
    return f"the model ended its turn{after}{' of reasoning' if reasoning else ''} without one"


# ------------------------------------------------------------------------------------------------ the app
def resolve_model(model_path: str | None = None) -> str | None:
    """`model_path`, else $BLUELM_MODEL, else None (the bundled BlueLM-nano)."""
    return model_path or os.environ.get("BLUELM_MODEL") or None


def build_demo(model_path: str | None = None, *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
               max_budget: int | None = None) -> gr.Blocks:
    """The Space as a queued `gr.Blocks` (one generation at a time), serving `model_path` (see `resolve_model`).

    The chat endpoint is `/chat`: (message {"text", "files"}, history, thinking, unlimited, budget) ->
    (history, cleared message, AnyRes grid, thumbnail, AnyRes summary); it streams.
    """
    model_path = resolve_model(model_path)
    model, processor = load(model_path)
    image_processor = processor.image_processor
    tokenizer = processor.tokenizer
    context = model.config.text_config.max_position_embeddings
    max_budget = max_budget or max_new_tokens
    model_name = model_path or "BlueLM-nano (bundled)"
    view_dir = Path(tempfile.gettempdir()) / "bluelm-demo-anyres"
    view_dir.mkdir(exist_ok=True)

    def prepare(message, history, thinking):
        """(question, conversation, images, new-token allowance) for the next turn; gr.Error for what the user
        can fix."""
        message = message or {}
        question = (message.get("text") or "").strip()
        if not question:
            raise gr.Error("Type a question (and attach an image) before sending.", title="Empty prompt",
                           print_exception=False)
        new_images = [load_image(path, image_processor) for path in message.get("files") or []]
        conversation, old_paths = conversation_from_history(history)
        images = [load_image(path, image_processor) for path in old_paths] + new_images
        conversation.append({"role": "user", "content": [{"type": "image"}] * len(new_images)
                             + [{"type": "text", "text": question}]})

        try:  # the prompt exactly as generation will build it: its length, and its errors before the chat changes
            prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, enable_thinking=thinking)
            prompt_tokens = len(processor(text=[prompt], images=images or None)["input_ids"][0])
        except ValueError as error:
            raise gr.Error(f"This message cannot be sent: {error}", title="Bad message",
                           print_exception=False) from error
        new_tokens = min(max_new_tokens, context - prompt_tokens)
        if new_tokens < 8:
            raise gr.Error(
                f"The conversation is {prompt_tokens} tokens and this model's context is {context}: there is no room "
                "for an answer. Press Clear to start a new chat (each image costs its AnyRes token count).",
                title="Conversation too long",
                print_exception=False,
            )
        return question, conversation, images, new_tokens

    def check(message, history, thinking, refused: str | None = None) -> None:
        """The UI runs this before `chat`: a bad upload gets an error toast and the chat stays as it was, rather than
        being covered by the error state Gradio gives an event's outputs. It is cheap, and its own concurrency group,
        so it never waits behind another user's generation. `refused`: files the page itself refused (SUBMIT_JS)."""
        if refused and refused.strip():
            names = ", ".join(repr(shown_name(name)) for name in refused.splitlines() if name)
            raise gr.Error(
                f"{names} could not be attached (this demo takes image files of up to {MAX_FILE_SIZE}), so the "
                "message was not sent: attach an image and send it again, or send it again as it is.",
                title="Upload refused", print_exception=False,
            )
        prepare(message, history, thinking)

    def chat(message, history, thinking, unlimited, budget):
        history = list(history or [])
        question, conversation, images, new_tokens = prepare(message, history, thinking)
        thinking_budget = resolve_budget(thinking, unlimited, budget)
        files = (message or {}).get("files") or []
        user_turn = {"role": "user", "content": [{"path": path} for path in files] + [question]}
        if images:
            grid, thumbnail, summary = anyres_view(images[-1], image_processor)
            view = (save_png(grid, view_dir), thumbnail and save_png(thumbnail, view_dir), summary)
        else:
            view = (gr.skip(),) * 3

        reasoning, answer = "", ""
        steps = GenerationSteps()
        started = time.monotonic()
        thought_seconds = None  # set when the answer starts
        reasoning_tokens = None  # counted once, when the reasoning is complete

        def shown(final: bool = False) -> list:
            nonlocal reasoning_tokens
            messages = [*history, user_turn]
            if reasoning:
                done = final or bool(answer)
                if done and reasoning_tokens is None:
                    reasoning_tokens = len(tokenizer(reasoning, add_special_tokens=False)["input_ids"])
                seconds = thought_seconds if thought_seconds is not None else time.monotonic() - started
                messages.append(thought_message(reasoning, reasoning_tokens, thinking_budget, seconds, done))
            if answer:
                messages.append(gr.ChatMessage(role="assistant", content=answer))
            elif final:
                why = no_answer_note(reasoning, steps.steps, new_tokens)
                messages.append(gr.ChatMessage(role="assistant", content=f"_(no answer: {why})_"))
            return messages

        yield shown(), None, *view
        try:
            for kind, text in stream_chat(model, processor, conversation, images, thinking=thinking,
                                          thinking_budget=thinking_budget, max_new_tokens=new_tokens,
                                          logits_processor=LogitsProcessorList([steps])):
                if kind == "reasoning":
                    reasoning += text
                elif kind == "reasoning_replace":
                    reasoning = text
                elif kind == "answer_replace":  # a later </think>: the answer so far was reasoning that went on
                    answer = text
                else:
                    if thought_seconds is None and text:
                        thought_seconds = time.monotonic() - started
                    answer += text
                yield shown(), gr.skip(), *view
        except Exception as error:  # the app stays up; the user sees what went wrong
            # The chat goes back to how it was and the message back into the box, so the failed turn is not sent
            # again with every later message; then the error toast.
            yield history, message, *view
            raise gr.Error(f"Generation failed: {type(error).__name__}: {error}. The chat is as it was before this "
                           "message.", title="Generation error") from error
        yield shown(final=True), gr.skip(), *view

    nano_limits = (
        "The bundled BlueLM-nano (2.2M parameters) only knows its synthetic task, counting coloured cells in strips "
        "like the example: a photo or another kind of question gets gibberish. " if model_path is None else ""
    )
    with gr.Blocks(title="BlueLM demo") as demo:
        gr.Markdown(
            f"# BlueLM demo\nModel: `{model_name}`. Attach an image, ask about it, and follow up in the same chat. "
            "With **thinking** on the model reasons first (the collapsible *Thinking* bubble); the **thinking "
            "budget** caps that reasoning in tokens. The **AnyRes view** shows how the image is cut into tiles.\n\n"
            f"**Limitations.** {nano_limits}No official BlueLM weights exist: this demo serves models trained with "
            "the open `bluelm-hf` recipes (`--model` or `BLUELM_MODEL` for your own).",
            elem_id="about",
        )
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Chat", height=480, elem_id="chatbot", buttons=["copy"])
                box = gr.MultimodalTextbox(
                    placeholder="Attach an image and ask about it, e.g. “How many red cells?”",
                    file_types=["image"], file_count="multiple", sources=["upload"],
                    label="Message", show_label=False, elem_id="prompt",
                )
                with gr.Row():
                    thinking = gr.Checkbox(value=True, label="Thinking mode", elem_id="thinking")
                    unlimited = gr.Checkbox(value=True, label="Unlimited thinking budget", elem_id="unlimited")
                    budget = gr.Slider(0, max_budget, value=min(16, max_budget), step=1, interactive=False,
                                       label="Thinking budget (reasoning tokens)", elem_id="budget")
                clear = gr.Button("Clear chat", elem_id="clear")
                refused = gr.Textbox(visible=False)  # names of files the page refused, filled in by SUBMIT_JS
                gr.Examples([[{"text": EXAMPLE_QUESTION, "files": [str(EXAMPLE_IMAGE_PATH)]}]], inputs=[box],
                            label="Example (the nano task)")
            with gr.Column(scale=2):
                gr.Markdown(
                    "### AnyRes view\nThe latest image as the model sees it: resized and padded (black, outside the "
                    "cyan edge) onto a grid of tiles (magenta lines, numbered in reading order), then the thumbnail."
                )
                # show_label=False: the label badge would cover tile 1's number; the labels still name the API outputs.
                grid_view = gr.Image(None, label="AnyRes tiles", show_label=False, interactive=False,
                                     format="png", elem_id="anyres-grid")
                thumbnail_view = gr.Image(None, label="Thumbnail tile", show_label=False,
                                          interactive=False, format="png", height=160, elem_id="anyres-thumbnail")
                summary_view = gr.Markdown(NO_IMAGE_YET, label="AnyRes summary", elem_id="anyres-summary")

        demo.load(None, js=WATCH_UPLOADS_JS)
        reply = box.submit(check, [box, chatbot, thinking, refused], None, js=SUBMIT_JS, show_progress="hidden",
                           api_visibility="private").success(
            chat, [box, chatbot, thinking, unlimited, budget], [chatbot, box, grid_view, thumbnail_view, summary_view],
            api_name="chat", show_progress="minimal", show_progress_on=[chatbot],
        )
        # Clear is a queued event that cancels a running reply: its empty values come through the queue after the
        # reply's last update, so a reply that is just finishing cannot fill the chat again (gr.ClearButton empties
        # the components in the browser at once, and the reply's last update could still land after that).
        clear.click(lambda: (None, None, None, None, NO_IMAGE_YET), None,
                    [chatbot, box, grid_view, thumbnail_view, summary_view], cancels=[reply], show_progress="hidden",
                    api_visibility="private")
        thinking.change(lambda on, free: (gr.Checkbox(interactive=on), gr.Slider(interactive=on and not free)),
                        [thinking, unlimited], [unlimited, budget], queue=False, api_visibility="private")
        unlimited.change(lambda on, free: gr.Slider(interactive=on and not free),
                         [thinking, unlimited], [budget], queue=False, api_visibility="private")

    # One generation at a time: a CPU Space has no room for two, so later users wait in the queue (and see their place).
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo


MAX_FILE_SIZE = "25 MB"
LAUNCH_KWARGS = dict(
    max_file_size=MAX_FILE_SIZE.replace(" ", "").lower(),  # refuse absurd uploads before they are written to disk
    allowed_paths=[str(ASSETS_DIR)],  # the bundled example image lives in the package, outside the working dir
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="checkpoint path or Hub id (default: $BLUELM_MODEL, else the bundled BlueLM-nano)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help=f"reasoning + answer tokens per reply (default {DEFAULT_MAX_NEW_TOKENS})")
    parser.add_argument("--host", default=None, help="server address (default: Gradio's; Spaces sets 0.0.0.0)")
    parser.add_argument("--port", type=int, default=None, help="server port (default: Gradio's, 7860)")
    args = parser.parse_args(argv)
    demo = build_demo(args.model, max_new_tokens=args.max_new_tokens)
    demo.launch(server_name=args.host, server_port=args.port, **LAUNCH_KWARGS)


if __name__ == "__main__":
    main()
