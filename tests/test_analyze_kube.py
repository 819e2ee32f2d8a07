"""``wslog analyze --kubernetes`` through the real entry point (``python -m wslog``) and the real
``kubernetes`` client, against the fake API server (``tests/fake_k8s.py``) serving the lab's
captured istio-proxy lines as pods' logs; and ``--since``/``--until`` on saved files.

Lab lines are moved in time where a test needs several connections apart (``scenario``); the
kubelet timestamp the fake serves with each line is when Envoy wrote it (the entry's end).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from analyzer.errors import WslogError
from analyzer.timerange import TimeRange, parse_bound
from tests.conftest import TESTDATA, run_wslog
from tests.fake_k8s import FakeKube, parse_rfc3339

LAB = TESTDATA / "lab" / "json"
NS = "default"
CLIENT = "websockets-client-sleep-5d8f7c9b4d-abcde"
SERVER = "websockets-server-7c9d8b6f5d-x2x9k"
GATEWAY = "istio-ingressgateway-6f7b9c8d4-k2j4m"
FLAGSHIP = "h2-no-allow-connect"  # h1-h2 failed h2-connect-not-allowed, paired
FLAGSHIP_VERDICT = ("h1-h2", "failed", "h2-connect-not-allowed", "paired")
H1_VERDICT = ("h1-h1", "upgraded", "", "paired")
NO_UPGRADE_VERDICT = ("h1-h1", "rejected", "app-did-not-upgrade", "paired")


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube() as fake:
        yield fake


def from_cluster(kube: FakeKube, *args: str) -> subprocess.CompletedProcess[str]:
    return run_wslog("analyze", "--kubernetes", "--kubeconfig", kube.kubeconfig_path, *args)


def lab(name: str, side: str) -> list[str]:
    return (LAB / name / f"{side}.log").read_text().splitlines()


def scenario(name: str, start: datetime) -> tuple[list[str], list[str]]:
    """The scenario's client and server lines, moved so that the first entry starts at
    ``start`` (both sides by the same offset, so they still pair)."""
    client, server = lab(name, "client"), lab(name, "server")
    offset = start - min(_start(line) for line in client + server)
    return [_moved(line, offset) for line in client], [_moved(line, offset) for line in server]


def _start(line: str) -> datetime:
    return datetime.fromisoformat(json.loads(line)["start_time"])


def _moved(line: str, offset: timedelta) -> str:
    entry = json.loads(line)
    moved = _start(line) + offset
    entry["start_time"] = moved.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps(entry, sort_keys=True, separators=(",", ":"))


def written(lines: list[str]) -> list[int]:
    """When Envoy wrote each entry (its end), as the kubelet timestamps it, in ns."""
    ends = []
    for line in lines:
        entry = json.loads(line)
        end = _start(line) + timedelta(milliseconds=entry.get("duration") or 0, microseconds=500)
        ends.append(int(end.timestamp() * 1e6) * 1000)
    return ends


def serve(kube: FakeKube, namespace: str, pod: str, lines: list[str]) -> None:
    kube.append_lines(namespace, pod, lines, timestamps=written(lines))


def report(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.stdout.strip(), result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def verdicts(document: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return sorted(
        (c["upgrade_path"], c["outcome"], c["cause"], c["pairing"]) for c in document["connections"]
    )


def log_requests(kube: FakeKube) -> list[tuple[str, dict[str, str]]]:
    """(namespace/pod, query) of every log request the fake answered."""
    out = []
    for kind, path in kube.requests:
        if kind == "log":
            url = urlsplit(path)
            parts = url.path.split("/")
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            out.append((f"{parts[4]}/{parts[6]}", query))
    return out


def _without_origin(connection: dict[str, Any]) -> dict[str, Any]:
    """A connection without what only the input's name tells (file or pod, line number)."""
    drop = {"source_workload", "source_namespace"}
    out = {k: v for k, v in connection.items() if k not in drop}
    for side in ("client", "server", "unsided"):
        if out[side] is not None:
            out[side] = {k: v for k, v in out[side].items() if k not in ("source", "line_no")}
    return out


