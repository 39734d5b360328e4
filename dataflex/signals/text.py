"""Text of tokenised rows: what the embedding-based selectors (NEAR, TSDS) and NICE read.

Rows are decoded from their own tokens, so this works for every dataset format LLaMA-Factory
reads (alpaca, sharegpt, hub sets) without going back to the source files. The prompt is the part
of ``input_ids`` whose label is ignored (-100), the response the labelled part; a row with no
ignored label (pretraining) is all prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

IGNORE_INDEX = -100


def split_row(input_ids: Sequence[int], labels: Sequence[int] | None) -> tuple[list[int], list[int]]:
    """``(prompt_ids, response_ids)`` of one row.

    The prompt is every token before the first labelled one; the response every labelled token.
    A row without labels, or whose labels equal its inputs everywhere (pretraining), is all prompt.
    """
    ids = list(input_ids)
    if labels is None:
        return ids, []
    labels = list(labels)
    if labels == ids:
        return ids, []
    first = next((i for i, y in enumerate(labels) if y != IGNORE_INDEX), len(ids))
    return ids[:first], [t for t, y in zip(ids, labels) if y != IGNORE_INDEX]


def prompt_response_texts(dataset, tokenizer, indices: Sequence[int] | None = None) -> tuple[list[str], list[str]]:
    """Decoded prompts and responses of the rows ``indices`` of a tokenised dataset (all rows by default).

    Special tokens are dropped; the template's role words stay (they are plain text).
    """
    rows = dataset if indices is None else dataset.select([int(i) for i in indices])
    prompts, responses = [], []
    has_labels = "labels" in rows.column_names
    for row in rows:
        prompt, response = split_row(row["input_ids"], row["labels"] if has_labels else None)
        prompts.append(tokenizer.decode(prompt, skip_special_tokens=True).strip())
        responses.append(tokenizer.decode(response, skip_special_tokens=True).strip())
    return prompts, responses
