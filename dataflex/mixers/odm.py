"""Online Data Mixing (Albalak et al. 2023; reference code alon-albalak/online-data-mixing): EXP3 over
domains, the pure cores and the ODM mixer (fed by the per-sample losses of every training batch
through ``observe_batch``).

Definitions (docs/ALGORITHMS.md, "odm"):

- ε_t = min{1/K, sqrt(ln K / (K·t))} for t >= 1, ε_0 := 1/K, with t the GLOBAL OPTIMIZER STEP of the
  update (not the number of updates; the reference code's ``iteration``);
- before ``warmup_steps``: the initial proportions (natural by default) and no update;
- ``reward: importance`` (the paper): for every domain i present in the batches since the last
  update, R̂_i ← α·R̂_i + (1 − α)·L_i / π(i), and π_t(i) = (1 − K·ε_t)·softmax(ε_{t−1}·R̂)_i + ε_t;
- ``reward: exp_loss`` (the reference code's SmoothedMeanWeightUpdater): R̂_i ← α·R̂_i + (1 − α)·exp(L_i)
  (no importance weight) and the LINEAR policy π_t = (1 − K·ε_t)·R̂/ΣR̂ + ε_t.
"""

from __future__ import annotations

import math

import torch

from dataflex.errors import ConfigError
from dataflex.signals.distributed import all_reduce_sum
from dataflex.train.components import Mixer, Scheduled, UpdateContext
from dataflex.train.fields import param

REWARDS = ("importance", "exp_loss")
INITIAL = ("natural", "uniform")


def exp3_epsilon(step: int, num_domains: int) -> float:
    """ε_t = min{1/K, sqrt(ln K / (K·t))} for t >= 1, and ε_0 := 1/K (non-increasing in t)."""
    if num_domains < 1:
        raise ValueError(f"num_domains must be >= 1, got {num_domains}")
    if step <= 0:
        return 1.0 / num_domains
    return min(
        1.0 / num_domains, math.sqrt(math.log(num_domains) / (num_domains * step))
    )


def exp3_probabilities(rewards: torch.Tensor, step: int) -> torch.Tensor:
    """EXP3 sampling probabilities π_t from the smoothed rewards R̂.

    π_t(i) = (1 − K·ε_t)·softmax(ε_{t−1}·R̂)_i + ε_t, so π is on the simplex with π_i >= ε_t.

    Args:
        rewards: R̂, shape [K].
        step: t >= 1 (the step the probabilities are for).

    Returns:
        π_t, shape [K], in the rewards' floating dtype (computed in float64).
    """
    if step < 1:
        raise ValueError(
            f"step must be >= 1 (ε_0 is only used as ε_{{t-1}} at t = 1), got {step}"
        )
    rewards = torch.as_tensor(rewards)
    r = rewards.to(torch.float64).flatten()
    k = r.numel()
    eps_t, eps_prev = exp3_epsilon(step, k), exp3_epsilon(step - 1, k)
    pi = (1.0 - k * eps_t) * torch.softmax(eps_prev * r, dim=0) + eps_t
    return pi.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def linear_probabilities(rewards: torch.Tensor, step: int) -> torch.Tensor:
    """The ``exp_loss`` policy (the reference code's SmoothedMeanWeightUpdater): π_t = (1 − K·ε_t)·R̂/ΣR̂ + ε_t.

    Args:
        rewards: R̂ >= 0, shape [K] (all zero: the uniform share).
        step: t >= 1, the global optimizer step.

    Returns:
        π_t, shape [K], on the simplex with π_i >= ε_t, in the rewards' floating dtype (computed in float64).
    """
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    rewards = torch.as_tensor(rewards)
    r = rewards.to(torch.float64).flatten()
    if (r < 0).any():
        raise ValueError(f"exp_loss rewards must be >= 0, got {r.tolist()}")
    k = r.numel()
    eps_t = exp3_epsilon(step, k)
    share = r / r.sum() if r.sum() > 0 else torch.full_like(r, 1.0 / k)
    pi = (1.0 - k * eps_t) * share + eps_t
    return pi.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def odm_update_rewards(
    rewards: torch.Tensor,
    domain_losses: torch.Tensor,
    probabilities: torch.Tensor,
    present: torch.Tensor,
    alpha: float = 0.9,
    reward: str = "importance",
) -> torch.Tensor:
    """Smoothed reward update after one step.

    For every present domain i: R̂_i ← α·R̂_i + (1 − α)·L_i / π(i) (``reward="importance"``, the
    paper's definition, default), or R̂_i ← α·R̂_i + (1 − α)·exp(L_i) (``reward="exp_loss"``, the
    reference code's SmoothedMeanWeightUpdater: the domain's batch perplexity, no importance weight).
    Absent domains keep their reward (their loss entry is ignored and may be anything, NaN included).

    Args:
        rewards: R̂, shape [K].
        domain_losses: L, the mean loss of each domain in the batch, shape [K].
        probabilities: π used to draw the batch, shape [K] (all present entries > 0; unused by exp_loss).
        present: boolean [K], True for domains with at least one sample in the batch.
        alpha: smoothing α in [0, 1].
        reward: ``"importance"`` or ``"exp_loss"``.

    Returns:
        The new R̂, shape [K], in the rewards' floating dtype.
    """
    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    rewards = torch.as_tensor(rewards)
    r = rewards.to(torch.float64).flatten()
    losses = torch.as_tensor(domain_losses, dtype=torch.float64).flatten()
    pi = torch.as_tensor(probabilities, dtype=torch.float64).flatten()
    present = torch.as_tensor(present, dtype=torch.bool).flatten()
    if not (r.numel() == losses.numel() == pi.numel() == present.numel()):
        raise ValueError(
            "rewards, domain_losses, probabilities and present must all have K entries"
        )
    if reward == "exp_loss":
        observed = losses.exp()
    else:
        if (pi[present] <= 0).any():
            raise ValueError("a present domain has probability <= 0 (it could not have been drawn)")
        observed = losses / torch.where(present, pi, 1.0)
    # torch.where, not arithmetic masking: an absent domain's NaN/inf loss must not leak in.
    updated = torch.where(present, alpha * r + (1.0 - alpha) * observed, r)
    return updated.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


