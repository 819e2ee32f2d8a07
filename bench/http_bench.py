"""Scrape latency of the exporter's HTTP server against the server it replaced, in one run.

    python bench/http_bench.py [--scrapers 50] [--rounds 20] [--series 2000]

Each server runs in its own process on 127.0.0.1 with the same registry (``--series`` label
sets of a counter and a histogram, about the size of a busy exporter's /metrics). This process
then runs ``--scrapers`` threads that each scrape ``--rounds`` times, a new connection per
scrape as Prometheus does after an idle period, all starting together (a scrape that fails or
takes over 30 s is reported as failed, not timed); and one scrape while 1,000 idle connections
are held open. The baseline is the server of commit c6c6c0b
(``ThreadingHTTPServer``: a thread per connection, no timeout, backlog 5, a render per scrape),
kept verbatim below; the new server runs twice, with its default render interval (1 s) and with
a render per scrape (``--min-render-interval 0``), to tell the cache from the rest. Figures are
printed as ratios to the old server: machines here are noisy, ratios less so.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import statistics
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

REGISTRY = """
from prometheus_client import CollectorRegistry, Counter, Histogram
registry = CollectorRegistry()
labels = ["destination_service", "destination_namespace", "outcome"]
counter = Counter("bench_connections", "Connections.", labels, registry=registry)
histogram = Histogram("bench_duration_seconds", "Durations.", labels[:2], registry=registry)
for i in range({series}):
    counter.labels(f"service-{{i}}", f"namespace-{{i % 20}}", "upgraded").inc(i)
    if i % 10 == 0:
        histogram.labels(f"service-{{i}}", f"namespace-{{i % 20}}").observe(i / 100)
"""

OLD = """
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

def serve(host, port, registry, readiness):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b"ok\\n")
            elif path == "/readyz":
                ok, reason = readiness()
                self._send(200 if ok else 503, (reason or "ok").encode() + b"\\n")
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\\n")

        def _send(self, code, body, ctype="text/plain; charset=utf-8"):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="wslog-http", daemon=True).start()
    return server

server = serve("127.0.0.1", 0, registry, lambda: (True, ""))
port = server.server_address[1]
"""

NEW = """
from exporter.server import serve
from exporter.settings import HttpSettings, Listen
settings = HttpSettings(min_render_interval_s={interval})
server = serve(Listen("127.0.0.1", 0), settings, registry, lambda: (True, ""))
port = server.port
"""

WAIT = """
import sys, threading
print(port, flush=True)
sys.stdin.read()
"""


def start(server_code: str, series: int) -> tuple[subprocess.Popen[str], int]:
    code = REGISTRY.format(series=series) + server_code + WAIT
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        text=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def scrape(port: int) -> float:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics", headers={"Connection": "close"})
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 200, response.status
    return time.perf_counter() - started


def concurrent_scrapes(port: int, scrapers: int, rounds: int) -> tuple[list[float], list[str]]:
    """Latencies of the scrapes that succeeded, and what went wrong with the others."""
    barrier = threading.Barrier(scrapers)
    latencies: list[float] = []
    failures: list[str] = []

    def run() -> None:
        barrier.wait()
        for _ in range(rounds):
            try:
                latencies.append(scrape(port))
            except (OSError, http.client.HTTPException, AssertionError) as exc:
                failures.append(type(exc).__name__)

    threads = [threading.Thread(target=run) for _ in range(scrapers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, failures


def behind_idle_connections(port: int, idle: int) -> tuple[float, float]:
    """Seconds to open ``idle`` idle connections, then one scrape's latency behind them."""
    with ExitStack() as stack:
        started = time.perf_counter()
        for _ in range(idle):
            stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=30))
        opened = time.perf_counter() - started
        return opened, scrape(port)


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def measure(name: str, code: str, args: argparse.Namespace) -> dict[str, float]:
    proc, port = start(code, args.series)
    try:
        scrape(port)  # warm
        latencies, failures = concurrent_scrapes(port, args.scrapers, args.rounds)
        opened, behind = behind_idle_connections(port, 1000)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)
    figures = {
        "p50": statistics.median(latencies),
        "p99": quantile(latencies, 0.99),
        "max": max(latencies),
        "open 1000 idle": opened,
        "scrape behind them": behind,
    }
    failed = {kind: failures.count(kind) for kind in sorted(set(failures))}
    print(name, {k: round(v, 3) for k, v in figures.items()}, "failed:", failed, flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description="Scrape latency, new vs old server.")
    parser.add_argument("--scrapers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--series", type=int, default=2000)
    args = parser.parse_args()
    old = measure("old (c6c6c0b)", OLD, args)
    uncached = measure("new, a render per scrape", NEW.format(interval=0.0), args)
    new = measure("new", NEW.format(interval=1.0), args)
    for key in old:
        print(
            f"{key}: new/old = {new[key] / old[key]:.3f}, "
            f"new with a render per scrape/old = {uncached[key] / old[key]:.3f}"
        )


if __name__ == "__main__":
    main()
