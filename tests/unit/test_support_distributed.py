"""The tests' run_distributed helper: results in rank order from one gloo group, a rank's error raised here."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from support.distributed import RemoteTraceback, run_distributed


def _rank_and_sum(offset):
    total = torch.tensor([float(dist.get_rank() + offset)])
    dist.all_reduce(total)
    return dist.get_rank(), dist.get_world_size(), total.item()


def _rank_one_fails():
    if dist.get_rank() == 1:
        {}["missing on rank 1"]
    dist.barrier()  # rank 0 waits here for a rank that is gone


def test_results_come_back_in_rank_order_from_one_group():
    assert run_distributed(_rank_and_sum, 3, 10, timeout=180) == [(0, 3, 33.0), (1, 3, 33.0), (2, 3, 33.0)]


def test_the_failing_ranks_error_is_raised_with_its_traceback():
    with pytest.raises(KeyError, match="missing on rank 1") as raised:
        run_distributed(_rank_one_fails, 2, timeout=180)
    cause = raised.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "rank 1 of 2 raised" in str(cause) and "_rank_one_fails" in str(cause)
