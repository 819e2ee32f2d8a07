"""End to end: a real Prometheus on 127.0.0.1 scrapes wslog metrics, evaluates the real alert
rules (with ``for`` shortened, derived in code from dashboards/alerts.rules.yaml) and answers
every dashboard query.

Two scrape targets:
- *registry-fed*: the exposition of an ``exporter.metrics.Metrics`` registry, fed with
  connections shaped like the lab's ``h1``, ``h2`` and ``h2-no-allow-connect`` scenarios and with
  every other family, served by prometheus_client's own HTTP server. It tests the queries and
  rules against the exporter's metric families, not the exporter's pipeline.
- *exporter*: ``wslog exporter --source files`` following files into which the lab's logs are
  replayed (time-shifted to now, one new request id per replay), one run per scenario.

Every wait is bounded; Prometheus and the exporter are killed in finalizers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from analyzer.vocab import EXPLANATIONS, Cause, LineResult, Outcome, Pairing, RejectReason
from exporter.metrics import Metrics
from tests.test_dashboards import (
    GRAFANA_VARIABLES,
    ROOT,
    dashboard,
    panel_queries,
    substitute,
    variable_queries,
)

pytestmark = pytest.mark.prometheus

PROMETHEUS = shutil.which("prometheus")
RULES = ROOT / "dashboards" / "alerts.rules.yaml"
LAB = ROOT / "testdata" / "lab" / "json"
WAIT_S = 60.0
SHORT_FOR = "4s"
ALERT_503 = "WslogWebSocketUpgrade503s"
BAD = "h2-no-allow-connect"

needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (make setup-test)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            result = check()
            if result:
                return result
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def short_for_rules(tmp_path: Path) -> Path:
    """The real rules file with every ``for`` shortened, so alerts fire within seconds."""
    loaded = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in loaded["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = SHORT_FOR
    path = tmp_path / "alerts.rules.yaml"
    path.write_text(yaml.safe_dump(loaded, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class Prometheus:
    url: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        answer = http_json(url)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def series(self, selector: str) -> list[dict[str, str]]:
        url = f"{self.url}/api/v1/series?" + urllib.parse.urlencode({"match[]": selector})
        found: list[dict[str, str]] = http_json(url)["data"]
        return found

    def alerts(self, name: str) -> list[dict[str, Any]]:
        found = http_json(f"{self.url}/api/v1/alerts")["data"]["alerts"]
        return [a for a in found if a["labels"]["alertname"] == name]

    def target_up(self) -> bool:
        return bool(self.query('up{job="wslog"} == 1'))


@contextlib.contextmanager
def running_prometheus(tmp_path: Path, target: str) -> Iterator[Prometheus]:
    assert PROMETHEUS is not None
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(short_for_rules(tmp_path))],
        "scrape_configs": [{"job_name": "wslog", "static_configs": [{"targets": [target]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    log = (tmp_path / "prometheus.log").open("w")
    command = [
        PROMETHEUS,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        prometheus = Prometheus(f"http://127.0.0.1:{port}")
        wait_for("Prometheus to be ready", lambda: ready(prometheus, process, tmp_path))
        wait_for(f"Prometheus to scrape {target}", prometheus.target_up)
        yield prometheus
    finally:
        stop(process)
        log.close()


def ready(prometheus: Prometheus, process: subprocess.Popen[bytes], tmp_path: Path) -> bool:
    if process.poll() is not None:
        log = (tmp_path / "prometheus.log").read_text()
        pytest.fail(f"prometheus exited with {process.returncode}: {log[-2000:]}")
    with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=2) as response:
        return bool(response.status == 200)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def watch_503(prometheus: Prometheus, service_part: str) -> list[str]:
    """The 503 alert's states for the service, in order, until it fires (bounded)."""
    states: list[str] = []

    def firing() -> bool:
        for alert in prometheus.alerts(ALERT_503):
            service = alert["labels"].get("destination_service", "")
            if service_part in service and (not states or states[-1] != alert["state"]):
                states.append(alert["state"])
        return "firing" in states

    wait_for(f"{ALERT_503} to fire for {service_part}", firing)
    return states


def queries_without_data(prometheus: Prometheus) -> list[str]:
    board = dashboard()
    empty = [
        f"{title}: {expr}"
        for title, expr in panel_queries(board)
        if not prometheus.query(substitute(expr))
    ]
    empty += [
        f"variable {name}: {selector}"
        for name, selector in variable_queries(board)
        if not prometheus.series(substitute(selector))
    ]
    return empty


# --- registry-fed target ----------------------------------------------------------------------

SCENARIO_ROWS = {
    "h1": ("h1-h1", Outcome.UPGRADED, Cause.NONE),
    "h2": ("h1-h2", Outcome.UPGRADED, Cause.NONE),
    BAD: ("h1-h2", Outcome.FAILED, Cause.H2_CONNECT_NOT_ALLOWED),
}


