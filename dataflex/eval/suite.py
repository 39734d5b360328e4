"""The evaluation suite run at the start and end of every training run, and its summary table."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .exact_match import answer_nll, exact_match
from .mcq import mcq_accuracy
from .perplexity import domain_perplexity


def load_rows(path: str | Path, max_samples: int | None = None) -> list[dict]:
    """Read the first `max_samples` rows (file order) of a `.jsonl` file (or a `.json` list).

    Args:
        path: File path.
        max_samples: Row limit; None or a negative value reads all rows.

    Returns:
        The rows.

    Raises:
        FileNotFoundError: if the file does not exist (the message names it).
    """
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"eval file not found: {path}")
    limit = None if max_samples is None or max_samples < 0 else int(max_samples)
    if path.suffix == ".json":
        return list(json.loads(path.read_text(encoding="utf-8")))[:limit]
    rows: list[dict] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(rows) >= limit:
                break
            if line.strip():
                rows.append(json.loads(line))
    return rows


def run_eval_suite(
    model: torch.nn.Module, tokenizer: Any, template: Any, spec: Mapping, prefix: str = "", progress: bool = True
) -> dict[str, float]:
    """Run the configured evaluations and return flat, prefixed metrics.

    `spec` (a dict or OmegaConf DictConfig; every section optional) looks like::

        {"max_samples": 200, "batch_size": 16, "max_new_tokens": 16, "block_size": 256,
         "mcq": {"target": "eval/mcq.jsonl"},
         "exact_match": {"arithmetic": "eval/a.jsonl"},
         "perplexity": {"code": "code/heldout.jsonl"}}

    Metric names: `mcq/<name>/accuracy`, `em/<name>`, `nll/<name>` (the token-mean NLL of the exact-match
    set's reference answers), `ppl/<domain>`, `loss/<domain>`, `ppl/avg`,
    `ppl/worst`, each preceded by `prefix`. The model runs in eval mode under `torch.no_grad()` on its own
    device; the train/eval mode of every submodule is restored afterwards, even on error.

    Args:
        model: Causal LM (plain or PEFT-wrapped).
        tokenizer: Tokenizer fixed by `get_template_and_fix_tokenizer`.
        template: LLaMA-Factory `Template`.
        spec: Evaluation spec as above.
        prefix: Prepended to every metric name, e.g. "eval_before/".
        progress: Show tqdm bars.

    Returns:
        Metric name -> value.

    Raises:
        FileNotFoundError: if a configured file does not exist.
    """
    max_samples = spec.get("max_samples")
    batch_size = int(spec.get("batch_size") or 16)
    sections = {key: dict(spec.get(key) or {}) for key in ("mcq", "exact_match", "perplexity")}
    # Read every file first so that a missing one fails before any compute.
    data = {key: {name: load_rows(p, max_samples) for name, p in files.items()} for key, files in sections.items()}

    modes = {m: m.training for m in model.modules()}
    model.eval()
    metrics: dict[str, float] = {}
    try:
        with torch.no_grad():
            for name, rows in data["mcq"].items():
                res = mcq_accuracy(model, tokenizer, template, rows, batch_size=batch_size, progress=progress)
                metrics[f"mcq/{name}/accuracy"] = res["accuracy"]
            max_new_tokens = int(spec.get("max_new_tokens") or 16)
            for name, rows in data["exact_match"].items():
                res = exact_match(
                    model, tokenizer, template, rows, max_new_tokens, batch_size=batch_size, progress=progress
                )
                metrics[f"em/{name}"] = res["exact_match"]
                metrics[f"nll/{name}"] = answer_nll(model, tokenizer, template, rows, batch_size=batch_size)["nll"]
            if data["perplexity"]:
                texts = {name: [r["text"] for r in rows] for name, rows in data["perplexity"].items()}
                block_size = int(spec.get("block_size") or 256)
                metrics.update(
                    domain_perplexity(model, tokenizer, texts, block_size, batch_size=batch_size, progress=progress)
                )
    finally:
        for module, training in modes.items():
            module.training = training
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()}


def _strip_run_prefix(before: Mapping[str, float], after: Mapping[str, float]) -> tuple[dict, dict]:
    """Drop a leading path segment shared by all keys of each dict when it differs between the two.

    So `{"eval_before/ppl/code": ...}` and `{"eval_after/ppl/code": ...}` line up as `ppl/code`, while
    unprefixed dicts (whose shared segment, if any, is the same on both sides) are left alone.
    """

    def shared_head(d: Mapping[str, float]) -> str | None:
        heads = {k.split("/", 1)[0] + "/" if "/" in k else None for k in d}
        return heads.pop() if len(heads) == 1 else None

    hb, ha = shared_head(before), shared_head(after)
    if hb is not None and ha is not None and hb != ha:
        return {k[len(hb) :]: v for k, v in before.items()}, {k[len(ha) :]: v for k, v in after.items()}
    return dict(before), dict(after)


def format_table(before: Mapping[str, float], after: Mapping[str, float]) -> str:
    """Plain-text `metric | before | after | delta` table for the end-of-run summary.

    Rows follow the order of `before`, then metrics only in `after`. Values are printed with 4 decimals,
    the delta with a sign; a side missing a metric shows `-`. If each dict's keys all carry their own run
    prefix (e.g. "eval_before/" and "eval_after/"), it is dropped so the metrics line up.

    Args:
        before: Metrics before training.
        after: Metrics after training.

    Returns:
        The table, lines joined with newlines (no trailing newline).
    """
    before, after = _strip_run_prefix(before, after)
    names = list(before) + [k for k in after if k not in before]

    def fmt(v: Any, signed: bool = False) -> str:
        if v is None:
            return "-"
        v = float(v)
        if math.isnan(v):
            return "nan"
        return f"{v:+.4f}" if signed else f"{v:.4f}"

    rows = [("metric", "before", "after", "delta")]
    for name in names:
        b, a = before.get(name), after.get(name)
        delta = a - b if a is not None and b is not None else None
        rows.append((name, fmt(b), fmt(a), fmt(delta, signed=True)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]

    def line(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return " | ".join([first, *rest])

    sep = "-+-".join("-" * w for w in widths)
    return "\n".join([line(rows[0]), sep, *(line(r) for r in rows[1:])])
