"""BlueLM demo Space: chat about images with a BlueLM model, with thinking mode, a thinking budget and an AnyRes view.

Runs offline on the bundled BlueLM-nano by default. `BLUELM_MODEL=<path or Hub id>` or `--model` points it at any
BlueLM checkpoint:

    python app.py                          # BlueLM-nano, http://127.0.0.1:7860
    python app.py --model ./my-bluelm-3b --max-new-tokens 2048

The pure helpers (`anyres_*`, `conversation_from_history`, `resolve_budget`) carry the logic and are unit-tested in
tests/test_space.py; `build_demo` only wires them to Gradio.
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
from PIL import Image, ImageDraw, ImageFont

from bluelm_hf.image_processing_bluelm_v import AnyResPlan, limit_image_side, to_rgb
from bluelm_hf.inference import load, stream_chat
from bluelm_hf.nano_task import ASSETS_DIR, EXAMPLE_IMAGE_PATH

DEFAULT_MAX_NEW_TOKENS = 256
THINKING_TITLE = "Thinking"
GRID_COLOUR = (255, 0, 200)  # tile boundaries: magenta, far from every nano-task colour and rare in photos
IMAGE_EDGE_COLOUR = (0, 220, 255)  # edge of the resized image inside the black padding
EXAMPLE_QUESTION = "How many red cells?"


# ------------------------------------------------------------------------------------------------ AnyRes view
def anyres_canvas(image: Image.Image, plan: AnyResPlan, tile_size: int) -> Image.Image:
    """The (num_cols * tile) x (num_rows * tile) canvas the tiles are cut from: `image` resized to the plan's size and
    centered on black, exactly as the processor pads it (extra pixel at the bottom/right)."""
    width, height = plan.num_cols * tile_size, plan.num_rows * tile_size
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    resized = image.resize((plan.resized_width, plan.resized_height), Image.Resampling.BICUBIC)
    canvas.paste(resized, ((width - plan.resized_width) // 2, (height - plan.resized_height) // 2))
    return canvas


def _label_font(tile_size: int):
    try:
        return ImageFont.load_default(size=max(10, tile_size // 8))
    except TypeError:  # Pillow built without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def draw_anyres_grid(
    image: Image.Image, plan: AnyResPlan, tile_size: int, line_width: int | None = None
) -> Image.Image:
    """`anyres_canvas` with the tile boundaries drawn in GRID_COLOUR, the resized image's edge in IMAGE_EDGE_COLOUR
    (inside it is the picture, outside it padding) and each tile's number in its top-left corner.

    A boundary at pixel column x = k * tile (0 < k < num_cols) covers columns x - line_width // 2 ... so it straddles
    both tiles; the outer border lies just inside the canvas. Same for rows.
    """
    canvas = anyres_canvas(image, plan, tile_size)
    width, height = canvas.size
    line_width = line_width or max(2, tile_size // 56)
    draw = ImageDraw.Draw(canvas)

    left, top = (width - plan.resized_width) // 2, (height - plan.resized_height) // 2
    if (plan.resized_width, plan.resized_height) != (width, height):
        draw.rectangle((left, top, left + plan.resized_width - 1, top + plan.resized_height - 1),
                       outline=IMAGE_EDGE_COLOUR, width=max(1, line_width // 2))

    def span(position: int, size: int) -> tuple[int, int]:
        start = min(max(position - line_width // 2, 0), size - line_width)
        return start, start + line_width - 1

    for k in range(plan.num_cols + 1):
        x0, x1 = span(k * tile_size, width)
        draw.rectangle((x0, 0, x1, height - 1), fill=GRID_COLOUR)
    for k in range(plan.num_rows + 1):
        y0, y1 = span(k * tile_size, height)
        draw.rectangle((0, y0, width - 1, y1), fill=GRID_COLOUR)

    font = _label_font(tile_size)
    for index in range(plan.num_rows * plan.num_cols):
        row, col = divmod(index, plan.num_cols)  # tiles are fed row-major
        x, y = col * tile_size + 2 * line_width, row * tile_size + 2 * line_width
        box = draw.textbbox((x, y), str(index + 1), font=font)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
        draw.text((x, y), str(index + 1), fill=GRID_COLOUR, font=font)
    return canvas


def anyres_thumbnail(image: Image.Image, plan: AnyResPlan, tile_size: int) -> Image.Image | None:
    """The global thumbnail tile (tile x tile, image centered on black), or None when the plan has none (1x1 grid)."""
    if not plan.has_thumbnail:
        return None
    tile = Image.new("RGB", (tile_size, tile_size), (0, 0, 0))
    small = image.resize((plan.thumbnail_width, plan.thumbnail_height), Image.Resampling.BICUBIC)
    tile.paste(small, ((tile_size - plan.thumbnail_width) // 2, (tile_size - plan.thumbnail_height) // 2))
    return tile


def anyres_summary(width: int, height: int, plan: AnyResPlan, tile_size: int, tokens_per_tile: int,
                   max_image_side: int | None = None) -> str:
    """Markdown: the grid, tiles x tokens per tile = image tokens, and the resize/pad that got there."""
    grid_tiles = plan.num_rows * plan.num_cols
    thumb = " + 1 thumbnail" if plan.has_thumbnail else " (no thumbnail for a single tile)"
    limited_h, limited_w = limit_image_side(height, width, max_image_side)
    limited = (
        f" (longer side first scaled to {max_image_side} px: {limited_w}×{limited_h})"
        if (limited_h, limited_w) != (height, width) else ""
    )
    canvas_w, canvas_h = plan.num_cols * tile_size, plan.num_rows * tile_size
    pad_x, pad_y = canvas_w - plan.resized_width, canvas_h - plan.resized_height
    return (
        f"**Grid {plan.num_rows}×{plan.num_cols}** (rows × columns) = {grid_tiles} tiles{thumb}  \n"
        f"**{plan.num_tiles} tiles × {tokens_per_tile} tokens = {plan.num_tiles * tokens_per_tile} image tokens**  \n"
        f"Image {width}×{height} px{limited} → resized to {plan.resized_width}×{plan.resized_height} on a "
        f"{canvas_w}×{canvas_h} canvas of {tile_size} px tiles, {pad_x} px / {pad_y} px black padding "
        "(horizontal / vertical)."
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
    """(grid overlay, thumbnail, summary) of an upright RGB `image` under the model's own image processor."""
    plan = image_processor.get_anyres_plan(image.height, image.width)
    tile_size = image_processor.tile_size
    tokens_per_tile = image_processor.get_tokens_per_tile()
    summary = anyres_summary(image.width, image.height, plan, tile_size, tokens_per_tile,
                             image_processor.max_image_side)
    return draw_anyres_grid(image, plan, tile_size), anyres_thumbnail(image, plan, tile_size), summary


