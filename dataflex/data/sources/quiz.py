"""The ``quiz`` source: quiz(6) fact tables and their answer patterns."""

from __future__ import annotations

import re
import unicodedata

from dataflex.data.sources import locations
from dataflex.data.sources.locations import _QUIZ_TABLES
from dataflex.data.sources.registry import _need_file

_OVERSTRIKE = {"'": "\u0301", "`": "\u0300", "^": "\u0302", "~": "\u0303", ",": "\u0327", '"': "\u0308", ":": "\u0308"}


def _overstrike(text: str) -> str:
    """``'\\be`` / ``e\\b'`` (an overstruck accent) -> ``é``."""

    def fix(m: re.Match) -> str:
        a, b = m.group(1), m.group(2)
        mark, base = (a, b) if a in _OVERSTRIKE else (b, a)
        return unicodedata.normalize("NFC", base + _OVERSTRIKE.get(mark, ""))

    return re.sub(r"(.)\x08(.)", fix, text)


def _split_top(text: str, sep: str) -> list[str]:
    """Splits on ``sep`` outside of {} and [] groups (a backslash escapes the next character)."""
    parts, depth, cur, i = [], 0, [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
        if c == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _expand(pattern: str, optional: bool, pick: int | None) -> str:
    """One reading of a quiz pattern: ``{x}`` included when ``optional``; ``[a|b]`` and top-level
    ``a|b`` -> alternative ``pick`` (None: the first, preferring accented forms)."""
    alts = _split_top(pattern, "|")
    if len(alts) > 1:
        if pick is None:
            accented = [a for a in alts if "\x08" in a]
            pattern = accented[0] if accented else alts[0]
        else:
            pattern = alts[min(pick, len(alts) - 1)]
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(pattern[i + 1])
            i += 2
            continue
        if c in "{[":
            depth, j = 0, i
            while j < len(pattern):
                if pattern[j] in "{[":
                    depth += 1
                elif pattern[j] in "}]":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            inner = pattern[i + 1 : j]
            if c == "{":
                # without optional parts, drop only whole words ("{golden }poppy"), not
                # joiners or word endings ("forget{-| }me", "Cal{if{ornia}}")
                whole = (inner[:1].isspace() or inner[-1:].isspace()) and "|" not in inner
                out.append(_expand(inner, optional, None) if optional or not whole else "")
            else:
                out.append(_expand(inner, optional, None))
            i = j + 1
            continue
        out.append(c)
        i += 1
    return _overstrike("".join(out))


def quiz_canonical(field: str) -> str:
    """The fullest reading of a quiz field: optional parts kept, first alternative taken (accented
    spellings preferred), e.g. ``Cal{if{ornia}}|CA`` -> ``California``."""
    return re.sub(r"\s+", " ", _expand(field, True, None)).strip()


def quiz_alternatives(field: str) -> list[str]:
    """Acceptable readings of a quiz field (canonical first; then each top-level alternative, with
    and without its optional parts), de-duplicated, in a fixed order."""
    out = [quiz_canonical(field)]
    for k, _ in enumerate(_split_top(field, "|")):
        for optional in (True, False):
            out.append(re.sub(r"\s+", " ", _expand(field, optional, k)).strip())
    seen, result = set(), []
    for a in out:
        if a and a not in seen:
            seen.add(a)
            result.append(a)
    return result


def quiz_split(field: str) -> list[str]:
    """The canonical reading of each top-level alternative of a quiz field (``lion|tiger``)."""
    return [quiz_canonical(a) for a in _split_top(field, "|") if quiz_canonical(a)]


def quiz_table(name: str) -> list[list[str]]:
    """Rows of quiz table ``name`` as raw pattern fields (continuation lines joined)."""
    if name not in _QUIZ_TABLES:
        raise KeyError(f"unknown quiz table {name!r}; known: {', '.join(sorted(_QUIZ_TABLES))}")
    path = _need_file("quiz", locations.QUIZ_DIR / name)
    text = path.read_text(encoding="utf-8", errors="replace")
    text = re.sub(r"\\\n", "", text)
    rows = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        rows.append(_split_top(line, ":"))
    return rows


def quiz_fields(name: str) -> tuple[str, ...]:
    """Field names of quiz table ``name``."""
    return _QUIZ_TABLES[name]
