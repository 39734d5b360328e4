"""NICE's rewards r(x, y) (docs/ALGORITHMS.md, nice): exact-match and contains-match against the
reference answer, an import path to any callable (e.g. a reward model), and their batched call."""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch

from dataflex.eval.exact_match import normalize_answer

#: ``reward(prompts, responses, references) -> one float per triple``: the three sequences have equal
#: length (one entry per sampled response: its decoded prompt, the decoded response and the decoded
#: reference answer of the prompt's validation row). Called once per selection round with every
#: sample of the round (batch a reward model inside), on rank 0 only (the rewards are broadcast).
#: Values must be finite; any scale works (the cosine removes a common factor), 0 means "no signal".
RewardFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], Sequence[float]]


# -- rewards ---------------------------------------------------------------------------------------
def _words(text: str) -> str:
    """Lower-cased, whitespace collapsed to single spaces, stripped."""
    return " ".join(str(text).lower().split())


def exact_match_reward(prompts: Sequence[str], responses: Sequence[str], references: Sequence[str]) -> list[float]:
    """1.0 where the response equals the reference after the project's exact-match normalisation
    (:func:`dataflex.eval.exact_match.normalize_answer`: first line, trailing periods dropped,
    lower case), else 0.0. An empty reference matches nothing."""
    _check_lengths(prompts, responses, references)
    return [
        float(bool(normalize_answer(ref)) and normalize_answer(resp) == normalize_answer(ref))
        for resp, ref in zip(responses, references)
    ]


def contains_match_reward(prompts: Sequence[str], responses: Sequence[str], references: Sequence[str]) -> list[float]:
    """1.0 where the reference occurs in the response as a whole-word phrase, else 0.0.

    Both are lower-cased with whitespace collapsed; the reference is first normalised as for exact
    match (first line, trailing periods dropped). Whole-word: no letter, digit or underscore right
    before or after the match, so "8" is not found in "18" nor "a" in "an". An empty reference
    matches nothing.
    """
    _check_lengths(prompts, responses, references)
    out = []
    for resp, ref in zip(responses, references):
        needle = _words(normalize_answer(ref))
        found = bool(needle) and re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", _words(resp)) is not None
        out.append(float(found))
    return out


def _check_lengths(prompts, responses, references) -> None:
    if not len(prompts) == len(responses) == len(references):
        raise ValueError(
            f"reward inputs differ in length: {len(prompts)} prompts, {len(responses)} responses, "
            f"{len(references)} references"
        )


#: short names accepted by ``reward`` (anything else is an import path)
REWARDS: dict[str, RewardFn] = {"exact_match": exact_match_reward, "contains": contains_match_reward}


def resolve_reward(reward: str | RewardFn, reward_kwargs: dict[str, Any] | None = None) -> RewardFn:
    """The reward callable that ``reward`` names.

    Args:
        reward: ``exact_match``, ``contains``, an import path (``package.module.name`` or
            ``package.module:name``) or a callable.
        reward_kwargs: when not None (``{}`` included), the named object is a factory (e.g. a
            reward-model class) and ``obj(**reward_kwargs)`` is the reward callable.

    Raises:
        ConfigError: a name that is neither a short name nor an importable callable, or a factory
            that fails to build with ``reward_kwargs``.
    """
    from dataflex.config import ConfigError

    obj: Any = reward
    if isinstance(reward, str):
        if reward in REWARDS:
            obj = REWARDS[reward]
        else:
            module, sep, attr = reward.partition(":") if ":" in reward else reward.rpartition(".")
            if not sep or not module or not attr:
                raise ConfigError(
                    f"reward={reward!r}: use one of {sorted(REWARDS)} or an import path 'package.module.function'"
                )
            try:
                obj = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as err:
                raise ConfigError(f"reward={reward!r} cannot be imported ({err})") from None
    if reward_kwargs is not None:
        if not callable(obj):
            raise ConfigError(f"reward={reward!r} is not callable, so reward_kwargs cannot build a reward from it")
        try:
            obj = obj(**dict(reward_kwargs))
        except Exception as err:  # noqa: BLE001 - any failure of user code becomes one clear line
            raise ConfigError(f"reward={reward!r} could not be built with reward_kwargs={dict(reward_kwargs)!r} ({err})") from None
    if not callable(obj):
        raise ConfigError(f"reward={reward!r} is not callable")
    return obj


def compute_rewards(reward: RewardFn, prompts: Sequence[str], responses: Sequence[Sequence[str]], references: Sequence[str]) -> torch.Tensor:
    """``[P, M]`` rewards of ``responses[x][m]`` to ``prompts[x]`` (one batched reward call).

    Raises:
        ValueError: the reward returns the wrong number of values or a non-finite one.
    """
    flat_p = [p for p, group in zip(prompts, responses) for _ in group]
    flat_y = [y for group in responses for y in group]
    flat_r = [ref for ref, group in zip(references, responses) for _ in group]
    values = [float(v) for v in reward(flat_p, flat_y, flat_r)]
    if len(values) != len(flat_y):
        raise ValueError(f"the reward returned {len(values)} values for {len(flat_y)} responses")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("the reward returned a non-finite value")
    m = len(responses[0]) if responses else 0
    return torch.tensor(values, dtype=torch.float64).reshape(len(prompts), m)