# -- (1) the cluster gives the report the saved files give ------------------------------------


def test_two_pods_logs_give_the_flagship_verdict_their_saved_files_give(kube: FakeKube) -> None:
    kube.add_pod(NS, CLIENT, {"app": "websockets-client-sleep"}, lines=lab(FLAGSHIP, "client"))
    kube.add_pod(NS, SERVER, {"app": "websockets-server"}, lines=lab(FLAGSHIP, "server"))

    cluster = from_cluster(kube, "--format", "json")
    files = run_wslog(
        "analyze",
        str(LAB / FLAGSHIP / "client.log"),
        str(LAB / FLAGSHIP / "server.log"),
        "-f",
        "json",
    )

    assert (cluster.returncode, files.returncode) == (0, 0), cluster.stderr
    got, want = report(cluster), report(files)
    assert verdicts(got) == [FLAGSHIP_VERDICT]
    assert got["summary"] == want["summary"]
    assert got["failures"] == want["failures"]
    assert [_without_origin(c) for c in got["connections"]] == [
        _without_origin(c) for c in want["connections"]
    ]
    (connection,) = got["connections"]
    assert connection["client"]["source"] == f"{NS}/{CLIENT}"
    assert connection["server"]["source"] == f"{NS}/{SERVER}"
    assert (connection["source_workload"], connection["source_namespace"]) == (
        "websockets-client-sleep",
        NS,
    )
    assert "reading istio-proxy of 2 pod(s)" in cluster.stderr
    requests = log_requests(kube)
    assert sorted(pod for pod, _ in requests) == [f"{NS}/{CLIENT}", f"{NS}/{SERVER}"]
    for _, query in requests:  # read once, as it is now, with the kubelet's timestamps
        assert query == {"container": "istio-proxy", "timestamps": "true"}


def test_the_table_and_the_gate_from_the_cluster(kube: FakeKube) -> None:
    kube.add_pod(NS, CLIENT, lines=lab(FLAGSHIP, "client"))
    kube.add_pod(NS, SERVER, lines=lab(FLAGSHIP, "server"))

    result = from_cluster(kube, "--fail-on", "h2-connect-not-allowed")

    assert result.returncode == 1, result.stderr
    row = r"websockets-server\.default\.svc\.cluster\.local\s*│\s*h1-h2\s*│\s*failed\s*│"
    assert re.search(row + r"\s*h2-connect-not-allowed\s*│\s*1\s*│\s*1 / 0 / 0", result.stdout)
    assert "--fail-on tripped by 1 failed/h2-connect-not-allowed" in result.stderr


# -- (2) a restarted container ------------------------------------------------------------------


def test_a_restarted_container_is_read_from_its_previous_instance_first(kube: FakeKube) -> None:
    start = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    crashed_client, crashed_server = scenario(FLAGSHIP, start)
    later_client, later_server = scenario("h1", start + timedelta(minutes=5))
    kube.add_pod(NS, CLIENT)
    kube.add_pod(NS, SERVER)
    serve(kube, NS, CLIENT, crashed_client)
    kube.restart(NS, CLIENT)  # the crashed instance's lines now come only with previous=true
    serve(kube, NS, CLIENT, later_client)
    serve(kube, NS, SERVER, crashed_server + later_server)

    result = from_cluster(kube, "--format", "json")

    assert result.returncode == 0, result.stderr
    assert verdicts(report(result)) == sorted([FLAGSHIP_VERDICT, H1_VERDICT])
    assert "1 restarted (previous instance included)" in result.stderr
    previous = [pod for pod, query in log_requests(kube) if query.get("previous") == "true"]
    assert previous == [f"{NS}/{CLIENT}"]


# -- (3) --since and --until --------------------------------------------------------------------


