"""Planted-signal data sets (``planted``): problems where the right answer of a method is known.

Built from the files of ``offline_sft`` and ``offline_domains`` (no raw source is read again), so the
three sets below share those sets' guarantees (held-out rows disjoint from training rows):

* **target** (targeted selection): ``target_facts.jsonl``, :data:`N_TARGET` rows of the ``facts`` task
  planted in a pool of other tasks (the data config ``planted_target`` takes the first
  :data:`N_OTHER` rows of each of ``definitions``, ``arithmetic`` and ``dialogue``, so facts are
  10% of the pool), and ``val_facts.jsonl``, :data:`N_VAL` further facts rows as the selectors'
  target set. Validation rows share no answer with the planted rows; the held-out metric is
  ``offline_sft``'s ``eval/facts.jsonl`` (entities disjoint from every training row).
* **noise and repeat domains** (mixture): ``noise/train.jsonl`` holds documents of words drawn
  uniformly at random from the vocabulary of the ``offline_domains`` corpus (its loss cannot fall
  below the entropy of that draw: nothing beyond the word list is learnable), ``repeat/train.jsonl``
  the last :data:`N_REPEAT_UNIQUE` documents of the ``quotes`` training split repeated to the size of a real domain (learned, and
  then memorised, fast). Both have a ``heldout.jsonl`` (fresh noise; the repeated documents).
* **label noise** (reweighting): ``noisy/clean.jsonl`` and ``noisy/corrupted.jsonl``, the first
  :data:`N_NOISY_PER_TASK` rows of each ``offline_sft`` task with a seeded :data:`NOISE_RATE` of them
  given another corrupted row's answer (never their own), and ``noisy/corrupted_ids.json``: the
  indices, in ``noisy/all.jsonl`` (every row in one file, a ``corrupted`` flag each), of the corrupted
  rows. As two files, the corrupted rows are their own domain, so a run's per-domain statistics
  (``weighter/domain_weight/<domain>``) show what a weighter gives them; the weighter never sees domains.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from dataflex.data.corpora.common import _write_json, _write_jsonl

N_TARGET = 64
N_OTHER = 192  # per other task in data=planted_target: 3 x 192 + 64 = 640 rows, 10.0% facts
N_VAL = 64
N_REPEAT_UNIQUE = 8
N_NOISY_PER_TASK = 150
NOISE_RATE = 0.2
NOISY_TASKS = ("definitions", "arithmetic", "dialogue", "facts")


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _sft_entry(file_name: str) -> dict:
    return {
        "file_name": file_name,
        "formatting": "alpaca",
        "columns": {"prompt": "instruction", "query": "input", "response": "output"},
    }


def _text_entry(file_name: str) -> dict:
    return {"file_name": file_name, "columns": {"prompt": "text"}}


def planted_target(facts: list[dict], rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(pool rows, validation rows): :data:`N_TARGET` facts for the pool, then :data:`N_VAL` facts
    whose answer is not the answer of any pool row, from a seeded shuffle of ``facts``."""
    rows = list(facts)
    rng.shuffle(rows)
    pool = rows[:N_TARGET]
    answers = {r["output"].strip().lower() for r in pool}
    val = [r for r in rows[N_TARGET:] if r["output"].strip().lower() not in answers][:N_VAL]
    if len(pool) < N_TARGET or len(val) < N_VAL:
        raise ValueError(f"offline_sft has too few facts rows ({len(rows)}) for a planted target")
    return pool, val


def noise_documents(vocabulary: list[str], n_docs: int, words_per_doc: int, rng: random.Random) -> list[str]:
    """``n_docs`` documents of ``words_per_doc`` words, each drawn uniformly from ``vocabulary``."""
    return [" ".join(rng.choice(vocabulary) for _ in range(words_per_doc)) for _ in range(n_docs)]


def corrupt_answers(rows: list[dict], rate: float, rng: random.Random) -> list[int]:
    """Gives a seeded ``rate`` of ``rows`` (in place) the answer of another chosen row, never an answer
    equal to their own; returns the sorted indices of the corrupted rows."""
    chosen = sorted(rng.sample(range(len(rows)), round(rate * len(rows))))
    answers = [rows[i]["output"] for i in chosen]
    shift = 1
    # a cyclic shift of the chosen rows' answers; the smallest shift under which no row keeps an equal answer
    while shift < len(chosen) and any(answers[(j + shift) % len(chosen)] == answers[j] for j in range(len(chosen))):
        shift += 1
    if len(chosen) < 2 or shift == len(chosen):
        raise ValueError("cannot corrupt: too few rows with distinct answers")
    for j, i in enumerate(chosen):
        rows[i]["output"] = answers[(j + shift) % len(chosen)]
    return chosen


