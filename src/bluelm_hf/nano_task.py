"""The nano task: counting coloured cells in a strip, the synthetic task BlueLM-nano learns from scratch.

BlueLM-nano has to show, in miniature and after ~20-30 minutes of CPU training, what BlueLM-2.5-3B shows:
thinking mode beats non-thinking mode, and accuracy grows with the thinking budget. The task is built for
exactly that:

- **Image.** A strip of 2..8 cells (uniform) along the long side of a 1:4..4:1 image; each cell is a solid
  square or disk in one of five colours (:data:`COLOURS`) on a plain dark background. The short side is
  56..160 px and the long side up to 448 px with >= 44 px per cell, so a 4:1 strip is 224..448 x 56..112,
  many cells only come in long strips, and at nano's 112 px tile three quarters of the images span three
  or four AnyRes tiles along the strip (2..9 tiles with the thumbnail, ~5.5 on average): most answers
  need cells from several tiles. Sizes are almost never multiples of 112, so resize-and-pad runs, and
  cell size, position, shape and shade are jittered too. Cells are >= 24 px with >= 6 px background gaps,
  so each stays visible, and separate from its neighbours, after a bicubic resize to 112 px tiles.
- **Questions** (four kinds, a tiny regular vocabulary):

  ============  ===================================  ==================================  ======
  kind          question                             thinking trace                      answer
  ============  ===================================  ==================================  ======
  ``count``     How many red cells?                  red 1 blue red 2 green so 2         2
  ``count_any`` How many cells are red or blue?      red 1 blue 2 red 3 green so 3       3
  ``total``     How many cells?                      red 1 blue 2 red 3 green 4 so 4     4
  ``most``      Which colour is most common?         red 1 blue 1 red 2 green 1 so red   red
  ============  ===================================  ==================================  ======

  Those are the *concise* traces. Each also has a *verbose* form (:func:`thinking_trace` with
  ``style="verbose"``) that numbers every cell, ``cell 1 red 1 cell 2 blue cell 3 red 2 cell 4 green so 2``:
  the same reasoning at about twice the tokens. The shipped nano
  is trained on concise traces only; ``recipes/nano/nano_data.make_sft_dataset(verbose_ratio=0.7)`` (the Group
  Overlong ablation's SFT start) gives it both, mostly verbose, so that it over-thinks the way models distilled from long chains of thought
  do, and GRPO's Group Overlong has something real to cut.

  The trace names every cell in reading order (left to right, or top to bottom) and keeps a running tally:
  for counting questions a cell that matches gets the running count; for ``most`` every cell gets its
  colour's running count, and the answer is the colour that reaches the highest one. Each step is local
  (read the next cell, look up the previous tally, add one), so with thinking the answer is a copy of
  the last tally. Without thinking the model has to count implicitly over up to 36 image tokens, which a
  tiny model does much worse: that is the thinking/non-thinking gap. A trace cut short by a thinking
  budget stops mid-tally, so accuracy grows with the budget. Concise traces are 4..18 tokens under the
  nano's tokenizer (``recipes/nano/nano_data.train_tokenizer``), verbose ones 8..34.

- **Splits.** Train and eval never share a colour sequence: :func:`split_of` hashes the sequence
  (``"red blue red green"``) with BLAKE2b and sends :data:`EVAL_PERCENT` percent of all sequences to eval.
  The key is the image content alone, so no (image content, question) pair, and not even an image
  content, is in both splits; eval measures generalisation to unseen sequences, not memorisation.
  Samples are drawn by rejection (a draw whose sequence belongs to the other split is redrawn), so each
  split can be generated on its own, with any seed.
- **Determinism.** Sample ``i`` of seed ``s`` comes from ``numpy.random.default_rng([s, i])``: the same
  (seed, index) gives the same image bytes and texts whatever ``n`` is.

Chat format. Rows carry TRL's conversational VLM ``messages``: the user turn is an image block and a text
block; the assistant turn is one text block (the answer) with the trace in ``reasoning_content`` (``None``
in non-thinking mode, and on user turns). The chat template renders a non-empty ``reasoning_content`` as
``[|AI|]:[|BlueThink|]<think>{trace}</think>{answer}</s>`` and its absence as ``[|AI|]:{answer}</s>``, so
mixing rows of both kinds in one SFT set is BlueLM's thinking-mode fusion. Every message has the same
keys, and the image block carries ``"text": None``, because Arrow stores one schema per column.
"""