def test_since_is_asked_of_the_log_api(kube: FakeKube) -> None:
    now = datetime.now(UTC)
    old_client, old_server = scenario("h1", now - timedelta(hours=2))
    new_client, new_server = scenario(FLAGSHIP, now - timedelta(minutes=10))
    kube.add_pod(NS, CLIENT)
    kube.add_pod(NS, SERVER)
    serve(kube, NS, CLIENT, old_client + new_client)
    serve(kube, NS, SERVER, old_server + new_server)

    result = from_cluster(kube, "--since", "1h", "--format", "json")

    assert result.returncode == 0, result.stderr
    document = report(result)
    assert verdicts(document) == [FLAGSHIP_VERDICT]
    # The API never sent the old lines: nothing was left for the range to leave out.
    assert document["left_out"]["outside_time_range"]["connections"] == 0
    since = datetime.fromisoformat(document["left_out"]["outside_time_range"]["since"])
    assert abs(since - (now - timedelta(hours=1))) < timedelta(seconds=30)
    asked = [query.get("sinceTime") for _, query in log_requests(kube)]
    assert len(asked) == 2
    for value in asked:  # whole seconds, --pair-window + --clock-skew (11 s) before --since
        assert value is not None and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", value)
        lead = since.timestamp() - parse_rfc3339(value) / 1e9
        assert 11 <= lead < 12


def _three_connections(tmp_path: Path, now: datetime) -> list[str]:
    """Saved client and server logs: h1 3 h ago, the flagship 90 min ago, app-no-upgrade 10
    min ago."""
    client, server = [], []
    for name, ago in (("h1", 180), (FLAGSHIP, 90), ("app-no-upgrade", 10)):
        c, s = scenario(name, now - timedelta(minutes=ago))
        client += c
        server += s
    paths = [tmp_path / "client.log", tmp_path / "server.log"]
    for path, lines in zip(paths, (client, server), strict=True):
        path.write_text("\n".join(lines) + "\n")
    return [str(p) for p in paths]


def test_since_and_until_pick_saved_connections_and_count_the_rest(tmp_path: Path) -> None:
    files = _three_connections(tmp_path, datetime.now(UTC))

    window = run_wslog("analyze", *files, "--since", "2h", "--until", "1h", "-f", "json")
    table = run_wslog("analyze", *files, "--since", "2h", "--until", "1h")
    recent = run_wslog("analyze", *files, "--since", "30m", "-f", "json")

    assert (window.returncode, table.returncode, recent.returncode) == (0, 0, 0), window.stderr
    document = report(window)
    assert verdicts(document) == [FLAGSHIP_VERDICT]
    assert document["left_out"]["outside_time_range"]["connections"] == 2
    assert document["lines"]["entries"] == 6  # every line is still accounted for
    assert re.search(
        r"time range --since \S+Z --until \S+Z: 2 WebSocket connections not open within it "
        r"left out",
        table.stdout,
    )
    assert verdicts(report(recent)) == [NO_UPGRADE_VERDICT]
    assert report(recent)["left_out"]["outside_time_range"]["connections"] == 2


def test_a_connection_still_open_at_since_is_kept_and_one_closed_before_is_not() -> None:
    # The flagship's client entry starts at 00:13:28.246 and lasts 1004 ms.
    files = [str(LAB / FLAGSHIP / "client.log"), str(LAB / FLAGSHIP / "server.log")]
    gate = ("--fail-on", "h2-connect-not-allowed")

    open_then = run_wslog("analyze", *files, "--since", "2026-11-26T00:13:29Z", *gate)
    closed = run_wslog("analyze", *files, "--since", "2026-11-26T00:13:29.300Z", *gate)
    bad = run_wslog("analyze", *files, "--since", "yesterday")

    assert open_then.returncode == 1, open_then.stderr
    assert closed.returncode == 2, closed.stderr
    assert "each of the 1 WebSocket connection(s)" in closed.stderr
    assert "--fail-on checked nothing" in closed.stderr
    assert bad.returncode == 2
    assert "--since yesterday: give a duration before now (90s, 30m, 1h" in bad.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", datetime(2026, 12, 1, 11, 58, 30, tzinfo=UTC)),
        ("1h30m", datetime(2026, 12, 1, 10, 30, tzinfo=UTC)),
        ("2d", datetime(2026, 11, 29, 12, 0, tzinfo=UTC)),
        ("2026-11-26T00:13:29.3Z", datetime(2026, 11, 26, 0, 13, 29, 300000, tzinfo=UTC)),
        ("2026-11-26T01:13:29+01:00", datetime(2026, 11, 26, 0, 13, 29, tzinfo=UTC)),
        ("2026-11-26 00:13", datetime(2026, 11, 26, 0, 13, tzinfo=UTC)),  # no zone: UTC
    ],
)
def test_a_bound_is_a_duration_before_now_or_a_time(text: str, expected: datetime) -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert parse_bound("--since", text, now=now) == expected


