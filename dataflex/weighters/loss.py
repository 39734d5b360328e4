"""Loss-based sample reweighting (Sow et al., ICLR 2025): the pure core and the weighter.

Definitions (docs/ALGORITHMS.md, "Weighters / loss"):

- normalise the global batch's per-sample losses, l̃ = δ·(2l − l_max − l_min)/(l_max − l_min) in
  [−δ, δ] (l̃ = 0 when l_max = l_min);
- strategy g: ``linupper`` min(l̃ + δ, δ) (default), ``quadratic`` 1 − l̃²/δ², ``extremes`` |l̃|,
  ``uniform`` 0;
- w = softmax(g / r) over the global batch, with temperature r.

Temperature schedule (:func:`scheduled_inverse_temperature`):

- ``schedule: constant`` (default, the reference trainer's): plain training (the trainer's own loss, for
  either ``reduction``; uniform weights, r = ∞) for the first ``warmup_steps`` optimizer steps, then
  r = ``temperature`` from the first step on;
- ``schedule: linear`` (the earlier default, this project's): the inverse temperature 1/r moves linearly
  from ``1/start_temperature`` (default 0, i.e. r = ∞) at step 0 to ``1/temperature`` at
  ``warmup_steps``, and stays there (:func:`inverse_temperature`).

How the weights reach the loss (global micro-batch over ranks, gradient accumulation, the
``token``/``sample`` objective, samples without label tokens) is :class:`dataflex.weighters.BatchWeighter`'s
docstring. Per-micro-batch normalisation over all ranks is this project's choice (the paper normalises
over the whole optimizer step): see the README section "Weighters".
"""

from __future__ import annotations

import math

import torch

from dataflex.errors import ConfigError
from dataflex.train.fields import param
from dataflex.weighters import BatchWeighter

STRATEGIES = ("linupper", "quadratic", "extremes", "uniform")
SCHEDULES = ("constant", "linear")


