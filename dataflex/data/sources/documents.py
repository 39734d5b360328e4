"""The plain-text sources: ``code`` (the standard library), ``drama``, ``fortunes``, ``chatterbot``."""

from __future__ import annotations

import re
from collections.abc import Iterator

from dataflex.data.sources import locations
from dataflex.data.sources.registry import clean_text, source_files

# --- code -----------------------------------------------------------------------------------


def code_documents() -> Iterator[str]:
    """Standard library modules of :data:`STDLIB_FILES`, one document per file, headed by its path."""
    for path in source_files("code"):
        text = clean_text(path.read_text(encoding="utf-8", errors="replace"))
        if text:
            yield f"# Lib/{path.relative_to(locations.STDLIB_DIR).as_posix()}\n{text}"


# --- drama ------------------------------------------------------------------------------------


def drama_documents() -> Iterator[str]:
    """Shakespeare's plays (:data:`SHAKESPEARE_PLAYS`), one document per play."""
    for path in source_files("drama"):
        text = clean_text(path.read_text(encoding="utf-8", errors="replace"))
        if text:
            yield text


# --- fortunes -----------------------------------------------------------------------------------


def fortune_documents() -> Iterator[str]:
    """fortune cookies (:data:`FORTUNE_FILES`), one document per cookie, in file order."""
    for path in source_files("fortunes"):
        raw = path.read_text(encoding="utf-8", errors="replace")
        for cookie in re.split(r"(?m)^%\s*$", raw):
            text = clean_text(cookie)
            if text:
                yield text


# --- chatterbot-corpus ------------------------------------------------------------------------------


def chatterbot_conversations() -> Iterator[tuple[str, list[str]]]:
    """(file stem, utterances) for each English conversation of chatterbot-corpus, in file order."""
    import yaml  # PyYAML comes with the stack (omegaconf)

    for path in source_files("chatterbot"):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conv in data.get("conversations") or []:
            if isinstance(conv, list):
                yield path.stem, [clean_text(str(u)) for u in conv if u is not None]
