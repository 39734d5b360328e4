"""The SFT + eval suite (``offline_sft``)."""

from __future__ import annotations

import random
from pathlib import Path

from dataflex.data import sources as src
from dataflex.data.corpora.common import _inputs_digest, _write_json, _write_jsonl
from dataflex.data.corpora.mcq import _definitions
from dataflex.data.corpora.tasks import _arithmetic, _dialogue, _drop_leaks, _facts

SFT_TASKS = ("definitions", "arithmetic", "dialogue", "facts")


# --- SFT: the builder -----------------------------------------------------------------------------


def _sft_entry(file_name: str) -> dict:
    return {
        "file_name": file_name,
        "formatting": "alpaca",
        "columns": {"prompt": "instruction", "query": "input", "response": "output"},
    }


def build_offline_sft(out_dir: Path, *, seed: int = 0) -> dict[str, dict]:
    """Builds the instruction-tuning set and its held-out evaluation sets.

    Tasks (``task`` tag per row): ``definitions`` (WordNet: "What does the word X mean?" -> gloss,
    plus 4-way multiple-choice definition questions), ``arithmetic`` (generated + - * problems with
    exact answers), ``dialogue`` (chatterbot-corpus prompt -> reply pairs) and ``facts`` (bsdgames
    quiz tables: capitals, elements, ...). Files (alpaca rows ``{"instruction", "input", "output",
    "task"}``):

    * ``train.jsonl``: all tasks, shuffled with ``random.Random(seed)``; ``train_<task>.jsonl``:
      the same rows split by task, same relative order;
    * ``val_mcq.jsonl``: 100 MCQ definition rows (the selection target / validation set);
    * ``eval/mcq.jsonl``: 200 MCQ definition rows with ``answer_index`` and ``choices``;
    * ``eval/arithmetic.jsonl``, ``eval/facts.jsonl``: exact-match rows (facts also list accepted
      ``aliases``; ``output`` is the reference);
    * ``stats.json``: row counts.

    Eval and val items share nothing with train: their words are never the target word of a train
    row, arithmetic problems (either operand order) and fact entities are disjoint, and val and eval
    MCQ words are disjoint.

    Args:
        out_dir: Output directory (named ``offline_sft``; created if needed).
        seed: Seed of every random choice (splits, distractors, answer positions, order).

    Returns:
        LLaMA-Factory dataset_info entries (``offline_sft``, ``offline_sft_<task>``,
        ``offline_sft_val_mcq``, ``offline_sft_eval_mcq``, ``offline_sft_eval_arithmetic``,
        ``offline_sft_eval_facts``), file names relative to ``out_dir.parent``.

    Raises:
        MissingSourceError: If a source is not installed (all missing ones are named at once).
    """
    out_dir = Path(out_dir)
    src.require(("wordnet", "quiz", "chatterbot"))
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir.name

    def rng_for(name: str) -> random.Random:  # one stream per task: tasks do not shift each other
        return random.Random(f"{seed}:{name}")

    def_train, val_mcq, eval_mcq = _definitions(rng_for("definitions"))
    arith_train, arith_eval = _arithmetic(rng_for("arithmetic"))
    dialogue_train = _dialogue(rng_for("dialogue"))
    facts_train, facts_eval, fact_pairs = _facts(rng_for("facts"))

    by_task = {"definitions": def_train, "arithmetic": arith_train, "dialogue": dialogue_train, "facts": facts_train}
    train = [row for task in SFT_TASKS for row in by_task[task]]
    train = _drop_leaks(train, val_mcq + eval_mcq + arith_eval + facts_eval, fact_pairs)
    rng_for("mix").shuffle(train)

    mcq_keys = ("instruction", "input", "output", "answer_index", "choices", "task", "word")
    val_mcq = [{k: r[k] for k in mcq_keys} for r in val_mcq]
    eval_mcq_rows = [{k: r[k] for k in mcq_keys} for r in eval_mcq]
    counts = {"train.jsonl": _write_jsonl(out_dir / "train.jsonl", train)}
    for task in SFT_TASKS:
        name = f"train_{task}.jsonl"
        counts[name] = _write_jsonl(out_dir / name, (r for r in train if r["task"] == task))
    counts["val_mcq.jsonl"] = _write_jsonl(out_dir / "val_mcq.jsonl", val_mcq)
    counts["eval/mcq.jsonl"] = _write_jsonl(out_dir / "eval" / "mcq.jsonl", eval_mcq_rows)
    counts["eval/arithmetic.jsonl"] = _write_jsonl(out_dir / "eval" / "arithmetic.jsonl", arith_eval)
    counts["eval/facts.jsonl"] = _write_jsonl(out_dir / "eval" / "facts.jsonl", facts_eval)
    _write_json(
        out_dir / "stats.json",
        {"seed": seed, "rows": counts, "inputs_sha256": _inputs_digest(("wordnet", "quiz", "chatterbot"))},
    )

    entries = {prefix: _sft_entry(f"{prefix}/train.jsonl")}
    for task in SFT_TASKS:
        entries[f"{prefix}_{task}"] = _sft_entry(f"{prefix}/train_{task}.jsonl")
    entries[f"{prefix}_val_mcq"] = _sft_entry(f"{prefix}/val_mcq.jsonl")
    for name in ("mcq", "arithmetic", "facts"):
        entries[f"{prefix}_eval_{name}"] = _sft_entry(f"{prefix}/eval/{name}.jsonl")
    return entries
