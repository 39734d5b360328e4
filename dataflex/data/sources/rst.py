"""The ``techdocs`` source: the Python docs' reStructuredText as plain text."""

from __future__ import annotations

import re
from collections.abc import Iterator

from dataflex.data.sources.registry import clean_text, source_files

# --- techdocs (reStructuredText -> text) ------------------------------------------------------

_RST_DROP_DIRECTIVES = {
    "module",
    "currentmodule",
    "moduleauthor",
    "sectionauthor",
    "index",
    "highlight",
    "toctree",
    "testsetup",
    "testcleanup",
    "only",
    "raw",
    "include",
    "literalinclude",
    "image",
    "figure",
    "audit-event",
    "impl-detail",
    "availability",
    "rubric",
    "contents",
    "tabularcolumns",
    "program",
    "productionlist",
    "cmdoption-list",
    "c:namespace",
    "opcode",
    "pdbcommand",
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
                label = {
                    "versionadded": "New in version",
                    "versionchanged": "Changed in version",
                    "deprecated": "Deprecated since version",
                    "deprecated-removed": "Deprecated since version",
                }[name]
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
