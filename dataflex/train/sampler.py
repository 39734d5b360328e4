"""DynamicSampler: the one place where selection and mixture decisions reach the data loader.

The sampler yields a global stream of pool indices (identical on every rank; accelerate shards the
batches across ranks). It reads the plan in force at EVERY draw, so a new selection or new domain
proportions take effect within the data loader's prefetch depth, not at the next epoch.

Cost. The pool is grouped by domain ONCE (one int32 index array, the domains are slices of it). A
mixer update changes only the domain probabilities (O(K)); a selection update groups the k selected
indices (O(k log k)); a draw is O(log K). Each domain has its own stream: pass ``p`` of domain ``d``
is a permutation seeded from ``(seed, selection, d, p)``, and its cursor persists across proportion
changes, so every sample of a domain is drawn once per pass of that domain. The domain of draw ``i``
comes from a counter-based uniform ``u(seed, i)``: no generator state to carry.

Resume. The stream state at draw position ``P`` is the cursor and pass of every domain stream plus
the plan in force and the plans pushed for later draws. The sampler keeps that state at every
global-batch boundary of the last ``SNAPSHOTS`` batches (the live iterator runs ahead of the trained
steps by the loader's prefetch), and ``state_dict(position=step x global batch)`` saves it. A
restored sampler continues from ``P`` without replaying a draw: it first yields ``P`` placeholders,
the batches HF's Trainer skips on resume (``skip_first_batches`` -> accelerate's
``SkipBatchSampler``, which discards whole batches of indices without loading them), so the two
agree; with ``ignore_data_skip`` the trainer skips nothing and the sampler yields no placeholder.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Sampler

SNAPSHOTS = 256  # global-batch boundaries whose stream state is kept (beyond any prefetch depth)
_MASK = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a bijective 64-bit mix."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class Draw(int):
    """A pool index with the probability it was drawn under.

    Attributes:
        probability: domain proportion in force x within-domain share (1 / the domain's drawable size).
        domain_probability: the domain proportion in force (renormalised over drawable domains; without
            a mixture, the domain's share of the drawable samples).
    """

    def __new__(cls, index: int, probability: float, domain_probability: float):
        draw = super().__new__(cls, index)
        draw.probability, draw.domain_probability = probability, domain_probability
        return draw

    def __reduce__(self):  # picklable for loader worker processes
        return Draw, (int(self), self.probability, self.domain_probability)


@dataclass
class Plan:
    """One decision in force from draw ``start`` on.

    Attributes:
        start: first draw index this plan applies to.
        indices: pool indices to draw from (None: the whole pool).
        proportions: domain proportions (None: no mixture, uniform over the indices).
        selection: which selection ``indices`` is (0: the whole pool; each ``set_indices`` a new one).
    """

    start: int
    indices: torch.Tensor | None = None
    proportions: torch.Tensor | None = None
    selection: int = 0

    def to_dict(self) -> dict:
        return {
            "start": self.start,
            "indices": self.indices,
            "proportions": self.proportions,
            "selection": self.selection,
        }


class DynamicSampler(Sampler[int]):
    """Draws pool indices under the current selection (indices) and mixture (domain proportions).

    Without proportions, draws go through seeded permutations of the selected indices (every
    selected sample once per pass). With proportions, each draw first picks a domain with the
    current proportions, then the next sample of that domain's own stream (restricted to the
    selected indices when a selection is in force; a domain the selection does not reach is
    skipped, the proportions renormalised over the others). Every draw is a :class:`Draw`.

    Args:
        domain_ids: domain id of every pool sample (length = pool size).
        num_draws: total draws of the run (max_steps x global batch size).
        seed: seed of the draw stream.
        batch_size: draws per optimizer step over all ranks (where resume states are kept).
    """

    def __init__(
        self, domain_ids: Sequence[int] | torch.Tensor | np.ndarray, num_draws: int, seed: int = 0, batch_size: int = 1
    ):
        ids = domain_ids.numpy() if isinstance(domain_ids, torch.Tensor) else np.asarray(domain_ids)
        if ids.size == 0:
            raise ValueError("DynamicSampler needs a non-empty pool")
        ids = self._ids = ids.astype(np.int64, copy=False).reshape(-1)
        self.domain_ids = torch.from_numpy(ids)
        self.num_domains = int(ids.max()) + 1
        self.num_draws = int(num_draws)
        self.seed = int(seed)
        self.batch_size = max(int(batch_size), 1)
        self.skip_resumed = True  # the trainer skips the draws before a resume position (not with ignore_data_skip)
        # the pool grouped by domain once: domain d is order[offsets[d]:offsets[d + 1]]
        counts = np.bincount(ids, minlength=self.num_domains)
        self._order = np.argsort(ids, kind="stable").astype(np.int32 if ids.size < 2**31 else np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        self._key = _mix64(self.seed & _MASK)
        self.history: list[Plan] = [Plan(start=0)]
        self.selections = 0  # selections made so far (the id of the newest)
        self.drawn = 0  # draws made by the live iterator (including prefetched ones)
        self.resume: dict | None = None  # the restored stream state, until an iterator starts from it
        self._live: _Streams | None = None
        self._snapshots: deque = deque(maxlen=SNAPSHOTS)

    @property
    def pool_size(self) -> int:
        return self.domain_ids.numel()

    @property
    def current(self) -> Plan:
        return self.history[-1]

    @property
    def resume_position(self) -> int:
        """The draw a restored sampler continues from (0 when not restored)."""
        return self.resume["position"] if self.resume is not None else 0

    def __len__(self) -> int:
        return self.num_draws if self.skip_resumed else self.num_draws - self.resume_position

    # -- decisions -------------------------------------------------------------------------------
    def set_indices(self, indices: torch.Tensor | Sequence[int] | None) -> None:
        """Restrict draws to ``indices`` (None: the whole pool) from the next draw on (O(k))."""
        if indices is not None:
            indices = torch.as_tensor(indices, dtype=torch.long).flatten()
            if indices.numel() == 0:
                raise ValueError("a selection must contain at least one index")
            if int(indices.min()) < 0 or int(indices.max()) >= self.pool_size:
                raise ValueError(f"selected indices must lie in [0, {self.pool_size})")
            indices = indices.clone()  # its own storage (a view of a pool-sized tensor would be checkpointed whole)
        self.selections += 1
        self._push(indices=indices, proportions=self.current.proportions, selection=self.selections)

    def set_proportions(self, proportions: torch.Tensor | Sequence[float] | None) -> None:
        """Sample domains with ``proportions`` (None: no mixture) from the next draw on (O(K))."""
        if proportions is not None:
            proportions = torch.as_tensor(proportions, dtype=torch.float64).flatten()
            if proportions.numel() != self.num_domains:
                raise ValueError(f"got {proportions.numel()} proportions for {self.num_domains} domains")
            if not torch.isfinite(proportions).all() or (proportions < 0).any() or proportions.sum() <= 0:
                raise ValueError(f"proportions must be finite, >= 0 and not all 0, got {proportions.tolist()}")
            proportions = proportions / proportions.sum()
        self._push(indices=self.current.indices, proportions=proportions, selection=self.current.selection)

    def _push(self, **plan) -> None:
        plan = Plan(start=self.drawn, **plan)
        if self.history[-1].start == plan.start:
            self.history[-1] = plan  # nothing was drawn under the previous plan
        else:
            self.history.append(plan)

    # -- drawing ---------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[int]:
        streams, start = _Streams(self), 0
        if self.resume is not None:
            streams.restore(self.resume, self.history[0] if self.resume["plan"] is not None else None)
            start = self.resume["position"]
        self._live, self._snapshots = streams, deque(maxlen=SNAPSHOTS)
        if self.skip_resumed:
            for i in range(start):  # what the trainer's skip_first_batches discards unread
                self.drawn = i + 1
                yield _SKIPPED
        plan_pos = next((p for p, plan in enumerate(self.history) if plan.start >= start), len(self.history))
        for i in range(start, self.num_draws):
            if i % self.batch_size == 0:
                self._snapshots.append(streams.snapshot(i))
                oldest = self._snapshots[0]["plan"]
                while oldest is not None and plan_pos > 1 and self.history[0] is not oldest:
                    self.history.pop(0)  # no kept state can reach this plan any more
                    plan_pos -= 1
            # The history may grow while we iterate (a live update): always check the next entry.
            while plan_pos < len(self.history) and self.history[plan_pos].start <= i:
                streams.apply(self.history[plan_pos])
                plan_pos += 1
            self.drawn = i + 1
            yield streams.draw(i)

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self, position: int | None = None) -> dict:
        """What continues the stream exactly from draw ``position`` (default: the live position).

        ``position`` must be a global-batch boundary the live iterator passed within the last
        ``SNAPSHOTS`` batches (a checkpoint's ``global_step x batch_size``), or the live position.
        """
        position = self.drawn if position is None else int(position)
        if self._live is None or position == self.drawn:
            snap = self._live.snapshot(position) if self._live is not None else self._fresh(position)
        else:
            snap = next((s for s in self._snapshots if s["position"] == position), None)
            if snap is None:
                raise RuntimeError(
                    f"no sampler state kept for draw {position} (live position {self.drawn}, batch {self.batch_size})"
                )
        in_force = snap["plan"]
        pending = [p for p in self.history if p.start >= position and p is not in_force]
        return {
            "format": 2,
            "seed": self.seed,
            "num_draws": self.num_draws,
            "position": position,
            "selections": self.selections,
            # the plan in force at ``position`` (when one was applied), then the plans pushed for later draws
            "history": [p.to_dict() for p in ([in_force] if in_force is not None else []) + pending],
            "in_force": in_force is not None,
            "cursors": list(snap["cursors"]),
            "passes": list(snap["passes"]),
        }

    def _fresh(self, position: int) -> dict:
        if self.resume is not None:  # restored, not iterated yet: the restored state
            return {**self.resume, "plan": self.history[0] if self.resume["plan"] is not None else None}
        k = self.num_domains + 1
        return {"position": position, "plan": None, "cursors": [0] * k, "passes": [0] * k}

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != 2:
            raise ValueError(
                "sampler state from an older dataflex (a replayed plan history); resume it with that "
                "version or start the run again"
            )
        if state["seed"] != self.seed or state["num_draws"] != self.num_draws:
            raise ValueError(
                f"sampler state is for seed={state['seed']}, num_draws={state['num_draws']}; "
                f"this run has seed={self.seed}, num_draws={self.num_draws}"
            )
        self.selections = state["selections"]
        self.history = [Plan(**p) for p in state["history"]] or [Plan(start=0)]
        self.resume = {k: state[k] for k in ("position", "cursors", "passes")}
        self.resume["plan"] = state["history"][0] if state["in_force"] else None
        self.drawn = state["position"]
        self._live, self._snapshots = None, deque(maxlen=SNAPSHOTS)


class _SkippedDraw(int):
    """The placeholder for a draw the trainer skips on resume (never loaded)."""


_SKIPPED = _SkippedDraw(0)


class _Streams:
    """The per-domain streams of one iterator: the plan applied, cursors and passes (slot K: the
    unmixed stream over all drawable samples)."""

    def __init__(self, sampler: DynamicSampler):
        self.s = sampler
        k = sampler.num_domains
        self.plan: Plan | None = None
        self.selection = -1
        self.cursors, self.passes = [0] * (k + 1), [0] * (k + 1)
        self.orders: list[np.ndarray | None] = [None] * (k + 1)
        self.groups: list[np.ndarray] = []
        self.sizes: list[int] = []
        self.cum: list[float] | None = None
        self.domain_p: list[float] = []

    def snapshot(self, position: int) -> dict:
        return {"position": position, "plan": self.plan, "cursors": tuple(self.cursors), "passes": tuple(self.passes)}

    def restore(self, state: dict, plan: Plan | None) -> None:
        if plan is not None:
            self.apply(plan)
        self.cursors, self.passes = list(state["cursors"]), list(state["passes"])

    def apply(self, plan: Plan) -> None:
        s, k = self.s, self.s.num_domains
        if plan.selection != self.selection:  # a new selection: new groups, its streams start afresh
            if plan.indices is None:
                groups = [s._order[s._offsets[d] : s._offsets[d + 1]] for d in range(k)]
            else:
                members = plan.indices.numpy()
                member_domains = s._ids[members]
                small = member_domains.astype(np.int16) if k < 2**15 else member_domains  # radix sort: O(k)
                by_domain = members[np.argsort(small, kind="stable")]
                offsets = np.concatenate([[0], np.cumsum(np.bincount(member_domains, minlength=k))])
                groups = [by_domain[offsets[d] : offsets[d + 1]] for d in range(k)]
            self.groups, self.sizes = groups, [int(g.size) for g in groups]
            self.sizes.append(sum(self.sizes))
            self.selection = plan.selection
            self.cursors, self.passes = [0] * (k + 1), [0] * (k + 1)
            self.orders = [None] * (k + 1)
        self.plan = plan
        total = self.sizes[k]
        if plan.proportions is None:
            self.cum = None
            self.domain_p = [n / total for n in self.sizes[:k]]
            return
        p = plan.proportions.tolist()
        empty = [d for d in range(k) if self.sizes[d] == 0 and p[d] > 0]
        if empty:
            # A selector and a mixer together: the proportions apply over the domains the selection
            # holds; a domain without selected samples is skipped and its mass spread over the others.
            p = [0.0 if d in empty else x for d, x in enumerate(p)]
            if sum(p) <= 0:
                raise ValueError(f"no selected sample lies in a domain with positive proportion (domains {empty})")
        norm = sum(p)
        self.domain_p = [x / norm for x in p]
        self.cum = list(itertools.accumulate(self.domain_p))
        self.last = max(d for d in range(k) if self.domain_p[d] > 0)

    def _pass_order(self, slot: int) -> np.ndarray:
        s, k = self.s, self.s.num_domains
        rng = np.random.default_rng([s.seed & _MASK, self.selection, slot, self.passes[slot]])
        if slot < k:
            group = self.groups[slot]
            return group[rng.permutation(group.size)]
        if self.plan.indices is None:
            return rng.permutation(s.pool_size)  # the whole pool: the permutation is the order
        members = self.plan.indices.numpy()
        return members[rng.permutation(members.size)]

    def draw(self, i: int) -> Draw:
        k = self.s.num_domains
        if self.cum is None:
            slot = k
        else:
            u = (_mix64(self.s._key ^ _mix64(i)) >> 11) * 2.0**-53
            slot = min(bisect.bisect_right(self.cum, u), self.last)
        cursor = self.cursors[slot]
        order = self.orders[slot]
        if cursor >= self.sizes[slot]:  # this stream's pass is over: the next one starts
            self.passes[slot] += 1
            cursor, order = 0, None
        if order is None:
            order = self.orders[slot] = self._pass_order(slot)
        self.cursors[slot] = cursor + 1
        index = int(order[cursor])
        if slot == k:
            d = int(self.s._ids[index])
            return Draw(index, 1.0 / self.sizes[k], self.domain_p[d])
        return Draw(index, self.domain_p[slot] / self.sizes[slot], self.domain_p[slot])
