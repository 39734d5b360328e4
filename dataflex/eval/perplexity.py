"""Held-out perplexity over packed blocks, overall and per domain."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dataflex.signals.batching import model_device, pad_batch, pad_id_of


def make_blocks(tokenizer: Any, texts: Sequence[str], block_size: int = 256) -> list[list[int]]:
    """Tokenise texts as pretraining packs them and cut the stream into blocks.

    Each text is tokenised without special tokens and followed by eos; the concatenated stream is cut into
    consecutive blocks of `block_size` tokens. Unlike training packing, the final partial block is kept
    (when it has at least 2 tokens, i.e. predicts something) so small held-out sets are fully used.

    Args:
        tokenizer: Tokenizer with an eos token.
        texts: Documents.
        block_size: Tokens per block.

    Returns:
        The blocks, as lists of token ids.
    """
    stream: list[int] = []
    for text in texts:
        stream += tokenizer.encode(text, add_special_tokens=False)
        if tokenizer.eos_token_id is not None:
            stream.append(int(tokenizer.eos_token_id))
    blocks = [stream[i : i + block_size] for i in range(0, len(stream), block_size)]
    return [b for b in blocks if len(b) >= 2]


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    block_size: int = 256,
    batch_size: int = 8,
    progress: bool = False,
) -> dict:
    """Mean next-token NLL and perplexity over the blocks of `make_blocks`.

    Every block is scored independently (its first token is context only); the loss is the mean over all
    predicted tokens of all blocks, so a short final block weighs by its token count.

    Args:
        model: Causal LM (plain or PEFT-wrapped); should already be in eval mode.
        tokenizer: Tokenizer with an eos token.
        texts: Documents.
        block_size: Tokens per block.
        batch_size: Blocks per forward pass.
        progress: Show a tqdm bar.

    Returns:
        `{"loss": float, "perplexity": float, "tokens": int}`, `tokens` being the number of predicted
        tokens (NaN loss and perplexity when there is nothing to predict).
    """
    blocks = make_blocks(tokenizer, texts, block_size)
    device = model_device(model)
    pad_id = pad_id_of(tokenizer)
    total_nll, total_tokens = 0.0, 0
    starts = range(0, len(blocks), batch_size)
    for start in tqdm(starts, desc="perplexity", disable=not progress, leave=False):
        ids, mask, pos = pad_batch(blocks[start : start + batch_size], pad_id, "right", device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        nll = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1).to(logits.device),
            ignore_index=-100,
            reduction="sum",
        )
        total_nll += float(nll)
        total_tokens += int(mask[:, 1:].sum())
    loss = total_nll / total_tokens if total_tokens else float("nan")
    return {"loss": loss, "perplexity": math.exp(loss) if total_tokens else float("nan"), "tokens": total_tokens}


def domain_perplexity(
    model: torch.nn.Module,
    tokenizer: Any,
    texts_by_domain: Mapping[str, Sequence[str]],
    block_size: int = 256,
    batch_size: int = 8,
    progress: bool = False,
) -> dict:
    """Perplexity per domain plus their mean and worst.

    Args:
        model: Causal LM (plain or PEFT-wrapped); should already be in eval mode.
        tokenizer: Tokenizer with an eos token.
        texts_by_domain: Domain name -> documents.
        block_size: Tokens per block.
        batch_size: Blocks per forward pass.
        progress: Show a tqdm bar.

    Returns:
        Flat dict with `ppl/<domain>` and `loss/<domain>` for each domain, `ppl/avg` (mean of the domain
        perplexities) and `ppl/worst` (their max); the last two are omitted when there are no domains.
    """
    out: dict[str, float] = {}
    ppls = []
    for domain, texts in texts_by_domain.items():
        res = perplexity(model, tokenizer, list(texts), block_size, batch_size, progress)
        out[f"ppl/{domain}"] = res["perplexity"]
        out[f"loss/{domain}"] = res["loss"]
        ppls.append(res["perplexity"])
    if ppls:
        out["ppl/avg"] = sum(ppls) / len(ppls)
        out["ppl/worst"] = max(ppls)
    return out
