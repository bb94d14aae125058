"""Read cloud.conf the way gcfg (the Go INI reader upstream uses) reads it.

What gcfg allows and Python's configparser does not (or does differently):
- subsections: ``[Global "zone-one"]`` (the subsection name is case-sensitive, the section
  name is not);
- double-quoted values, with ``\\"``, ``\\\\``, ``\\n`` and ``\\t`` escapes; ``;`` and ``#``
  inside quotes are data, outside they start a comment;
- a variable without ``=`` means ``true``;
- a backslash at the end of a line continues the value on the next line;
- indentation has no meaning (configparser would read an indented line as a continuation).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cinder_csi.config.keys import unknown_section_hint
from cinder_csi.errors import InvalidArgument

_SECTION = re.compile(r'^\[\s*([A-Za-z][A-Za-z0-9.\-]*)\s*(?:"((?:[^"\\]|\\.)*)")?\s*\]$')
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9\-]*")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "b": "\b"}


@dataclass(frozen=True)
class Entry:
    section: str  # lower case
    subsection: str | None  # as written, None for a plain [Section]
    key: str  # lower case
    value: str
    where: str  # "path:line", for messages


@dataclass(frozen=True)
class SectionHeader:
    section: str
    subsection: str | None
    where: str


def read_files(paths: Iterable[Path]) -> tuple[list[SectionHeader], list[Entry]]:
    """Every section header and entry of the files, in order (later ones override)."""
    headers: list[SectionHeader] = []
    entries: list[Entry] = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidArgument(f"cannot read cloud config {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise InvalidArgument(f"cloud config {path} is not UTF-8 text") from None
        for item in parse(text, str(path)):
            if isinstance(item, SectionHeader):
                headers.append(item)
            else:
                entries.append(item)
    return headers, entries


def parse(text: str, source: str) -> Iterator[SectionHeader | Entry]:
    section: SectionHeader | None = None
    for number, line in _logical_lines(text):
        where = f"{source}:{number}"
        stripped = line.strip()
        if not stripped or stripped[0] in ";#":
            continue
        if stripped.startswith("["):
            section = _header(stripped, where)
            yield section
            continue
        if section is None:
            raise InvalidArgument(f"cloud config {where}: {stripped!r} comes before any [section]")
        name_match = _NAME.match(stripped)
        if name_match is None:
            raise InvalidArgument(f"cloud config {where}: cannot read {stripped!r} "
                                  "(expected: name = value)")
        key = name_match.group(0).lower()
        rest = stripped[name_match.end():].lstrip()
        if not rest or rest[0] in ";#":
            value = "true"  # gcfg: a bare name is a true boolean
        elif rest[0] == "=":
            value = _value(rest[1:], where)
        else:
            raise InvalidArgument(f"cloud config {where}: expected '=' after {key!r}")
        yield Entry(section.section, section.subsection, key, value, where)


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Lines with backslash continuations joined, numbered by the line they start on."""
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        if raw.endswith("\\") and not raw.endswith("\\\\"):
            pending.append(raw[:-1])
            continue
        pending.append(raw)
        yield start, "".join(pending)
        pending = []
    if pending:
        yield start, "".join(pending)


def _header(text: str, where: str) -> SectionHeader:
    match = _SECTION.match(text)
    if match is None:
        inner = text.strip("[] ").split('"')[0]
        raise InvalidArgument(f"cloud config {where}: {text!r} is not a section header "
                              f'(expected [Name] or [Name "subsection"]); '
                              f"{unknown_section_hint(inner)}")
    sub = match.group(2)
    return SectionHeader(match.group(1).lower(), _unescape(sub, where) if sub is not None
                         else None, where)


def _value(text: str, where: str) -> str:
    """Unquote, unescape and cut the trailing comment; surrounding blanks are not data."""
    out: list[str] = []
    quoted = False
    index = 0
    trailing_blanks = 0  # unquoted blanks at the end are dropped
    text = text.lstrip()
    while index < len(text):
        char = text[index]
        if char == "\\":
            if index + 1 >= len(text) or text[index + 1] not in _ESCAPES:
                raise InvalidArgument(f"cloud config {where}: invalid escape in value")
            out.append(_ESCAPES[text[index + 1]])
            trailing_blanks = 0
            index += 2
            continue
        if char == '"':
            quoted = not quoted
            trailing_blanks = 0
        elif not quoted and char in ";#":
            break
        else:
            out.append(char)
            trailing_blanks = trailing_blanks + 1 if (not quoted and char.isspace()) else 0
        index += 1
    if quoted:
        raise InvalidArgument(f"cloud config {where}: unterminated quote in value")
    return "".join(out[: len(out) - trailing_blanks] if trailing_blanks else out)


def _unescape(text: str, where: str) -> str:
    return _value(f'"{text}"', where)
