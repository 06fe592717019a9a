"""BlueLM-V processor: AnyRes image processor + tokenizer + the BlueLM chat template.

Each `<image>` placeholder in the text becomes `<im_start>` + N x `<image>` + `<im_end>` with
N = tokens_per_tile x tiles (196 x tiles for so400m-patch14-384). Shipped as remote code.
"""

from pathlib import Path

from transformers.image_utils import ImageInput
from transformers.processing_utils import MultiModalData, ProcessorMixin
from transformers.tokenization_utils_base import PreTokenizedInput, TextInput

from .configuration_bluelm_v import IMAGE_END_TOKEN, IMAGE_START_TOKEN, IMAGE_TOKEN

try:  # transformers >= 5.25: chat inputs' control tokens can be marked as user text
    from transformers.utils.chat_template_utils import (
        _CONTROL_TOKEN_END,
        _CONTROL_TOKEN_START,
        _get_control_token_patterns,
        mark_control_tokens,
    )
except ImportError:  # an older transformers (e.g. vLLM's) loading the remote code: no marking
    mark_control_tokens = None

CHAT_TEMPLATE_FILE = Path(__file__).with_name("chat_template.jinja")


def check_image_placeholders(num_placeholders: int, num_images: int) -> None:
    """ValueError unless each image has its `<image>` placeholder: the one image/placeholder check, used by the
    processor on every transformers version (older ones than 5.25 do not count placeholders; the wording is
    transformers' own) and by the vLLM plugin on prompts without images."""
    if num_placeholders != num_images:
        raise ValueError(
            f"The total number of {IMAGE_TOKEN} tokens in the prompts should be the same as the number of images "
            f"passed. Found total {num_placeholders} {IMAGE_TOKEN} tokens and {num_images} images: each image needs "
            f"exactly one {IMAGE_TOKEN} in the text (a {{'type': 'image'}} content part in chat messages writes it)."
        )


def _count_images(images) -> int:
    """Images in a processor's `images` argument: one image, a flat list, or one (possibly empty) list per sample."""
    if images is None:
        return 0
    if isinstance(images, (list, tuple)):
        return sum(map(_count_images, images))
    return images.shape[0] if getattr(images, "ndim", 3) == 4 else 1  # a 4-D array/tensor is a batch of images


def default_chat_template() -> str:
    """The BlueLM chat template (chat_template.jinja), the one source of the prompt format."""
    return CHAT_TEMPLATE_FILE.read_text()


