"""On-policy sampling of several responses per prompt from the current model (used by NICE).

Prompts are encoded with the LLaMA-Factory template by :func:`generation_prompt_ids` (the exact-match
evaluation encodes its prompts with it too), batched with left padding, and sampled with a seed
that does not disturb the training RNG: the global torch RNG state (CPU and the model's CUDA device) is
saved before and restored after the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from dataflex.signals.batching import model_device, pad_batch, pad_id_of


@dataclass
class SampledResponse:
    """One sampled response.

    Attributes:
        text: Decoded new tokens, cut before the first stop token, special tokens skipped.
        response_ids: New token ids, including the stop token when generation stopped on one (as a
            supervised target would end), excluding padding; what a log-prob computation needs.
        prompt_ids: The template-encoded prompt ids (unpadded).
        finished: Whether generation ended on a stop token (False: cut by `max_new_tokens`).
    """

    text: str
    response_ids: list[int]
    prompt_ids: list[int] = field(repr=False)
    finished: bool


def generation_prompt_ids(tokenizer: Any, template: Any, instruction: str) -> list[int]:
    """Prompt ids of an instruction as a user turn, ending where the template's response starts."""
    messages = [{"role": "user", "content": instruction}, {"role": "assistant", "content": ""}]
    return list(template.encode_oneturn(tokenizer, messages)[0])


def _rng_devices(device: torch.device) -> list[int]:
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []


@torch.no_grad()
def sample_generations(
    model: torch.nn.Module,
    tokenizer: Any,
    template: Any,
    prompts: Sequence[str | Sequence[int]],
    num_samples: int = 4,
    temperature: float = 0.7,
    max_new_tokens: int = 128,
    seed: int = 0,
    batch_size: int = 8,
    top_p: float = 1.0,
    top_k: int = 0,
    progress: bool = False,
) -> list[list[SampledResponse]]:
    """Sample `num_samples` responses per prompt from the current model, with their token ids.

    The model is put in eval mode for the call and its train/eval mode restored afterwards. Sampling is
    plain temperature sampling by default (`top_p=1`, `top_k=0` override the model's generation config).
    The result depends on `seed` and `batch_size` (which prompts share a batch), not on the caller's RNG,
    and the global RNG state is unchanged on return.

    Args:
        model: Causal LM (plain or PEFT-wrapped).
        tokenizer: Tokenizer fixed by `get_template_and_fix_tokenizer`.
        template: LLaMA-Factory `Template` (prompt encoding and stop tokens).
        prompts: User-turn contents (encoded with `template`), or prompts already encoded as token
            ids and used as they are (e.g. the unlabelled prefix of a tokenised row, `text.split_row`).
        num_samples: Responses per prompt.
        temperature: Sampling temperature (> 0).
        max_new_tokens: Generation budget per response.
        seed: Sampling seed.
        batch_size: Prompts per `generate` call (each yields `num_samples` rows).
        top_p: Nucleus sampling threshold (1.0 = off).
        top_k: Top-k sampling (0 = off).
        progress: Show a tqdm bar.

    Returns:
        `out[i][j]` is the j-th `SampledResponse` for `prompts[i]`.

    Raises:
        ValueError: if `num_samples < 1` or `temperature <= 0`.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
    device = model_device(model)
    pad_id = pad_id_of(tokenizer)
    stop_ids = [int(t) for t in template.get_stop_token_ids(tokenizer) if t is not None]
    was_training = model.training
    results: list[list[SampledResponse]] = []
    model.eval()
    try:
        with torch.random.fork_rng(devices=_rng_devices(device)):
            torch.manual_seed(seed)
            starts = range(0, len(prompts), batch_size)
            for start in tqdm(starts, desc="sample", disable=not progress, leave=False):
                seqs = [
                    generation_prompt_ids(tokenizer, template, p) if isinstance(p, str) else [int(t) for t in p]
                    for p in prompts[start : start + batch_size]
                ]
                ids, mask, _ = pad_batch(seqs, pad_id, "left", device)
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=True,
                    temperature=temperature,
                    top_p=top_p,
                    top_k=top_k,
                    num_beams=1,
                    num_return_sequences=num_samples,
                    use_cache=True,  # explicit: without the KV cache 48 tokens on smollm2 take 9x longer
                    eos_token_id=stop_ids or None,
                    pad_token_id=pad_id,
                )
                rows = out[:, ids.shape[1] :].tolist()
                for i, prompt_ids in enumerate(seqs):
                    group = []
                    for row in rows[i * num_samples : (i + 1) * num_samples]:
                        cut = next((k for k, t in enumerate(row) if t in stop_ids), None)
                        body = row if cut is None else row[:cut]
                        group.append(
                            SampledResponse(
                                text=tokenizer.decode(body, skip_special_tokens=True),
                                response_ids=row if cut is None else row[: cut + 1],
                                prompt_ids=list(prompt_ids),
                                finished=cut is not None,
                            )
                        )
                    results.append(group)
    finally:
        model.train(was_training)
    return results


def sample_responses(
    model: torch.nn.Module,
    tokenizer: Any,
    template: Any,
    prompts: Sequence[str],
    num_samples: int = 4,
    temperature: float = 0.7,
    max_new_tokens: int = 128,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
) -> list[list[str]]:
    """Texts of `num_samples` on-policy samples per prompt (see `sample_generations` for the details).

    Args:
        model: Causal LM (plain or PEFT-wrapped).
        tokenizer: Tokenizer fixed by `get_template_and_fix_tokenizer`.
        template: LLaMA-Factory `Template`.
        prompts: User-turn contents.
        num_samples: Responses per prompt.
        temperature: Sampling temperature (> 0).
        max_new_tokens: Generation budget per response.
        seed: Sampling seed (the global RNG state is restored afterwards).
        batch_size: Prompts per `generate` call.
        progress: Show a tqdm bar.

    Returns:
        `out[i]` is the list of `num_samples` decoded responses to `prompts[i]`.
    """
    groups = sample_generations(
        model,
        tokenizer,
        template,
        prompts,
        num_samples=num_samples,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
    )
    return [[r.text for r in group] for group in groups]
