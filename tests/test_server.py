"""The exporter's HTTP server under attack (slow, idle and hanging clients, bursts), on real
sockets on 127.0.0.1: idle and slow connections cost no thread and are closed at their
deadline, a scraper that hangs up leaves one debug line, a full queue answers 503 at once,
concurrent scrapes share one render, HEAD and gzip work, the Server header names no Python, the
kernel queues connections while the process cannot accept, and the final counts stay
scrapeable for the drain period after SIGTERM."""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from exporter.endpoints import RenderCache, accepts_gzip
from exporter.server import HttpServer, serve
from exporter.settings import HttpSettings, Listen
from tests.conftest import ROOT, TESTDATA

HOST = "127.0.0.1"


def _ready() -> tuple[bool, str]:
    return True, ""


def _registry(*collectors: Any) -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("wslog_test", "A counter every test server serves.", registry=registry).inc(3)
    for collector in collectors:
        registry.register(collector)
    return registry


@contextmanager
def running(registry: CollectorRegistry, **limits: Any) -> Iterator[HttpServer]:
    server = serve(Listen(HOST, 0), HttpSettings(**limits), registry, _ready)
    try:
        yield server
    finally:
        server.close()


def connect(port: int, timeout: float = 5) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=timeout)


@dataclass(frozen=True)
class Reply:
    """A response read whole, its connection closed."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def read(self) -> bytes:
        return self.body

    def getheader(self, name: str, default: str | None = None) -> str | None:
        found = [v for k, v in self.headers if k.lower() == name.lower()]
        return found[0] if found else default

    def getheaders(self) -> list[tuple[str, str]]:
        return self.headers


def get(port: int, path: str, headers: dict[str, str] | None = None) -> Reply:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.getheaders(), response.read())
    finally:
        conn.close()


def exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes, read until the server closes (bounded by the socket timeout)."""
    with connect(port) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def seconds_until_closed(sock: socket.socket, limit_s: float, trickle: bytes = b"") -> float:
    """How long until the server closes ``sock`` (sending ``trickle`` every 0.2 s meanwhile)."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        try:
            if trickle:
                sock.sendall(trickle)
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable and sock.recv(4096) == b"":
                return time.monotonic() - started
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
    raise AssertionError(f"the server kept the connection open for {limit_s} s")


class CountingCollector:
    """Counts its collect() calls, i.e. renders of /metrics; each takes ``delay_s``."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.calls, self.delay_s, self.gate = 0, delay_s, gate
        self.entered = threading.Event()

    def collect(self) -> Iterable[Metric]:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay_s)
        yield GaugeMetricFamily("wslog_test_renders", "collect() calls.", value=self.calls)


class BigCollector:
    """A /metrics body larger than any socket buffer, so writing it outlasts a hang-up."""

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("wslog_test_big", "x" * (16 << 20), value=1)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def http_log() -> Iterator[list[logging.LogRecord]]:
    """The server's log records, whatever configure_logging did to propagation."""
    handler = Records()
    logger = logging.getLogger("wslog.exporter.http")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)


# --- connections that send nothing, or too little --------------------------------------------


def test_a_thousand_idle_connections_hold_no_thread_and_do_not_delay_a_scrape() -> None:
    before = threading.active_count()
    settings = HttpSettings()
    with running(_registry()) as server, ExitStack() as idle:
        opened = time.monotonic()
        for _ in range(1000):
            idle.enter_context(connect(server.port))
            assert time.monotonic() - opened < 30, "1,000 connections could not even be opened"
        started = time.monotonic()
        response = get(server.port, "/metrics")
        body = response.read()
        elapsed = time.monotonic() - started
        threads = threading.active_count()
    assert response.status == 200 and b"wslog_test_total 3.0" in body
    # not a speed test: the old server could not even accept the 1,000 within 30 s
    assert elapsed < 5.0, f"a scrape behind 1,000 idle connections took {elapsed:.2f} s"
    assert threads <= before + 1 + settings.workers, f"{threads - before} threads for the server"


def test_idle_and_trickling_connections_are_closed_at_their_deadline() -> None:
    with running(_registry(), timeout_s=1.0) as server:
        idle = connect(server.port)
        trickling = connect(server.port)
        trickling.sendall(b"GET /metrics HTTP/1.1\r\n")
        trickled_s = seconds_until_closed(trickling, 4, trickle=b"X-Slow: 1\r\n")
        idle_s = seconds_until_closed(idle, 4)
        idle.close()
        trickling.close()
    assert 0.5 < trickled_s < 2.5, "a head that never ends is cut at the deadline"
    assert idle_s < 2.5


