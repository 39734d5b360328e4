"""Builders of the offline data sets: a multi-domain pretraining corpus and an SFT + eval suite.

Both builders read only the local sources of :mod:`dataflex.data.sources`, write only inside their
``out_dir`` and are deterministic: fixed file lists, sorted iteration, seeded ``random.Random``
and no timestamps, so building twice gives byte-identical files.

* :func:`build_offline_domains` -> ``offline_domains/<domain>/{train,heldout}.jsonl`` (``{"text"}``
  rows of about ``doc_chars`` characters) and ``offline_domains/domains.json``.
* :func:`build_offline_sft` -> ``offline_sft/train.jsonl`` (alpaca rows with a ``task`` tag),
  ``train_<task>.jsonl``, ``val_mcq.jsonl`` and ``eval/{mcq,arithmetic,facts}.jsonl``.

Both return LLaMA-Factory ``dataset_info.json`` entries whose ``file_name`` is relative to the
parent of ``out_dir`` (where the registry lives).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import string
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from dataflex.data import sources as src

__all__ = [
    "DOMAINS",
    "SFT_TASKS",
    "build_offline_domains",
    "build_offline_sft",
    "chunk_documents",
    "format_mcq",
]

LETTERS = string.ascii_uppercase

#: Domains of the pretraining corpus, in order: name -> (source names, document generator).
DOMAINS: dict[str, tuple[tuple[str, ...], Callable[[], Iterator[str]]]] = {
    "code": (("code",), lambda: src.code_documents()),
    "techdocs": (("techdocs",), lambda: src.techdocs_documents()),
    "drama": (("drama",), lambda: src.drama_documents()),
    "scripture": (("scripture",), lambda: src.scripture_documents()),
    "dictionary": (("gcide",), lambda: src.gcide_documents()),
    "computing": (("foldoc", "jargon"), lambda: _chain(src.foldoc_documents(), src.jargon_documents())),
    "quotes": (("fortunes",), lambda: src.fortune_documents()),
}

#: Tasks of the SFT set, in order.
SFT_TASKS = ("definitions", "arithmetic", "dialogue", "facts")


def _chain(*iterators: Iterable[str]) -> Iterator[str]:
    for it in iterators:
        yield from it


# --- shared helpers ---------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """Writes rows as UTF-8 JSON lines (keys in the given order, ``\\n`` endings); returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def _inputs_digest(source_names: Iterable[str]) -> dict[str, str]:
    """One sha256 per source over its files' relative names and contents (pins the raw inputs)."""
    out = {}
    for name in source_names:
        digest = hashlib.sha256()
        for rel, sha in src.files_sha256(src.source_files(name)).items():
            digest.update(f"{rel}\0{sha}\n".encode())
        out[name] = digest.hexdigest()
    return out


# --- chunking ---------------------------------------------------------------------------------


def _split_long(text: str, limit: int, sep: str) -> Iterator[str]:
    """Splits ``text`` into pieces of at most ``limit`` characters on ``sep`` boundaries (lines,
    then words); a single word longer than ``limit`` is cut."""
    if len(text) <= limit:
        yield text
        return
    cur = ""
    for part in text.split(sep):
        if len(part) > limit:
            if cur:
                yield cur
                cur = ""
            if sep == "\n":
                yield from _split_long(part, limit, " ")
            else:
                for i in range(0, len(part), limit):
                    yield part[i : i + limit]
            continue
        candidate = f"{cur}{sep}{part}" if cur else part
        if len(candidate) > limit:
            yield cur
            cur = part
        else:
            cur = candidate
    if cur:
        yield cur