def normalised_losses(losses: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """l̃ = δ·(2l − l_max − l_min)/(l_max − l_min), clamped to [−δ, δ]; all zeros when l_max = l_min.

    Args:
        losses: ``[B]`` per-sample losses (finite).
        delta: δ > 0.

    Returns:
        ``[B]`` float64.
    """
    l = torch.as_tensor(losses, dtype=torch.float64).flatten()
    lmax, lmin = l.max(), l.min()
    spread = lmax - lmin
    if spread <= 0:
        return torch.zeros_like(l)
    return (delta * (2 * l - lmax - lmin) / spread).clamp(-delta, delta)


def strategy_scores(normalised: torch.Tensor, strategy: str = "linupper", delta: float = 1.0) -> torch.Tensor:
    """g(l̃) for a strategy: linupper min(l̃ + δ, δ), quadratic 1 − l̃²/δ², extremes |l̃|, uniform 0."""
    if strategy == "linupper":
        return torch.minimum(normalised + delta, torch.full_like(normalised, delta))
    if strategy == "quadratic":
        return 1.0 - normalised.square() / delta**2
    if strategy == "extremes":
        return normalised.abs()
    if strategy == "uniform":
        return torch.zeros_like(normalised)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def loss_weights(
    losses: torch.Tensor, strategy: str = "linupper", delta: float = 1.0, temperature: float = 1.0
) -> torch.Tensor:
    """Per-sample weights w = softmax(g(l̃) / r) over the (global) batch.

    Args:
        losses: ``[B]`` per-sample losses, B >= 1, finite.
        strategy: ``linupper`` (default), ``quadratic``, ``extremes`` or ``uniform``.
        delta: δ > 0, the half-width of the normalised range.
        temperature: r > 0; ``math.inf`` gives exactly uniform weights.

    Returns:
        ``[B]`` weights in the losses' floating dtype (computed in float64; float32 for integer
        losses), non-negative and summing to 1; never NaN (the softmax is shifted by its maximum,
        so a tiny r only concentrates the mass on the top-scored samples).

    Raises:
        ValueError: on an unknown strategy, δ <= 0, r <= 0 or NaN, an empty or non-finite batch.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be a finite number > 0, got {delta!r}")
    if not (isinstance(temperature, (int, float)) and temperature > 0):  # NaN fails the comparison
        raise ValueError(f"temperature must be > 0 (math.inf for uniform weights), got {temperature!r}")
    losses = torch.as_tensor(losses)
    l = losses.detach().to(torch.float64).flatten()
    if l.numel() == 0:
        raise ValueError("losses must hold at least one sample")
    if not torch.isfinite(l).all():
        raise ValueError("losses must be finite")
    out_dtype = losses.dtype if losses.is_floating_point() else torch.float32
    g = strategy_scores(normalised_losses(l, delta), strategy, delta)
    if math.isinf(temperature):
        z = torch.zeros_like(g)
    else:
        z = (g - g.max()) / temperature  # <= 0, with 0 at the maximum: the sum below is >= 1
    e = z.exp()
    return (e / e.sum()).to(out_dtype)


def inverse_temperature(step: int, temperature: float, warmup_steps: int, start_temperature: float = math.inf) -> float:
    """1/r at ``step`` optimizer steps done: linear from 1/start_temperature (step 0) to 1/temperature
    (step >= warmup_steps); constant 1/temperature without warm-up."""
    target, start = 1.0 / temperature, 1.0 / start_temperature
    if warmup_steps <= 0 or step >= warmup_steps:
        return target
    return start + (target - start) * max(step, 0) / warmup_steps


def scheduled_inverse_temperature(
    step: int, temperature: float, warmup_steps: int, schedule: str = "constant", start_temperature: float = math.inf
) -> float:
    """1/r for the step trained after ``step`` optimizer steps done.

    ``constant``: 0 (r = ∞, exactly uniform weights) while ``step < warmup_steps``, then 1/temperature.
    ``linear``: :func:`inverse_temperature` (``start_temperature`` is only used by this schedule).
    """
    if schedule == "linear":
        return inverse_temperature(step, temperature, warmup_steps, start_temperature)
    if schedule != "constant":
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return 0.0 if step < warmup_steps else 1.0 / temperature


class LossWeighter(BatchWeighter):
    """Loss-based reweighting of every training micro-batch (Sow et al. 2025).

    Attributes:
        strategy: ``linupper`` (up-weight high losses, flat above the midpoint), ``quadratic``
            (favour medium losses), ``extremes`` (favour both ends) or ``uniform``.
        delta: δ, half-width of the normalised loss range.
        temperature: the temperature r after the warm-up (> 0; smaller is sharper).
        start_temperature: ``schedule: linear`` only: r at step 0 (null/inf: exactly uniform weights).
        warmup_steps: ``constant``: optimizer steps of exactly uniform weights before r applies;
            ``linear``: steps over which 1/r moves from 1/start_temperature to 1/temperature.
        reduction: ``token`` (default) or ``sample``: see :mod:`dataflex.weighters`.
        schedule: ``constant`` (default, the reference trainer's) or ``linear`` (the earlier ramp).
    """

    #: the original DataFlex's loss weighter: plain training for warmup_step steps (its default 0), then
    #: Σ w_i·l_i over per-sample token means (``sample``) at r = 1 (used by dataflex-cli)
    legacy_defaults = {"warmup_steps": 0, "schedule": "constant", "temperature": 1.0, "reduction": "sample"}

    strategy: str = param("linupper", choices=STRATEGIES)
    delta: float = 1.0
    temperature: float = param(1.0, gt=0)
    start_temperature: float | None = None
    warmup_steps: int = param(0, ge=0)
    # -- fidelity options (docs/ALGORITHMS.md "Weighters / loss") --
    schedule_name: str = param("constant", key="schedule")  # the key `schedule` would hide Component.schedule

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.schedule_name not in SCHEDULES:
            raise ConfigError(
                f"weighter=loss: schedule must be one of {', '.join(SCHEDULES)}, "
                f"got {self.schedule_name!r}; set weighter.schedule=constant (uniform for "
                "warmup_steps, then r; the default)"
            )
        self.start_temperature = math.inf if self.start_temperature is None else float(self.start_temperature)
        if not (math.isfinite(self.delta) and self.delta > 0):
            raise ValueError(f"delta must be a finite number > 0, got {self.delta}")
        if not (self.start_temperature > 0):
            raise ValueError(f"start_temperature must be > 0 (null: infinite), got {self.start_temperature}")

    def training_loss(self, loss):
        """Weighted as :class:`BatchWeighter`; in the warm-up of ``schedule: constant`` the trainer's own
        loss (plain training, whatever the ``reduction``; with ``token`` the two are bit for bit equal)."""
        weighted = super().training_loss(loss)  # also records the warm-up's (uniform) weights
        if self.schedule_name == "constant" and self.steps_done < self.warmup_steps:
            return loss.plain()
        return weighted

    def current_temperature(self) -> float:
        """r in force for the step being trained (math.inf for uniform weights)."""
        beta = scheduled_inverse_temperature(
            self.steps_done, self.temperature, self.warmup_steps, self.schedule_name, self.start_temperature
        )
        return math.inf if beta <= 0 else 1.0 / beta

    def batch_weights(self, losses: torch.Tensor) -> torch.Tensor:
        return loss_weights(losses, self.strategy, self.delta, self.current_temperature())

    def extra_stats(self) -> dict[str, float]:
        return {"temperature": self.current_temperature()}
