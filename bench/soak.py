"""Soak the real exporter: a steady rate, then unthrottled, with concurrent scrapers.

    python bench/soak.py [--steady 120] [--burst 120] [--rate 5000] [--scrapers 20]

Runs ``wslog exporter --source stdin`` as a child process with its default settings and feeds
it endless generated istio-proxy lines (``bench/generate.py``'s connections: both sidecars of
each, in time order) on its stdin: first ``--rate`` lines/s for ``--steady`` seconds, then as
fast as the pipe takes them for ``--burst`` seconds. Meanwhile ``--scrapers`` threads scrape
``/metrics`` in a loop. Reported per phase: lines written and counted, the exporter's resident
memory (sampled from /proc, and its peak) against the memory limit the manifests set, and
scrape latency percentiles as a ratio of the latency of a scrape of the idle exporter, measured
first in the same run. Nothing here is a pass/fail test: these machines are noisy; read the
ratios.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from generate import connections  # noqa: E402  # after sys.path

EXTRA: list[str] = ["--listen", "127.0.0.1:0"]
MANIFEST = ROOT / "deploy" / "exporter" / "deployment" / "deployment.yaml"


def memory_limit_mib() -> int:
    """The exporter container's memory limit in the Deployment manifest."""
    text = MANIFEST.read_text()
    limits = text[text.index("limits:") :]
    match = re.search(r"memory:\s*(\d+)Mi", limits)
    if match is None:
        raise SystemExit(f"no memory limit in Mi found in {MANIFEST}")
    return int(match.group(1))


def rss_mib(pid: int, field_name: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Phase:
    name: str
    written: int = 0
    rss: list[float] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    failures: int = 0


def scrape(port: int) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        response.read()
    return time.perf_counter() - start


def metric_sum(port: int, prefix: str) -> int:
    """The sum of a family's samples, e.g. ``wslog_log_lines_total{``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return sum(
        int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines() if line.startswith(prefix)
    )


def start_exporter() -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "wslog", "exporter", "--source", "stdin", *EXTRA],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    for raw in proc.stderr:
        match = re.search(rb'"port": ?(\d+)', raw)
        if match:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep it drained
            return proc, int(match.group(1))
    raise SystemExit("the exporter did not start")


def feed(proc: subprocess.Popen[bytes], phases: list[tuple[Phase, float, float | None]]) -> None:
    """Write each phase's lines for its duration, at its rate (None: unthrottled)."""
    assert proc.stdin is not None
    lines = (line for connection in connections(4, 1) for _, _, line in connection)
    for phase, seconds, rate in phases:
        end, started = time.monotonic() + seconds, time.monotonic()
        while (now := time.monotonic()) < end:
            if rate is not None and phase.written > rate * (now - started):
                time.sleep(0.01)
                continue
            batch = b"".join(next(lines) + b"\n" for _ in range(500))
            proc.stdin.write(batch)
            phase.written += 500
    proc.stdin.close()


def watch(
    pid: int, port: int, current: list[Phase], stop: threading.Event, scrapers: int
) -> list[threading.Thread]:
    def sample() -> None:
        while not stop.wait(0.5):
            current[0].rss.append(rss_mib(pid))
            current[0].pending.append(metric_sum(port, "wslog_pending_entries "))

    def scraper() -> None:
        while not stop.is_set():
            phase = current[0]
            try:
                phase.latencies.append(scrape(port))
            except OSError:
                phase.failures += 1
            stop.wait(0.2)

    threads = [threading.Thread(target=sample, daemon=True)]
    threads += [threading.Thread(target=scraper, daemon=True) for _ in range(scrapers)]
    for thread in threads:
        thread.start()
    return threads


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steady", type=float, default=120.0, help="seconds at --rate")
    parser.add_argument("--rate", type=float, default=5000.0, help="lines/s while steady")
    parser.add_argument("--burst", type=float, default=120.0, help="seconds unthrottled")
    parser.add_argument("--scrapers", type=int, default=20)
    parser.add_argument("exporter_args", nargs="*", help="more flags for wslog exporter")
    args = parser.parse_args()
    EXTRA.extend(args.exporter_args)
    limit = memory_limit_mib()
    proc, port = start_exporter()
    time.sleep(1.0)
    idle = sorted(scrape(port) for _ in range(20))[10]
    steady, burst = Phase("steady"), Phase("unthrottled")
    current, stop = [steady], threading.Event()
    threads = watch(proc.pid, port, current, stop, args.scrapers)
    feeder = threading.Thread(
        target=feed, args=(proc, [(steady, args.steady, args.rate), (burst, args.burst, None)])
    )
    feeder.start()
    time.sleep(args.steady)
    counted_steady = metric_sum(port, "wslog_log_lines_total{")
    current[0] = burst
    feeder.join()
    time.sleep(3.0)
    counted = metric_sum(port, "wslog_log_lines_total{")
    peak = rss_mib(proc.pid, "VmHWM")
    stop.set()
    for thread in threads:
        thread.join(timeout=35)
    proc.terminate()
    proc.wait(timeout=60)
    print(f"memory limit in the manifests: {limit} MiB; idle scrape: {idle * 1000:.1f} ms")
    for phase, seconds, total in (
        (steady, args.steady, counted_steady),
        (burst, args.burst, counted - counted_steady),
    ):
        print(
            f"{phase.name:>12}: {phase.written / seconds:>9,.0f} lines/s written, "
            f"{total / seconds:>9,.0f} lines/s counted; RSS max {max(phase.rss, default=0):.0f} "
            f"MiB = {max(phase.rss, default=0) / limit:.2f} x limit, pending entries max "
            f"{max(phase.pending, default=0):,}; scrape p50 "
            f"{percentile(phase.latencies, 0.5) / idle:.1f}x idle, p99 "
            f"{percentile(phase.latencies, 0.99) / idle:.1f}x idle, max "
            f"{max(phase.latencies, default=float('nan')):.2f} s, {phase.failures} failed "
            f"of {len(phase.latencies) + phase.failures}"
        )
    print(f"peak RSS (VmHWM): {peak:.0f} MiB = {peak / limit:.2f} x the limit")
    for phase in (steady, burst):
        step = max(1, len(phase.rss) // 6)
        trend = ", ".join(f"{mib:.0f}" for mib in phase.rss[step - 1 :: step])
        print(f"{phase.name:>12} RSS over time (MiB): {trend}")


if __name__ == "__main__":
    main()