def test_a_range_that_ends_before_it_starts_is_refused() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    with pytest.raises(WslogError, match="is not before --until"):
        TimeRange(parse_bound("--since", "1h", now=now), parse_bound("--until", "2h", now=now))


# -- (4) what stops a run ----------------------------------------------------------------------


def test_a_refused_log_read_exits_2_naming_the_permission(kube: FakeKube) -> None:
    kube.add_pod(NS, CLIENT, lines=lab(FLAGSHIP, "client"))
    kube.deny("pods/log")

    result = from_cluster(kube)

    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = [line for line in result.stderr.splitlines() if "Forbidden" in line]
    assert f"Forbidden (403) reading the log of pod {NS}/{CLIENT}" in line
    assert "get and list on pods and get on pods/log" in line
    assert "--context" in line


def test_rejected_credentials_exit_2_saying_to_log_in_again(kube: FakeKube) -> None:
    kube.add_pod(NS, CLIENT, lines=lab(FLAGSHIP, "client"))
    assert kube.kubeconfig_path  # written with the token the server accepts now
    kube.token = "another-token"  # then the server accepts only another

    result = from_cluster(kube)

    assert result.returncode == 2
    assert "Unauthorized (401) listing pods: the API server rejected the credentials" in (
        result.stderr
    )


def test_a_failing_log_read_exits_2_saying_to_retry(kube: FakeKube) -> None:
    kube.add_pod(NS, CLIENT, lines=lab(FLAGSHIP, "client"))
    kube.fail_next("log", 500)

    result = from_cluster(kube)

    assert result.returncode == 2
    assert f"reading the log of pod {NS}/{CLIENT} failed (500" in result.stderr
    assert "retry" in result.stderr


def test_a_refused_pod_list_exits_2_naming_the_namespace(kube: FakeKube) -> None:
    kube.add_pod(NS, CLIENT, lines=lab(FLAGSHIP, "client"))
    kube.deny("pods")

    result = from_cluster(kube, "-n", NS)

    assert result.returncode == 2
    assert f"Forbidden (403) listing pods in namespace {NS}" in result.stderr
    assert "get and list on pods" in result.stderr


def test_no_matching_pod_exits_2_saying_where_it_looked(kube: FakeKube) -> None:
    kube.add_pod(NS, CLIENT, {"app": "client"}, lines=lab(FLAGSHIP, "client"))
    kube.add_pod(NS, "web-1", {"app": "web"}, containers=("app",))  # no sidecar
    kube.add_pod(NS, "web-2", {"app": "web"}, pending="400")  # sidecar not started

    result = from_cluster(kube, "-n", NS, "-n", "other", "-l", "app=web")

    assert result.returncode == 2
    assert (
        "no pod with a started istio-proxy container in namespace(s) default, other with labels "
        "app=web" in result.stderr
    )
    assert f"note: 1 pod(s) with istio-proxy have not started: {NS}/web-2" in result.stderr
    assert log_requests(kube) == []


