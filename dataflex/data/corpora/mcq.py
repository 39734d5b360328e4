"""SFT rows and multiple-choice items; the ``definitions`` task (WordNet)."""

from __future__ import annotations

import random
import re

from dataflex.data import sources as src
from dataflex.data.corpora.common import LETTERS

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
