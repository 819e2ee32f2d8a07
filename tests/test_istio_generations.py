"""Every TEXT format Istio shipped as its default, proven on lines built from that release's own
format string (``analyzer.istio_formats``): ``testdata/istio-text-generations/<gen>.log`` holds
them (each equals a fresh rendering, so they cannot drift from the format), and ``wslog analyze
--all`` on each matches its golden report (regenerate with ``WSLOG_UPDATE_GOLDEN=1``)."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from analyzer.cli import AnalysisOptions, analyze_paths
from analyzer.istio_formats import ISTIO_TEXT_FORMATS
from analyzer.report import to_json
from analyzer.vocab import LineResult
from tests.conftest import ROOT, TESTDATA, golden
from tests.test_decode import decode_bytes

LINES = TESTDATA / "istio-text-generations"
GOLDEN = ROOT / "tests" / "golden" / "generations"
RID = "7d2f4c1e-0a5b-4c3d-9e8f-1a2b3c4d5e6f"

# One WebSocket through both sidecars (closed by the app: UC on both sides), as each generation
# writes it. Values are wslog's own; only the layout comes from Istio.
COMMON = {
    "START_TIME": "2019-06-01T08:00:00.000Z",
    "REQ(:METHOD)": "GET",
    "REQ(X-ENVOY-ORIGINAL-PATH?:PATH)": "/ws",
    "PROTOCOL": "HTTP/1.1",
    "RESPONSE_CODE": "101",
    "RESPONSE_FLAGS": "UC",
    "RESPONSE_CODE_DETAILS": "via_upstream",
    "CONNECTION_TERMINATION_DETAILS": "-",
    "DYNAMIC_METADATA(istio.mixer:status)": "-",
    "UPSTREAM_TRANSPORT_FAILURE_REASON": "-",
    "BYTES_RECEIVED": "12",
    "BYTES_SENT": "34",
    "RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)": "-",
    "REQ(X-FORWARDED-FOR)": "-",
    "REQ(USER-AGENT)": "Python/3.7 websockets/8.0",
    "REQ(X-REQUEST-ID)": RID,
    "REQ(:AUTHORITY)": "ws.demo.svc.cluster.local:8080",
    "REQUESTED_SERVER_NAME": "-",
    "ROUTE_NAME": "default",
}
CLIENT = {
    **COMMON,
    "DURATION": "5012",
    "UPSTREAM_HOST": "10.20.1.7:8080",
    "UPSTREAM_CLUSTER": "outbound|8080||ws.demo.svc.cluster.local",
    "UPSTREAM_LOCAL_ADDRESS": "10.20.2.9:40001",
    "DOWNSTREAM_LOCAL_ADDRESS": "10.30.0.20:8080",
    "DOWNSTREAM_REMOTE_ADDRESS": "10.20.2.9:39990",
}
SERVER = {
    **COMMON,
    "START_TIME": "2019-06-01T08:00:00.002Z",
    "DURATION": "5010",
    "UPSTREAM_HOST": "127.0.0.1:8080",
    "UPSTREAM_CLUSTER": "inbound|8080|http-ws|ws.demo.svc.cluster.local",  # before Istio 1.10
    "UPSTREAM_LOCAL_ADDRESS": "127.0.0.1:51000",
    "DOWNSTREAM_LOCAL_ADDRESS": "10.20.1.7:8080",
    "DOWNSTREAM_REMOTE_ADDRESS": "10.20.2.9:40001",
    "REQUESTED_SERVER_NAME": "outbound_.8080_._.ws.demo.svc.cluster.local",
}
# The generations named by the Istio release that introduced each layout.
GENERATIONS = {name: ISTIO_TEXT_FORMATS[name] for name in ISTIO_TEXT_FORMATS if "tcp" not in name}
OPERATOR = re.compile(r"%([A-Z][A-Z0-9_]*(?:\([^)]*\))?(?::\d+)?)%")


def render(fmt: str, values: dict[str, str]) -> str:
    """An Envoy format string filled in, as Envoy writes it."""
    return OPERATOR.sub(lambda m: values[m.group(1).replace("_RAW", "")], fmt).rstrip("\n")


def lines_of(name: str) -> list[str]:
    fmt = GENERATIONS[name]
    return [render(fmt, CLIENT), render(fmt, SERVER)]


@pytest.mark.parametrize("name", sorted(GENERATIONS))
def test_committed_lines_are_built_from_the_generations_format(name: str) -> None:
    built = "".join(f"{line}\n" for line in lines_of(name)).encode()
    assert golden(LINES / f"{name}.log", built).decode().splitlines() == lines_of(name)


# Layouts that coincide with a more common one are read as that one (formats.default_formats).
READ_AS = {"istio-text-1.23": "istio-text-1.9"}


@pytest.mark.parametrize("name", sorted(GENERATIONS))
def test_each_generation_decodes_and_pairs(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    path = LINES.relative_to(ROOT) / f"{name}.log"
    decoded = decode_bytes(path.read_bytes())
    assert set(decoded.entries.get_column("format")) == {READ_AS.get(name, name)}
    result = analyze_paths([str(path)], AnalysisOptions(include_all=True, strict=True))
    assert result.lines[LineResult.ENTRY] == 2, "--strict: no line may be malformed"
    (conn,) = result.connections.to_dicts()
    assert (conn["outcome"], conn["pairing"], conn["response_code"]) == ("upgraded", "paired", 101)
    actual = to_json(result) + b"\n"
    assert orjson.loads(actual) == orjson.loads(golden(GOLDEN / f"{name}.json", actual))


def test_the_1_0_tcp_format_decodes_tcp_proxy_entries(tmp_path: Path) -> None:
    tcp = render(ISTIO_TEXT_FORMATS["istio-text-1.0-tcp"], {**CLIENT, "RESPONSE_FLAGS": "-"})
    (tmp_path / "tcp.log").write_text(tcp + "\n")
    result = analyze_paths(
        [str(tmp_path / "tcp.log")], AnalysisOptions(include_all=True, strict=True)
    )
    assert result.lines[LineResult.ENTRY] == 1
    assert result.connections.height == 0 and result.non_http == 1
