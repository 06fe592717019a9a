"""Thinking output of BlueLM-2.5-3B: cap it while generating, split it from the answer afterwards or while streaming.

In thinking mode the generation prompt ends with `[|AI|]:[|BlueThink|]` and the model writes
`<think>reasoning</think>answer</s>`.

- `ThinkingBudgetLogitsProcessor` caps the reasoning at `thinking_budget` tokens by forcing the closing sequence.
- `build_thinking_budget_processor` builds one from a config (what `BlueLMVForConditionalGeneration.generate` calls).
- `validate_thinking_budget` checks a budget (ValueError naming a bad value).
- `response_template` is the tokenizer's `response_template` (transformers' response parsing): the one rule that
  splits a completion into `reasoning_content` and `content`; `parse_response` applies it to decoded text.
- `ThinkingStreamParser` applies that rule to a stream of text deltas; `ThinkingStreamer` streams its
  `ThinkingChunk`s from `generate`.

This file is shipped next to checkpoints (remote code), so it imports only torch, transformers and the stdlib.
"""

import functools
import numbers
import re
from collections.abc import Sequence
from typing import NamedTuple

import torch
from transformers import LogitsProcessor, TextIteratorStreamer

from .configuration_bluelm_v import AI_TOKEN, THINK_END_TOKEN, THINK_MODE_TOKEN, THINK_START_TOKEN

# A ready-made `early_stop_message` for `from_tokenizer`: telling the model why its reasoning stops makes the answer
# that follows build on the reasoning so far (the Qwen3 thinking-budget recipe does the same).
DEFAULT_EARLY_STOP_MESSAGE = "\nConsidering the limited budget, I will answer now.\n"


def _think_token_ids(tokenizer) -> tuple[int, int]:
    """Ids of `<think>` and `</think>`; ValueError naming the ones the tokenizer does not hold as single tokens."""
    ids, missing = [], []
    for token in (THINK_START_TOKEN, THINK_END_TOKEN):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
            missing.append(token)
        ids.append(token_id)
    if missing:
        raise ValueError(
            f"The tokenizer has no single token for {' and '.join(repr(t) for t in missing)}. BlueLM thinking needs "
            f"{THINK_START_TOKEN!r} and {THINK_END_TOKEN!r} as special tokens: load the BlueLM tokenizer, or add "
            "them with `tokenizer.add_special_tokens({'additional_special_tokens': [...]})` and resize the model's "
            "embeddings."
        )
    return ids[0], ids[1]


# ---------------------------------------------------------------------------------------------------- budget

#: The largest budget: a torch int64. Any budget above the longest possible generation already means "unlimited".
MAX_THINKING_BUDGET = 2**63 - 1


def validate_thinking_budget(thinking_budget) -> torch.Tensor:
    """`thinking_budget` as a 1-D int64 tensor, or ValueError saying what is wrong with it (with the value).

    Accepts an int, a sequence of ints or an integer tensor, each in `[0, MAX_THINKING_BUDGET]`. Rejects bools,
    floats (even 3.0), strings (even "3"), empty or nested sequences and values that do not fit an int64.
    """
    if isinstance(thinking_budget, torch.Tensor):
        if thinking_budget.is_floating_point() or thinking_budget.is_complex() or thinking_budget.dtype == torch.bool:
            raise ValueError(f"thinking_budget must hold integers, got a tensor of dtype {thinking_budget.dtype}")
        values = thinking_budget.reshape(-1).tolist() if thinking_budget.dim() <= 1 else None
        shape = tuple(thinking_budget.shape)
    elif isinstance(thinking_budget, (str, bytes)) or not isinstance(thinking_budget, (numbers.Integral, Sequence)):
        raise ValueError(
            f"thinking_budget must be an int, a list of ints or an integer tensor, got {thinking_budget!r} "
            f"({type(thinking_budget).__name__})"
        )
    elif isinstance(thinking_budget, Sequence):
        values, shape = list(thinking_budget), (len(thinking_budget),)
    else:
        values, shape = [thinking_budget], ()
    if values is None or not values:
        raise ValueError(f"thinking_budget must be an int or a 1-D list of ints, got shape {shape}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(
                f"thinking_budget must hold integers, got {value!r} ({type(value).__name__}) in {thinking_budget!r}"
            )
        if value < 0:
            raise ValueError(f"thinking_budget must be >= 0 (0 closes thinking at once), got {value}")
        if value > MAX_THINKING_BUDGET:
            raise ValueError(
                f"thinking_budget {value} is too large: the maximum is {MAX_THINKING_BUDGET} (2**63 - 1); leave the "
                "budget unset for unlimited thinking"
            )
    return torch.tensor([int(v) for v in values], dtype=torch.long)



