"""Decision cost: the wall time a run spends deciding (selection rounds, mixer updates with their
reference forwards, weight computations and gathers) beside the time it spends training.

The :class:`DecisionClock` of a run's :class:`~dataflex.train.callback.DataFlexCallback` sums
``time.perf_counter()`` spans around every component call, per component kind (``selector``,
``mixer``, ``weighter``), and times the training loop from ``on_train_begin`` to ``on_train_end``.
What it reports (``metrics.json``, :meth:`DecisionClock.totals`):

* ``decision_seconds``: every decision span summed; ``decision_seconds/<kind>`` per kind;
* ``train_seconds``: the training loop's wall time less ``decision_seconds`` (forward, backward,
  optimizer, logging, checkpoint writes and any periodic evaluation: everything but deciding);
* ``decision_share``: ``decision_seconds / (decision_seconds + train_seconds)``, in [0, 1];
* ``decision_overhead``: ``decision_seconds / train_seconds``: how much deciding adds to the time
  spent training (0.4: the method costs 40% more time than training alone).

On a GPU each span synchronises CUDA at both ends, so queued kernels are counted where they are
launched. Timings never enter the checkpoint and never feed a decision: a resumed run decides and
trains exactly as an uninterrupted one. The totals are those of one attempt (a resumed run's
``metrics.json`` holds the attempt that finished it, as ``wall_time_s`` does); every ``on_log``
record of ``metrics.jsonl`` carries its attempt's running totals (``time/decision_seconds``,
``time/train_seconds``) and the attempt's start (``time/attempt``, a Unix time), so the totals of a
run over all its attempts are the sums, over the distinct ``time/attempt`` values, of each
attempt's last record (:func:`totals_over_attempts`; steps redone after a resume count again: they
were computed again).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator

import torch

KINDS = ("selector", "mixer", "weighter")


def _sync() -> None:
    """Wait for queued CUDA kernels (no-op on CPU, and never initialises CUDA)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class DecisionClock:
    """Sums the wall time of decision spans per kind, and the training loop's wall time."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.attempt = round(time.time(), 3)  # this attempt's start, to tell attempts apart in metrics.jsonl
        self._loop_start: float | None = None
        self._loop_seconds = 0.0
        self._depth = 0

    @contextlib.contextmanager
    def measure(self, kind: str | None) -> Iterator[None]:
        """Count the wall time of the block under ``kind`` (a block nested in another counts once, in
        the outer; ``kind=None`` counts nothing)."""
        if self._depth or kind is None:
            yield
            return
        _sync()
        start = time.perf_counter()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            _sync()
            self.seconds[kind] += time.perf_counter() - start
            self.calls[kind] += 1

    def start_loop(self) -> None:
        self._loop_start = time.perf_counter()
        self._loop_seconds = 0.0

    def stop_loop(self) -> None:
        if self._loop_start is not None:
            self._loop_seconds = time.perf_counter() - self._loop_start
            self._loop_start = None

    @property
    def loop_seconds(self) -> float:
        """The training loop's wall time so far (all of it once it has ended)."""
        if self._loop_start is not None:
            return time.perf_counter() - self._loop_start
        return self._loop_seconds

    def totals(self) -> dict[str, float]:
        """``decision_seconds`` (and per kind), ``train_seconds``, ``decision_share``, ``decision_overhead``."""
        deciding = sum(self.seconds.values())
        loop = max(self.loop_seconds, deciding)
        training = loop - deciding
        out = {"decision_seconds": round(deciding, 4)}
        out.update({f"decision_seconds/{kind}": round(s, 4) for kind, s in sorted(self.seconds.items())})
        out["train_seconds"] = round(training, 4)
        out["decision_share"] = round(deciding / loop, 6) if loop > 0 else 0.0
        out["decision_overhead"] = round(deciding / training, 6) if training > 0 else 0.0
        return out

    def running(self) -> dict[str, float]:
        """The running totals every ``on_log`` record carries (``time/...``)."""
        deciding = sum(self.seconds.values())
        return {
            "time/attempt": self.attempt,
            "time/decision_seconds": round(deciding, 4),
            "time/train_seconds": round(max(self.loop_seconds - deciding, 0.0), 4),
        }


def totals_over_attempts(records: Iterable[dict]) -> dict[str, float] | None:
    """``decision_seconds`` and ``train_seconds`` of a run over all its attempts, from its
    ``metrics.jsonl`` records: the sums of each attempt's last running totals (None without any)."""
    last: dict[float, dict] = {}
    for record in records:
        if "time/attempt" in record:
            last[record["time/attempt"]] = record
    if not last:
        return None
    return {
        "attempts": len(last),
        "decision_seconds": sum(r.get("time/decision_seconds", 0.0) for r in last.values()),
        "train_seconds": sum(r.get("time/train_seconds", 0.0) for r in last.values()),
    }
