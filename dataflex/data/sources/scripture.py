"""The ``scripture`` source: the Bible Retrieval System data file (windowed LZW), decoded."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator

from dataflex.data.sources import locations
from dataflex.data.sources.registry import SOURCES, _need_file, clean_text

# --- scripture (Bible Retrieval System data file) ----------------------------------------------

_BIBLE_BOOKS = {
    "Ge": "Genesis",
    "Exo": "Exodus",
    "Lev": "Leviticus",
    "Num": "Numbers",
    "Deu": "Deuteronomy",
    "Josh": "Joshua",
    "Jdgs": "Judges",
    "Ruth": "Ruth",
    "1Sm": "1 Samuel",
    "2Sm": "2 Samuel",
    "1Ki": "1 Kings",
    "2Ki": "2 Kings",
    "1Chr": "1 Chronicles",
    "2Chr": "2 Chronicles",
    "Ezra": "Ezra",
    "Neh": "Nehemiah",
    "Est": "Esther",
    "Job": "Job",
    "Psa": "Psalms",
    "Prv": "Proverbs",
    "Eccl": "Ecclesiastes",
    "SSol": "Song of Solomon",
    "Isa": "Isaiah",
    "Jer": "Jeremiah",
    "Lam": "Lamentations",
    "Eze": "Ezekiel",
    "Dan": "Daniel",
    "Hos": "Hosea",
    "Joel": "Joel",
    "Amos": "Amos",
    "Obad": "Obadiah",
    "Jonah": "Jonah",
    "Mic": "Micah",
    "Nahum": "Nahum",
    "Hab": "Habakkuk",
    "Zep": "Zephaniah",
    "Hag": "Haggai",
    "Zec": "Zechariah",
    "Mal": "Malachi",
    "Mat": "Matthew",
    "Mark": "Mark",
    "Luke": "Luke",
    "John": "John",
    "Acts": "Acts",
    "Rom": "Romans",
    "1Cor": "1 Corinthians",
    "2Cor": "2 Corinthians",
    "Gal": "Galatians",
    "Eph": "Ephesians",
    "Phi": "Philippians",
    "Col": "Colossians",
    "1Th": "1 Thessalonians",
    "2Th": "2 Thessalonians",
    "1Tim": "1 Timothy",
    "2Tim": "2 Timothy",
    "Titus": "Titus",
    "Phmn": "Philemon",
    "Heb": "Hebrews",
    "Jas": "James",
    "1Pet": "1 Peter",
    "2Pet": "2 Peter",
    "1Jn": "1 John",
    "2Jn": "2 John",
    "3Jn": "3 John",
    "Jude": "Jude",
    "Rev": "Revelation",
}
_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def _unlzw(data: bytes, maxbits: int = 16) -> bytes:
    """Decodes one LZW stream in the format of Unix ``compress`` (block mode, no header)."""
    out = bytearray()
    table: list[bytes] = [bytes([i]) for i in range(256)] + [b""]
    nbits, free_ent, bitpos, ncodes = 9, 257, 0, 0
    total = len(data) * 8
    maxmax = 1 << maxbits
    prev = b""
    first = True
    while True:
        if free_ent > (1 << nbits) - 1 and nbits < maxbits:
            # compress writes codes in groups of 8; a width change skips to the next group
            if ncodes % 8:
                bitpos += (8 - ncodes % 8) * nbits
            ncodes = 0
            nbits += 1
        if bitpos + nbits > total:
            break
        word = int.from_bytes(data[bitpos >> 3 : (bitpos >> 3) + 4], "little")
        code = (word >> (bitpos & 7)) & ((1 << nbits) - 1)
        bitpos += nbits
        ncodes += 1
        if first:
            if code >= 256:
                raise ValueError(f"corrupt LZW stream: first code {code}")
            prev = table[code]
            out += prev
            first = False
            continue
        if code == 256:  # CLEAR
            if ncodes % 8:
                bitpos += (8 - ncodes % 8) * nbits
            ncodes = 0
            del table[257:]
            free_ent, nbits = 256, 9
            continue
        if code < free_ent:
            entry = table[code]
        elif code == free_ent:
            entry = prev + prev[:1]
        else:
            raise ValueError(f"corrupt LZW stream: code {code} > next free {free_ent}")
        out += entry
        if free_ent < maxmax:
            new = prev + entry[:1]
            if free_ent < len(table):
                table[free_ent] = new
            else:
                table.append(new)
            free_ent += 1
        prev = entry
    return bytes(out)


def bible_text() -> str:
    """The full text of ``bible.data``: a header line, then one verse per line (``Ge1:1 In ...``).

    The file (Chip Chapin's Bible Retrieval System) is a big-endian header ("EC02..."), the window
    size and count at 0x54, a table of window offsets, then one ``compress``-style LZW stream per
    window of the text.
    """
    data = _need_file("scripture", locations.BIBLE_DATA).read_bytes()
    if not data.startswith(b"EC02"):
        raise SOURCES["scripture"].missing(f"{locations.BIBLE_DATA} is not a Bible Retrieval System data file")
    _window, count = struct.unpack(">II", data[0x54:0x5C])
    offsets = struct.unpack(f">{count + 1}I", data[0x5C : 0x5C + 4 * (count + 1)])
    raw = b"".join(_unlzw(data[offsets[i] : offsets[i + 1]]) for i in range(count))
    return raw.decode("latin-1")


def scripture_documents() -> Iterator[str]:
    """The King James Bible, one document per book, one paragraph per chapter headed by the book
    and chapter (``Genesis 1``), one verse per line (``1:1 In the beginning ...``)."""
    book = None
    chapters: list[list[str]] = []
    last_chapter = None
    for line in bible_text().split("\n"):
        m = _VERSE.match(line)
        if not m:
            continue
        abbr, chapter, verse, text = m.groups()
        name = _BIBLE_BOOKS.get(abbr, abbr)
        if name != book:
            if book is not None:
                yield clean_text("\n\n".join("\n".join(c) for c in chapters))
            book, chapters, last_chapter = name, [], None
        if chapter != last_chapter:
            chapters.append([f"{name} {chapter}"])
            last_chapter = chapter
        chapters[-1].append(f"{chapter}:{verse} {text.strip()}")
    if book is not None:
        yield clean_text("\n\n".join("\n".join(c) for c in chapters))
