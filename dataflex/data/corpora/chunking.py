"""Documents -> training rows: chunking to a target size, the byte cap, the held-out split."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

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
