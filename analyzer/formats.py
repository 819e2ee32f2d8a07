"""The format compiler: an Envoy/Istio access-log format becomes a parser description.

A format string (``[%START_TIME%] "%REQ(:METHOD)% ..."``) compiles to one anchored regex with a
named group per operator, so the decoder can run it over a whole polars Series at once
(``str.extract_groups``). A JSON format object (``{"key": "%OPERATOR%", ...}``) compiles to the
list of keys to pull out of ``str.json_decode``. Either way each operator is mapped to its
ENTRY_SCHEMA column, so a field is understood under whatever key or position the user gave it.
Operators with no column are kept as anonymous fields: they must match, but their values are
dropped. A format is read as Envoy 1.40 reads it (``analyzer.envoy_syntax``): what Envoy would
refuse is refused here, with the reason, and values Envoy writes with spaces or quotes (metadata
and filter state as JSON, certificate subjects) are matched as such.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from analyzer.envoy_operators import OPERATORS, Value, canonical
from analyzer.envoy_syntax import Command, json_strings, tokenise
from analyzer.errors import FormatError
from analyzer.istio_formats import (
    ENVOY_DEFAULT_FORMAT,
    ISTIO_JSON_FORMAT,
    ISTIO_TEXT_FORMATS,
    WSLOG_EXTRA_FIELDS,
    WSLOG_TEXT_FORMAT,
)


class FormatKind(StrEnum):
    TEXT = "text"
    JSON = "json"


class ValueType(StrEnum):
    STRING = "string"
    INT = "int"
    TIME = "time"


# Operator (name and header argument as normalised by ``_normalise``) -> ENTRY_SCHEMA column.
OPERATOR_COLUMNS: dict[str, str] = {
    "START_TIME": "start_time",
    "REQ(:METHOD)": "method",
    "REQ(X-ENVOY-ORIGINAL-PATH)": "path",
    "REQ(:PATH)": "path",
    "REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH)": "path",
    "REQ_WITHOUT_QUERY(:PATH)": "path",
    "PROTOCOL": "protocol",
    "RESPONSE_CODE": "response_code",
    "RESPONSE_FLAGS": "response_flags",
    "RESPONSE_CODE_DETAILS": "response_code_details",
    "CONNECTION_TERMINATION_DETAILS": "connection_termination_details",
    "UPSTREAM_TRANSPORT_FAILURE_REASON": "upstream_transport_failure_reason",
    "BYTES_RECEIVED": "bytes_received",
    "BYTES_SENT": "bytes_sent",
    "DURATION": "duration_ms",
    "RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)": "upstream_service_time_ms",
    "REQ(X-FORWARDED-FOR)": "x_forwarded_for",
    "REQ(USER-AGENT)": "user_agent",
    "REQ(X-REQUEST-ID)": "request_id",
    "REQ(:AUTHORITY)": "authority",
    "REQ(HOST)": "authority",
    "UPSTREAM_HOST": "upstream_host",
    "UPSTREAM_CLUSTER": "upstream_cluster",
    "UPSTREAM_CLUSTER_RAW": "upstream_cluster",
    "UPSTREAM_LOCAL_ADDRESS": "upstream_local_address",
    "DOWNSTREAM_LOCAL_ADDRESS": "downstream_local_address",
    "DOWNSTREAM_REMOTE_ADDRESS": "downstream_remote_address",
    "REQUESTED_SERVER_NAME": "requested_server_name",
    "ROUTE_NAME": "route_name",
    "UPSTREAM_PROTOCOL": "upstream_protocol",
    "ACCESS_LOG_TYPE": "access_log_type",
    "REQ(UPGRADE)": "upgrade",
    "CONNECTION_ID": "connection_id",
}

INT_COLUMNS = frozenset(
    {
        "response_code",
        "bytes_received",
        "bytes_sent",
        "duration_ms",
        "upstream_service_time_ms",
        "connection_id",
    }
)

# Digits are ASCII (Envoy writes no other) and every alternative starts with its own byte, so
# a whole-line pattern made of these is one-pass (see ``extraction_passes``).
_TIME_DEFAULT = r"[0-9]{4}-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9](?:\.[0-9]+)?Z"
_INT = r"-[0-9]*|[0-9]+"  # a number, or "-" for none
_PROTOCOL = r"HTTP/[0-9.]+|-"  # all Envoy's %PROTOCOL% writes
_STOPS_AT_SPACE = r"\S+"
_HEAD = "^(?P<m>)"  # a TEXT pattern's start: group ``m`` is set on every line it matches
_REST = r"(?: .*)?$"  # after a TEXT format's last field: anything a newer layout added
_META = set("\\.+*?()|[]{}^$")


@dataclass(frozen=True)
class Field:
    """One operator of a format: where it sits (``key``) and what it means (``column``)."""

    operator: str
    key: str
    column: str | None
    time_format: str | None = None
    kind: Value = Value.TOKEN  # what Envoy writes, for a field with no column

    @property
    def value_type(self) -> ValueType:
        if self.column == "start_time":
            return ValueType.TIME
        return ValueType.INT if self.column in INT_COLUMNS else ValueType.STRING


@dataclass(frozen=True)
class Format:
    """A compiled access-log format.

    For TEXT formats ``pattern`` is the whole-line regex (group ``m`` marks a match, group
    ``f<i>`` holds field i), ``probe`` the regex of the format's head (a line matching it is an
    attempt at this format, so a failure to match ``pattern`` is malformed, not foreign), and
    ``steps`` one regex per token, used only to explain why a line did not match.
    """

    name: str
    kind: FormatKind
    fields: tuple[Field, ...]
    pattern: str = ""
    probe: str = ""
    steps: tuple[str, ...] = ()
    passes: tuple[str, ...] = ()  # TEXT: ``pattern`` split for extraction (extraction_passes)
    labels: tuple[str, ...] = ()
    literals: tuple[str, ...] = ()  # per token: its literal text, "" for a field
    start_head: str = ""  # TEXT: the line's head up to its start time (``decode.newest_start``)

    def columns(self) -> dict[str, Field]:
        """The first field mapped to each ENTRY column."""
        return first_per_column(self.fields)


def first_per_column(fields: Iterable[Field]) -> dict[str, Field]:
    """The first of ``fields`` mapped to each ENTRY column."""
    out: dict[str, Field] = {}
    for field in fields:
        if field.column is not None and field.column not in out:
            out[field.column] = field
    return out


@dataclass(frozen=True)
class FormatSet:
    """The formats a decode tries, in priority order (user formats first)."""

    formats: tuple[Format, ...]

    @property
    def text(self) -> tuple[Format, ...]:
        return tuple(f for f in self.formats if f.kind is FormatKind.TEXT)

    @property
    def json(self) -> tuple[Format, ...]:
        return tuple(f for f in self.formats if f.kind is FormatKind.JSON)

    def with_formats(self, *formats: Format) -> FormatSet:
        return FormatSet(_dedupe((*formats, *self.formats)))


def json_keys(formats: Sequence[Format]) -> list[str]:
    """Every key of the JSON ``formats``, each once, in their order: the struct one
    ``str.json_decode`` of a chunk declares."""
    return list(dict.fromkeys(f.key for fmt in formats for f in fmt.fields))


# The order TEXT generations are tried in: the most common first.
_TRY_FIRST = [
    "istio-text-1.9",
    "istio-text-1.23",
    "istio-text-1.7",
    "istio-text-1.8",
    "istio-text-1.2",
    "istio-text-1.1",
    "istio-text-1.0",
    "istio-text-1.0-tcp",
]


def default_formats() -> FormatSet:
    """Istio's JSON and TEXT (each with wslog's extra fields), older TEXT generations, Envoy's.

    The 1.9 and 1.23 TEXT layouts are the same parser; lines of either are named
    ``istio-text-1.9``. Fields after a layout's last are allowed, so a newer layout is tried
    before an older one that is its prefix (a 1.8 line is a 1.1 line plus the route name).
    """
    json_format = compile_json("istio-json", {**ISTIO_JSON_FORMAT, **WSLOG_EXTRA_FIELDS})
    wslog_text = compile_text("istio-text-wslog", WSLOG_TEXT_FORMAT)
    order = sorted(ISTIO_TEXT_FORMATS, key=_TRY_FIRST.index)
    texts = [compile_text(name, ISTIO_TEXT_FORMATS[name]) for name in order]
    envoy = compile_text("envoy-default", ENVOY_DEFAULT_FORMAT)
    return FormatSet(_dedupe((json_format, wslog_text, *texts, envoy)))


def parse_log_format(spec: str, name: str = "custom") -> Format:
    """Compile a ``--log-format`` value: a JSON format object or an Envoy format string."""
    stripped = spec.strip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise FormatError(
                f"--log-format looks like a JSON object but is not valid JSON ({exc}); "
                "quote it for your shell or put it in a file and pass @file."
            ) from exc
        return compile_json(name, obj, where="--log-format")
    return compile_text(name, spec, where="--log-format")


def compile_json(name: str, fmt: Mapping[str, object], *, where: str = "json_format") -> Format:
    for path, text in json_strings(fmt):
        if "%" in text:
            tokenise(text, f"{where} {path}")
    fields = []
    for key, value in fmt.items():
        tokens = tokenise(value.strip()) if isinstance(value, str) else []
        if len(tokens) == 1 and isinstance(tokens[0], Command):
            fields.append(_field(tokens[0], key))
    if not fields:
        raise FormatError(
            f"the JSON format {name!r} has no value that is a single %OPERATOR%; "
            'give it like {"start_time": "%START_TIME%", "code": "%RESPONSE_CODE%"}.'
        )
    return Format(name, FormatKind.JSON, tuple(fields))


def compile_text(name: str, fmt: str, *, where: str = "the format") -> Format:
    tokenise(fmt, where)  # what Envoy refuses, with the position in the format as given
    tokens = _tokenise(_strip_newline(fmt))
    fields = tuple(t for t in tokens if isinstance(t, Field))
    if not fields:
        raise FormatError(
            f"the format {name!r} has no %OPERATOR%; give an Envoy format string such as "
            "'[%START_TIME%] \"%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL%\" %RESPONSE_CODE%'."
        )
    steps = tuple(_token_regex(tokens, i) for i in range(len(tokens)))
    grouped = [_group(tok, step) for tok, step in zip(tokens, steps, strict=True)]
    pattern = _HEAD + "".join(grouped) + _REST
    head = next(i for i, tok in enumerate(tokens) if isinstance(tok, Field))
    probe = "^" + "".join(steps[: head + 2])
    labels = tuple(_label(tok) for tok in tokens)
    literals = tuple(tok if isinstance(tok, str) else "" for tok in tokens)
    start = [
        i for i, tok in enumerate(tokens) if isinstance(tok, Field) and tok.column == "start_time"
    ]
    start_head = "^" + "".join(grouped[: start[0] + 1]) if start else ""
    passes = extraction_passes(tokens, steps)
    return Format(
        name, FormatKind.TEXT, fields, pattern, probe, steps, passes, labels, literals, start_head
    )


# Rust's regex captures groups with its one-pass engine (a few times faster than the others)
# only when the pattern is one-pass and has at most this many explicit groups.
ONE_PASS_GROUPS = 16


def extraction_passes(tokens: list[str | Field], steps: tuple[str, ...]) -> tuple[str, ...]:
    """The regexes ``decode`` extracts a TEXT format's fields with. When every field's regex
    stops at the byte that follows it (the pattern is one-pass), the fields are split over
    passes of at most ``ONE_PASS_GROUPS`` groups: the first pass is the whole line's pattern
    with ``m`` and the last fields (it decides which lines match), each later one a prefix of
    it up to its last field (run only on the lines that matched: a one-pass prefix captures
    what the whole pattern would). Else the whole pattern once. Only fields mapped to a column
    are captured: the others must match, their values are dropped. Measured on Istio's TEXT
    lines (25 groups): the passes take about half the time of one."""
    fields = [t for t in tokens if isinstance(t, Field)]
    wanted = {f.key for f in first_per_column(fields).values()}
    keys = [f.key for f in fields if f.key in wanted]
    after: list[str | Field | None] = [*tokens[1:], None]
    one_pass = all(map(_stops, tokens, steps, after))
    if not one_pass or len(keys) < ONE_PASS_GROUPS:
        return (_capturing(tokens, steps, set(keys), _HEAD) + _REST,)
    split = len(keys) - (ONE_PASS_GROUPS - 1)
    passes = [_capturing(tokens, steps, set(keys[split:]), _HEAD) + _REST]
    for start in range(0, split, ONE_PASS_GROUPS):
        chosen = keys[start : min(start + ONE_PASS_GROUPS, split)]
        last = next(i for i, t in enumerate(tokens) if isinstance(t, Field) and t.key == chosen[-1])
        passes.append(_capturing(tokens[: last + 1], steps, set(chosen), "^"))
    return tuple(passes)


def _capturing(tokens: list[str | Field], steps: tuple[str, ...], keys: set[str], head: str) -> str:
    """``tokens`` as a regex capturing the fields named in ``keys``."""
    return head + "".join(
        _group(tok, step) if isinstance(tok, str) or tok.key in keys else step
        for tok, step in zip(tokens, steps, strict=False)
    )


# The bytes a value of each fixed field regex may hold: it stops at the first other byte.
_ALPHABETS = {
    _INT: "-0123456789",
    _PROTOCOL: "HTP/0123456789.-",
    _TIME_DEFAULT: "0123456789-T:.Z",
}


def _stops(token: str | Field, step: str, nxt: str | Field | None) -> bool:
    """Whether a token's regex ends unambiguously where the next token starts: a literal, or
    a field whose values cannot hold the next token's first byte (a space for the last one,
    before the optional rest of the line)."""
    if isinstance(token, str):
        return True
    if isinstance(nxt, Field):
        return False
    after = nxt[0] if nxt else " "
    inner = step[3:-1]  # "(?:...)"
    if inner in _ALPHABETS:
        return after not in _ALPHABETS[inner]
    if inner == _STOPS_AT_SPACE:
        return after in " \t"
    return inner == f"[^{escape(after)}]*"


def _field(command: Command, key: str) -> Field:
    operator = _normalise(canonical(command.name), command.arg)
    kind = OPERATORS[command.name].value
    time_format = command.arg if kind is Value.TIME and command.arg else None
    return Field(operator, key, OPERATOR_COLUMNS.get(operator), time_format, kind)


def _normalise(name: str, arg: str) -> str:
    """``REQ(x-envoy-original-path?:path)`` -> ``REQ(X-ENVOY-ORIGINAL-PATH)``: first header."""
    if not arg or name == "START_TIME":
        return name
    if name in {"REQ", "RESP", "TRAILER", "REQ_WITHOUT_QUERY"}:
        return f"{name}({arg.split('?')[0].strip().upper()})"
    return f"{name}({arg})"


def _strip_newline(fmt: str) -> str:
    out = fmt.rstrip("\n")
    while out.endswith("\\n"):
        out = out[:-2]
    return out


def _tokenise(fmt: str) -> list[str | Field]:
    tokens: list[str | Field] = []
    for token in tokenise(fmt):
        fields = sum(isinstance(t, Field) for t in tokens)
        tokens.append(token if isinstance(token, str) else _field(token, f"f{fields}"))
    return tokens


def _token_regex(tokens: list[str | Field], i: int) -> str:
    token = tokens[i]
    if isinstance(token, str):
        return escape(token)
    nxt = tokens[i + 1] if i + 1 < len(tokens) else None
    return f"(?:{_value_regex(token, nxt)})"


def _value_regex(field: Field, nxt: str | Field | None) -> str:
    if field.value_type is ValueType.INT:
        return _INT
    if field.value_type is ValueType.TIME:
        return strftime_regex(field.time_format) if field.time_format else _TIME_DEFAULT
    if field.column == "protocol":
        return _PROTOCOL
    if field.column is None and field.kind is Value.TEXT:
        return r".*"  # spaces and quotes (JSON metadata); longest, so later fields stay in place
    if field.column is None and field.time_format:
        return strftime_regex(field.time_format)
    if isinstance(nxt, Field):  # run together with the next value (Istio 1.0's path+protocol)
        return r"\S*?"
    if isinstance(nxt, str) and nxt[0] not in " \t":
        return f"[^{escape(nxt[0])}]*"
    return _STOPS_AT_SPACE


def _group(token: str | Field, step: str) -> str:
    return f"(?P<{token.key}>{step})" if isinstance(token, Field) else step


def _label(token: str | Field) -> str:
    return f"%{token.operator}%" if isinstance(token, Field) else repr(token)


def _dedupe(formats: tuple[Format, ...]) -> tuple[Format, ...]:
    """Drop formats whose parser equals an earlier one's (e.g. Istio 1.9 and 1.23 TEXT)."""
    seen: set[tuple[object, ...]] = set()
    out = []
    for fmt in formats:
        signature = (fmt.kind, fmt.pattern, tuple(replace(f, operator="") for f in fmt.fields))
        if signature not in seen:
            seen.add(signature)
            out.append(fmt)
    return tuple(out)