# ------------------------------------------------------------------------------------------------ chat logic
def load_image(path: str | Path, image_processor) -> Image.Image:
    """The upright RGB image the model will see; gr.Error with the image processor's explanation if `path` is not a
    readable image (not an image, corrupt, truncated, or over PIL's decompression-bomb pixel limit)."""
    name = Path(path).name
    try:
        image = image_processor.fetch_images(str(path))
        # fetch_images reads only the header; running the processor decodes every pixel through the same checks
        # generation will apply (pixel limit, truncated data), so a bad file is refused before it reaches the chat.
        image_processor(images=[image])
        return to_rgb(image)
    except (ValueError, OSError) as error:
        # The upload's temporary path means nothing to the user; its file name does.
        message = str(error).replace(repr(str(path)), repr(name))
        raise gr.Error(f"Could not use {name!r} as an image: {message}", title="Bad image",
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
    log = "thinking…" if num_tokens is None else f"{num_tokens} tokens"
    if budget is not None:
        log += f" of a {budget}-token budget"
    metadata = {"title": THINKING_TITLE, "log": log}
    if done:  # no "status": the bubble stays open (reasoning is what this demo is for); "done" would collapse it
        metadata["duration"] = round(seconds, 2)
    else:
        metadata["status"] = "pending"  # open, with a spinner
    return gr.ChatMessage(role="assistant", content=reasoning, metadata=metadata)


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

        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, enable_thinking=thinking)
        prompt_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) + sum(
            image_processor.get_number_of_image_tokens(image.height, image.width) + 1 for image in images
        )
        new_tokens = min(max_new_tokens, context - prompt_tokens)
        if new_tokens < 8:
            raise gr.Error(
                f"The conversation is {prompt_tokens} tokens and this model's context is {context}: there is no room "
                "for an answer. Press Clear to start a new chat (each image costs its AnyRes token count).",
                title="Conversation too long",
                print_exception=False,
            )
        return question, conversation, images, new_tokens

    def check(message, history, thinking) -> None:
        """The UI runs this before `chat`: a bad upload gets an error toast and the chat stays as it was, rather than
        being covered by the error state Gradio gives an event's outputs. It is cheap, and its own concurrency group,
        so it never waits behind another user's generation."""
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
                why = (
                    f"the reasoning used all {new_tokens} new tokens; set a thinking budget or raise --max-new-tokens"
                    if reasoning else "the model ended its turn without one"
                )
                messages.append(gr.ChatMessage(role="assistant", content=f"_(no answer: {why})_"))
            return messages

        yield shown(), None, *view
        try:
            for kind, text in stream_chat(model, processor, conversation, images, thinking=thinking,
                                          thinking_budget=thinking_budget, max_new_tokens=new_tokens):
                if kind == "reasoning":
                    reasoning += text
                else:
                    if thought_seconds is None and text:
                        thought_seconds = time.monotonic() - started
                    answer += text
                yield shown(), gr.skip(), *view
        except Exception as error:  # the app stays up; the user sees what went wrong
            raise gr.Error(f"Generation failed: {type(error).__name__}: {error}", title="Generation error") from error
        yield shown(final=True), gr.skip(), *view

    with gr.Blocks(title="BlueLM demo") as demo:
        gr.Markdown(
            f"# BlueLM demo\nModel: `{model_name}`. Attach an image, ask about it, and follow up in the same chat. "
            "With **thinking** on the model reasons first (the collapsible *Thinking* bubble); the **thinking "
            "budget** caps that reasoning in tokens. The **AnyRes view** shows how the image is cut into tiles."
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
                gr.ClearButton([chatbot, box], value="Clear chat")
                gr.Examples([[{"text": EXAMPLE_QUESTION, "files": [str(EXAMPLE_IMAGE_PATH)]}]], inputs=[box],
                            label="Example (the nano task)")
            with gr.Column(scale=2):
                gr.Markdown(
                    "### AnyRes view\nThe latest image as the model sees it: resized and padded (black, outside the "
                    "cyan edge) onto a grid of tiles (magenta lines, numbered in reading order), then the thumbnail."
                )
                example = to_rgb(Image.open(EXAMPLE_IMAGE_PATH))
                start_grid, start_thumbnail, start_summary = anyres_view(example, image_processor)
                # show_label=False: the label badge would cover tile 1's number; the labels still name the API outputs.
                grid_view = gr.Image(start_grid, label="AnyRes tiles", show_label=False, interactive=False,
                                     format="png", elem_id="anyres-grid")
                thumbnail_view = gr.Image(start_thumbnail, label="Thumbnail tile", show_label=False,
                                          interactive=False, format="png", height=160, elem_id="anyres-thumbnail")
                summary_view = gr.Markdown(start_summary, label="AnyRes summary", elem_id="anyres-summary")

        box.submit(check, [box, chatbot, thinking], None, show_progress="hidden", api_visibility="private").success(
            chat, [box, chatbot, thinking, unlimited, budget], [chatbot, box, grid_view, thumbnail_view, summary_view],
            api_name="chat", show_progress="minimal", show_progress_on=[chatbot],
        )
        thinking.change(lambda on, free: (gr.Checkbox(interactive=on), gr.Slider(interactive=on and not free)),
                        [thinking, unlimited], [unlimited, budget], queue=False, api_visibility="private")
        unlimited.change(lambda on, free: gr.Slider(interactive=on and not free),
                         [thinking, unlimited], [budget], queue=False, api_visibility="private")

    # One generation at a time: a CPU Space has no room for two, so later users wait in the queue (and see their place).
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo


LAUNCH_KWARGS = dict(
    max_file_size="25mb",  # refuse absurd uploads before they are written to disk
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