class BlueLMVProcessor(ProcessorMixin):
    r"""
    Wraps a [`BlueLMVImageProcessor`] and a tokenizer. `apply_chat_template(..., enable_thinking=True)` ends the
    prompt with `[|AI|]:[|BlueThink|]`; `parse_response` splits a completion into reasoning and answer.

    Control strings in messages are text. A user who types `<image>`, `<think>`, `</s>`, `[|AI|]:` ... gets those
    characters, never the control tokens: only the markers the chat template writes itself are control tokens.
    This is transformers' `sanitize_control_tokens`, on by default here: `apply_chat_template` wraps each control
    string found in the messages in two private-use characters (`mark_control_tokens`), and when text holding those
    marks reaches `__call__` it is encoded with marked strings as plain text and not expanded as image placeholders
    (`encode_marked_chat`). The marks travel in the rendered string, so the same holds for
    `apply_chat_template(tokenize=True)`, for `processor(text=apply_chat_template(..., tokenize=False))` (the way
    TRL's GRPOTrainer and its prompt-completion SFT build inputs) and for the image-text-to-text pipeline. A prompt
    written by hand (`processor(text="[|Human|]:<image>...")`) has no marks: its control strings are control tokens,
    as before. Pass `sanitize_control_tokens=False` to render messages verbatim. transformers cannot mark inputs
    together with `return_assistant_tokens_mask=True` (the marked encoder has no character offsets), so TRL's
    conversational SFT with `assistant_only_loss` renders them verbatim.
    """

    text_kwargs = {"add_special_tokens": False}

    def __init__(self, image_processor=None, tokenizer=None, chat_template: str | None = None, **kwargs):
        self.image_token = IMAGE_TOKEN
        self.image_start_token = IMAGE_START_TOKEN
        self.image_end_token = IMAGE_END_TOKEN
        missing = [t for t in (IMAGE_TOKEN, IMAGE_START_TOKEN, IMAGE_END_TOKEN) if t not in tokenizer.get_vocab()]
        if missing:
            raise ValueError(
                f"The tokenizer lacks the BlueLM image tokens {missing}; add them with "
                "`tokenizer.add_special_tokens({'additional_special_tokens': SPECIAL_TOKENS})` "
                "(bluelm_hf.assemble_bluelm does this)."
            )
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if chat_template is None:
            chat_template = default_chat_template()
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        """`ProcessorMixin.apply_chat_template` with the messages' control strings marked as text (see the class
        docstring); `sanitize_control_tokens=False` turns that off."""
        conversations = conversation
        if isinstance(conversation, (list, tuple)) and conversation and isinstance(conversation[0], dict):
            conversations = [conversation]
        if not conversations or any(not getattr(chat, "messages", chat) for chat in conversations):
            raise ValueError(
                "apply_chat_template got an empty conversation: pass a list of messages such as "
                "[{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': 'What is this?'}]}]"
            )
        sanitize = kwargs.pop("sanitize_control_tokens", True)
        if sanitize and mark_control_tokens is not None and not kwargs.get("return_assistant_tokens_mask"):
            template = self._resolve_chat_template(chat_template)
            control_tokens_re, _ = _get_control_token_patterns(self.tokenizer._get_control_tokens(template))
            conversation = mark_control_tokens(conversation, control_tokens_re)
        return super().apply_chat_template(conversation, chat_template, **kwargs)

    def __call__(
        self,
        images: ImageInput | None = None,
        text: TextInput | PreTokenizedInput | list[TextInput] | list[PreTokenizedInput] | None = None,
        **kwargs,
    ):
        """`ProcessorMixin.__call__`; text rendered by `apply_chat_template` keeps user-typed control strings as text,
        and a prompt longer than the tokenizer's `model_max_length` (the LLM's context) is an error."""
        texts = [text] if isinstance(text, str) else (text or [])
        if mark_control_tokens is not None and any(
            isinstance(t, str) and (_CONTROL_TOKEN_START in t or _CONTROL_TOKEN_END in t) for t in texts
        ):
            kwargs.setdefault("sanitize_control_tokens", True)
        if texts and all(isinstance(t, str) for t in texts):
            check_image_placeholders(sum(map(self._count_placeholders, texts)), _count_images(images))
        outputs = super().__call__(images=images, text=text, **kwargs)
        if "input_ids" in outputs and not kwargs.get("truncation"):
            self._check_fits_context(outputs["input_ids"])
        return outputs

    def _count_placeholders(self, text: str) -> int:
        """`<image>` placeholders in `text`; a user-typed `<image>` marked as text by `apply_chat_template` is none."""
        count = text.count(self.image_token)
        if mark_control_tokens is not None:
            count -= text.count(_CONTROL_TOKEN_START + self.image_token + _CONTROL_TOKEN_END)
        return count

    def _check_fits_context(self, input_ids) -> None:
        context = self.tokenizer.model_max_length
        if context is None or context >= 10**12:  # transformers' "no limit" (VERY_LARGE_INTEGER)
            return
        for row in input_ids:
            row = row.tolist() if hasattr(row, "tolist") else list(row)
            if len(row) > context:
                raise ValueError(
                    f"The prompt has {len(row)} tokens ({row.count(self.image_token_id)} of them image tokens) but "
                    f"the model's context is {context} tokens (tokenizer.model_max_length). Shorten the text, or use "
                    "fewer or smaller images (the image processor's max_grid_size / max_image_side)."
                )

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """`<image>` tokens and tiles of each `(height, width)` in `image_sizes`, from the image processor's AnyRes
        plan (transformers' `MultiModalData` API, used by vLLM). `<im_start>`/`<im_end>` around each run are not
        counted."""
        vision_data = {}
        if image_sizes is not None:
            images_kwargs = self._merge_kwargs(self.valid_processor_kwargs, **kwargs)["images_kwargs"]
            image_processor = self.image_processor
            vision_data["num_image_tokens"] = [
                image_processor.get_number_of_image_tokens(int(h), int(w), images_kwargs) for h, w in image_sizes
            ]
            vision_data["num_image_patches"] = [
                image_processor.get_num_tiles(int(h), int(w), images_kwargs) for h, w in image_sizes
            ]
        return MultiModalData(**vision_data)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        grid = image_inputs["image_grids"][image_idx]
        num_tokens = self.image_processor.get_num_tiles_from_grid(grid) * self.image_processor.get_tokens_per_tile()
        return self.image_start_token + self.image_token * num_tokens + self.image_end_token

    def _adjust_assistant_masks_indices(self, processed_dict, generation_indices):
        """`apply_chat_template(return_assistant_tokens_mask=True)` (TRL's `assistant_only_loss`), sped up.

        transformers walks `offset_mapping` token by token in Python; given as a tensor (`return_tensors="pt"`, as
        TRL asks) every step of that walk builds 0-d tensors, ~18 ms per batch of 16 nano rows, 6% of a nano SFT
        step. The same walk over a list gives the same mask (tested) in well under a millisecond.
        """
        offsets = processed_dict.get("offset_mapping")
        if hasattr(offsets, "tolist"):
            processed_dict["offset_mapping"] = offsets.tolist()
        return super()._adjust_assistant_masks_indices(processed_dict, generation_indices)

    def parse_response(self, response, schema=None, *, prefix="", tools=None):
        """Split generated text or token ids (one sequence or a batch) into `{"role", "reasoning_content", "content"}`.

        transformers' `tokenizer.parse_response` with the tokenizer's `response_template` (the BlueLM one,
        `thinking.response_template`, for tokenizers saved without it): EOS and the padding after it are dropped,
        and `content` is what follows the last `</think>`. `prefix` defaults to `""` (the completion starts outside
        a think block); pass the prompt when it ends inside one.
        """
        from .thinking import response_template

        if schema is None:
            schema = getattr(self.tokenizer, "response_template", None) or response_template(self.tokenizer.eos_token)
        return self.tokenizer.parse_response(response, schema, prefix=prefix, tools=tools)

    @property
    def unused_input_names(self) -> list[str]:
        """The tiling metadata only sizes the placeholders: the model needs just `pixel_values`.

        Each sample's features stay with it without `image_grids`: the model returns them per tile then, and a
        sample's placeholders always cover whole tiles, so `generate` repeats the right ones for beams and
        `num_return_sequences` (tested). Leaving `image_grids` out keeps the output to the keys TRL's GRPOTrainer can
        forward: it passes every processor key to `_get_per_token_logps_and_entropies` (for the reference model
        when `beta > 0`, and for old log-probs), whose fixed signature has no `image_grids`. Call
        `processor.image_processor` for `image_grids` / `num_patches`; the model takes `image_grids` to check the
        tile count and return features per image.
        """
        return ["image_grids", "num_patches"]


__all__ = ["BlueLMVProcessor", "check_image_placeholders", "default_chat_template"]
