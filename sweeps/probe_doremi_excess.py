"""The DoReMi proxy's per-token excess loss over its reference, per domain, after training (docs/results.md,
"Mixture with planted domains"): on held-out blocks of each domain, the mean of ℓ_proxy − ℓ_ref and of
max(ℓ_proxy − ℓ_ref, 0) (DoReMi's clipped excess), to see whether the planted `noise` domain has the
excess DoReMi would need to starve it.

    python sweeps/probe_doremi_excess.py [--root outputs/paper_small/planted] [--seeds 1,2] [--blocks 16]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dataflex.data.assets import dataflex_home

DOMAINS = {
    "noise": "planted/noise/heldout.jsonl",
    "repeat": "planted/repeat/heldout.jsonl",
    **{d: f"offline_domains/{d}/heldout.jsonl" for d in ("code", "drama", "quotes")},
}


def token_losses(model, blocks: torch.Tensor) -> torch.Tensor:
    """Per-token next-token losses of ``blocks`` ([n, T] token ids), flattened."""
    with torch.no_grad():
        logits = model(blocks).logits[:, :-1]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), blocks[:, 1:].reshape(-1), reduction="none"
    )


def held_out_blocks(path: Path, tokenizer, n: int, length: int = 256) -> torch.Tensor:
    """The first ``n`` blocks of ``length`` tokens of a JSONL file's texts, documents joined by EOS."""
    ids: list[int] = []
    for line in path.open():
        ids += tokenizer(json.loads(line)["text"])["input_ids"] + [tokenizer.eos_token_id or 0]
        if len(ids) >= n * length:
            break
    if len(ids) < n * length:
        raise SystemExit(f"{path} holds fewer than {n} blocks of {length} tokens; lower --blocks")
    return torch.tensor(ids[: n * length]).view(n, length)


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="outputs/paper_small/planted")
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--blocks", type=int, default=16)
    args = parser.parse_args()
    data = Path(dataflex_home()) / "data"
    print("| seed | domain | ℓ_ref | ℓ_proxy | mean(ℓ_proxy − ℓ_ref) | mean(max(ℓ_proxy − ℓ_ref, 0)) |")
    print("|---|---|---|---|---|---|")
    for seed in args.seeds.split(","):
        runs = {
            arm: Path(args.root) / f"experiment=paper_small_planted_{arm}" / f"seed={seed}" / "model"
            for arm in ("natural", "doremi_proxy")
        }
        missing = [str(p) for p in runs.values() if not p.is_dir()]
        if missing:
            raise SystemExit(f"no trained model at {', '.join(missing)}: run sweeps/paper_small_planted.sh seed={seed}")
        reference = AutoModelForCausalLM.from_pretrained(runs["natural"]).eval()
        proxy = AutoModelForCausalLM.from_pretrained(runs["doremi_proxy"]).eval()
        tokenizer = AutoTokenizer.from_pretrained(runs["natural"])
        for name, rel in DOMAINS.items():
            blocks = held_out_blocks(data / rel, tokenizer, args.blocks)
            ref, prx = token_losses(reference, blocks), token_losses(proxy, blocks)
            diff = prx - ref
            print(
                f"| {seed} | {name} | {ref.mean():.3f} | {prx.mean():.3f} | {diff.mean():+.3f} | "
                f"{diff.clamp(min=0).mean():.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
