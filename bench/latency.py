"""Latency of the exporter's live loop at a steady input rate: from a line written to its
connection's count in the metrics.

    python bench/latency.py [--rate 5000] [--seconds 30] [--batch-interval 1.0]

A writer thread appends the lab's replicated connections (``bench/generate.py``'s templates,
timestamped now) to a client and a server file at ``--rate`` lines/s, in 10 ms slices; the
exporter's loop (``exporter.run``: files source, ``LiveAnalyzer``, metrics) follows them with
its defaults, and a hook on the metrics recording notes when each connection was counted.

A connection cannot be counted before the correlation rule lets it go: once an entry starting
``--pair-window`` after the connection's end has been read (docs/design.md section 3), so its
latency is measured from the later of its last line written and that moment (its end plus the
window, in the wall clock its timestamps use). The target: under 2x
``--batch-interval`` at 5,000 lines/s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from generate import MIX, load_templates, render_json, replicate  # noqa: E402

from analyzer.formats import default_formats  # noqa: E402
from analyzer.pipeline import Step  # noqa: E402
from exporter.files import FileSource  # noqa: E402
from exporter.health import Health  # noqa: E402
from exporter.metrics import Metrics, new_registry  # noqa: E402
from exporter.run import Loop, metered_live  # noqa: E402
from exporter.settings import FileSettings, PipelineSettings  # noqa: E402

SLICE_S = 0.01
Entries = list[dict[str, object]]


class Writer:
    """Appends connections at a steady rate; remembers, per request id, when its last line was
    written and when the correlation rule lets it go (its end plus the window)."""

    def __init__(self, folder: Path, rate: int, window_s: float) -> None:
        self.folder, self.rate, self.window_s = folder, rate, window_s
        self.due: dict[str, float] = {}  # request id: wall time it can be counted from
        self.lines = 0

    def run(self, seconds: float) -> None:
        import random

        rng = random.Random(1)
        templates = load_templates()
        names, weights = list(MIX), list(MIX.values())
        files: dict[str, IO[bytes]] = {
            s: (self.folder / f"{s}.log").open("ab") for s in ("client", "server")
        }
        start = time.monotonic()
        n = 0
        try:
            while (now := time.monotonic()) - start < seconds:
                while self.lines < self.rate * (now - start):
                    client, server = templates[rng.choices(names, weights)[0]]
                    self._write(files, client, server, n)
                    n += 1
                for handle in files.values():
                    handle.flush()
                time.sleep(SLICE_S)
        finally:
            for handle in files.values():
                handle.close()

    def _write(self, files: dict[str, IO[bytes]], client: Entries, server: Entries, n: int) -> None:
        base = min(datetime.fromisoformat(str(e["start_time"])) for e in client + server)
        at, end = datetime.now(UTC), 0.0
        ids: dict[str, str] = {}
        for side, group in (("client", client), ("server", server)):
            for entry in group:
                copy = replicate(entry, base, at, n, ids)
                files[side].write(render_json(copy) + b"\n")
                started = datetime.fromisoformat(str(copy["start_time"]))
                duration_ms = copy.get("duration")
                ms = duration_ms if isinstance(duration_ms, int) else 0
                end = max(end, started.timestamp() + ms / 1000)
                self.lines += 1
        written = time.time()
        for request_id in ids.values():
            self.due[request_id] = max(written, end + self.window_s)


def measure(rate: int, seconds: float, interval_s: float, window_s: float) -> list[float]:
    counted: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="wslog-latency-") as tmp:
        folder = Path(tmp)
        for side in ("client", "server"):
            (folder / f"{side}.log").touch()
        settings = PipelineSettings(
            timedelta(seconds=window_s), timedelta(seconds=1), 50_000, interval_s, None
        )
        metrics = Metrics(new_registry())
        metered = metered_live(settings, default_formats(), metrics)
        record = metered.live.on_step

        def on_step(step: Step, websockets: pl.DataFrame) -> None:
            record(step, websockets)
            now = time.time()
            for request_id in websockets.get_column("request_id").drop_nulls():
                counted.setdefault(request_id, now)

        metered.live.on_step = on_step
        source = FileSource(FileSettings((f"{folder}/*.log",)))
        loop = Loop(metered.live, source, Health(metrics), interval_s, metered.after_tick)
        stop = threading.Event()
        runner = threading.Thread(target=loop.run, args=(stop,))
        runner.start()
        time.sleep(0.5)  # the source's first scan: it follows both files from their end (0)
        writer = Writer(folder, rate, window_s)
        writer.run(seconds)
        time.sleep(window_s + 3 * interval_s)
        stop.set()
        runner.join()
    horizon = time.time() - window_s - 3 * interval_s  # later ones are released by the stop
    print(f"written: {writer.lines:,} lines in {seconds:.0f} s = {writer.lines / seconds:,.0f}/s")
    return [counted[r] - due for r, due in writer.due.items() if r in counted and due < horizon]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--batch-interval", type=float, default=1.0)
    parser.add_argument("--pair-window", type=float, default=10.0)
    args = parser.parse_args()
    latencies = measure(args.rate, args.seconds, args.batch_interval, args.pair_window)
    print(summary(latencies, args.batch_interval))


def summary(latencies: list[float], interval_s: float) -> str:
    if not latencies:
        return "latency: no connection counted"
    ordered = sorted(latencies)
    p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
    return (
        f"latency over {len(ordered):,} connections: p50 {p50:.2f} s, p99 {p99:.2f} s, "
        f"max {ordered[-1]:.2f} s = {ordered[-1] / interval_s:.2f}x --batch-interval "
        f"(target < 2x)"
    )


if __name__ == "__main__":
    main()
