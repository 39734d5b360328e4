"""Decoded prompts/responses of tokenised rows, and the per-round selection statistics."""

from __future__ import annotations

import pytest
import torch

from dataflex.signals.text import split_row
from dataflex.train.callback import selection_stats


def test_split_row_prompt_is_the_unlabelled_prefix():
    assert split_row([1, 2, 3, 4, 5], [-100, -100, 3, 4, 5]) == ([1, 2], [3, 4, 5])
    # a masked token in the middle of the response is not response text
    assert split_row([1, 2, 3, 4, 5], [-100, 2, -100, 4, 5]) == ([1], [2, 4, 5])


def test_split_row_pretraining_rows_are_all_prompt():
    assert split_row([7, 8, 9], [7, 8, 9]) == ([7, 8, 9], [])
    assert split_row([7, 8, 9], None) == ([7, 8, 9], [])
    assert split_row([7, 8], [-100, -100]) == ([7, 8], [])


def test_selection_stats_by_hand():
    domain_ids = torch.tensor([0, 0, 1, 1, 2])
    stats = selection_stats(torch.tensor([0, 2, 2, 4]), torch.tensor([2, 3, 4]), domain_ids, ["a", "b", "c"])
    # distinct {0, 2, 4}; {2, 4} were in the previous selection: 2/3
    assert stats == {
        "selector/selected": 4,
        "selector/unique": 3,
        "selector/overlap": pytest.approx(2 / 3),
        "selector/domain/a": 1,
        "selector/domain/b": 2,
        "selector/domain/c": 1,
    }
    assert "selector/overlap" not in selection_stats(torch.tensor([1]), None, domain_ids, ["a", "b", "c"])
