"""The SFT tasks ``arithmetic``, ``dialogue`` and ``facts`` (quiz tables), and the held-out leak filter."""

from __future__ import annotations

import itertools
import random
import re

from dataflex.data import sources as src
from dataflex.data.corpora.mcq import _row

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