def chunk_documents(docs: Iterable[str], doc_chars: int) -> Iterator[str]:
    """Packs documents into chunks of at most ``doc_chars`` characters, split on paragraph (blank
    line) boundaries, then on lines. Small documents share a chunk; a document that does not fit
    in what is left of a chunk that is at least half full starts a new chunk."""
    if doc_chars < 16:
        raise ValueError(f"doc_chars must be >= 16, got {doc_chars}")
    cur: list[str] = []
    size = 0
    for doc in docs:
        if cur and size >= doc_chars // 2 and size + 2 + len(doc) > doc_chars:
            yield "\n\n".join(cur)
            cur, size = [], 0
        for para in doc.split("\n\n"):
            if not para.strip():
                continue
            for piece in _split_long(para, doc_chars, "\n"):
                if not piece.strip():
                    continue
                add = len(piece) + (2 if cur else 0)
                if cur and size + add > doc_chars:
                    yield "\n\n".join(cur)
                    cur, size, add = [], 0, len(piece)
                cur.append(piece)
                size += add
    if cur:
        yield "\n\n".join(cur)


def _select(chunks: list[str], max_bytes: int) -> list[str]:
    """Evenly spaced sample of ``chunks`` (kept in order) with at most ``max_bytes`` UTF-8 bytes of
    text in all: every chunk when they fit, else about ``max_bytes / mean chunk size`` chunks at
    regular index intervals, so the sample covers the whole source."""
    sizes = [len(c.encode("utf-8")) for c in chunks]
    total = sum(sizes)
    if total <= max_bytes:
        return list(chunks)
    n = len(chunks)
    wanted = max(1, min(n, int(max_bytes * n / total)))
    out, used = [], 0
    for k in range(wanted):
        i = k * n // wanted
        if used + sizes[i] <= max_bytes:
            out.append(chunks[i])
            used += sizes[i]
    return out