def row(
    service: str, path: str, outcome: Outcome, cause: Cause, pairing: Pairing
) -> dict[str, object]:
    return {
        "destination_service": f"{service}.lab.svc.cluster.local",
        "destination_namespace": "lab",
        "source_workload": "client",
        "source_namespace": "lab",
        "upgrade_path": path,
        "outcome": outcome.value,
        "cause": cause.value,
        "pairing": pairing.value,
        "duration_ms": 1200,
        "bytes_sent": 95,
        "bytes_received": 120,
    }


def feed_once(metrics: Metrics, tick: int) -> None:
    """One round of what an exporter reports: the three scenarios plus every other family."""
    for service, (path, outcome, cause) in SCENARIO_ROWS.items():
        metrics.record_connection(row(service, path, outcome, cause, Pairing.PAIRED))
    cause = list(EXPLANATIONS)[tick % len(EXPLANATIONS)]
    app = cause in (Cause.APP_REFUSED, Cause.APP_DID_NOT_UPGRADE)
    outcome = Outcome.REJECTED if app else Outcome.FAILED
    pairing = list(Pairing)[tick % len(Pairing)]
    metrics.record_connection(row("causes", "h1-h1", outcome, cause, pairing))
    metrics.set_open([row("h1", "h1-h1", Outcome.OPEN, Cause.NONE, Pairing.PAIRED)])
    metrics.record_lines({r.value: 2 for r in LineResult}, {r.value: 1 for r in RejectReason})
    metrics.pending.set(tick % 3)
    metrics.evicted.labels(side="client", reason="window").inc()
    metrics.streams_active.labels(kind="file").set(2)
    metrics.stream_restarts.labels(kind="file", reason="eof").inc()
    metrics.record_newest(f"lab/pod-{tick % 25}/istio-proxy", time.time())
    metrics.ready.set(1)


@pytest.fixture
def registry_target() -> Iterator[str]:
    registry = CollectorRegistry()
    metrics = Metrics(registry, max_series=20)  # 25 sources: the source label folds
    metrics.build.info({"version": "e2e"})
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    done = threading.Event()

    def feed() -> None:
        tick = 0
        while not done.wait(0.25):
            feed_once(metrics, tick)
            tick += 1

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    yield f"127.0.0.1:{port}"
    done.set()
    feeder.join(timeout=5)
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@needs_prometheus
@pytest.mark.timeout(180)
def test_registry_fed_503_alert_fires_on_h2_no_allow_connect_only(
    tmp_path: Path, registry_target: str
) -> None:
    """Registry-fed, not the exporter: the real rules on the exporter's metric families."""
    with running_prometheus(tmp_path, registry_target) as prometheus:
        states = watch_503(prometheus, BAD)
        assert states[0] == "pending" and states[-1] == "firing", states
        wait_for(
            "WslogH2ConnectNotAllowed to fire",
            lambda: [
                a for a in prometheus.alerts("WslogH2ConnectNotAllowed") if a["state"] == "firing"
            ],
        )
        for name in (ALERT_503, "WslogH2ConnectNotAllowed"):
            services = {a["labels"]["destination_service"] for a in prometheus.alerts(name)}
            assert f"{BAD}.lab.svc.cluster.local" in services
            assert not services & {"h1.lab.svc.cluster.local", "h2.lab.svc.cluster.local"}


@needs_prometheus
@pytest.mark.timeout(180)
def test_registry_fed_every_dashboard_query_returns_data(
    tmp_path: Path, registry_target: str
) -> None:
    """Registry-fed, not the exporter: every panel and variable query answers with series."""
    with running_prometheus(tmp_path, registry_target) as prometheus:
        assert GRAFANA_VARIABLES["$__rate_interval"] == "1m"
        wait_for(
            "every dashboard query to return data", lambda: not queries_without_data(prometheus)
        )
        assert queries_without_data(prometheus) == []


# --- the real exporter ------------------------------------------------------------------------