class ODMMixer(Scheduled, Mixer):
    """Online Data Mixing: EXP3 over domains, rewarded by each domain's training loss.

    The training batches are observed through ``observe_batch`` (per-sample losses of the training
    forward, no extra pass); at each update (the end of optimizer step t) the per-domain mean losses
    since the previous update (summed over ranks; the first update after a warm-up counts the warm-up
    batches too) update R̂ — for ``reward: importance`` divided by the domain proportions the samples
    were DRAWN under (each batch carries them, ``draw_domain_probability``; see
    ``draw_probabilities``) — then π moves to the policy of step t (ε_t with t the global optimizer
    step). Domains absent from those batches, or whose loss is not finite, keep their reward (a NaN
    never reaches the proportions).

    Attributes:
        alpha: reward smoothing α.
        reward: ``"importance"`` (the paper's L_i/π_i with the EXP3 softmax policy) or ``"exp_loss"``
            (the reference code's smoothed exp(L_i) with the linear policy).
        warmup_steps, update_every, num_updates: the schedule (the paper updates after every step;
            before ``warmup_steps`` the initial proportions hold).
        initial: the proportions before the first update: ``natural`` (default: by domain size in the
            pool) or ``uniform``.
    """

    #: the original DataFlex's params: its start proportions are the DataFlex key init_mixture_proportions;
    #: its evaluation pass has no counterpart (used by dataflex-cli)
    legacy_keys = {"initial_proportions": "init_mixture_proportions"}
    legacy_unused = {"num_eval_samples": "rewards come from the training batches' own losses",
                     "eval_batch_size": "rewards come from the training batches' own losses"}
    acts_through_updates = True
    observes_batches = True

    alpha: float = param(0.9, ge=0, le=1)
    reward: str = param("importance", choices=REWARDS)
    update_every: int = 1
    # -- fidelity options (docs/ALGORITHMS.md "odm") --
    initial: str = "natural"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.initial not in INITIAL:
            raise ConfigError(f"mixer=odm: initial must be one of {', '.join(INITIAL)}, got {self.initial!r}; "
                              "set mixer.initial=natural (by domain size, the default) or mixer.initial=uniform")
        self.t = 0  # the global optimizer step of the last update (0: the initial proportions)
        self.rewards: torch.Tensor | None = None
        self.probabilities: torch.Tensor | None = None
        self.loss_sum: torch.Tensor | None = None  # per-domain loss sums and counts since the last update
        self.loss_count: torch.Tensor | None = None
        self.inv_prob_sum: torch.Tensor | None = None  # per-domain sum of 1/(draw-time domain probability)
        self.history: list[dict] = []

    def _reset_window(self, num_domains: int) -> None:
        self.loss_sum = torch.zeros(num_domains, dtype=torch.float64)
        self.loss_count = torch.zeros(num_domains, dtype=torch.float64)
        self.inv_prob_sum = torch.zeros(num_domains, dtype=torch.float64)

    def initial_proportions(self, ctx: UpdateContext) -> torch.Tensor:
        domain_ids = torch.as_tensor(ctx.domain_ids).long()
        k = int(domain_ids.max()) + 1
        self.rewards = torch.zeros(k, dtype=torch.float64)
        self.t = 0
        if self.initial == "natural":
            sizes = torch.bincount(domain_ids, minlength=k).to(torch.float64)
            self.probabilities = sizes / sizes.sum()
        else:
            self.probabilities = torch.full((k,), 1.0 / k, dtype=torch.float64)
        self._reset_window(k)
        return self.probabilities.clone()

    def observe_batch(self, per_sample_losses: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        if self.loss_sum is None:
            return  # not started (no initial proportions yet)
        domains = batch["domain_id"].cpu().long()
        losses = per_sample_losses.detach().cpu().double()
        finite = torch.isfinite(losses)
        self.loss_sum.index_add_(0, domains[finite], losses[finite])
        self.loss_count.index_add_(0, domains[finite], torch.ones_like(losses[finite]))
        if "draw_domain_probability" in batch:  # the domain proportion each sample was drawn under
            drawn_p = batch["draw_domain_probability"].cpu().double()
            self.inv_prob_sum.index_add_(0, domains[finite], 1.0 / drawn_p[finite])

    def draw_probabilities(self, counts: torch.Tensor, inv_prob_sums: torch.Tensor) -> torch.Tensor:
        """The importance denominator of each domain: the (harmonic) mean of the domain proportions its
        samples were DRAWN under (the plan may have changed between the draw and this update), or the
        proportions in force for a domain whose batches carried no draw probability."""
        drawn = counts / inv_prob_sums.clamp(min=1e-300)
        return torch.where((counts > 0) & (inv_prob_sums > 0), drawn, self.probabilities.double())

    def update(self, ctx: UpdateContext) -> torch.Tensor:
        # sums over ranks: every rank computes the same update
        sums, counts = all_reduce_sum(self.loss_sum), all_reduce_sum(self.loss_count)
        inv_prob_sums = all_reduce_sum(self.inv_prob_sum)
        present = counts > 0
        domain_losses = sums / counts.clamp(min=1)
        drawn_under = self.draw_probabilities(counts, inv_prob_sums)
        self.rewards = odm_update_rewards(self.rewards, domain_losses, drawn_under, present,
                                          alpha=self.alpha, reward=self.reward)
        self.t = max(int(ctx.global_step), 1)  # ε_t of the global optimizer step
        policy = linear_probabilities if self.reward == "exp_loss" else exp3_probabilities
        self.probabilities = policy(self.rewards, self.t)
        self.history.append({
            "global_step": ctx.global_step,
            "domain_losses": torch.where(present, domain_losses, torch.nan).tolist(),
            "probabilities": self.probabilities.tolist(),
        })
        self._reset_window(self.rewards.numel())
        return self.probabilities.clone()

    def state_dict(self) -> dict:
        return {
            "t": self.t,
            "rewards": self.rewards,
            "probabilities": self.probabilities,
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
            "inv_prob_sum": self.inv_prob_sum,
            "history": self.history,
        }

    def load_state_dict(self, state: dict) -> None:
        self.t = state["t"]
        self.rewards, self.probabilities = state["rewards"], state["probabilities"]
        self.loss_sum, self.loss_count = state["loss_sum"], state["loss_count"]
        self.inv_prob_sum = state.get("inv_prob_sum")
        if self.inv_prob_sum is None and self.loss_sum is not None:
            self.inv_prob_sum = torch.zeros_like(self.loss_sum)
        self.history = state["history"]