def test_no_cluster_to_talk_to_exits_2_saying_what_to_pass(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with FakeKube() as fake:
        config = json.loads(fake.kubeconfig_text())
    config["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{port}"
    unreachable = tmp_path / "kubeconfig"
    unreachable.write_text(json.dumps(config))

    down = run_wslog("analyze", "--kubernetes", "--kubeconfig", str(unreachable))
    missing = run_wslog("analyze", "--kubernetes", "--kubeconfig", str(tmp_path / "nope"))
    no_context = run_wslog(
        "analyze", "--kubernetes", "--kubeconfig", str(unreachable), "--context", "prod"
    )

    assert (down.returncode, missing.returncode, no_context.returncode) == (2, 2, 2)
    assert f"cannot reach the API server at http://127.0.0.1:{port} listing pods" in down.stderr
    assert f"{tmp_path / 'nope'}: no such kubeconfig file" in missing.stderr
    assert "cannot load Kubernetes credentials" in no_context.stderr
    assert "--context NAME" in no_context.stderr


def test_cluster_options_without_kubernetes_are_refused() -> None:
    result = run_wslog("analyze", str(LAB / FLAGSHIP / "client.log"), "-n", NS, "-l", "app=x")
    both = run_wslog("analyze", "--kubernetes", str(LAB / FLAGSHIP / "client.log"))

    assert (result.returncode, both.returncode) == (2, 2)
    assert "--namespace, --selector: only with --kubernetes" in result.stderr
    assert "--kubernetes reads the cluster: give it without files" in both.stderr


# -- (5) which pods are read -------------------------------------------------------------------


def test_namespaces_and_selector_choose_the_pods_gateways_included(kube: FakeKube) -> None:
    start = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    flagship_client, flagship_server = scenario(FLAGSHIP, start)
    h1_client, h1_server = scenario("h1", start + timedelta(minutes=5))
    gateway, behind_gateway = scenario("gateway-h1", start + timedelta(minutes=10))
    kube.add_pod(NS, CLIENT, {"mesh": "ws"})
    kube.add_pod(NS, SERVER, {"mesh": "ws"})
    kube.add_pod(NS, "other-client-7f9c6d5b8-q8w2e", {"app": "other"})  # not selected by -l
    kube.add_pod("other", "websockets-server-7c9d8b6f5d-zz9zz", {"mesh": "ws"})  # nor by -n
    kube.add_pod("istio-system", GATEWAY, {"istio": "ingressgateway"})
    serve(kube, NS, CLIENT, flagship_client)
    serve(kube, NS, SERVER, flagship_server + behind_gateway)
    serve(kube, NS, "other-client-7f9c6d5b8-q8w2e", h1_client)
    serve(kube, "other", "websockets-server-7c9d8b6f5d-zz9zz", h1_server)
    serve(kube, "istio-system", GATEWAY, gateway)

    selected = from_cluster(kube, "-n", NS, "-l", "mesh=ws", "-f", "json")
    first = len(kube.requests)
    with_gateway = from_cluster(kube, "-n", NS, "-n", "istio-system", "-f", "json")

    assert (selected.returncode, with_gateway.returncode) == (0, 0), selected.stderr
    # The server also logged the connection through the gateway, whose pod -l leaves out.
    assert verdicts(report(selected)) == [
        ("h1-h1", "upgraded", "", "server-only"),
        FLAGSHIP_VERDICT,
    ]
    assert sorted(pod for pod, _ in log_requests(kube)[:2]) == [f"{NS}/{CLIENT}", f"{NS}/{SERVER}"]
    lists = [path for kind, path in kube.requests[:first] if kind == "list"]
    assert lists == [f"/api/v1/namespaces/{NS}/pods?labelSelector=mesh%3Dws"]

    through_gateway = [
        c for c in report(with_gateway)["connections"] if c["client"]["source"].endswith(GATEWAY)
    ]
    assert [(c["upgrade_path"], c["outcome"], c["pairing"]) for c in through_gateway] == [
        ("h1-h1", "upgraded", "paired")
    ]
    assert through_gateway[0]["source_workload"] == "istio-ingressgateway"
    read_second = {pod for pod, _ in log_requests(kube)[2:]}
    assert f"istio-system/{GATEWAY}" in read_second
    assert "other/websockets-server-7c9d8b6f5d-zz9zz" not in read_second