from __future__ import annotations

import hashlib
import io
import math
import numbers
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .rewards import normalize_answer

# Any two palette colours are >= 188 apart in L1 RGB distance (>= 68 after the per-cell jitter), and all
# are far from the dark background, so a 112 px tile's bicubic blur never turns one into another.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 48, 40),
    "green": (46, 170, 72),
    "blue": (44, 92, 224),
    "yellow": (238, 206, 46),
    "white": (236, 236, 236),
}
SHAPES = ("square", "disk")
TRACE_STYLES = ("concise", "verbose")
QUESTION_KINDS = ("count", "count_any", "total", "most")
# Draw probabilities of the kinds; a `most` draw whose sequence has a tied maximum becomes a `count`.
QUESTION_WEIGHTS = (0.35, 0.25, 0.2, 0.2)

TILE_SIZE = 112  # nano's ViT input side; sizes below are chosen relative to it
ASPECT_RATIOS = (1 / 4, 1 / 3, 1 / 2, 2 / 3, 1, 3 / 2, 2, 3, 4)  # width / height, before jitter
# The short side is 56..160 px and the long side at most 4 tiles: a 4:1 strip is 224..448 x 56..112, a square
# 88..160 px. Bounding the short side keeps images at <= 8 tiles + thumbnail (mean ~5.5) so nano trains
# fast on CPU, and puts many cells only in long strips, whose orientation is never in doubt.
SHORT_SIDE_RANGE = (56, 160)
MAX_LONG_SIDE = 4 * TILE_SIZE
MIN_CELLS, MAX_CELLS = 2, 8
MIN_SLOT = 44  # px of long side per cell: a strip of n cells is >= 44 n px long (8 cells: >= 352 px)
CELL_FILL = (0.55, 0.72)  # cell side as a fraction of its slot (or of the short side)
# How far a cell may move off-centre: along the strip, a fraction of its slot's free space; across it, a
# fraction of its own side, so that even in a square image the cells form a visible row (or column).
ALONG_JITTER, ACROSS_JITTER = 0.25, 0.3

EVAL_PERCENT = 10
NANO_TRAIN_SEED = 0
NANO_EVAL_SEED = 20_250_705
NANO_EVAL_SIZE = 500

EOS_TOKEN = "</s>"

ASSETS_DIR = Path(__file__).parent / "assets"
EXAMPLE_IMAGE_PATH = ASSETS_DIR / "example.png"


# --------------------------------------------------------------------------------------------- samples
@dataclass(frozen=True)
class Cell:
    colour: str
    shape: str
    rgb: tuple[int, int, int]
    box: tuple[int, int, int, int]  # (left, top, right, bottom) in pixels, right/bottom exclusive


@dataclass(frozen=True)
class NanoSample:
    """One image and one question about it. `cells` are in reading order (left to right, top to bottom)."""

    width: int
    height: int
    background: tuple[int, int, int]
    cells: tuple[Cell, ...]
    kind: str
    targets: tuple[str, ...]  # colours the question asks about, in question order (empty for total/most)

    @property
    def colours(self) -> tuple[str, ...]:
        return tuple(cell.colour for cell in self.cells)

    @property
    def question(self) -> str:
        return question_text(self.kind, self.targets)

    @property
    def thinking(self) -> str:
        """The concise trace."""
        return self.trace()

    def trace(self, style: str = "concise") -> str:
        return thinking_trace(self.colours, self.kind, self.targets, style)

    @property
    def answer(self) -> str:
        return answer_for(self.colours, self.kind, self.targets)

    def render(self) -> Image.Image:
        """The image, `width` x `height` RGB."""
        image = Image.new("RGB", (self.width, self.height), self.background)
        draw = ImageDraw.Draw(image)
        for cell in self.cells:
            # PIL boxes are inclusive on both ends.
            box = (cell.box[0], cell.box[1], cell.box[2] - 1, cell.box[3] - 1)
            if cell.shape == "square":
                draw.rectangle(box, fill=cell.rgb)
            else:
                draw.ellipse(box, fill=cell.rgb)
        return image


