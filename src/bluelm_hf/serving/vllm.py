"""vLLM integration, loaded by vLLM itself through the `vllm.general_plugins` entry point `bluelm`.

- `register()` makes `BlueLMVForConditionalGeneration` resolvable: vLLM runs it with its Transformers modeling backend
  (`vllm_model.BlueLMVForConditionalGeneration`), and the Auto classes come from `import bluelm_hf`.
- `BlueLMReasoningParser` (`--reasoning-parser bluelm`) splits reasoning from the answer with the same rule as
  `bluelm_hf.thinking.parse_response`: no `<think>` means everything is content (DeepSeek-R1's parser files a
  non-thinking answer as reasoning), and the content is what follows the last `</think>`. It also gives vLLM the
  `<think>` / `</think>` ids that `SamplingParams.thinking_token_budget` needs.
"""

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


class BlueLMReasoningParser(BaseThinkingReasoningParser):
    """`<think>reasoning</think>answer`; see `bluelm_hf.thinking.response_template` for the rule."""

    @property
    def start_token(self) -> str:
        return THINK_START_TOKEN

    @property
    def end_token(self) -> str:
        return THINK_END_TOKEN

    def extract_reasoning(self, model_output: str, request) -> tuple[str | None, str | None]:
        from ..thinking import parse_response

        parsed = parse_response(model_output, eos_token=getattr(self.model_tokenizer, "eos_token", None))
        return parsed["reasoning_content"], parsed["content"] or None
