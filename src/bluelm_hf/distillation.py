# Copyright 2026 The bluelm-hf authors. Apache-2.0.
"""Knowledge distillation for BlueLM students: TRL's `DistillationTrainer`, with off-policy steps on the dataset's own
completions.

TRL's `DistillationTrainer` is on-policy: the student writes each completion and learns the teacher's next-token
distribution over it (generalized JSD, `beta`). GKD (Agarwal et al., 2024, arXiv:2306.13649) mixes that with
off-policy steps on the dataset's completions, `lmbda` being the fraction of on-policy steps; TRL's own GKD trainer
(`trl.experimental.gkd`) gives the models only `input_ids`, so its images never reach a VLM. Here the off-policy
steps render each row's last assistant turn with the chat template, in the row's own mode (a turn with reasoning is
a thinking turn), and keep the rest of `DistillationTrainer` (images, loss, logging). `lmbda=0` is supervised KD:
the student matches the teacher on the data, from the first step, without writing anything first.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from trl import DistillationConfig, DistillationTrainer


@dataclass
class BlueLMDistillConfig(DistillationConfig):
    lmbda: float = field(
        default=1.0,
        metadata={
            "help": "Fraction of generation batches whose completions the student writes (on-policy); the others "
            "distil on each row's own last assistant turn (off-policy, the dataset's `completion` column), as "
            "GKD's `lmbda`. 1: TRL's DistillationTrainer as is; 0: supervised KD on the data."
        },
    )

    def __post_init__(self):
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(f"lmbda must be in [0, 1] (the fraction of on-policy steps), got {self.lmbda}")
        super().__post_init__()


class BlueLMDistillationTrainer(DistillationTrainer):
    """`DistillationTrainer` with `args.lmbda` (see [`BlueLMDistillConfig`]); off-policy batches need a `completion`
    column, one assistant turn a row (`bluelm_hf.data.to_prompts(..., completions=True)`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lmbda = getattr(self.args, "lmbda", 1.0)
        if self.lmbda < 1.0 and "completion" not in self.train_dataset.column_names:
            raise ValueError(
                f"lmbda={self.lmbda} distils on the dataset's completions, but the dataset has no `completion` "
                f"column (it has {self.train_dataset.column_names})"
            )
        self._policy_rng = random.Random(self.args.seed)  # the same draws on every rank
        self._reference = None

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt", "image", "images", "completion"]

    def _generate_and_score_completions(self, inputs):
        on_policy = self._policy_rng.random() < self.lmbda
        self._reference = None if on_policy else [row["completion"] for row in inputs]
        try:
            return super()._generate_and_score_completions(inputs)
        finally:
            self._reference = None

    def _generate(self, prompts: list):
        if self._reference is None:
            return super()._generate(prompts)
        return self._reference_completions(prompts, self._reference)

    def _reference_completions(self, prompts: list, completions: list):
        """(prompt_ids, completion_ids, tool_mask, images, tool_images), as `_generate` returns them, with each row's
        own completion in place of a generated one: the tokens of its last assistant turn in the chat template's
        rendering of prompt + completion (`return_assistant_tokens_mask`), and every token before it as the prompt,
        so the boundary is the one the template puts there (`[|AI|]:` or `[|AI|]:[|BlueThink|]`)."""
        prompt_ids, completion_ids, images = [], [], []
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            encoded = self.processing_class.apply_chat_template(
                [*prompt, *completion],
                chat_template=self.chat_template,
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
            )
            ids, mask = encoded["input_ids"][0], encoded["assistant_masks"][0]
            if not any(mask):
                raise ValueError(f"row {i} of the batch: its completion renders no assistant tokens to distil on")
            end = max(k for k, m in enumerate(mask) if m) + 1
            start = end
            while start > 0 and mask[start - 1]:
                start -= 1
            prompt_ids.append(list(ids[:start]))
            completion_ids.append(list(ids[start:end])[: self.max_completion_length])
            images.append([b["image"] for m in prompt if isinstance(m["content"], list)
                           for b in m["content"] if b["type"] == "image"] or None)  # fmt: skip
        mode = "train" if self.model.training else "eval"
        lengths = torch.tensor([len(c) for c in completion_ids], device=self.accelerator.device)
        lengths = self.accelerator.gather(lengths)
        self._metrics[mode]["completions/mean_length"].append(lengths.float().mean().item())
        images = images if any(images) else None
        return prompt_ids, completion_ids, None, images, []


__all__ = ["BlueLMDistillConfig", "BlueLMDistillationTrainer"]