def question_text(kind: str, targets: Sequence[str] = ()) -> str:
    if kind == "count":
        return f"How many {targets[0]} cells?"
    if kind == "count_any":
        return f"How many cells are {targets[0]} or {targets[1]}?"
    if kind == "total":
        return "How many cells?"
    if kind == "most":
        return "Which colour is most common?"
    raise ValueError(f"unknown question kind {kind!r}; expected one of {QUESTION_KINDS}")


def _matches(kind: str, targets: Sequence[str]) -> set[str]:
    return set(COLOURS) if kind == "total" else set(targets)


def thinking_trace(colours: Sequence[str], kind: str, targets: Sequence[str] = (), style: str = "concise") -> str:
    """The reasoning: every cell in reading order with a running tally, then `so <answer>`.

    `style="concise"`: `red 1 blue red 2 green so 2`. `style="verbose"` numbers every cell as well, `cell 1 red 1
    cell 2 blue cell 3 red 2 cell 4 green so 2`: about twice the tokens, and not one fact the concise trace lacks
    (the position is a counter). It is the nano task's over-thinking, what GRPO's Group Overlong should learn to
    drop.
    """
    if style not in TRACE_STYLES:
        raise ValueError(f"unknown trace style {style!r}; expected one of {TRACE_STYLES}")
    words = []
    seen: Counter[str] = Counter()
    matches, tally = _matches(kind, targets), 0
    for position, colour in enumerate(colours, start=1):
        if style == "verbose":
            words += ["cell", str(position)]
        words.append(colour)
        if kind == "most":
            seen[colour] += 1
            words.append(str(seen[colour]))
        elif colour in matches:
            tally += 1
            words.append(str(tally))
    words += ["so", answer_for(colours, kind, targets)]
    return " ".join(words)


def most_common(colours: Sequence[str]) -> str | None:
    """The most common colour, or None when the maximum is shared."""
    ranked = Counter(colours).most_common(2)
    if len(ranked) == 2 and ranked[0][1] == ranked[1][1]:
        return None
    return ranked[0][0]


def answer_for(colours: Sequence[str], kind: str, targets: Sequence[str] = ()) -> str:
    if kind == "most":
        answer = most_common(colours)
        if answer is None:
            raise ValueError(f"'most' needs a unique most common colour; {' '.join(colours)} has a tie")
        return answer
    if kind not in QUESTION_KINDS:
        raise ValueError(f"unknown question kind {kind!r}; expected one of {QUESTION_KINDS}")
    matches = _matches(kind, targets)
    return str(sum(colour in matches for colour in colours))


# ------------------------------------------------------------------------------------------ splits
def content_key(colours: Sequence[str]) -> str:
    """What an image shows, for split purposes: its colour sequence in reading order."""
    return " ".join(colours)


def split_of(colours: Sequence[str]) -> str:
    """`"eval"` for EVAL_PERCENT % of colour sequences (by a BLAKE2b hash of the sequence), else `"train"`."""
    digest = hashlib.blake2b(content_key(colours).encode(), digest_size=8).digest()
    return "eval" if int.from_bytes(digest, "big") % 100 < EVAL_PERCENT else "train"


