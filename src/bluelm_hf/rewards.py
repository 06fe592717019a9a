"""Rule-based GRPO rewards of BlueLM-2.5-3B: accuracy, format, repetition and Group Overlong.

BlueLM-2.5-3B's RLVR stage scores completions with rules (correctness, format, repetition, length); its length
term, "Group Overlong", curbs over-thinking relative to the other samples of the same prompt. The paper gives no
formula for it; `group_overlong_reward` is ours (see its docstring).

Every reward is a TRL reward function, `fn(prompts, completions, **columns) -> list[float | None]`, one value per
completion, so it plugs into `GRPOTrainer(reward_funcs=...)` as is:

- `accuracy_reward`: 1.0 if the answer (the text after `</think>`) matches the `answer` column, else 0.0.
- `format_reward`: 1.0 if the completion has the shape its mode asks for, else 0.0.
- `repetition_reward`: `max_penalty` times the share of repeated word n-grams (0 for a completion without any).
- `group_overlong_reward`: the Group Overlong length penalty, in `[-length_penalty, 0]`.
- `build_reward_funcs(weights)`: the functions and weights for `GRPOConfig.reward_weights`, from names.

What TRL (1.16, `GRPOTrainer._calculate_rewards`) passes: `prompts` (strings, or message lists for
conversational datasets; images sit in the messages' content blocks as PIL images), `completions` (strings, or
`[{"role": "assistant", "content": ...}]`), `completion_ids` (token ids of each completion, eos included when it
was generated), every dataset column but `prompt` as a list (e.g. `answer`), and `trainer_state`, `log_extra`,
`log_metric` (and `environments` with environment factories). The G completions of one prompt are the same
prompt repeated G times, usually but not necessarily next to each other, which is why the group reward groups by
prompt content rather than by position.

Completions are decoded with `skip_special_tokens=True`; BlueLM keeps `<think>` / `</think>` as non-special
tokens so they survive it. Where completions still carry the EOS string (decoded without skipping), pass
`eos_token=tokenizer.eos_token` (to each reward, or once to `build_reward_funcs`) and it is removed first.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from .configuration_bluelm_v import AI_TOKEN, HUMAN_TOKEN, THINK_END_TOKEN, THINK_MODE_TOKEN, THINK_START_TOKEN
from .thinking import parse_response

# Markup the chat template never puts inside an assistant turn: finding one means the model wrote a second turn
# or a stray mode switch.
_FOREIGN_MARKUP = (THINK_MODE_TOKEN, HUMAN_TOKEN, AI_TOKEN)

ScoreFn = Callable[[str, str], "bool | float"]


# ------------------------------------------------------------------------------------------------ completions


def _content_text(content: Any) -> str:
    """Text of a message `content`: a string, or content blocks of which the `{"type": "text"}` ones count."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        return "".join(
            block["text"]
            for block in content
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
        )
    return ""


def completion_text(completion: Any, eos_token: str | None = None) -> str:
    """The text of one completion in either TRL format, with every `eos_token` (if given) removed.

    A string is returned as is. For conversational completions (a list of messages) it is the last assistant
    message's text; a `reasoning_content` field (what a tokenizer's response parser splits off) is put back as
    `<think>reasoning</think>` in front of the content, so every reward reads one format. Anything else (`None`,
    no assistant message, garbage) is the empty string.
    """
    if isinstance(completion, str):
        return completion.replace(eos_token, "") if eos_token else completion
    if isinstance(completion, dict):
        message = completion
    elif isinstance(completion, (list, tuple)):
        assistant = [m for m in completion if isinstance(m, dict) and m.get("role", "assistant") == "assistant"]
        if not assistant:
            return ""
        message = assistant[-1]
    else:
        return ""
    text = _content_text(message.get("content"))
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning.strip() and THINK_END_TOKEN not in text:
        text = f"{THINK_START_TOKEN}{reasoning}{THINK_END_TOKEN}{text}"
    return completion_text(text, eos_token)


def answer_text(completion: Any, eos_token: str | None = None) -> str:
    """The answer part of a completion: the text outside `<think>...</think>` (empty if thinking was cut off)."""
    return parse_response(completion_text(completion, eos_token), eos_token=None)["content"]


# ------------------------------------------------------------------------------------------------ accuracy