class ThinkingBudgetLogitsProcessor(LogitsProcessor):
    r"""
    Caps the number of reasoning tokens: once a row has spent its budget inside `<think>...</think>`, the closing
    sequence is forced one token per step (every other logit set to `-inf`, the forced one to `0`, so it survives
    temperature / top-k / top-p and is a log-probability of 0 under beam search), then the answer flows freely.

    thinking_budget (`int`, sequence of `int` or 1-D `torch.Tensor`): reasoning tokens allowed. One value for all
        rows, one per prompt (expanded over `num_beams` / `num_return_sequences` rows), or one per row.
    think_start_token_id / think_end_token_id (`int`): ids of `<think>` and `</think>`.
    end_sequence_ids (sequence of `int`, *optional*): the forced closing sequence; it must end with `</think>`,
        e.g. the ids of "\nConsidering the limited budget, I will answer now.\n</think>". Defaults to `[</think>]`.

    What counts. The budget is per `generate` call and per row, shared by every think block of that row: the tokens
    strictly between `<think>` and `</think>` that the model generates, plus the reasoning already in the prompt when
    the prompt ends inside an open `<think>` (continuing a cut-off reasoning). The forced closing sequence does not
    count. Closed think blocks in the prompt (earlier turns) do not count, nor does padding. So:

    - budget 0 closes thinking right after `<think>`;
    - a row that closes thinking by itself is never forced for that block; if it opens a second block, that block
      gets what is left of the budget (nothing left -> it is closed right after its `<think>`). A total rather than a
      per-block budget is what caps latency, and a model cannot dodge it by re-opening `<think>`. (vLLM's
      `thinking_token_budget` gives each block a fresh budget instead.)
    - a prompt that already holds more reasoning than the budget gets the closing sequence at once;
    - a `<think>` generated inside an open block is reasoning text: it counts and opens nothing, so a model cannot
      dodge the budget by repeating `<think>` either;
    - rows with no open `<think>` are never touched, nor is anything if no `<think>` ever appears
      (`[|BlueThink|]` is not needed: the processor only looks at `<think>` / `</think>`).

    State. Each step derives the state from `input_ids` (a few vectorised ops over the generated tokens, no loop
    over rows), so beam search may reorder rows freely. Remembered are only the prompt length and per-row facts about
    the prompt, taken on the first call of a `generate` (rows of one prompt share them, beams included), and two
    host-side shortcuts that skip all work while no row can have spent its budget yet and while every row is outside
    a think block. A call whose length is not the previous one plus one, or with another number of rows, starts a
    new generation; call `reset()` if you reuse one instance across `generate` calls that could look like a
    continuation. Assisted / speculative decoding is not supported.
    """

    def __init__(
        self,
        thinking_budget: int | Sequence[int] | torch.Tensor,
        think_start_token_id: int,
        think_end_token_id: int,
        end_sequence_ids: Sequence[int] | None = None,
    ):
        budget = validate_thinking_budget(thinking_budget)
        end_sequence_ids = [think_end_token_id] if end_sequence_ids is None else [int(i) for i in end_sequence_ids]
        if not end_sequence_ids or end_sequence_ids[-1] != think_end_token_id:
            raise ValueError(
                f"end_sequence_ids must end with the </think> id {think_end_token_id}, got {end_sequence_ids}"
            )
        if think_start_token_id in end_sequence_ids or think_end_token_id in end_sequence_ids[:-1]:
            raise ValueError(
                f"end_sequence_ids may hold </think> ({think_end_token_id}) only at the end and <think> "
                f"({think_start_token_id}) nowhere, got {end_sequence_ids}"
            )
        self.thinking_budget = budget
        self.think_start_token_id = int(think_start_token_id)
        self.think_end_token_id = int(think_end_token_id)
        self.end_sequence_ids = end_sequence_ids
        self.reset()

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer,
        thinking_budget: int | Sequence[int] | torch.Tensor,
        early_stop_message: str | None = None,
    ) -> "ThinkingBudgetLogitsProcessor":
        """Looks up `<think>` / `</think>` in `tokenizer` (ValueError naming the missing ones).

        The closing sequence is `early_stop_message`'s tokens, then `</think>`; pass
        `early_stop_message=DEFAULT_EARLY_STOP_MESSAGE` for a ready-made one.
        """
        start_id, end_id = _think_token_ids(tokenizer)
        message_ids = tokenizer.encode(early_stop_message, add_special_tokens=False) if early_stop_message else []
        return cls(thinking_budget, start_id, end_id, end_sequence_ids=[*message_ids, end_id])

    def reset(self) -> None:
        """Forget the prompt; the next call is taken as the first step of a new `generate`."""
        self._prompt_len = None
        self._last_len = None
        self._rows = None

    def _start(self, input_ids: torch.LongTensor) -> None:
        """First call of a generation: `input_ids` is the (left-padded, expanded) prompt, `(rows, prompt_len)`."""
        rows, prompt_len = input_ids.shape
        device = input_ids.device
        budget = self.thinking_budget.to(device)
        if budget.numel() != 1 and budget.numel() != rows:
            if rows % budget.numel() != 0:
                raise ValueError(
                    f"thinking_budget has {budget.numel()} values but generate runs {rows} rows; pass one int, one "
                    f"value per prompt (rows = prompts x num_beams or x num_return_sequences) or one per row"
                )
            # generate expands each prompt into rows // prompts consecutive rows (beams / return sequences)
            budget = budget.repeat_interleave(rows // budget.numel())
        self._budget = budget.expand(rows)

        opening = self._open_block_start(input_ids)
        prompt_open = opening >= 0
        self._prompt_thinking = torch.where(prompt_open, prompt_len - 1 - opening, 0)
        # Before a tag is generated, the "last tag" code of a row is -1 if its prompt left a block open, else -2,
        # so that `code & 1` tells open (1) from closed (0) for every code (see __call__).
        self._no_tag_code = torch.where(prompt_open, -1, -2)
        self._end_sequence = torch.tensor(self.end_sequence_ids, device=device)
        self._prompt_len, self._rows = prompt_len, rows
        # Host-side shortcuts, so most steps cost no device work. Forcing needs `budget` reasoning tokens in the
        # row, and a row holds at most `steps + prompt reasoning` of them: nothing can happen before this step.
        self._first_possible_step = int((budget - self._prompt_thinking).clamp(min=0).min())
        # All rows outside any think block stay so until one generates <think>, whatever beam search reorders.
        self._all_closed = not bool(prompt_open.any())

    def _open_block_start(self, ids: torch.LongTensor) -> torch.Tensor:
        """Per row, the position of the `<think>` that opened a block still open at the end of `ids`, else -1: the
        first `<think>` after the last `</think>` (later `<think>`s inside the block are reasoning text)."""
        length = ids.shape[1]
        position = torch.arange(length, device=ids.device)
        last_end = torch.where(ids == self.think_end_token_id, position, -1).amax(dim=1, keepdim=True)
        after_end = (ids == self.think_start_token_id) & (position > last_end)
        first = torch.where(after_end, position, length).amin(dim=1)
        return torch.where(first < length, first, -1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, length = input_ids.shape
        if self._last_len is None or length != self._last_len + 1 or rows != self._rows:
            self._start(input_ids)
        self._last_len = length
        steps = length - self._prompt_len
        if steps < self._first_possible_step:
            self._all_closed = self._all_closed and steps == 0  # not followed while skipping: unknown
            return scores
        if self._all_closed and (steps == 0 or not bool((input_ids[:, -1] == self.think_start_token_id).any())):
            return scores

        used, last = self._prompt_thinking, self._no_tag_code  # reasoning so far (all blocks), opening tag code
        if steps:
            generated = input_ids[:, self._prompt_len :]  # (rows, steps)
            is_start = generated == self.think_start_token_id
            is_end = generated == self.think_end_token_id
            position = torch.arange(0, 2 * steps, 2, device=input_ids.device)
            # Code of the last tag at or before each step: 2*pos+1 for <think>, 2*pos for </think>; odd = inside.
            no_tag = self._no_tag_code[:, None]
            last_tag = torch.where(is_start, position + 1, torch.where(is_end, position, no_tag)).cummax(dim=1).values
            inside = last_tag & 1
            # A <think> opens a block only from outside one; inside a block it is reasoning text like any other.
            was_inside = torch.cat([no_tag & 1, inside[:, :-1]], dim=1)
            is_opening = is_start & (was_inside == 0)
            # tokens inside a block, not counting the opening <think>s
            used = used + inside.sum(dim=1) - is_opening.sum(dim=1)
            # code of the last opening <think> or </think>: odd while its block is open, and (code >> 1) = its step
            opening_code = torch.where(is_opening, position + 1, torch.where(is_end, position, no_tag))
            last = opening_code.amax(dim=1)

        is_open = (last & 1).bool()
        in_prompt_block = last < 0
        # Tokens of the current (open) block after its <think>, prompt part included.
        block = torch.where(in_prompt_block, steps + self._prompt_thinking, steps - 1 - (last >> 1))
        prompt_part = torch.where(in_prompt_block, self._prompt_thinking, 0)
        # Where forcing starts inside this block: what is left of the budget, or now if the prompt already overran it.
        allowed = torch.maximum(self._budget - (used - block), prompt_part)
        forced_index = block - allowed
        force = is_open & (forced_index >= 0)
        any_open, any_forced = torch.stack([is_open.any(), force.any()]).tolist()
        self._all_closed = not any_open
        if not any_forced:
            return scores

        forced_token = self._end_sequence[forced_index.clamp(0, len(self.end_sequence_ids) - 1)]
        rows_to_force = force.nonzero().squeeze(1)
        scores = scores.clone()  # generate keeps the unprocessed logits when `output_logits=True`
        scores[rows_to_force] = -float("inf")
        scores[rows_to_force, forced_token[rows_to_force]] = 0.0
        return scores


def build_thinking_budget_processor(
    config_or_generation_config,
    thinking_budget: int | Sequence[int] | torch.Tensor,
    end_sequence_ids: Sequence[int] | None = None,
) -> ThinkingBudgetLogitsProcessor:
    """The processor `generate(thinking_budget=...)` adds, with ids from a config / generation config.

    Reads `think_start_token_id`, `think_end_token_id` and, when `end_sequence_ids` is not given, the optional
    `thinking_end_sequence_ids`.
    """
    start_id = getattr(config_or_generation_config, "think_start_token_id", None)
    end_id = getattr(config_or_generation_config, "think_end_token_id", None)
    if start_id is None or end_id is None:
        raise ValueError(
            f"thinking_budget needs think_start_token_id and think_end_token_id on the "
            f"{type(config_or_generation_config).__name__}, got {start_id} and {end_id}; set them to the ids of "
            f"{THINK_START_TOKEN!r} and {THINK_END_TOKEN!r}"
        )
    if end_sequence_ids is None:
        end_sequence_ids = getattr(config_or_generation_config, "thinking_end_sequence_ids", None)
    return ThinkingBudgetLogitsProcessor(thinking_budget, start_id, end_id, end_sequence_ids=end_sequence_ids)


# ---------------------------------------------------------------------------------------------------- parsing

def response_template(eos_token: str | None = "</s>") -> dict:
    """The BlueLM `response_template` (transformers' declarative response parsing) for a tokenizer whose EOS is
    `eos_token`: the one definition of how a completion splits into `reasoning_content` and `content`.

    Saved as `response_template` in `tokenizer_config.json`, it is what `tokenizer.parse_response`,
    `processor.parse_response`, `transformers serve` (`reasoning_content` in its replies), `parse_response` below and
    the vLLM `bluelm` reasoning parser all follow:

    - the message starts after the last `[|AI|]:` (and its `[|BlueThink|]`) of the prompt passed as `prefix`;
    - `<think>...</think>` is `reasoning_content` (a cut-off block without `</think>` too);
    - `content` is the text after the last `</think>`. A second `</think>` after the block was closed means the
      model went on reasoning after its thinking was closed (what a thinking budget does: the forced `</think>`
      interrupts the reasoning and the model closes it again by itself), so the text before it is not the answer:
      `<think>a</think>so 2</think>2` has content `2`, not `so 22`;
    - everything from the EOS on (padding of a batched row included) is dropped; an EOS inside a think block ends
      it too.
    """
    think_end = re.escape(THINK_END_TOKEN)
    end_of_message = f"|{re.escape(eos_token)}[\\s\\S]*" if eos_token else ""
    return {
        "defaults": {"role": "assistant"},
        "start_anchor": [AI_TOKEN, AI_TOKEN + THINK_MODE_TOKEN],
        "fields": {
            "reasoning_content": {
                "open": THINK_START_TOKEN,
                "close_pattern": f"(?:{think_end}{end_of_message})",
                "content": "text",
            },
            "content": {"close_pattern": f"\\s*(?:{think_end}{end_of_message})", "content": "text"},
        },
    }


@functools.lru_cache(maxsize=8)
def _compiled_response_template(eos_token: str | None):
    from transformers.utils.chat_parsing.response_templates import load_response_template

    return load_response_template(response_template(eos_token))


def parse_response(text: str, eos_token: str | None = "</s>", prefix: str = "") -> dict:
    """Splits a completion into `{"reasoning_content": str | None, "content": str}` with `response_template`.

    `prefix` is the prompt (or its end) when the completion starts inside a think block (`r</think>a` after a prompt
    ending in `<think>` gives reasoning `r`). Both fields are stripped; `reasoning_content` is None when there is no
    reasoning. `eos_token` is the tokenizer's EOS (`tokenizer.eos_token`).
    """
    from transformers.utils.chat_parsing import parse_response as parse_with_template

    text = text.replace(THINK_MODE_TOKEN, "")
    parsed = parse_with_template(text, _compiled_response_template(eos_token), prefix=prefix)
    return {"reasoning_content": parsed.get("reasoning_content") or None, "content": parsed.get("content", "")}


# ---------------------------------------------------------------------------------------------------- streaming


class ThinkingChunk(NamedTuple):
    """One streaming event. `kind` "reasoning" / "answer": append `text` to that field; "reasoning_replace" /
    "answer_replace": the field is now `text` (what was streamed for it so far was not that field: see
    `ThinkingStreamParser`); "prompt": the prompt's text (`ThinkingStreamer(skip_prompt=False)`)."""

    kind: str
    text: str


class ThinkingStreamParser:
    """`parse_response` for a stream: feed text deltas, get `ThinkingChunk`s; replaying them (append, or replace for
    the `*_replace` kinds) gives `parse_response` of the text so far, for any chunking of it.

    It does not repeat the rule: each `feed` parses the text so far with `parse_response` (holding back a tail that
    could still become `<think>`, `</think>` or the EOS) and emits the difference from what it already emitted.
    The difference is an append, except when the rule itself changes an earlier field: a `</think>` after the block
    was closed makes the answer so far reasoning that went on (content is what follows the last `</think>`), so
    `<think>a</think>so 2` then `</think>2` streams "so 2" as answer, then `answer_replace` "" and "2". Consumers
    that can redraw (the Space) apply it; the CLI prints that the answer restarts. vLLM's OpenAI deltas cannot be
    taken back (see `bluelm_hf.serving.vllm.BlueLMReasoningParser`).
    """

    def __init__(self, eos_token: str | None = "</s>", prefix: str = ""):
        self.eos_token, self.prefix = eos_token, prefix
        self.text = ""
        self.emitted = {"reasoning": "", "answer": ""}
        self._markers = [m for m in (THINK_START_TOKEN, THINK_END_TOKEN, THINK_MODE_TOKEN, eos_token) if m]

    def feed(self, delta: str) -> list[ThinkingChunk]:
        self.text += delta
        return self._emit(self._settled(self.text))

    def finish(self) -> list[ThinkingChunk]:
        return self._emit(self.text)

    def _settled(self, text: str) -> str:
        """`text` without a tail that is the start of a marker (it may still become one)."""
        for cut in range(min(len(text), max(map(len, self._markers)) - 1), 0, -1):
            tail = text[-cut:]
            if any(m.startswith(tail) and m != tail for m in self._markers):
                return text[:-cut]
        return text

    def _emit(self, text: str) -> list[ThinkingChunk]:
        parsed = parse_response(text, eos_token=self.eos_token, prefix=self.prefix)
        chunks = []
        for kind, value in (("reasoning", parsed["reasoning_content"] or ""), ("answer", parsed["content"])):
            old = self.emitted[kind]
            if value.startswith(old):
                if len(value) > len(old):
                    chunks.append(ThinkingChunk(kind, value[len(old) :]))
            else:
                chunks.append(ThinkingChunk(f"{kind}_replace", value))
            self.emitted[kind] = value
        return chunks


class ThinkingStreamer(TextIteratorStreamer):
    """A `TextIteratorStreamer` whose iterator yields `ThinkingChunk`s (see there), parsed by `ThinkingStreamParser`.

    ```python
    streamer = ThinkingStreamer(tokenizer)
    Thread(target=model.generate, kwargs=dict(**inputs, streamer=streamer)).start()
    for kind, text in streamer:
        ...
    ```

    Replaying the chunks gives `parse_response` of the completion: reasoning and answer stripped, the tags and the
    EOS dropped, the answer what follows the last `</think>` (an `answer_replace` chunk when a later `</think>`
    turns the answer so far into reasoning). `<think>` / `</think>` must be single tokens (ValueError otherwise): they
    go to the parser as soon as they are generated, with the text held back before them; the text between them is
    decoded as `TextIteratorStreamer` does (`skip_special_tokens=True` by default). The prompt (the first `put` from
    `generate`) sets the parser's
    `prefix`: a prompt ending inside an open `<think>` starts in reasoning (its own reasoning is not repeated); with `skip_prompt=False` its text is
    emitted first, as kind "prompt". Batch size 1 only.
    """

    def __init__(self, tokenizer, skip_prompt: bool = True, timeout: float | None = None, **decode_kwargs):
        decode_kwargs.setdefault("skip_special_tokens", True)
        super().__init__(tokenizer, skip_prompt=False, timeout=timeout, **decode_kwargs)
        self.think_start_token_id, self.think_end_token_id = _think_token_ids(tokenizer)
        self._tags = {self.think_start_token_id: THINK_START_TOKEN, self.think_end_token_id: THINK_END_TOKEN}
        self._emit_prompt = not skip_prompt
        self._parser = ThinkingStreamParser(tokenizer.eos_token)

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1 and value.shape[0] > 1:
            raise ValueError(f"ThinkingStreamer supports batch size 1, got {value.shape[0]} rows")
        ids = value.reshape(-1).tolist()
        if self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            # a prompt ending inside an open <think> (continuing a cut-off reasoning): the completion is reasoning
            tags = [i for i in ids if i in self._tags]
            inside = bool(tags) and tags[-1] == self.think_start_token_id
            self._parser = ThinkingStreamParser(self.tokenizer.eos_token, prefix=THINK_START_TOKEN if inside else "")
            if self._emit_prompt:
                prompt = self.tokenizer.decode(ids, **self.decode_kwargs)
                self.text_queue.put(ThinkingChunk("prompt", prompt), timeout=self.timeout)
            return
        run = []
        for token in ids:
            if token in self._tags:  # the text so far, then the tag, to the parser (tags are never held back)
                self._put_text_tokens(run)
                run = []
                self._flush()
                self._send(self._parser.feed(self._tags[token]))
            else:
                run.append(token)
        self._put_text_tokens(run)

    def _put_text_tokens(self, ids: list[int]) -> None:
        if ids:
            # TextStreamer.put decodes the cache and emits up to the last word boundary via on_finalized_text
            super().put(torch.tensor(ids))

    def _flush(self) -> None:
        """Emits the text held back at a word boundary, so it reaches the parser before a tag."""
        if self.token_cache:
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            self.on_finalized_text(text[self.print_len :])
            self.token_cache, self.print_len = [], 0

    def _send(self, chunks: list[ThinkingChunk]) -> None:
        for chunk in chunks:
            self.text_queue.put(chunk, timeout=self.timeout)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self._send(self._parser.feed(text) + (self._parser.finish() if stream_end else []))
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)
            self.next_tokens_are_prompt = True


__all__ = [
    "DEFAULT_EARLY_STOP_MESSAGE",
    "ThinkingBudgetLogitsProcessor",
    "ThinkingChunk",
    "ThinkingStreamParser",
    "ThinkingStreamer",
    "build_thinking_budget_processor",
    "parse_response",
    "response_template",
    "validate_thinking_budget",
]
