"""A reward-model reward for NICE: a sequence classifier scores the target prompt, the reference answer
and a sampled response, in [0, 1].

This is the original DataFlex's NICE ``reward_model_path`` (its selector loads that model with
``AutoModelForSequenceClassification``), usable from any config::

    selector.reward=dataflex.selectors.nice_classifier:ClassifierReward
    selector.reward_kwargs={model_path: /path/to/reward-model}

Semantics (the original's): the classifier reads one text, the instruction with the reference answer
(when the row has one) and the candidate response, cut at ``max_length`` tokens; with one output logit
the reward is its sigmoid, with several the probability of the last class (softmax). The model loads at
the first selection round (nothing loads when the reward is built).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dataflex.errors import ConfigError
from dataflex.selectors.nice_judge import PROMPT_WITH_REFERENCE, PROMPT_WITHOUT_REFERENCE, fill_prompt, judge_texts


class ClassifierReward:
    """``reward(prompts, responses, references)`` scored by a sequence-classification reward model.

    Args:
        model_path: the reward model (a local directory or a hub id).
        prompt_with_reference, prompt_without_reference: the text the classifier reads (``{instruction}``,
            ``{reference}``, ``{prediction}`` are filled in).
        max_length: tokens of that text the classifier reads (the original's ``max_prompt_length``).
        batch_size: texts per forward pass.
    """

    def __init__(
        self,
        model_path: str | None = None,
        prompt_with_reference: str = PROMPT_WITH_REFERENCE,
        prompt_without_reference: str = PROMPT_WITHOUT_REFERENCE,
        max_length: int = 4096,
        batch_size: int = 8,
    ):
        if not model_path or not isinstance(model_path, str):
            raise ConfigError(
                "the reward model needs model_path (the original's reward_model_path): a directory or hub id"
            )
        if int(max_length) < 1 or int(batch_size) < 1:
            raise ConfigError(f"max_length and batch_size must be >= 1, got {max_length}, {batch_size}")
        self.model_path, self.max_length, self.batch_size = model_path, int(max_length), int(batch_size)
        self.with_reference, self.without_reference = prompt_with_reference, prompt_without_reference
        self._loaded: Any = None

    def text(self, prompt: str, response: str, reference: str) -> str:
        return fill_prompt(self.with_reference, self.without_reference, prompt, response, reference)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], references: Sequence[str]) -> list[float]:
        texts = judge_texts(self.text, prompts, responses, references)
        return [s for i in range(0, len(texts), self.batch_size) for s in self.scores(texts[i : i + self.batch_size])]

    def scores(self, texts: list[str]) -> list[float]:
        import torch

        if self._loaded is None:
            self._load()
        model, tokenizer = self._loaded
        batch = tokenizer(texts, return_tensors="pt", truncation=True, max_length=self.max_length, padding=True)
        with torch.no_grad():
            logits = model(**{k: v.to(model.device) for k, v in batch.items()}).logits.float()
        if logits.shape[-1] == 1:
            return torch.sigmoid(logits[:, 0]).tolist()
        return torch.softmax(logits, dim=-1)[:, -1].tolist()

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(self.model_path)
        model.config.pad_token_id = tokenizer.pad_token_id
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self._loaded = (model.to(device).eval(), tokenizer)