_SURROUNDING_PUNCTUATION = re.compile(r"^[\s.,!?:;\"'。]+|[\s.,!?:;\"'。]+$")
# Plain decimals ("3", "-3.0", ".5", "1,000") and simple fractions ("1/2"). No exponents: "1e999999999" would make
# Fraction build a billion-digit integer.
_NUMBER = re.compile(r"[+-]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+|\d+/\d+)", re.ASCII)


def normalize_answer(text: str) -> str:
    """NFKC (full-width digits and punctuation become ASCII), lower case, whitespace collapsed, surrounding
    punctuation stripped. The one answer normalisation (`nano_task.score` uses it too)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _SURROUNDING_PUNCTUATION.sub("", " ".join(text.split()))


def parse_number(text: str) -> Fraction | None:
    """The exact value of an answer that is one plain number ("3", " 3.0 ", "1,000", "-.5", "1/2"), else None."""
    text = unicodedata.normalize("NFKC", text).strip().rstrip(".。")
    if len(text) > 100 or not _NUMBER.fullmatch(text):
        return None
    try:
        return Fraction(text.replace(",", ""))
    except ZeroDivisionError:  # "1/0"
        return None


def answers_match(prediction: str, reference: str) -> bool:
    """Normalised exact match, or the same number ("3" == "3.0" == " 3 " == "6/2"). An empty answer never matches."""
    normalized = normalize_answer(prediction)
    if not normalized:
        return False
    if normalized == normalize_answer(reference):
        return True
    value = parse_number(prediction)
    return value is not None and value == parse_number(reference)


def accuracy_reward(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    answer: Sequence[Any],
    score_fn: ScoreFn | None = None,
    eos_token: str | None = None,
    **kwargs,
) -> list[float | None]:
    """1.0 if a completion's answer part matches its row's `answer`, else 0.0; None where `answer` is None.

    The answer part is the text after `</think>` (`answer_text`), so a completion cut off inside its reasoning
    scores 0. `score_fn(answer_part, reference) -> bool | float` replaces the default `answers_match`, e.g.
    `nano_task.score`; non-string references are passed as `str(reference)`.
    """
    if answer is None or len(answer) != len(completions):
        got = "no `answer` column" if answer is None else f"{len(answer)} answers"
        raise ValueError(
            f"accuracy needs one reference answer per completion: got {got} for {len(completions)} completions"
        )
    score_fn = score_fn or answers_match
    rewards: list[float | None] = []
    for completion, reference in zip(completions, answer):
        if reference is None:
            rewards.append(None)  # TRL turns None into NaN, which leaves the row out of this reward
        else:
            rewards.append(float(score_fn(answer_text(completion, eos_token), str(reference))))
    return rewards


# ------------------------------------------------------------------------------------------------ format


def thinking_mode(prompt: Any, flag: Any = None) -> bool | None:
    """Whether a row is in thinking mode: True, False, or None (unknown).

    1. `flag` (the row's `thinking` column), if it is a bool;
    2. a string prompt: thinking iff it ends with `[|BlueThink|]` (what the chat template appends with
       `enable_thinking=True`);
    3. otherwise unknown. A conversational prompt carries no reliable cue: BlueLM's template switches thinking on
       with the `enable_thinking` template kwarg (`GRPOConfig.chat_template_kwargs`), which never appears in the
       messages.
    """
    if isinstance(flag, bool):
        return flag
    if isinstance(prompt, str):
        return prompt.rstrip().endswith(THINK_MODE_TOKEN)
    return None


def is_well_formed(text: str, thinking: bool) -> bool:
    """Whether a completion's text (EOS removed) has the shape of its mode (see `format_reward`). The one
    definition: `evaluation.evaluate_nano` counts `well_formed` with it."""
    text = text.strip()
    if any(marker in text for marker in _FOREIGN_MARKUP):
        return False
    if not thinking:
        return bool(text) and THINK_START_TOKEN not in text and THINK_END_TOKEN not in text
    if not text.startswith(THINK_START_TOKEN) or text.count(THINK_START_TOKEN) != 1:
        return False
    reasoning, closed, answer = text[len(THINK_START_TOKEN) :].partition(THINK_END_TOKEN)
    # Non-empty reasoning: the chat template renders an empty think block as a non-thinking turn.
    return bool(closed) and THINK_END_TOKEN not in answer and bool(reasoning.strip()) and bool(answer.strip())


def format_reward(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    thinking: Sequence[Any] | bool | None = None,
    eos_token: str | None = None,
    **kwargs,
) -> list[float]:
    """1.0 if a completion has the shape of its mode, else 0.0.

    - thinking mode: `<think>reasoning</think>answer`: one think block at the very start, non-empty reasoning,
      non-empty answer, no other think tag;
    - non-thinking mode: a non-empty answer without any think tag;
    - in both, none of `[|BlueThink|]`, `[|Human|]:`, `[|AI|]:`; surrounding whitespace and `eos_token` are ignored;
    - unknown mode (conversational prompt and no bool `thinking`): either shape counts.

    The mode comes from `thinking_mode(prompt, flag)`. `thinking` is a dataset column (one bool per row; other
    values, e.g. reasoning traces, are ignored) or one bool for every row, e.g.
    `build_reward_funcs(..., options={"format": {"thinking": True}})` to mirror `chat_template_kwargs` (a dataset
    column named `thinking` replaces that option).
    """
    flags = thinking if isinstance(thinking, (list, tuple)) and len(thinking) == len(completions) else None
    prompts = prompts if prompts is not None and len(prompts) == len(completions) else [None] * len(completions)
    rewards = []
    for i, completion in enumerate(completions):
        text = completion_text(completion, eos_token)
        mode = thinking_mode(prompts[i], flags[i] if flags is not None else thinking)
        modes = (True, False) if mode is None else (mode,)
        rewards.append(float(any(is_well_formed(text, m) for m in modes)))
    return rewards


# ------------------------------------------------------------------------------------------------ repetition

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
# Whitespace words, except that CJK characters (written without spaces) are one word each.
_WORD = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


def repetition_reward(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    ngram_size: int = 3,
    max_penalty: float = -1.0,
    eos_token: str | None = None,
    **kwargs,
) -> list[float]:
    """`max_penalty * (1 - unique n-grams / n-grams)` over a completion's lower-cased words, in `[max_penalty, 0]`.

    The open-r1 `get_repetition_penalty_reward` (Demystifying Long CoT, arXiv 2502.03373, App. C.2) on whitespace
    words, with each CJK character a word. The whole completion counts, reasoning included: looping reasoning is
    the repetition that matters. Completions with fewer than `ngram_size` words get 0.
    """
    if not (isinstance(ngram_size, int) and ngram_size >= 1):
        raise ValueError(f"ngram_size must be a positive int, got {ngram_size!r}")
    if not (math.isfinite(max_penalty) and max_penalty <= 0):
        raise ValueError(f"max_penalty must be <= 0 (it is the reward of a fully repetitive text), got {max_penalty}")
    rewards = []
    for completion in completions:
        words = _WORD.findall(completion_text(completion, eos_token).lower())
        if len(words) < ngram_size:
            rewards.append(0.0)
            continue
        ngrams = list(zip(*(words[i:] for i in range(ngram_size))))
        repeated = 1.0 - len(set(ngrams)) / len(ngrams)
        rewards.append(repeated * max_penalty if repeated else 0.0)
    return rewards


# ------------------------------------------------------------------------------------------------ Group Overlong


def _feed(digest: Any, obj: Any) -> None:
    """Feeds `obj`'s content to a hash, type-tagged and length-prefixed so different structures never collide."""

    def put(tag: bytes, data: bytes) -> None:
        digest.update(tag + len(data).to_bytes(8, "little") + data)

    if obj is None or isinstance(obj, (bool, int, float)):
        put(b"v", repr(obj).encode())
    elif isinstance(obj, str):
        put(b"s", obj.encode("utf-8", "surrogatepass"))
    elif isinstance(obj, (bytes, bytearray)):
        put(b"b", bytes(obj))
    elif isinstance(obj, dict):
        put(b"d", str(len(obj)).encode())
        for key in sorted(obj, key=repr):
            _feed(digest, key)
            _feed(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        put(b"l", str(len(obj)).encode())
        for item in obj:
            _feed(digest, item)
    elif hasattr(obj, "tobytes"):  # PIL image or numpy array: its pixels, not its (per-object) repr
        shape = (getattr(obj, "mode", None), getattr(obj, "size", None), str(getattr(obj, "dtype", "")))
        put(b"a", repr(shape).encode() + b"|" + obj.tobytes())
    elif hasattr(obj, "detach") and hasattr(obj, "cpu"):  # torch tensor
        _feed(digest, obj.detach().cpu().numpy())
    else:
        put(b"r", repr(obj).encode())


def prompt_key(prompt: Any) -> str:
    """A stable fingerprint of a prompt's content: text, message structure and image pixels.

    Two rows get the same key iff their prompts are equal in content, so the G copies TRL makes of one prompt
    (which may be distinct objects, e.g. images decoded twice) share a key. Objects without a byte form fall back
    to `repr`.
    """
    digest = hashlib.blake2b(digest_size=16)
    _feed(digest, prompt)
    return digest.hexdigest()


def group_keys(prompts: Sequence[Any] | None, n: int, prompt_id: Sequence[Any] | None = None) -> list[str]:
    """The group of each of `n` rows: its `prompt_id` if that column is given, else `prompt_key(prompt)`."""
    if prompt_id is not None and len(prompt_id) == n:
        return [prompt_key(("prompt_id", i)) for i in prompt_id]
    if prompts is None or len(prompts) != n:
        raise ValueError(
            f"Group Overlong needs the prompts (or a `prompt_id` column) to find each completion's group; got "
            f"{'no prompts' if prompts is None else f'{len(prompts)} prompts'} for {n} completions"
        )
    return [prompt_key(p) for p in prompts]


def completion_lengths(
    completions: Sequence[Any], completion_ids: Sequence[Any] | None = None, eos_token: str | None = None
) -> list[int]:
    """Length of each whole completion: tokens from `completion_ids` if given (TRL always gives them), else
    characters of the text without `eos_token`."""
    if completion_ids is not None and len(completion_ids) == len(completions):
        return [len(ids) if ids is not None else 0 for ids in completion_ids]
    return [len(completion_text(c, eos_token)) for c in completions]


def soft_overlong_punishment(length: int, max_length: int, cache_length: int = 0) -> float:
    """DAPO's soft overlong punishment (arXiv 2503.14476, Eq. 13), in `[-1, 0]`: 0 up to `max_length -
    cache_length`, then linear down to -1 at `max_length`, -1 beyond. `cache_length=0` is a hard cap."""
    start = max_length - cache_length
    if length <= start:
        return 0.0
    if length > max_length:
        return -1.0
    return (start - length) / cache_length


def group_overlong_reward(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    answer: Sequence[Any],
    completion_ids: Sequence[Any] | None = None,
    length_penalty: float = 0.5,
    tolerance: float = 0.0,
    max_length: int | None = None,
    cache_length: int = 0,
    score_fn: ScoreFn | None = None,
    eos_token: str | None = None,
    **kwargs,
) -> list[float]:
    r"""Group Overlong (BlueLM-2.5-3B's RLVR length term; the paper gives no formula, this one is ours): penalise a
    correct completion for the share of its length beyond the shortest correct completion of its group.

        r_i = -length_penalty * max(0, L_i - (1 + tolerance) * min(C_g)) / L_i     if i is correct
        r_i = 0                                                                    if i is incorrect

    L_i: completion i's length in tokens (`completion_lengths`); C_g: lengths of the correct completions of i's
    group (same `prompt_id`, else same prompt content, `group_keys`). With `max_length`, DAPO's
    `soft_overlong_punishment` (arXiv 2503.14476) is added to every completion. r_i is in [-length_penalty, 0].
    Why this shape, against Kimi k1.5's length penalty (arXiv 2501.12599): docs/rewards.md.
    """
    if not (math.isfinite(length_penalty) and length_penalty >= 0):
        raise ValueError(f"length_penalty must be >= 0, got {length_penalty}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be >= 0 (a share of the shortest correct length), got {tolerance}")
    cap_ok = isinstance(max_length, int) and max_length > 0 and isinstance(cache_length, int)
    if max_length is not None and not (cap_ok and 0 <= cache_length <= max_length):
        raise ValueError(
            f"the overlong cap needs an int max_length > 0 and an int cache_length in [0, max_length], got "
            f"max_length={max_length!r}, cache_length={cache_length!r}"
        )
    scores = accuracy_reward(prompts, completions, answer, score_fn=score_fn, eos_token=eos_token)
    correct = [r is not None and r >= 1.0 for r in scores]
    lengths = completion_lengths(completions, completion_ids, eos_token)
    keys = group_keys(prompts, len(completions), kwargs.get("prompt_id"))

    shortest_correct: dict[str, int] = {}
    for key, length, ok in zip(keys, lengths, correct):
        if ok:
            shortest_correct[key] = min(length, shortest_correct.get(key, length))
    rewards = []
    for key, length, ok in zip(keys, lengths, correct):
        excess = length - (1 + tolerance) * shortest_correct[key] if ok else 0
        reward = -length_penalty * excess / length if excess > 0 else 0.0
        if max_length is not None:
            reward += soft_overlong_punishment(length, max_length, cache_length)
        rewards.append(reward)
    return rewards


# ------------------------------------------------------------------------------------------------ composition

REWARD_FUNCS: dict[str, Callable[..., list]] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "repetition": repetition_reward,
    "group_overlong": group_overlong_reward,
}
_NOT_OPTIONS = ("prompts", "completions", "answer", "completion_ids", "kwargs")


def get_reward_func(name: str, **options: Any) -> Callable[..., list]:
    """The reward called `name` with `options` bound (e.g. `get_reward_func("repetition", ngram_size=4)`).

    With options it is a `functools.partial` (picklable, which TRL's async GRPO needs) that keeps the function's
    `__name__`, the key TRL logs rewards under. ValueError for an unknown name or option, or a bad option value.
    """
    if name not in REWARD_FUNCS:
        raise ValueError(f"unknown reward {name!r}; valid names are {list(REWARD_FUNCS)}")
    func = REWARD_FUNCS[name]
    if not options:
        return func
    valid = [p for p in inspect.signature(func).parameters if p not in _NOT_OPTIONS]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"the {name!r} reward has no option(s) {unknown}; its options are {valid}")
    reward = functools.update_wrapper(functools.partial(func, **options), func)
    reward(prompts=[], completions=[], answer=[])  # bad values raise now, not after the first generation
    return reward