def exporter_command() -> list[str]:
    wslog = shutil.which("wslog", path=str(ROOT / ".venv" / "bin")) or shutil.which("wslog")
    if wslog is None:
        pytest.skip("wslog exporter not available yet")
    try:
        probe = subprocess.run(
            [wslog, "exporter", "--help"], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("wslog exporter not available yet")
    if probe.returncode != 0:
        pytest.skip("wslog exporter not available yet")
    return [wslog, "exporter"]


class Replayer:
    """Appends a scenario's client and server logs, time-shifted to now, over and over."""

    def __init__(self, scenario: str, into: Path) -> None:
        self.logs = {
            name: (LAB / scenario / name).read_text().splitlines()
            for name in ("client.log", "server.log")
        }
        self.into = into
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.replays = 0

    def run(self) -> None:
        while not self.done.wait(0.5) and self.replays < 200:
            self.replay(self.replays)
            self.replays += 1

    def replay(self, n: int) -> None:
        entries = {name: [json.loads(line) for line in lines] for name, lines in self.logs.items()}
        first = min(parse_time(e["start_time"]) for es in entries.values() for e in es)
        shift = datetime.now(UTC) - first
        for name, es in entries.items():
            lines = [json.dumps(shifted(e, shift, n)) for e in es]
            if name == "client.log":
                lines.append('{"start_time": "2026-11-26T00:13:28.246Z", "broken')
            with (self.into / name).open("a", encoding="utf-8") as out:
                out.write("\n".join(lines) + "\n")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def shifted(entry: dict[str, Any], shift: timedelta, n: int) -> dict[str, Any]:
    """The entry as if written ``shift`` later, with its own request id and client port."""
    entry = dict(entry)
    start = parse_time(entry["start_time"]) + shift
    entry["start_time"] = start.strftime("%Y-%m-%dT%H:%M:%S.") + f"{start.microsecond // 1000:03d}Z"
    if entry.get("request_id"):
        entry["request_id"] = f"{entry['request_id'][:-8]}{n:08d}"
    for key in ("upstream_local_address", "downstream_remote_address"):
        if entry.get(key) and entry[key].count(":") == 1:
            host, port = entry[key].split(":")
            entry[key] = f"{host}:{(int(port) + 7 * n) % 50000 + 10000}"
    return entry


@contextlib.contextmanager
def running_exporter(tmp_path: Path) -> Iterator[str]:
    command = exporter_command()
    logs = tmp_path / "logs"
    logs.mkdir()
    for name in ("client.log", "server.log"):
        (logs / name).touch()
    port = free_port()
    out = (tmp_path / "exporter.log").open("w")
    process = subprocess.Popen(
        [
            *command,
            "--source",
            "files",
            "--path",
            str(logs / "*.log"),
            "--from-start",
            "--listen",
            f"127.0.0.1:{port}",
            "--pair-window",
            "1",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "WSLOG_BATCH_INTERVAL": "0.5"},
    )

    def serving() -> bool:
        if process.poll() is not None:
            text = (tmp_path / "exporter.log").read_text()
            pytest.fail(f"wslog exporter exited with {process.returncode}: {text[-3000:]}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return bool(response.status == 200)

    try:
        wait_for("wslog exporter to serve /metrics", serving)
        yield f"127.0.0.1:{port}"
    finally:
        stop(process)
        out.close()


# Panels that a replay of one scenario cannot fill: causes it does not have, connections still
# open (no start/periodic entries), unpaired connections and evictions (both sidecars log every
# connection), stream restarts and the series cap (nothing goes wrong).
def may_be_empty(scenario: str, item: str) -> bool:
    cause = {"h1": None, "h2": None, BAD: Cause.H2_CONNECT_NOT_ALLOWED.value}[scenario]
    if item.startswith("Failures: ") and not item.startswith(f"Failures: {cause}:"):
        return True
    upgraded_only = ("Connection duration", "WebSocket bytes")
    if scenario == BAD and item.startswith(upgraded_only):
        return True
    if scenario != BAD and item.startswith("Failures per second by cause"):
        return True
    return item.startswith(
        (
            "Open connections",
            "Stream restarts",
            "Label sets folded",
            "Unpaired connections",
            "Pending entries and evictions: sum by",
        )
    )


@needs_prometheus
@pytest.mark.timeout(240)
@pytest.mark.parametrize("scenario", [BAD, "h1", "h2"])
def test_exporter_lab_logs_503_alert_and_dashboard_queries(tmp_path: Path, scenario: str) -> None:
    """The real ``wslog exporter`` following replayed lab logs, scraped by a real Prometheus:
    the 503 alert goes pending then firing on h2-no-allow-connect and stays silent on h1, h2;
    every dashboard query the scenario can fill returns data."""
    with running_exporter(tmp_path) as target, running_prometheus(tmp_path, target) as prometheus:
        replayer = Replayer(scenario, tmp_path / "logs")
        replayer.thread.start()
        try:
            wait_for(
                "connections counted by the exporter",
                lambda: len(prometheus.query("rate(wslog_connections_total[1m]) > 0")),
            )
            if scenario == BAD:
                states = watch_503(prometheus, "")
                assert states[0] == "pending" and states[-1] == "firing", states
            else:
                settle = time.monotonic() + 3 * int(SHORT_FOR.rstrip("s")) + 5
                while time.monotonic() < settle:
                    assert prometheus.alerts(ALERT_503) == []
                    time.sleep(0.5)
            missing = [q for q in queries_without_data(prometheus) if not may_be_empty(scenario, q)]
            assert missing == []
        finally:
            replayer.done.set()
            replayer.thread.join(timeout=5)
