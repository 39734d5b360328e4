"""The dictd databases (``gcide``, ``wordnet``, ``foldoc``) and the Jargon File."""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from dataflex.data.sources.registry import clean_text, source_files

# --- dictd databases ----------------------------------------------------------------------------

_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _b64num(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _B64[c]
    return n


def dictd_entries(source: str, accept: Callable[[str], bool] | None = None) -> Iterator[tuple[str, str]]:
    """(index key, entry text) of a dictd database, in file order, one per distinct entry (the
    ``00-database-*`` metadata entries are skipped). ``source``: gcide, wordnet or foldoc.
    ``accept``: keep only entries with an index key (lowercased headword) it accepts."""
    index_path, dict_path = source_files(source)
    with gzip.open(dict_path, "rb") as f:  # dictzip is gzip-compatible
        data = f.read()
    spans: dict[tuple[int, int], str] = {}
    for line in index_path.read_text(encoding="utf-8", errors="replace").split("\n"):
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
            continue
        if accept is not None and not accept(parts[0]):
            continue
        key = (_b64num(parts[1]), _b64num(parts[2]))
        spans.setdefault(key, parts[0])
    for (offset, length), word in sorted(spans.items()):
        text = data[offset : offset + length].decode("utf-8", errors="replace")
        yield word, text


_BRACES = re.compile(r"\{([^{}]*)\}")
_SEP = "\n\n\u241e\n\n"  # joins entries for batch processing ("␞", not in the sources)
_GCIDE_TAG = re.compile(r"\[[^\]\n\u241e]*(?:Webster|WordNet|PJC|Century|Chambers|Suppl\.)[^\]\n\u241e]*\]")
_GCIDE_PRON_KEY = re.compile(r"\\[^\\\n\u241e]{1,80}\\")  # \Ca*run"cu*lar\
_GCIDE_PRON_PAREN = re.compile(r"\([^)\s]{1,60}\)")  # (k[aum]rv) -- no spaces, with marks
_GCIDE_PRON_MARKS = re.compile(r'[\[*"`]')
_GCIDE_LIGATURE = re.compile(r"\[(oe|ae|OE|AE)\]")
_GCIDE_ACCENT = re.compile(
    r"\[(?:[-=.~^\"`'](?P<a>[a-z]{1,2})|(?P<b>[a-z])[-=~^\"`']|(?P<c>[a-z])(?:mac|um|cr|dot|grave|acute))\]"
)
_GCIDE_SYMBOL = {"[deg]": "°", "[eth]": "ð", "[thorn]": "þ", "[root]": "√", "[frac12]": "½", "[frac14]": "¼"}


def gcide_documents() -> Iterator[str]:
    """GCIDE entries as plain text (cross-reference braces, pronunciation keys and the
    ``[1913 Webster]``-style source tags removed), one document per entry."""
    entries = [text for _word, text in dictd_entries("gcide")]
    # one regex pass over all entries (much faster than one per entry), split back afterwards
    if any(_SEP in e for e in entries):
        raise ValueError("the GCIDE text contains the entry separator")
    text = _SEP.join(entries)
    text = _GCIDE_TAG.sub("", text)
    text = _GCIDE_PRON_KEY.sub("\x01", text)
    text = _GCIDE_PRON_PAREN.sub(lambda m: "\x01" if _GCIDE_PRON_MARKS.search(m.group(0)) else m.group(0), text)
    text = text.replace(" \x01", "").replace("\x01", "")
    text = re.sub(r"\n[ \t]*([,;])", r"\1", text)
    text = _GCIDE_LIGATURE.sub(r"\1", text)
    text = _GCIDE_ACCENT.sub(lambda m: m.group("a") or m.group("b") or m.group("c"), text)
    for code, char in _GCIDE_SYMBOL.items():
        text = text.replace(code, char)
    text = _BRACES.sub(r"\1", _BRACES.sub(r"\1", text))
    yield from _split_clean(text)


def _split_clean(text: str) -> Iterator[str]:
    """Cleans a batch of documents joined by :data:`_SEP` and yields the non-empty ones."""
    for doc in clean_text(text).split(_SEP.strip("\n")):
        doc = doc.strip("\n")
        if doc:
            yield doc


def foldoc_documents() -> Iterator[str]:
    """FOLDOC entries as plain text (cross-reference braces removed), one document per entry."""
    text = _SEP.join(text for _word, text in dictd_entries("foldoc"))
    yield from _split_clean(_BRACES.sub(r"\1", _BRACES.sub(r"\1", text)))


def jargon_documents() -> Iterator[str]:
    """The Jargon File's chapters and lexicon as one document, without the table of contents and the
    headword lists (single short lines)."""
    path = source_files("jargon")[0]
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        text = clean_text(f.read())
    start = text.find("\nChapter 1.")
    text = text[start + 1 :] if start >= 0 else text
    kept = []
    for para in text.split("\n\n"):
        p = para.strip()
        if "\n" not in p and len(p.split()) <= 6 and not p.startswith(":") and not p.endswith((".", ":", "?", "!")):
            continue  # a heading or a headword list item
        if p and set(p) <= set("═─-= "):
            continue
        kept.append(para)
    yield clean_text("\n\n".join(kept))


# --- WordNet ------------------------------------------------------------------------------------

_POS_NAMES = {"n": "noun", "v": "verb", "adj": "adjective", "adv": "adverb"}
_SENSE_START = re.compile(r"^(?:(n|v|adj|adv)\s+)?(\d+)\s*:\s*(.*)$|^(n|v|adj|adv)\s*:\s*(.*)$")


@dataclass(frozen=True)
class WordNetEntry:
    """A WordNet headword with its senses as (part of speech, gloss) in WordNet's order."""

    word: str
    senses: tuple[tuple[str, str], ...]


def _wn_gloss(sense: str) -> str:
    """The definition part of a WordNet sense: no examples, no [syn: ...] / [ant: ...] lists."""
    sense = re.sub(r"\[(?:syn|ant|also|see)\s*:[^\]]*\]", "", sense)
    sense = _BRACES.sub(r"\1", sense)
    gloss = re.split(r';\s*"|\s"[^"]', sense, maxsplit=1)[0]
    gloss = re.sub(r"\s+", " ", gloss).strip().rstrip(";:,").strip()
    return gloss


def wordnet_entries(accept: Callable[[str], bool] | None = None) -> Iterator[WordNetEntry]:
    """WordNet headwords (as written in the entry) with their senses, in file order; ``accept``
    filters on the index key (the lowercased headword) before an entry is parsed."""
    for _key, text in dictd_entries("wordnet", accept):
        lines = text.rstrip("\n").split("\n")
        word = lines[0].strip()
        senses: list[list[str]] = []  # [pos, text]
        pos = ""
        for line in lines[1:]:
            s = line.strip()
            if not s:
                continue
            m = _SENSE_START.match(s)
            if m:
                if m.group(2) is not None:
                    pos = m.group(1) or pos
                    senses.append([pos, m.group(3)])
                else:
                    pos = m.group(4)
                    senses.append([pos, m.group(5)])
            elif senses:
                prev = senses[-1][1]
                joiner = "" if re.search(r"[A-Za-z]-$", prev) else " "
                senses[-1][1] = prev + joiner + s
        glosses = tuple((_POS_NAMES.get(p, p), _wn_gloss(t)) for p, t in senses)
        glosses = tuple(g for g in glosses if g[1])
        if word and glosses:
            yield WordNetEntry(word, glosses)