def build_reward_funcs(
    weights: dict[str, float],
    *,
    score_fn: ScoreFn | None = None,
    eos_token: str | None = None,
    options: dict[str, dict[str, Any]] | None = None,
) -> tuple[list[Callable[..., list]], list[float]]:
    """Reward functions and their weights, in `weights`' order, for `GRPOTrainer(reward_funcs=...)` and
    `GRPOConfig(reward_weights=...)`.

    weights: reward name -> weight; names are those of `REWARD_FUNCS` ("accuracy", "format", "repetition",
        "group_overlong").
    score_fn: answer scorer shared by "accuracy" and "group_overlong" (default `answers_match`).
    eos_token: the tokenizer's EOS string (`tokenizer.eos_token`), removed from completions by every reward.
    options: reward name -> options of that reward, e.g. `{"group_overlong": {"max_length": 1024,
        "cache_length": 256}}`.
    """
    options = dict(options or {})
    unknown = sorted(set(weights) - set(REWARD_FUNCS)) + sorted(set(options) - set(REWARD_FUNCS))
    if unknown:
        raise ValueError(f"unknown reward name(s) {unknown}; valid names are {list(REWARD_FUNCS)}")
    if not weights:
        raise ValueError(f"no rewards given; pick weights for some of {list(REWARD_FUNCS)}")
    unused = sorted(set(options) - set(weights))
    if unused:
        raise ValueError(f"options given for {unused}, which have no weight; add them to the weights or drop them")
    funcs, values = [], []
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"the weight of {name!r} must be a finite number, got {weight!r}")
        name_options = dict(options.get(name, {}))
        if score_fn is not None and name in ("accuracy", "group_overlong"):
            name_options.setdefault("score_fn", score_fn)
        if eos_token is not None:
            name_options.setdefault("eos_token", eos_token)
        funcs.append(get_reward_func(name, **name_options))
        values.append(float(weight))
    return funcs, values


__all__ = [
    "REWARD_FUNCS",
    "accuracy_reward",
    "answer_text",
    "answers_match",
    "build_reward_funcs",
    "completion_lengths",
    "completion_text",
    "format_reward",
    "get_reward_func",
    "group_keys",
    "group_overlong_reward",
    "is_well_formed",
    "normalize_answer",
    "parse_number",
    "prompt_key",
    "repetition_reward",
    "soft_overlong_punishment",
    "thinking_mode",
]
