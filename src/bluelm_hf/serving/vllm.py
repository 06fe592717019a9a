"""vLLM integration, loaded by vLLM itself through the `vllm.general_plugins` entry point `bluelm`.

- `register()` makes `BlueLMVForConditionalGeneration` resolvable: vLLM runs it with its Transformers modeling backend
  (`vllm_model.BlueLMVForConditionalGeneration`), and the Auto classes come from `import bluelm_hf`.
- `BlueLMReasoningParser` (`--reasoning-parser bluelm`) splits reasoning from the answer with the same rule as
  `bluelm_hf.thinking.parse_response`: no `<think>` means everything is content (DeepSeek-R1's parser files a
  non-thinking answer as reasoning), and the content is what follows the last `</think>`. It also gives vLLM the
  `<think>` / `</think>` ids that `SamplingParams.thinking_token_budget` needs.
- `<image>` placeholders without images: vLLM sends a prompt with images through BlueLM's processor, which checks
  that each image has its placeholder (`processing_bluelm_v.check_image_placeholders`), but a prompt without images
  goes to the model as plain tokens, so an `<image>` typed into it (a chat message with `<image>` in its text, a
  completion prompt) would be answered silently. `register()` adds the same check to vLLM's request validation
  (`InputProcessor._validate_model_input`, where vLLM checks the prompt length) for BlueLM models: such a request
  gets a 400 naming both counts, and the server stays up.
"""

import functools

from vllm.reasoning.basic_parsers import BaseThinkingReasoningParser

from ..configuration_bluelm_v import THINK_END_TOKEN, THINK_START_TOKEN

ARCHITECTURE = "BlueLMVForConditionalGeneration"
MODEL_CLASS = "bluelm_hf.serving.vllm_model:BlueLMVForConditionalGeneration"  # the Transformers backend, whole images


def register() -> None:
    """The `vllm.general_plugins` hook: vLLM calls it in every process it starts."""
    import bluelm_hf  # noqa: F401  (registers the bluelm_v Auto classes)
    from vllm import ModelRegistry
    from vllm.reasoning import ReasoningParserManager

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
    ReasoningParserManager.register_lazy_module("bluelm", __name__, "BlueLMReasoningParser")
    _add_placeholder_check()


def _add_placeholder_check() -> None:
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.engine.input_processor import InputProcessor

    validate = InputProcessor._validate_model_input
    if getattr(validate, "_bluelm_placeholder_check", False):
        return

    @functools.wraps(validate)
    def _validate_model_input(self, prompt_input, prompt_type):
        validate(self, prompt_input, prompt_type)
        image_token_id = getattr(self.model_config.hf_config, "image_token_id", None)
        if getattr(self.model_config.hf_config, "model_type", None) != "bluelm_v" or image_token_id is None:
            return
        try:
            check_prompt_placeholders(prompt_input, image_token_id)
        except ValueError as error:
            raise VLLMValidationError(str(error), parameter="messages") from None

    _validate_model_input._bluelm_placeholder_check = True
    InputProcessor._validate_model_input = _validate_model_input


def check_prompt_placeholders(prompt_input, image_token_id: int) -> None:
    """`check_image_placeholders` on a prompt vLLM is about to run: `<image>` ids outside the images' placeholder
    ranges are placeholders typed into the text without an image."""
    from ..processing_bluelm_v import check_image_placeholders

    if prompt_input["type"] not in ("token", "multimodal"):
        return
    ids = prompt_input["prompt_token_ids"]
    images = prompt_input.get("mm_placeholders", {}).get("image", []) if prompt_input["type"] == "multimodal" else []
    covered = sum(ids[r.offset : r.offset + r.length].count(image_token_id) for r in images)
    stray = ids.count(image_token_id) - covered
    if stray:
        check_image_placeholders(len(images) + stray, len(images))


class BlueLMReasoningParser(BaseThinkingReasoningParser):
    """`<think>reasoning</think>answer`; see `bluelm_hf.thinking.response_template` for the rule."""

    @property
    def start_token(self) -> str:
        return THINK_START_TOKEN

    @property
    def end_token(self) -> str:
        return THINK_END_TOKEN

    def extract_reasoning_streaming(self, previous_text, current_text, delta_text, previous_token_ids,
                                    current_token_ids, delta_token_ids):
        """The delta between `ThinkingStreamParser` on the text before and after this delta (the rule of
        `parse_response`, also used by `ThinkingStreamer`). vLLM calls this until `</think>` ends the reasoning and
        streams the rest as content itself; OpenAI deltas cannot be taken back, so a later stray `</think>` is where
        streamed and non-streamed answers differ (the non-streamed one follows the last `</think>`)."""
        from vllm.entrypoints.generate.base.protocol import DeltaMessage

        from ..thinking import ThinkingStreamParser

        parser = ThinkingStreamParser(eos_token=getattr(self.model_tokenizer, "eos_token", None))
        parser.feed(previous_text)
        chunks = parser.feed(delta_text)
        reasoning = "".join(c.text for c in chunks if c.kind == "reasoning")
        content = "".join(c.text for c in chunks if c.kind == "answer")
        return DeltaMessage(reasoning=reasoning, content=content) if reasoning or content else None

    def extract_reasoning(self, model_output: str, request) -> tuple[str | None, str | None]:
        from ..thinking import parse_response

        parsed = parse_response(model_output, eos_token=getattr(self.model_tokenizer, "eos_token", None))
        return parsed["reasoning_content"], parsed["content"] or None