# ---------------------------------------------------------------------------------------- generator
def _draw_size(rng: np.random.Generator, n_cells: int) -> tuple[int, int]:
    """(width, height) of a strip that fits `n_cells` slots of >= MIN_SLOT px along its long side."""
    while True:
        ratio = ASPECT_RATIOS[rng.integers(len(ASPECT_RATIOS))] * float(np.exp(rng.uniform(-0.08, 0.08)))
        ratio = min(max(ratio, 1 / 4), 4.0)
        elongation = max(ratio, 1 / ratio)
        low = math.ceil(max(n_cells * MIN_SLOT, SHORT_SIDE_RANGE[0] * elongation))
        high = math.floor(min(MAX_LONG_SIDE, SHORT_SIDE_RANGE[1] * elongation))
        if low <= high:  # else too squat for this many cells: draw another ratio
            break
    long_side = int(rng.integers(low, high + 1))
    short_side = math.ceil(long_side / elongation)  # ceil: the ratio never passes 4:1
    return (long_side, short_side) if ratio >= 1 else (short_side, long_side)


def _byte(value) -> int:
    """`value` clamped to 0..255 (np.clip on a scalar costs 30x more, and this runs 2M times for nano's SFT set)."""
    return int(min(max(value, 0), 255))


def _layout(
    rng: np.random.Generator, width: int, height: int, colours: Sequence[str]
) -> tuple[tuple[int, int, int], tuple[Cell, ...]]:
    """Places the cells along the long axis, one per equal slot; returns (background rgb, cells)."""
    horizontal = width >= height
    long_side, short_side = (width, height) if horizontal else (height, width)
    slot = long_side / len(colours)
    grey = int(rng.integers(24, 73))
    background = tuple(_byte(grey + rng.integers(-6, 7)) for _ in range(3))
    cells = []
    for i, colour in enumerate(colours):
        side = max(round(min(slot, short_side) * rng.uniform(*CELL_FILL)), 8)
        along = (i + 0.5) * slot + rng.uniform(-1, 1) * ALONG_JITTER * (slot - side)
        across = short_side / 2 + rng.uniform(-1, 1) * min(ACROSS_JITTER * side, (short_side - side) / 2)
        a0, c0 = round(along - side / 2), round(across - side / 2)
        box = (a0, c0, a0 + side, c0 + side) if horizontal else (c0, a0, c0 + side, a0 + side)
        # Mostly a brightness shift, little hue shift: a jittered white must not turn pink.
        shade = int(rng.integers(-14, 15))
        rgb = tuple(_byte(v + shade + rng.integers(-6, 7)) for v in COLOURS[colour])
        cells.append(Cell(colour, SHAPES[rng.integers(len(SHAPES))], rgb, box))
    return background, tuple(cells)


