"""Shared pieces of the builders: JSON(L) writers, the inputs' digest, chaining document streams."""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Iterable, Iterator
from pathlib import Path

from dataflex.data import sources as src

LETTERS = string.ascii_uppercase


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
