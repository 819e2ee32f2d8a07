"""The whole exporter (kubernetes source, live pipeline, metrics) against the fake API server,
driven through the real ``kubernetes`` client, with faults injected while the lab's real Envoy
lines are written: ``/metrics`` must count exactly what ``wslog analyze`` finds in the lines
the pods wrote (no loss, no double count)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from analyzer.cli import analyze_paths
from analyzer.formats import default_formats
from exporter.kube import KubeSource
from exporter.metrics import CONNECTION_LABELS, UNKNOWN
from exporter.run import run_exporter
from exporter.settings import ExporterSettings, KubeSettings, Listen, PipelineSettings, SourceKind
from tests.conftest import TESTDATA
from tests.fake_k8s import FakeKube
from tests.test_exporter import Samples, counted_connections, scrape, total

NS = "default"
CLIENT = "websockets-client-sleep-5d8f7c9b4d-abcde"
SERVER = "websockets-server-7c9d8b6f5d-x2x9k"
SCENARIOS = ("h1", "h2", "h2-no-allow-connect", "app-no-upgrade-h2", "concurrent-h2")
COMPARED = [k for k in CONNECTION_LABELS if k != "source_namespace"]


def lab_lines(side: str) -> list[str]:
    lab = TESTDATA / "lab" / "json"
    return [line for s in SCENARIOS for line in (lab / s / f"{side}.log").read_text().splitlines()]


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube() as fake:
        yield fake


@pytest.fixture
def exporter(kube: FakeKube) -> Iterator[Callable[[], int]]:
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start() -> int:
        ready, port = threading.Event(), [0]
        source = KubeSource(
            KubeSettings(
                kubeconfig=kube.kubeconfig_path,
                backoff_initial_s=0.05,
                backoff_max_s=0.3,
                request_timeout_s=5.0,
                deleted_grace_s=1.0,
            )
        )
        settings = ExporterSettings(
            SourceKind.KUBERNETES,
            Listen("127.0.0.1", 0),
            2000,
            PipelineSettings(timedelta(seconds=2), timedelta(seconds=1), 200_000, 0.1, None),
        )

        def listening(p: int) -> None:
            port[0] = p
            ready.set()

        thread = threading.Thread(
            target=run_exporter,
            args=(settings, source, default_formats(), stop, listening),
            daemon=True,
        )
        thread.start()
        threads.append(thread)
        assert ready.wait(10)
        return port[0]

    yield start
    stop.set()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive(), "the exporter did not stop"


def expected(
    kube: FakeKube, tmp_path: Path, pods: tuple[str, ...] = (CLIENT, SERVER)
) -> Counter[tuple[str, ...]]:
    """``wslog analyze`` on the lines the pods wrote, as ``kubectl logs --prefix
    --timestamps`` would save them."""
    paths = []
    for pod in pods:
        path = tmp_path / f"{pod}.log"
        served = kube.log_lines(NS, pod)
        path.write_text("".join(f"[pod/{pod}/istio-proxy] {line}\n" for line in served))
        paths.append(str(path))
    result = analyze_paths(paths).connections
    frame = result.select([pl.col(k).fill_null(UNKNOWN).cast(pl.String) for k in COMPARED])
    return Counter(tuple(row) for row in frame.iter_rows())


def settle(port: int, lines: int) -> Samples:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        samples = scrape(port)
        counted = total(samples, "wslog_log_lines_total")
        assert counted <= lines, f"counted {counted} lines, only {lines} were written"
        if counted == lines and total(samples, "wslog_pending_entries") == 0:
            time.sleep(0.5)
            again = scrape(port)
            if counted_connections(again) == counted_connections(samples):
                return again
        time.sleep(0.1)
    raise AssertionError("the exporter did not settle in 60 s")


def compared(samples: Samples) -> Counter[tuple[str, ...]]:
    out: Counter[tuple[str, ...]] = Counter()
    for key, value in counted_connections(samples).items():
        labels = dict(zip(CONNECTION_LABELS, key, strict=True))
        assert labels["source_namespace"] in (NS, UNKNOWN)
        out[tuple(labels[k] for k in COMPARED)] += value
    return out


def write_slowly(kube: FakeKube, fault: Callable[[], None] | None = None) -> int:
    """Both pods write their lab lines in steps; ``fault`` strikes after the first step."""
    client, server = lab_lines("client"), lab_lines("server")
    half_c, half_s = len(client) // 2, len(server) // 2
    kube.append_lines(NS, CLIENT, client[:half_c])
    kube.append_lines(NS, SERVER, server[:half_s])
    if fault is not None:
        fault()
    time.sleep(0.3)
    kube.append_lines(NS, SERVER, server[half_s:])
    kube.append_lines(NS, CLIENT, client[half_c:])
    return len(client) + len(server)


def start_pods(kube: FakeKube) -> None:
    kube.add_pod(NS, CLIENT, {"app": "websockets-client"})
    kube.add_pod(NS, SERVER, {"app": "websockets-server"})
    assert kube.wait_for(lambda k: k.open_log_streams >= 2, timeout=10)


def cut_mid_line(kube: FakeKube) -> None:
    for pod in (CLIENT, SERVER):
        kube.cut_log_streams(NS, pod, mid_line=True, after_lines=2)


def errors_on_reconnect(kube: FakeKube) -> None:
    kube.fail_next("log", 500, times=2)
    for pod in (CLIENT, SERVER):
        kube.cut_log_streams(NS, pod, mid_line=False)


def slow_reads(kube: FakeKube) -> None:
    for pod in (CLIENT, SERVER):
        kube.slow(NS, pod, 0.01)


FAULTS: dict[str, Callable[[FakeKube], None] | None] = {
    "none": None,
    "stream cut mid-line": cut_mid_line,
    "500s on reconnect": errors_on_reconnect,
    "watch expired (410)": FakeKube.expire_watches,
    "server container restart": lambda kube: kube.restart(NS, SERVER),
    "slow reads": slow_reads,
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_exporter_metrics_equal_analyze_whatever_the_fault(
    kube: FakeKube, exporter: Callable[[], int], tmp_path: Path, fault: str
) -> None:
    port = exporter()
    start_pods(kube)
    strike = FAULTS[fault]
    written = write_slowly(kube, None if strike is None else lambda: strike(kube))
    samples = settle(port, written)
    want = expected(kube, tmp_path)
    assert sum(want.values()) == 7
    assert compared(samples) == want
    paired = [k for k in want if k[COMPARED.index("pairing")] == "paired"]
    assert sum(want[k] for k in paired) == 7


def test_a_new_pod_and_a_deleted_pod_lose_nothing(
    kube: FakeKube, exporter: Callable[[], int], tmp_path: Path
) -> None:
    port = exporter()
    start_pods(kube)
    client, server = lab_lines("client"), lab_lines("server")
    kube.append_lines(NS, CLIENT, client)
    kube.append_lines(NS, SERVER, server[:3])
    time.sleep(0.5)
    kube.delete(NS, SERVER)
    replacement = "websockets-server-7c9d8b6f5d-zzzzz"
    kube.add_pod(NS, replacement, {"app": "websockets-server"})
    assert kube.wait_for(lambda k: k.open_log_streams >= 2, timeout=10)
    kube.append_lines(NS, replacement, server[3:])
    samples = settle(port, len(client) + len(server))
    want = expected(kube, tmp_path, (CLIENT, SERVER, replacement))
    assert compared(samples) == want
    assert sum(want.values()) == 7