def test_past_the_connection_cap_the_oldest_waiting_connection_is_closed() -> None:
    with running(_registry(), max_connections=2) as server:
        oldest, older = connect(server.port), connect(server.port)
        time.sleep(0.2)  # accepted in this order
        newest = connect(server.port)
        closed_s = seconds_until_closed(oldest, 2)
        newest.sendall(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        answer = newest.recv(4096)
        for sock in (oldest, older, newest):
            sock.close()
    assert closed_s < 1
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_a_request_head_over_16_kib_is_refused() -> None:
    with running(_registry()) as server:
        answer = exchange(server.port, b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20_000)
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_a_scraper_that_hangs_up_mid_response_leaves_one_debug_line_and_no_traceback(
    capfd: pytest.CaptureFixture[str], http_log: list[logging.LogRecord]
) -> None:
    with running(_registry(BigCollector())) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the server blocks writing
        sock.settimeout(10)
        sock.connect((HOST, server.port))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        assert b" 200 " in sock.recv(1024).split(b"\r\n")[0], "the response has begun"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # reset, mid-body
        deadline = time.monotonic() + 10
        while not http_log and time.monotonic() < deadline:
            time.sleep(0.05)
        assert get(server.port, "/healthz").status == 200, "the server serves on"
    err = capfd.readouterr().err
    assert "Traceback" not in err
    (record,) = http_log
    assert record.levelno == logging.DEBUG and record.exc_info is None
    assert "went away" in record.getMessage() and "\n" not in record.getMessage()


def test_a_full_queue_is_answered_503_at_once_instead_of_hanging() -> None:
    gate = threading.Event()
    renders = CountingCollector(gate=gate)
    with running(_registry(renders), workers=1, queue=1, min_render_interval_s=60) as server:
        first = connect(server.port, timeout=10)
        first.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        assert renders.entered.wait(5), "the one worker is rendering"
        others = [connect(server.port) for _ in range(5)]
        try:
            for sock in others:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            answers = _first_lines(others, wanted=len(others) - 1, within_s=2)
        finally:
            gate.set()
        rendered = first.recv(4096)
        for sock in [first, *others]:
            sock.close()
    assert len(answers) == 4, "all but the queued request are answered while the worker is busy"
    assert set(answers) == {b"HTTP/1.1 503 Service Unavailable"}
    assert b" 200 " in rendered.split(b"\r\n")[0]


def _first_lines(socks: list[socket.socket], wanted: int, within_s: float) -> list[bytes]:
    """The status lines of the first ``wanted`` answers that arrive within ``within_s``."""
    deadline = time.monotonic() + within_s
    answers: dict[socket.socket, bytes] = {}
    while len(answers) < wanted and (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([s for s in socks if s not in answers], [], [], left)
        for sock in readable:
            answers[sock] = sock.recv(4096).split(b"\r\n")[0]
    return list(answers.values())


# --- what a scrape gets ----------------------------------------------------------------------


def test_concurrent_scrapes_share_one_render() -> None:
    renders = CountingCollector(delay_s=0.2)
    with running(_registry(renders), min_render_interval_s=60) as server:
        barrier = threading.Barrier(50, timeout=10)
        statuses: list[int] = []

        def scrape() -> None:
            barrier.wait()
            response = get(server.port, "/metrics")
            response.read()
            statuses.append(response.status)

        threads = [threading.Thread(target=scrape) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert statuses == [200] * 50
    assert renders.calls == 1


def test_the_render_is_reused_within_the_interval_and_redone_after_it() -> None:
    now = [100.0]
    bodies = iter([b"first", b"second"])
    cache = RenderCache(lambda: next(bodies), min_interval_s=1.0, clock=lambda: now[0])
    assert cache.get(gzipped=False) == b"first"
    now[0] += 0.9
    assert gzip.decompress(cache.get(gzipped=True)) == b"first"
    now[0] += 0.2
    assert cache.get(gzipped=False) == b"second"


@pytest.mark.parametrize(
    ("header", "wanted"),
    [
        ("gzip", True),
        ("deflate, GZIP;q=0.5", True),
        ("gzip, deflate, br", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("identity", False),
        ("", False),
    ],
)
def test_gzip_is_wanted_unless_refused(header: str, wanted: bool) -> None:
    assert accepts_gzip(header) is wanted


def test_metrics_are_gzipped_when_asked_and_decompress_to_the_same_text() -> None:
    with running(_registry(), min_render_interval_s=60) as server:
        plain = get(server.port, "/metrics")
        text = plain.read()
        zipped = get(server.port, "/metrics", {"Accept-Encoding": "gzip"})
        body = zipped.read()
    assert plain.getheader("Content-Encoding") is None
    assert zipped.getheader("Content-Encoding") == "gzip"
    assert zipped.getheader("Vary") == plain.getheader("Vary") == "Accept-Encoding"
    assert int(zipped.getheader("Content-Length") or "-1") == len(body) < len(text)
    assert gzip.decompress(body) == text
    assert "wslog_test" in {f.name for f in text_string_to_metric_families(text.decode())}


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/readyz", "/nope"])
def test_head_answers_as_get_does_without_a_body(path: str) -> None:
    with running(_registry(), min_render_interval_s=60) as server:
        got = exchange(server.port, f"GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
        head = exchange(server.port, f"HEAD {path} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
    got_head, _, body = got.partition(b"\r\n\r\n")
    head_head, _, nothing = head.partition(b"\r\n\r\n")
    assert _without_date(head_head) == _without_date(got_head)
    assert nothing == b"" and body
    assert f"Content-Length: {len(body)}".encode() in head_head


def _without_date(head: bytes) -> list[bytes]:
    return [line for line in head.split(b"\r\n") if not line.startswith(b"Date:")]


def test_the_server_header_names_no_python_version() -> None:
    with running(_registry()) as server:
        response = get(server.port, "/healthz")
        response.read()
    assert response.getheader("Server") == "wslog"
    assert not [v for _, v in response.getheaders() if "Python" in v]


def test_a_connection_carries_pipelined_requests_up_to_the_cap_then_closes() -> None:
    with running(_registry(), max_requests_per_connection=2) as server:
        answers = exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" * 3)
    assert answers.count(b" 200 OK\r\n") == 2
    assert answers.count(b"Connection: close") == 1


def test_a_kept_alive_connection_waits_between_scrapes_without_a_thread() -> None:
    with running(_registry(), workers=1) as server:
        conn = http.client.HTTPConnection(HOST, server.port, timeout=5)
        local_ports = set()
        for _ in range(3):
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            assert response.status == 200 and response.read()
            assert conn.sock is not None, "the server kept the connection open"
            local_ports.add(conn.sock.getsockname()[1])
            assert get(server.port, "/healthz").status == 200, "the one worker is free meanwhile"
            time.sleep(0.3)
        conn.close()
    assert len(local_ports) == 1, "one connection carried the three scrapes"


# --- the process ------------------------------------------------------------------------------


def _start(*args: str, stdin: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "wslog", "exporter", "--listen", f"{HOST}:0", *args],
        stdin=stdin,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=ROOT,
    )


def _port(proc: subprocess.Popen[bytes]) -> int:
    assert proc.stderr is not None
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and (line := proc.stderr.readline()):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "port" in record:
            return int(record["port"])
    raise AssertionError("the exporter never logged its port")


def _status(port: int, path: str) -> tuple[int, bytes]:
    """The status and body, or (0, b"") when nothing answers."""
    try:
        response = get(port, path)
        return response.status, response.read()
    except OSError:
        return 0, b""


def _total(port: int, name: str) -> float:
    text = get(port, "/metrics").read().decode()
    families = text_string_to_metric_families(text)
    return sum(s.value for f in families for s in f.samples if s.name == name)


def test_connections_wait_in_the_kernel_while_the_exporter_cannot_accept() -> None:
    """A listen backlog of 5 dropped the SYNs of the 7th concurrent scraper (retried after 1 s,
    then 3 s): while the process is stopped, 64 connections must still be established."""
    read_fd, write_fd = os.pipe()
    proc = _start("--source", "stdin", stdin=read_fd)
    socks: list[socket.socket] = []
    try:
        port = _port(proc)
        proc.send_signal(signal.SIGSTOP)
        for _ in range(64):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((HOST, port))
            socks.append(sock)
        time.sleep(0.5)  # well under the 1 s SYN retransmission
        _, writable, _ = select.select([], socks, [], 0)
        established = [s for s in writable if not s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)]
        assert len(established) == 64
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()
        for sock in socks:
            sock.close()
        os.close(read_fd)
        os.close(write_fd)


def test_after_sigterm_the_final_counts_are_served_for_the_drain_period() -> None:
    """Entries wait for their counterpart for --pair-window (60 s): only the flush on SIGTERM
    counts them, and only the drain lets Prometheus scrape that."""
    read_fd, write_fd = os.pipe()
    proc = _start("--source", "stdin", "--pair-window", "60", "--drain-seconds", "3", stdin=read_fd)
    try:
        port = _port(proc)
        lab = TESTDATA / "lab" / "json" / "h1"
        os.write(write_fd, (lab / "client.log").read_bytes() + (lab / "server.log").read_bytes())
        deadline = time.monotonic() + 20
        while _total(port, "wslog_pending_entries") < 2:
            assert time.monotonic() < deadline, "the lines were never read"
            time.sleep(0.1)
        assert _total(port, "wslog_connections_total") == 0, "nothing is counted before the flush"
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        while _status(port, "/readyz")[0] != 503:
            assert time.monotonic() - stopped < 10, "/readyz never said draining"
            time.sleep(0.05)
        assert _status(port, "/readyz")[1].startswith(b"draining")
        assert _total(port, "wslog_connections_total") == 1, "the flushed connection is scrapeable"
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - stopped >= 2.5, "served for the drain period"
        with pytest.raises(ConnectionRefusedError):
            connect(port).close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()
        os.close(read_fd)
        os.close(write_fd)
