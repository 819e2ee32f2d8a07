"""Envoy's format-string syntax: a format read as literals and command operators, as Envoy does.

Envoy's parser (``SubstitutionFormatParser::parse`` in ``source/common/formatter/
substitution_formatter.cc``) walks the format left to right: ``%%`` is a literal ``%``; any other
``%`` must start a command matching ``%NAME(ARG):N%`` (the RE2 expression
``^%((?:[A-Z]|[0-9]|_)+)(?:\\((.*?)\\))?(?::([0-9]+))?%``, ``N`` a ``size_t``), or the format is
refused. ``ARG`` is the shortest text up to a ``)`` followed by ``%`` or ``:N%``: it may hold
``%``, spaces and parentheses (``%START_TIME(%s.%3f)%``, ``%CEL(size(request.path) > 0)%``), but
not a newline. Then the operator must exist and accept that argument and length
(``analyzer.envoy_operators``). A JSON format object is read the same way, one string at a time.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from analyzer.envoy_operators import DOCS_URL, OPERATORS, argument_problem
from analyzer.errors import FormatError

_COMMAND = re.compile(r"%([A-Z0-9_]+)(?:\((.*?)\))?(?::([0-9]+))?%")
_SIZE_MAX = 2**64 - 1
_SYNTAX = "%NAME%, %NAME(ARG)%, %NAME:N% or %NAME(ARG):N%"
_CLOSE_MATCHES = 5


@dataclass(frozen=True)
class Command:
    """One command operator as written: ``%REQ(X-REQUEST-ID):36%``."""

    name: str
    arg: str  # "" when there is none
    max_length: int | None
    text: str


def tokenise(fmt: str, where: str = "the format") -> list[str | Command]:
    """``fmt`` as literal text and commands, or a FormatError naming the first thing Envoy would
    refuse and its position in ``where``."""
    tokens: list[str | Command] = []
    literal, pos = "", 0
    while (at := fmt.find("%", pos)) >= 0:
        literal += fmt[pos:at]
        if fmt.startswith("%%", at):
            literal, pos = literal + "%", at + 2
            continue
        command = _command(fmt, at, where)
        tokens.extend([literal, command] if literal else [command])
        literal, pos = "", at + len(command.text)
    literal += fmt[pos:]
    return [*tokens, literal] if literal else tokens


def json_strings(obj: object, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string of a JSON format object with its path (``["a"]["b"][0]``): Envoy reads each
    string holding a ``%`` as a format, in nested objects and lists too."""
    if isinstance(obj, str):
        yield path, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from json_strings(value, f"{path}[{key!r}]")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from json_strings(value, f"{path}[{i}]")


def _command(fmt: str, at: int, where: str) -> Command:
    match = _COMMAND.match(fmt, at)
    if match is None or int(match.group(3) or 0) > _SIZE_MAX:
        raise FormatError(f"{where}, position {at}: {_not_a_command(fmt, at)}")
    name, arg, length = match.group(1), match.group(2) or "", match.group(3)
    op = OPERATORS.get(name)
    if op is None:
        raise FormatError(f"{where}, position {at}: {unknown_operator(name)}")
    problem = argument_problem(op, arg, None if length is None else int(length))
    if problem:
        raise FormatError(f"{where}, position {at}: {match.group(0)}: {problem}.")
    return Command(name, arg, None if length is None else int(length), match.group(0))


def _not_a_command(fmt: str, at: int) -> str:
    text = fmt[at : at + 40]
    head = re.match(r"%([A-Za-z0-9_]*)(\(?)", text)
    name, paren = (head.group(1), head.group(2)) if head else ("", "")
    if name and name != name.upper():
        why = f"operator names are upper case (%{name.upper()}%)"
    elif name and paren:
        why = f"%{name}( is not closed by ')%' or '):N%' on its line"
    elif not name:
        why = "a lone % (write %% for a literal %)"
    else:
        why = f"%{name} is not closed by % (or :N% with N a number)"
    return f"{text!r} is not a command operator: {why}. Envoy reads {_SYNTAX}, and %% as %."


def unknown_operator(name: str) -> str:
    """Envoy refuses ``%name%``: say which known operators are closest and where the list is."""
    close = difflib.get_close_matches(name, OPERATORS, n=_CLOSE_MATCHES, cutoff=0.6)
    hint = f"did you mean {', '.join(f'%{c}%' for c in close)}?" if close else "none is close"
    return (
        f"Envoy 1.40 has no command operator %{name}% ({hint}); its {len(OPERATORS)} operators "
        f"are listed at {DOCS_URL}"
    )
