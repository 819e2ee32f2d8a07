"""Benchmark the exporter's live pipeline against ``wslog analyze`` on the same input.

    python bench/exporter_bench.py [--lines 1000000] [--repeat 1]

The input (``bench/generate.py``: replicated lab captures) is replayed through what the exporter
runs per chunk (``LiveAnalyzer``: deframe, decode, correlate, classify, metrics), in
1000-line chunks as the sources deliver them, ticking every ``--tick-lines`` lines; pinned to one
core with ``os.sched_setaffinity``. Memory (RSS) is sampled as it goes, to show whether it stays
flat once the correlation window is full. ``wslog analyze`` runs on the same files in a child
process in the same run; figures are printed as a ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analyzer.correlate import CorrelationSettings  # noqa: E402  # after sys.path
from analyzer.formats import default_formats  # noqa: E402
from analyzer.pipeline import Pipeline, Step  # noqa: E402
from exporter.live import LiveAnalyzer  # noqa: E402
from exporter.metrics import Metrics, new_registry, record_step  # noqa: E402
from exporter.sources import Chunk  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def replay(data: Path, tick_lines: int) -> tuple[int, float, list[tuple[int, float]]]:
    metrics = Metrics(new_registry())
    pipeline = Pipeline(
        formats=default_formats(),
        settings=CorrelationSettings(window=timedelta(seconds=5)),
    )
    live: LiveAnalyzer

    def on_step(step: Step, websockets: pl.DataFrame) -> None:
        record_step(metrics, step, websockets, live.pipeline.correlator.pending)

    live = LiveAnalyzer(pipeline=pipeline, on_step=on_step)
    files = [p.open("r", encoding="utf-8") for p in sorted(data.glob("*.log"))]
    lines, since_tick, samples = 0, 0, []
    start = time.perf_counter()
    while files:
        for handle in list(files):
            chunk = [handle.readline().rstrip("\n") for _ in range(1000)]
            chunk = [line for line in chunk if line]
            if not chunk:
                files.remove(handle)
                continue
            live.accept(Chunk(handle.name, tuple(chunk), None))
            lines += len(chunk)
            since_tick += len(chunk)
        if since_tick >= tick_lines:
            live.tick()
            since_tick = 0
            samples.append((lines, rss_mib()))
    live.finish()
    return lines, time.perf_counter() - start, samples


def analyze_seconds(data: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "wslog", "analyze", str(data)],
        stdout=subprocess.DEVNULL,
        check=True,
        cwd=ROOT,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark the exporter pipeline.")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--tick-lines", type=int, default=20_000)
    args = parser.parse_args()
    data = ROOT / "bench" / "out" / f"data-{args.lines}"
    if not data.exists():
        generate = [sys.executable, str(ROOT / "bench" / "generate.py")]
        subprocess.run([*generate, "--lines", str(args.lines), "--out", str(data)], check=True)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    lines, seconds, samples = replay(data, args.tick_lines)
    analyze = analyze_seconds(data)
    rate, analyze_rate = lines / seconds, lines / analyze
    print(f"exporter pipeline: {lines:,} lines in {seconds:.1f} s = {rate:,.0f} lines/s (1 core)")
    print(f"wslog analyze:     {lines:,} lines in {analyze:.1f} s = {analyze_rate:,.0f} lines/s")
    print(f"exporter / analyze throughput: {rate / analyze_rate:.2f}")
    quarter = max(1, len(samples) // 4)
    for at, mib in samples[quarter - 1 :: quarter]:
        print(f"  RSS after {at:>12,} lines: {mib:8.0f} MiB")


if __name__ == "__main__":
    main()