def _draw_question(rng: np.random.Generator, colours: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    kind = QUESTION_KINDS[rng.choice(len(QUESTION_KINDS), p=QUESTION_WEIGHTS)]
    if kind == "most" and most_common(colours) is None:
        kind = "count"
    palette = list(COLOURS)
    present = [c for c in palette if c in colours]
    if kind == "count":
        # Mostly colours that are there; sometimes any colour, so "0" is a possible answer.
        pool = present if rng.random() < 0.8 else palette
        return kind, (pool[rng.integers(len(pool))],)
    if kind == "count_any":
        first = present[rng.integers(len(present))]
        others = [c for c in palette if c != first]
        pair = [first, others[rng.integers(len(others))]]
        if rng.random() < 0.5:
            pair.reverse()
        return kind, tuple(pair)
    return kind, ()


def draw_sample(seed: int, index: int, split: str = "train") -> NanoSample:
    """Sample `index` of the stream of `split` samples for `seed` (independent of how many are drawn)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    rng = np.random.default_rng([seed, index])
    while True:
        n_cells = int(rng.integers(MIN_CELLS, MAX_CELLS + 1))
        # Per-image colour frequencies: strips repeat colours more than uniform draws would, so counts
        # are spread over 0..8 rather than piled on 1, and `most` rarely has a tie.
        weights = rng.dirichlet(np.ones(len(COLOURS)))
        colours = tuple(list(COLOURS)[k] for k in rng.choice(len(COLOURS), size=n_cells, p=weights))
        if split_of(colours) == split:
            break
    width, height = _draw_size(rng, n_cells)
    background, cells = _layout(rng, width, height, colours)
    kind, targets = _draw_question(rng, colours)
    return NanoSample(width, height, background, cells, kind, targets)


# ----------------------------------------------------------------------------------------- datasets
def messages_for(question: str, answer: str, thinking: str | None = None) -> list[dict]:
    """TRL conversational VLM messages for one sample; `thinking=None` is non-thinking mode."""
    return [
        {
            "role": "user",
            "content": [{"type": "image", "text": None}, {"type": "text", "text": question}],
            "reasoning_content": None,
        },
        {"role": "assistant", "content": [{"type": "text", "text": answer}], "reasoning_content": thinking or None},
    ]


def png_value(image: Image.Image) -> dict:
    """A datasets `Image()` value holding PNG bytes: rows stay ~2 KB, not a decoded image, until used."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # lossless either way; level 1 encodes twice as fast
    return {"bytes": buffer.getvalue(), "path": None}


def dataset_features(*columns: str):
    from datasets import Features, Image as ImageFeature, List, Value

    message = {
        "role": Value("string"),
        "content": List({"type": Value("string"), "text": Value("string")}),
        "reasoning_content": Value("string"),
    }
    every = {
        "image": ImageFeature(),
        "images": List(ImageFeature()),
        "question": Value("string"),
        "thinking": Value("string"),
        "answer": Value("string"),
        "kind": Value("string"),
        "colours": List(Value("string")),
        "think": Value("bool"),
        "trace_style": Value("string"),
        "messages": List(message),
        "messages_think": List(message),
        "messages_no_think": List(message),
    }
    return Features({name: every[name] for name in columns})


def make_dataset(n: int, seed: int = NANO_TRAIN_SEED, split: str = "train"):
    """`n` samples of `split` as a `datasets.Dataset`.

    Columns: `image` (PIL, PNG-encoded), `question`, `thinking` (the trace), `answer`, `kind`, `colours`
    (the cells in reading order), and TRL `messages_think` / `messages_no_think` for the two modes.
    """
    from datasets import Dataset

    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"a nano {split} set needs n >= 1 samples, got {n!r}")
    rows = []
    for i in range(n):
        s = draw_sample(seed, i, split)
        question, thinking, answer = s.question, s.thinking, s.answer
        rows.append(
            {
                "image": png_value(s.render()),
                "question": question,
                "thinking": thinking,
                "answer": answer,
                "kind": s.kind,
                "colours": list(s.colours),
                "messages_think": messages_for(question, answer, thinking),
                "messages_no_think": messages_for(question, answer),
            }
        )
    columns = ("image", "question", "thinking", "answer", "kind", "colours", "messages_think", "messages_no_think")
    return Dataset.from_list(rows, features=dataset_features(*columns))


def make_eval_set(n: int = NANO_EVAL_SIZE, seed: int = NANO_EVAL_SEED):
    """The held-out set: `make_dataset(n, seed, split="eval")`; no colour sequence in it is ever trained on."""
    return make_dataset(n, seed=seed, split="eval")


# ----------------------------------------------------------------------------------------- scoring
def score(prediction: str, answer: str) -> bool:
    """Normalised exact match of a final answer (the text after `</think>`, not the whole completion)."""
    return normalize_answer(prediction.replace(EOS_TOKEN, " ")) == normalize_answer(answer)


# ------------------------------------------------------------------------------------ example image
EXAMPLE_COLOURS = ("red", "blue", "red", "green", "yellow", "red", "white")


def example_sample() -> NanoSample:
    """The bundled example: a 448x112 (4:1) strip of seven cells, asked "How many red cells?" (3)."""
    width, height = 448, 112
    background, cells = _layout(np.random.default_rng(7), width, height, EXAMPLE_COLOURS)
    return NanoSample(width, height, background, cells, "count", ("red",))


def render_example_image(path: str | Path = EXAMPLE_IMAGE_PATH) -> Path:
    """Writes the example strip (see :func:`example_sample`) as a PNG; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example_sample().render().save(path, optimize=True)
    return path


if __name__ == "__main__":
    print(render_example_image())