def build_planted(out_dir: Path, sft_dir: Path, domains_dir: Path, *, seed: int = 0) -> dict[str, dict]:
    """Builds the planted sets (module docstring) from the built ``offline_sft`` (``sft_dir``) and
    ``offline_domains`` (``domains_dir``); deterministic for a seed.

    Returns:
        LLaMA-Factory dataset_info entries: ``planted_target_facts``, ``planted_val_facts``,
        ``planted_noise``, ``planted_noise_heldout``, ``planted_repeat``, ``planted_repeat_heldout``,
        ``planted_noisy_clean``, ``planted_noisy_corrupted``, file names relative to ``out_dir.parent``.
    """
    out_dir, sft_dir, domains_dir = Path(out_dir), Path(sft_dir), Path(domains_dir)
    prefix = out_dir.name

    def rng_for(name: str) -> random.Random:
        return random.Random(f"{seed}:{name}")

    counts: dict[str, int] = {}
    pool, val = planted_target(_read_jsonl(sft_dir / "train_facts.jsonl"), rng_for("target"))
    counts["target_facts.jsonl"] = _write_jsonl(out_dir / "target_facts.jsonl", pool)
    counts["val_facts.jsonl"] = _write_jsonl(out_dir / "val_facts.jsonl", val)

    domain_files = sorted(domains_dir.glob("*/train.jsonl"))
    texts = [r["text"] for f in domain_files for r in _read_jsonl(f)]
    vocabulary = sorted({w for t in texts for w in re.findall(r"[A-Za-z]+", t)})
    per_domain = round(len(texts) / max(len(domain_files), 1))
    noise = noise_documents(vocabulary, per_domain, 300, rng_for("noise"))
    noise_heldout = noise_documents(vocabulary, 30, 300, rng_for("noise-heldout"))
    counts["noise/train.jsonl"] = _write_jsonl(out_dir / "noise" / "train.jsonl", ({"text": t} for t in noise))
    counts["noise/heldout.jsonl"] = _write_jsonl(
        out_dir / "noise" / "heldout.jsonl", ({"text": t} for t in noise_heldout)
    )
    quotes = _read_jsonl(domains_dir / "quotes" / "train.jsonl")[-N_REPEAT_UNIQUE:]  # training text: no held-out leak
    repeated = [quotes[i % len(quotes)] for i in range(per_domain)]
    counts["repeat/train.jsonl"] = _write_jsonl(out_dir / "repeat" / "train.jsonl", repeated)
    counts["repeat/heldout.jsonl"] = _write_jsonl(out_dir / "repeat" / "heldout.jsonl", quotes)

    noisy = [r for task in NOISY_TASKS for r in _read_jsonl(sft_dir / f"train_{task}.jsonl")[:N_NOISY_PER_TASK]]
    rng_for("noisy-order").shuffle(noisy)
    corrupted = corrupt_answers(noisy, NOISE_RATE, rng_for("noisy"))
    flags = set(corrupted)
    rows = [{**r, "corrupted": i in flags} for i, r in enumerate(noisy)]
    counts["noisy/all.jsonl"] = _write_jsonl(out_dir / "noisy" / "all.jsonl", rows)
    counts["noisy/clean.jsonl"] = _write_jsonl(
        out_dir / "noisy" / "clean.jsonl", (r for r in rows if not r["corrupted"])
    )
    counts["noisy/corrupted.jsonl"] = _write_jsonl(
        out_dir / "noisy" / "corrupted.jsonl", (r for r in rows if r["corrupted"])
    )
    _write_json(out_dir / "noisy" / "corrupted_ids.json", {"file": "noisy/all.jsonl", "ids": corrupted})
    _write_json(out_dir / "stats.json", {"seed": seed, "rows": counts, "vocabulary": len(vocabulary)})

    return {
        f"{prefix}_target_facts": _sft_entry(f"{prefix}/target_facts.jsonl"),
        f"{prefix}_val_facts": _sft_entry(f"{prefix}/val_facts.jsonl"),
        f"{prefix}_noise": _text_entry(f"{prefix}/noise/train.jsonl"),
        f"{prefix}_noise_heldout": _text_entry(f"{prefix}/noise/heldout.jsonl"),
        f"{prefix}_repeat": _text_entry(f"{prefix}/repeat/train.jsonl"),
        f"{prefix}_repeat_heldout": _text_entry(f"{prefix}/repeat/heldout.jsonl"),
        f"{prefix}_noisy_clean": _sft_entry(f"{prefix}/noisy/clean.jsonl"),
        f"{prefix}_noisy_corrupted": _sft_entry(f"{prefix}/noisy/corrupted.jsonl"),
    }
