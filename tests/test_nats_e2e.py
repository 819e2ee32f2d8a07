"""Mesh scale end to end on a real nats-server (127.0.0.1, JetStream, the partition mapping):
two forwarders, each reading one "node"'s files (every client sidecar on one, every server
sidecar on the other), and three correlator replicas count exactly the connections
``wslog analyze`` finds on the same files, the refused extended CONNECT split across nodes
included; a replica's series sum with the others' (no connection counted twice)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from analyzer.cli import AnalysisOptions, analyze_paths
from exporter.metrics import CONNECTION_LABELS, UNKNOWN
from tests.conftest import ROOT
from tests.nats_server import PARTITIONS, NatsServer, free_port
from tests.test_exporter import Samples, counted_connections, scrape, total
from tests.test_partition import lab_on_pod_ips

pytestmark = pytest.mark.skipif(shutil.which("nats-server") is None, reason="make system-deps")

REPLICAS = 3
DEADLINE_S = 60


def wslog(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "wslog", *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def forward(node: Path, url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
    args = ["exporter", "--source", "files", "--path", f"{node}/*/*.log", "--once"]
    args += ["--from-start", "--forward", url, "--listen", "127.0.0.1:0", *extra]
    log = tmp / f"forward-{node.name}.log"
    process = wslog(*args, log=log)
    assert process.wait(DEADLINE_S) == 0, log.read_text()
    return subprocess.CompletedProcess(args, 0, log.read_bytes())


class Correlator:
    """``wslog exporter --source nats`` replica ``replica`` of ``replicas``."""

    def __init__(
        self,
        url: str,
        replica: int,
        tmp: Path,
        pair_window: float,
        *,
        partitions: int = PARTITIONS,
        replicas: int = REPLICAS,
    ) -> None:
        self.port = free_port()
        self.log = tmp / f"correlator-{replica}.log"
        self.process = wslog(
            "exporter",
            "--source", "nats", "--nats-url", url,
            "--partitions", str(partitions), "--replicas", str(replicas),
            "--replica", f"wslog-correlator-{replica}",
            "--listen", f"127.0.0.1:{self.port}",
            "--batch-interval", "0.2", "--pair-window", str(pair_window),
            "--drain-seconds", "5",
            log=self.log,
        )  # fmt: skip
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            if self.ready():
                return
            assert self.process.poll() is None, self.log.read_text()
            time.sleep(0.1)
        raise AssertionError(f"correlator {replica} not ready: {self.log.read_text()}")

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.port}/readyz"
            with urllib.request.urlopen(url, timeout=2):
                return True
        except (urllib.error.URLError, OSError):
            return False

    def scrape(self) -> Samples:
        return scrape(self.port)

    def stop(self) -> Samples:
        """SIGTERM: the final counts, read while it drains."""
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2).close()
            except urllib.error.HTTPError as error:  # 503 draining: finished
                error.close()
                final = self.scrape()
                assert self.process.wait(DEADLINE_S) == 0, self.log.read_text()
                assert '"level":"error"' not in self.log.read_text(), self.log.read_text()
                return final
            time.sleep(0.1)
        raise AssertionError(f"correlator did not drain: {self.log.read_text()}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(DEADLINE_S)


def nodes(tmp: Path) -> tuple[Path, Path]:
    """The lab's JSON captures on pod IPs: every client log on node A, every server log on
    node B, each scenario's directory keeping its name (a gateway's says so)."""
    node_a, node_b = tmp / "node-a", tmp / "node-b"
    lab_on_pod_ips(node_a, node_b)
    return node_a, node_b


def expected(paths: list[Path], pair_window: float) -> tuple[Counter[tuple[str, ...]], int]:
    result = analyze_paths([str(p) for p in paths], AnalysisOptions(pair_window=pair_window))
    frame = result.connections.select(
        [pl.col(k).fill_null(UNKNOWN).cast(pl.String) for k in CONNECTION_LABELS]
    )
    return Counter(tuple(row) for row in frame.iter_rows()), result.total_lines


def wait_for_lines(correlators: list[Correlator], lines: int) -> list[Samples]:
    """Scrape every replica until together they have counted ``lines`` lines (bounded)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        samples = [c.scrape() for c in correlators]
        if sum(total(s, "wslog_log_lines_total") for s in samples) >= lines:
            return samples
        time.sleep(0.2)
    raise AssertionError(f"the replicas did not count {lines} lines in {DEADLINE_S}s")


def wait_for_connections(correlators: list[Correlator], connections: int) -> list[Samples]:
    """Scrape every replica until together they have counted ``connections`` connections
    (bounded): a replica stopping counts nothing it still holds (that is left to the next owner
    of its partitions), so a test reads the counts once the replicas released them."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        samples = [c.scrape() for c in correlators]
        if sum(summed(samples).values()) >= connections:
            return samples
        time.sleep(0.2)
    raise AssertionError(f"the replicas did not count {connections} connections in time")


def summed(samples: list[Samples]) -> Counter[tuple[str, ...]]:
    together: Counter[tuple[str, ...]] = Counter()
    for one in samples:
        together += counted_connections(one)
    return together


def test_two_forwarders_and_three_correlators_count_what_analyze_finds(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    node_a, node_b = nodes(tmp_path)
    paths = sorted([*node_a.glob("*/*.log"), *node_b.glob("*/*.log")])
    want, lines = expected(paths, pair_window=10)
    assert any("h2-connect-not-allowed" in k and "paired" in k for k in want)
    forward(node_a, nats_server.url, tmp_path)
    forward(node_b, nats_server.url, tmp_path)
    correlators = [Correlator(nats_server.url, k, tmp_path, 10) for k in range(REPLICAS)]
    try:
        wait_for_lines(correlators, lines)
        wait_for_connections(correlators, sum(want.values()))
        finals = [c.stop() for c in correlators]
    finally:
        for c in correlators:
            if c.process.poll() is None:
                c.kill()
    assert summed(finals) == want
    assert sum(total(s, "wslog_log_lines_total") for s in finals) == lines
    assert sum(1 for s in finals if counted_connections(s)) >= 2  # the work is shared