def escape(text: str) -> str:
    """Escape regex metacharacters in a way both Python ``re`` and Rust ``regex`` accept."""
    return "".join("\\" + c if c in _META else c for c in text)


_STRFTIME_REGEX = {
    "Y": r"[0-9]{4}",
    "y": r"[0-9][0-9]",
    "m": r"[0-9][0-9]",
    "d": r"[0-9][0-9]",
    "e": r" ?[0-9]{1,2}",
    "H": r"[0-9][0-9]",
    "M": r"[0-9][0-9]",
    "S": r"[0-9][0-9]",
    "j": r"[0-9]{3}",
    "s": r"[0-9]+",
    "f": r"[0-9]{9}",
    "z": r"[+-][0-9][0-9]:?[0-9][0-9]",
    "Z": r"[A-Za-z]+",
    "b": r"[A-Za-z]{3}",
    "a": r"[A-Za-z]{3}",
    "T": r"[0-9][0-9]:[0-9][0-9]:[0-9][0-9]",
    "F": r"[0-9]{4}-[0-9][0-9]-[0-9][0-9]",
    "%": "%",
}
_DIRECTIVE = re.compile(r"%(E([0-9])S|([0-9])f|.)")


def strftime_regex(fmt: str) -> str:
    """A regex matching what Envoy writes for ``%START_TIME(fmt)%``."""
    out, pos = [], 0
    for match in _DIRECTIVE.finditer(fmt):
        out.append(escape(fmt[pos : match.start()]))
        out.append(_directive_regex(match))
        pos = match.end()
    out.append(escape(fmt[pos:]))
    return "".join(out)


def _directive_regex(match: re.Match[str]) -> str:
    if match.group(2):
        return rf"[0-9][0-9]\.[0-9]{{{match.group(2)}}}"
    if match.group(3):
        return rf"[0-9]{{{match.group(3)}}}"
    return _STRFTIME_REGEX.get(match.group(1), r"\S+?")


def chrono_format(fmt: str) -> str:
    """Envoy's strftime dialect -> the chrono dialect polars parses with."""
    out = re.sub(r"%E(\d)S", r"%S%.\1f", fmt)
    return re.sub(r"%f", "%9f", out)
