"""Multiple-choice (MMLU-style) accuracy from a single forward pass per question."""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from dataflex.signals.batching import model_device, pad_batch, pad_id_of

LETTERS = string.ascii_uppercase


def letter_token_ids(tokenizer: Any, template: Any, n_choices: int = 4) -> tuple[list[int], list[int]]:
    """Token ids that score the answer letters, as the template encodes them as a response.

    Each letter is encoded as the assistant response of a one-turn conversation. Any prefix shared by all
    letters' responses (e.g. an empty thought block of a reasoning template) is returned separately: it
    belongs to the prompt. The scored token of each letter is the first token after that prefix; a letter
    that encodes to several tokens is scored by its first token only.

    Args:
        tokenizer: Tokenizer (already fixed by `get_template_and_fix_tokenizer`).
        template: LLaMA-Factory `Template`.
        n_choices: Number of letters, from "A".

    Returns:
        `(shared_prefix_ids, letter_ids)` with `len(letter_ids) == n_choices`.

    Raises:
        ValueError: if two letters share the same scored token.
    """
    responses = []
    for letter in LETTERS[:n_choices]:
        messages = [{"role": "user", "content": "?"}, {"role": "assistant", "content": letter}]
        responses.append(template.encode_oneturn(tokenizer, messages)[1])
    common = 0
    while all(len(r) > common for r in responses) and len({r[common] for r in responses}) == 1:
        common += 1
    if any(len(r) <= common for r in responses):
        raise ValueError(f"answer letters are not distinguishable through the template: {responses}")
    letter_ids = [r[common] for r in responses]
    if len(set(letter_ids)) != n_choices:
        raise ValueError(f"answer letters do not map to distinct first tokens: {letter_ids}")
    return list(responses[0][:common]), letter_ids


def gold_index(row: dict) -> int:
    """Gold answer index of a row: `answer_index`, else the letter in `output`."""
    if row.get("answer_index") is not None:
        return int(row["answer_index"])
    return LETTERS.index(str(row["output"]).strip()[:1].upper())


def mcq_prompt_ids(tokenizer: Any, template: Any, instruction: str, shared_prefix: Sequence[int] = ()) -> list[int]:
    """Prompt ids of a question: the template's user turn, up to where the response starts."""
    messages = [{"role": "user", "content": instruction}, {"role": "assistant", "content": "A"}]
    return list(template.encode_oneturn(tokenizer, messages)[0]) + list(shared_prefix)


@torch.no_grad()
def mcq_predictions(
    model: torch.nn.Module,
    tokenizer: Any,
    template: Any,
    rows: Sequence[dict],
    batch_size: int = 16,
    progress: bool = False,
    padding_side: str = "right",
) -> list[int]:
    """Predicted choice index per row (argmax of the letters' log-probabilities at the first response token).

    Args:
        model: Causal LM (plain or PEFT-wrapped).
        tokenizer: Tokenizer fixed by `get_template_and_fix_tokenizer`.
        template: LLaMA-Factory `Template`.
        rows: Dicts with `instruction` (question and lettered options) and optionally `choices`
            (its length sets the number of letters scored; 4 when absent).
        batch_size: Questions per forward pass.
        progress: Show a tqdm bar.
        padding_side: "right" or "left"; predictions do not depend on it.

    Returns:
        One predicted index per row.
    """
    n_choices = [len(r.get("choices") or LETTERS[:4]) for r in rows]
    shared, letter_ids = letter_token_ids(tokenizer, template, max(n_choices, default=4))
    device = model_device(model)
    pad_id = pad_id_of(tokenizer)
    preds: list[int] = []
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="mcq", disable=not progress, leave=False):
        batch = rows[start : start + batch_size]
        seqs = [mcq_prompt_ids(tokenizer, template, r["instruction"], shared) for r in batch]
        ids, mask, pos = pad_batch(seqs, pad_id, padding_side, device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        last = mask.sum(-1) - 1 if padding_side == "right" else torch.full_like(mask[:, 0], ids.shape[1] - 1)
        last_logits = logits[torch.arange(len(seqs), device=logits.device), last.to(logits.device)].float()
        logprobs = torch.log_softmax(last_logits, dim=-1)[:, letter_ids]
        for j, k in enumerate(n_choices[start : start + batch_size]):
            preds.append(int(logprobs[j, :k].argmax()))
    return preds


def mcq_accuracy(
    model: torch.nn.Module,
    tokenizer: Any,
    template: Any,
    rows: Sequence[dict],
    batch_size: int = 16,
    progress: bool = False,
    padding_side: str = "right",
) -> dict:
    """MMLU-style accuracy: one forward per question, argmax over the answer letters' log-probabilities.

    The prompt is the question encoded as a user turn with the template; the scored position is the first
    response position (see `letter_token_ids` for how letters map to tokens). The gold answer is
    `answer_index` when present, else the letter in `output`.

    Args:
        model: Causal LM (plain or PEFT-wrapped); should already be in eval mode.
        tokenizer: Tokenizer fixed by `get_template_and_fix_tokenizer`.
        template: LLaMA-Factory `Template`.
        rows: Dicts like `{"instruction": ..., "output": "B", "answer_index": 1, "choices": [...]}`.
        batch_size: Questions per forward pass.
        progress: Show a tqdm bar.
        padding_side: "right" or "left"; the result does not depend on it.

    Returns:
        `{"accuracy": float, "n": int}` (accuracy 0.0 when there are no rows).
    """
    rows = list(rows)
    preds = mcq_predictions(model, tokenizer, template, rows, batch_size, progress, padding_side)
    correct = sum(int(p == gold_index(r)) for p, r in zip(preds, rows))
    return {"accuracy": correct / len(rows) if rows else 0.0, "n": len(rows)}