def _heldout_mask(n: int, fraction: float) -> list[bool]:
    """``fraction`` of ``n`` positions, evenly spaced (e.g. every 20th for 0.05); at least one when
    ``fraction > 0`` and ``n >= 2``; never all of them."""
    if fraction <= 0 or n < 2:
        return [False] * n
    mask = [int((i + 1) * fraction) > int(i * fraction) for i in range(n)]
    if not any(mask):
        mask[n // 2] = True
    if all(mask):
        mask[0] = False
    return mask


# --- the multi-domain corpus ------------------------------------------------------------------


def build_offline_domains(
    out_dir: Path,
    *,
    max_bytes_per_domain: int = 1_000_000,
    heldout_fraction: float = 0.05,
    doc_chars: int = 2000,
) -> dict[str, dict]:
    """Builds the multi-domain pretraining corpus from the offline sources.

    For each domain of :data:`DOMAINS` (code, techdocs, drama, scripture, dictionary, computing,
    quotes), the source documents are cleaned, packed into chunks of about ``doc_chars`` characters,
    de-duplicated, sampled evenly over the whole source down to ``max_bytes_per_domain`` bytes of
    text (train and held-out together), and split: every ``1/heldout_fraction``-th chunk is held
    out. Writes ``out_dir/<domain>/train.jsonl``, ``out_dir/<domain>/heldout.jsonl`` (rows
    ``{"text": ...}``) and ``out_dir/domains.json`` (domains in order, with sample and byte counts
    and a sha256 per raw source).

    Args:
        out_dir: Output directory (named ``offline_domains``; created if needed).
        max_bytes_per_domain: Cap on the UTF-8 bytes of text per domain.
        heldout_fraction: Fraction of each domain's chunks held out (0 <= f < 1).
        doc_chars: Target chunk length in characters.

    Returns:
        LLaMA-Factory dataset_info entries ``offline_domains_<domain>`` and
        ``offline_domains_<domain>_heldout``, file names relative to ``out_dir.parent``.

    Raises:
        MissingSourceError: If a source is not installed (all missing ones are named at once).
    """
    out_dir = Path(out_dir)
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if max_bytes_per_domain <= 0:
        raise ValueError(f"max_bytes_per_domain must be > 0, got {max_bytes_per_domain}")
    src.require(s for names, _ in DOMAINS.values() for s in names)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir.name
    entries: dict[str, dict] = {}
    summary = []
    for domain, (source_names, documents) in DOMAINS.items():
        seen: set[str] = set()
        chunks = []
        for chunk in chunk_documents(documents(), doc_chars):
            if chunk not in seen:
                seen.add(chunk)
                chunks.append(chunk)
        available = sum(len(c.encode("utf-8")) for c in chunks)
        chosen = _select(chunks, max_bytes_per_domain)
        mask = _heldout_mask(len(chosen), heldout_fraction)
        train = [c for c, h in zip(chosen, mask) if not h]
        heldout = [c for c, h in zip(chosen, mask) if h]
        n_train = _write_jsonl(out_dir / domain / "train.jsonl", ({"text": t} for t in train))
        n_heldout = _write_jsonl(out_dir / domain / "heldout.jsonl", ({"text": t} for t in heldout))
        summary.append(
            {
                "name": domain,
                "train_samples": n_train,
                "heldout_samples": n_heldout,
                "train_bytes": sum(len(t.encode("utf-8")) for t in train),
                "heldout_bytes": sum(len(t.encode("utf-8")) for t in heldout),
                "available_bytes": available,
                "sources": [
                    {"name": s, "package": src.SOURCES[s].package, "registry": src.SOURCES[s].registry}
                    for s in source_names
                ],
                "inputs_sha256": _inputs_digest(source_names),
            }
        )
        for suffix, split in (("", "train"), ("_heldout", "heldout")):
            entries[f"{prefix}_{domain}{suffix}"] = {
                "file_name": f"{prefix}/{domain}/{split}.jsonl",
                "columns": {"prompt": "text"},
            }
    _write_json(
        out_dir / "domains.json",
        {
            "domains": summary,
            "doc_chars": doc_chars,
            "max_bytes_per_domain": max_bytes_per_domain,
            "heldout_fraction": heldout_fraction,
        },
    )
    return entries


# --- SFT: shared pieces -------------------------------------------------------------------------


def format_mcq(question: str, choices: list[str]) -> str:
    """Renders a multiple-choice prompt: the question, one lettered option per line, then
    ``Answer with the letter.`` The expected answer is the letter alone ("A".."D").

    Example:
        ``format_mcq('Which is the definition of the word "dog"?', ["a", "b", "c", "d"])`` ->
        ``'Which is the definition of the word "dog"?\\nA. a\\nB. b\\nC. c\\nD. d\\nAnswer with the letter.'``
    """
    if not 2 <= len(choices) <= len(LETTERS):
        raise ValueError(f"need 2..{len(LETTERS)} choices, got {len(choices)}")
    lines = [question.strip()]
    lines += [f"{LETTERS[i]}. {str(c).strip()}" for i, c in enumerate(choices)]
    lines.append("Answer with the letter.")
    return "\n".join(lines)


def _mcq_question(word: str) -> str:
    return f'Which is the definition of the word "{word}"?'


def _row(instruction: str, output: str, task: str, **extra) -> dict:
    return {"instruction": instruction, "input": "", "output": output, "task": task, **extra}


def _balanced_positions(n: int, rng: random.Random, k: int = 4) -> list[int]:
    positions = [i % k for i in range(n)]
    rng.shuffle(positions)
    return positions


# --- SFT: definitions (WordNet) -----------------------------------------------------------------

#: Sizes of the definition splits (words): eval MCQ, val MCQ, train Q&A, train MCQ (of train words).
N_EVAL_MCQ, N_VAL_MCQ, N_DEF_QA, N_DEF_MCQ = 200, 100, 1500, 400


def _stem_leaks(word: str, gloss: str) -> bool:
    """True when the gloss gives the word away (it contains the word or a word sharing its stem)."""
    g = gloss.lower()
    if word in g:
        return True
    stem = word[: max(4, len(word) - 3)]
    return len(word) >= 5 and any(tok.startswith(stem) for tok in re.findall(r"[a-z]+", g))


def _definition_pool() -> list[tuple[str, str, str]]:
    """(word, part of speech, gloss of its first sense) for common single words, most polysemous
    (a proxy for common) first; one word per gloss, so synonyms never share a definition."""

    def accept(key: str) -> bool:
        return 3 <= len(key) <= 14 and key.isascii() and key.isalpha() and key.islower()

    candidates = []
    for entry in src.wordnet_entries(accept):
        word = entry.word
        if word != word.lower():  # a proper noun spelled in lowercase in the index
            continue
        pos, gloss = entry.senses[0]
        if not 12 <= len(gloss) <= 140 or _stem_leaks(word, gloss):
            continue
        candidates.append((-len(entry.senses), word, pos, gloss))
    candidates.sort()
    pool, seen = [], set()
    for _, word, pos, gloss in candidates:
        key = gloss.lower()
        if key in seen:
            continue
        seen.add(key)
        pool.append((word, pos, gloss))
    return pool


def _distractor_ok(word: str, gloss: str, other: tuple[str, str, str]) -> bool:
    """Whether ``other``'s gloss can be a wrong option for ``word`` (defined as ``gloss``)."""
    return other[0] != word and other[2].lower() != gloss.lower() and not _stem_leaks(word, other[2])


def _mcq_items(
    targets: list[tuple[str, str, str]], pool: list[tuple[str, str, str]], rng: random.Random
) -> list[tuple[str, list[str], int]]:
    """(word, 4 choices, answer index) per target; distractors are glosses of other words of
    ``pool`` (same part of speech when possible); answer positions balanced over A-D."""
    by_pos: dict[str, list[tuple[str, str, str]]] = {}
    for item in pool:
        by_pos.setdefault(item[1], []).append(item)
    positions = _balanced_positions(len(targets), rng)
    items = []
    for (word, pos, gloss), answer in zip(targets, positions):
        same = [o for o in by_pos.get(pos, []) if _distractor_ok(word, gloss, o)]
        picks = rng.sample(same, 3) if len(same) >= 3 else []
        if not picks:
            picks = rng.sample([o for o in pool if _distractor_ok(word, gloss, o)], 3)
        distractors = [p[2] for p in picks]
        choices = distractors[:answer] + [gloss] + distractors[answer:]
        items.append((word, choices, answer))
    return items


def _definitions(rng: random.Random) -> tuple[list[dict], list[dict], list[dict]]:
    """(train rows, val MCQ rows, eval MCQ rows) of the definitions task."""
    pool = _definition_pool()
    need = N_EVAL_MCQ + N_VAL_MCQ + N_DEF_QA
    if len(pool) < need:
        raise RuntimeError(f"WordNet gave only {len(pool)} usable words, need {need}")
    pool = pool[: need + need // 4]  # the most common words, plus some slack for the train side
    rng.shuffle(pool)
    eval_words = pool[:N_EVAL_MCQ]
    val_words = pool[N_EVAL_MCQ : N_EVAL_MCQ + N_VAL_MCQ]
    train_words = pool[N_EVAL_MCQ + N_VAL_MCQ :][:N_DEF_QA]

    train = [_row(f'What does the word "{w}" mean?', g, "definitions") for w, _, g in train_words]
    mcq_targets = rng.sample(train_words, N_DEF_MCQ)
    for word, choices, answer in _mcq_items(mcq_targets, train_words, rng):
        train.append(_row(format_mcq(_mcq_question(word), choices), LETTERS[answer], "definitions"))

    def mcq_rows(words: list[tuple[str, str, str]]) -> list[dict]:
        rows = []
        for word, choices, answer in _mcq_items(words, words, rng):
            rows.append(
                _row(
                    format_mcq(_mcq_question(word), choices),
                    LETTERS[answer],
                    "definitions_mcq",
                    answer_index=answer,
                    choices=choices,
                    word=word,
                )
            )
        return rows

    return train, mcq_rows(val_words), mcq_rows(eval_words)


# --- SFT: arithmetic ------------------------------------------------------------------------------

N_ARITH_TRAIN, N_ARITH_EVAL = 1500, 150
_ARITH_OPS = ("+", "-", "*")


def _arith_problem(rng: random.Random, op: str) -> tuple[int, int]:
    if op == "*":
        return rng.randint(2, 40), rng.randint(2, 40)
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return (max(a, b), min(a, b)) if op == "-" else (a, b)


def _arith_key(a: int, op: str, b: int) -> tuple:
    return (op, min(a, b), max(a, b)) if op in "+*" else (op, a, b)


def _arithmetic(rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows): ``What is a op b?`` -> exact integer; commutative twins count as
    the same problem, so no eval problem (in either order) is in train."""
    used: set[tuple] = set()

    def draw(n: int) -> list[dict]:
        rows = []
        for i in range(n):
            op = _ARITH_OPS[i % len(_ARITH_OPS)]
            while True:
                a, b = _arith_problem(rng, op)
                key = _arith_key(a, op, b)
                if key not in used:
                    used.add(key)
                    break
            value = a + b if op == "+" else a - b if op == "-" else a * b
            rows.append(_row(f"What is {a} {op} {b}?", str(value), "arithmetic"))
        return rows

    evals = draw(N_ARITH_EVAL)
    return draw(N_ARITH_TRAIN), evals


# --- SFT: dialogue --------------------------------------------------------------------------------

N_DIALOGUE_MAX = 2000


def _dialogue(rng: random.Random) -> list[dict]:
    """Consecutive utterance pairs of chatterbot-corpus English conversations (distinct pairs, at
    most :data:`N_DIALOGUE_MAX`, a seeded sample kept in corpus order)."""
    pairs, seen = [], set()
    for _topic, conv in src.chatterbot_conversations():
        for prompt, reply in itertools.pairwise(conv):
            if prompt and reply and (prompt, reply) not in seen:
                seen.add((prompt, reply))
                pairs.append((prompt, reply))
    if len(pairs) > N_DIALOGUE_MAX:
        keep = sorted(rng.sample(range(len(pairs)), N_DIALOGUE_MAX))
        pairs = [pairs[i] for i in keep]
    return [_row(p, r, "dialogue") for p, r in pairs]


# --- SFT: facts (quiz tables) ---------------------------------------------------------------------

N_FACTS_EVAL = 150


def _fact_questions() -> list[tuple[str, str, str, str, list[str]]]:
    """(key, subject, question, answer, accepted answers) from the quiz tables. ``key`` names the
    entity a question is about (a split by key keeps every question on an entity on one side);
    ``subject`` is the term the question asks about (France in "What is the capital of France?")."""
    qa: list[tuple[str, str, str, str, list[str]]] = []
    C, A = src.quiz_canonical, src.quiz_alternatives

    def add(key: str, question: str, field: str, subject: str | None = None) -> None:
        answer = C(field)
        if answer and answer.lower() not in ("gok", "?") and not answer.endswith("."):
            qa.append((key.lower(), subject or key, question, answer, A(field)))

    for table in ("africa", "america", "asia", "europe"):
        for row in src.quiz_table(table):
            if len(row) < 2 or not C(row[1]):
                continue
            country = C(row[0])
            add(country, f"What is the capital of {country}?", row[1])
            add(country, f"{C(row[1])} is the capital of which country?", row[0], C(row[1]))
    for row in src.quiz_table("province"):
        if len(row) >= 2:
            add(C(row[0]), f"What is the capital of {C(row[0])}?", row[1])
    for row in src.quiz_table("state"):
        if len(row) >= 4:
            state = C(row[0])
            add(state, f"What is the capital of the US state of {state}?", row[1])
            add(state, f"What is the two-letter postal abbreviation of {state}?", row[2])
            add(state, f"What is the state flower of {state}?", row[3])
    for row in src.quiz_table("elements"):
        if len(row) >= 4:
            symbol, number, element = C(row[0]), C(row[1]), C(row[3])
            add(element, f"What is the chemical symbol of {element}?", row[0])
            add(element, f"What is the atomic number of {element}?", row[1])
            add(element, f"Which chemical element has the symbol {symbol}?", row[3], symbol)
            add(element, f"Which chemical element has atomic number {number}?", row[3], number)
    for row in src.quiz_table("collectives"):
        if len(row) >= 2:
            add(C(row[0]), f"What is the collective noun for a group of {C(row[0])}?", row[1])
    for row in src.quiz_table("babies"):
        if len(row) >= 2:
            for adult in src.quiz_split(row[1]):
                add(adult, f"What is a young {adult} called?", row[0])
    for row in src.quiz_table("sexes"):
        if len(row) >= 2 and len(C(row[0])) > 1:
            male, female = C(row[0]), C(row[1])
            add(male, f'What is the female counterpart of "{male}"?', row[1])
            add(male, f'What is the male counterpart of "{female}"?', row[0], female)
    for row in src.quiz_table("latin"):
        if len(row) >= 2:
            add(C(row[0]), f'What does the Latin word "{C(row[0])}" mean in English?', row[1])
    for row in src.quiz_table("flowers"):
        if len(row) >= 2:
            add(C(row[0]), f"In the language of flowers, what does the {C(row[0]).lower()} mean?", row[1])
    for row in src.quiz_table("pres"):
        if len(row) >= 4:
            pres = C(row[0])
            add(pres, f"Who succeeded {pres} as President of the United States?", row[3])
            add(pres, f"Who was the first Vice President under President {pres}?", row[2])
    for row in src.quiz_table("sov"):
        if len(row) >= 3:
            add(C(row[0]), f"Who succeeded {C(row[0])} on the English throne?", row[2])
    # a question asked twice with different answers (e.g. a president with two terms) is dropped
    answers: dict[str, set[str]] = {}
    for _, _, q, a, _ in qa:
        answers.setdefault(q, set()).add(a)
    out, seen = [], set()
    for item in qa:
        q = item[2]
        if len(answers[q]) == 1 and q not in seen:
            seen.add(q)
            out.append(item)
    return out


def _facts(rng: random.Random) -> tuple[list[dict], list[dict], list[tuple[str, str]]]:
    """(train rows, eval rows, (subject, answer) of each eval row): entities (keys) are drawn for
    eval until it has :data:`N_FACTS_EVAL` questions; every question on an eval entity stays out of
    train."""
    qa = _fact_questions()
    keys = sorted({k for k, *_ in qa})
    rng.shuffle(keys)
    count: dict[str, int] = {}
    for k, *_ in qa:
        count[k] = count.get(k, 0) + 1
    eval_keys, n = set(), 0
    for k in keys:
        if n >= N_FACTS_EVAL:
            break
        eval_keys.add(k)
        n += count[k]
    train = [_row(q, a, "facts") for k, _, q, a, _ in qa if k not in eval_keys]
    evals = [_row(q, a, "facts", aliases=alts) for k, _, q, a, alts in qa if k in eval_keys]
    pairs = [(subject, a) for k, subject, _, a, _ in qa if k in eval_keys]
    return train, evals, pairs


def _norm(text: str) -> str:
    """Lowercase, straight quotes, single spaces, no final punctuation (for leak checks)."""
    text = text.lower().replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"')
    return re.sub(r"\s+", " ", text).strip().rstrip("?.!").strip()


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"\w+", text.lower())) + " "


def _drop_leaks(train: list[dict], held_out: list[dict], fact_pairs: list[tuple[str, str]]) -> list[dict]:
    """Removes from ``train`` (kept in order) rows that repeat a held-out question (ignoring case,
    spacing and final punctuation), repeats of an earlier train row, and rows of the other tasks
    (e.g. chatterbot trivia) that state a held-out fact (its subject and its answer both appear)."""
    held = {_norm(r["instruction"]) for r in held_out}
    pairs = [(_words(s), _words(a)) for s, a in fact_pairs if _words(s).strip() and _words(a).strip()]
    pairs = [(s, a) for s, a in pairs if s != a]
    out, seen = [], set()
    for row in train:
        question = _norm(row["instruction"])
        key = (question, _norm(row["output"]))
        if question in held or key in seen:
            continue
        if row["task"] not in ("facts", "arithmetic"):
            text = _words(row["instruction"] + " " + row["output"])
            if any(s in text and a in text for s, a in pairs):
                continue
        seen.add(key)
        out.append(row)
    return out


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
