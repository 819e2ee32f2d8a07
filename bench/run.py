"""The four performance figures (analyze, 10M lines, exporter vs mtail, cold start), each
against its baseline measured in the same run.

    python bench/run.py [--lines 1000000] [--lines-10m 10000000] [--repeat 1]

Every run is a child process measured for wall time and peak RSS (its own rusage, via wait4):
1. ``wslog analyze DIR`` on the generated corpus (``bench/generate.py``: replicated lab captures,
   JSON) against the polars floor: read the same files, keep the JSON lines, ``str.json_decode``
   the fields a WebSocket verdict needs (protocol, response code, flags, response code and
   connection termination details, upstream cluster, request id, the four addresses, start
   time, duration, bytes sent and received), parse the start time, count by protocol and code.
   Targets: wall <= 2.0x the floor, peak RSS <= 1.5 GiB.
2. ``--lines-10m`` lines streamed from ``bench/generate.py --out -`` through a pipe into
   ``wslog analyze -`` (never written to disk), for ``--format table``, ``ndjson``, ``csv`` and
   ``parquet`` (to a temporary ``--output`` file, deleted). Targets: peak RSS of the wslog child
   <= 1.5 GiB, wall <= 11x figure 1's. ``--lines-10m 0`` skips it.
3. ``wslog exporter --source files --once`` against mtail on the same lines, TEXT and JSON
   (``bench/exporter_vs_mtail.py``). Target: wall <= 1.0x mtail.
4. Cold start: ``wslog --help`` and ``wslog analyze`` on a 2-line file. Target: each < 1 s.
The exporter's live latency (target < 2x ``--batch-interval`` at 5,000 lines/s) is
``bench/latency.py``, a separate run of about a minute.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import exporter_vs_mtail

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
PY = sys.executable
WSLOG = [PY, "-m", "wslog"]

POLARS_FLOOR = """
import sys, polars as pl
from pathlib import Path
S, I = pl.String, pl.Int64
dtype = pl.Struct({"protocol": S, "response_code": I, "response_flags": S,
    "response_code_details": S, "connection_termination_details": S, "upstream_cluster": S,
    "request_id": S, "downstream_remote_address": S, "downstream_local_address": S,
    "upstream_local_address": S, "upstream_host": S, "start_time": S, "duration": I,
    "bytes_sent": I, "bytes_received": I})
frames = []
for path in sorted(Path(sys.argv[1]).glob("*.log")):
    lines = pl.read_csv(path, has_header=False, separator="\\x01", quote_char=None,
                        new_columns=["text"], schema_overrides={"text": pl.String})
    entries = (lines.filter(pl.col("text").str.starts_with("{"))
               .select(pl.col("text").str.json_decode(dtype).alias("e")).unnest("e")
               .with_columns(pl.col("start_time").str.to_datetime(time_zone="UTC")))
    frames.append(entries.group_by("protocol", "response_code").len())
print(pl.concat(frames).group_by("protocol", "response_code").agg(pl.col("len").sum()))
"""
FORMATS_10M = ("table", "ndjson", "csv", "parquet")
H1 = ROOT / "testdata" / "lab" / "json" / "h1"
TWO_LINES = (H1 / "client.log").read_bytes() + (H1 / "server.log").read_bytes()


def measure(name: str, argv: list[str], feeder: list[str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process (its own rusage, via wait4); with
    ``feeder``, that command's stdout is piped into the child's stdin."""
    start = time.perf_counter()
    source = subprocess.Popen(feeder, stdout=subprocess.PIPE, cwd=ROOT) if feeder else None
    stdin = source.stdout if source is not None else subprocess.DEVNULL
    proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL, cwd=ROOT)
    if source is not None and source.stdout is not None:
        source.stdout.close()  # the child holds the pipe now
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if source is not None and source.wait() != 0:
        raise SystemExit(f"the generator feeding {name} failed")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed with exit status {os.waitstatus_to_exitcode(status)}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description="The four performance figures (see module doc).")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--lines-10m", type=int, default=10_000_000, help="0: skip figure 2")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    data = exporter_vs_mtail.corpus(args.lines, "json")
    size = sum(p.stat().st_size for p in data.glob("*.log")) / 2**20
    print(f"input: {args.lines:,} lines, {size:,.0f} MiB in {data}")
    rows: list[tuple[str, float, float, str]] = []
    floor = analyze = (0.0, 0.0)
    for _ in range(args.repeat):  # interleaved: the machine's load hits both alike
        floor = _best(floor, measure("polars", [PY, "-c", POLARS_FLOOR, str(data)]))
        analyze = _best(analyze, measure("wslog", [*WSLOG, "analyze", str(data)]))
    rows.append(("1 polars floor (baseline)", *floor, ""))
    rows.append(("1 wslog analyze", *analyze, f"{analyze[0] / floor[0]:.2f}x floor (<= 2.0)"))
    if args.lines_10m:
        generate = [PY, str(ROOT / "bench" / "generate.py"), "--lines", str(args.lines_10m)]
        for fmt in FORMATS_10M:
            with tempfile.TemporaryDirectory(prefix="wslog-bench-") as tmp:
                output = ["--output", f"{tmp}/out.parquet"] if fmt == "parquet" else []
                argv = [*WSLOG, "analyze", "-", "--format", fmt, *output]
                wall, peak = measure(f"10M {fmt}", argv, [*generate, "--out", "-"])
            ratio = f"{wall / analyze[0]:.2f}x 1M analyze (<= 11)"
            rows.append((f"2 {args.lines_10m:,} lines {fmt}", wall, peak, ratio))
    for fmt in ("text", "json"):
        runs = dict(exporter_vs_mtail.compare(args.lines, fmt, args.repeat))
        base, exporter = runs.get(f"mtail ({fmt})"), runs[f"exporter ({fmt})"]
        if base is None:
            print("mtail is not installed (apt-get install mtail): figure 3 has no baseline")
        else:
            rows.append((f"3 mtail {fmt} (baseline)", base.wall_s, base.peak_mib, ""))
        ratio = f"{exporter.wall_s / base.wall_s:.2f}x mtail (<= 1.0)" if base else "no mtail"
        rows.append((f"3 wslog exporter {fmt}", exporter.wall_s, exporter.peak_mib, ratio))
    with tempfile.TemporaryDirectory(prefix="wslog-bench-") as tmp:
        two = Path(tmp) / "two.log"
        two.write_bytes(TWO_LINES)
        cold = {"--help": [*WSLOG, "--help"], "analyze 2 lines": [*WSLOG, "analyze", str(two)]}
        for name, argv in cold.items():
            wall, peak = measure(name, argv)
            rows.append((f"4 wslog {name}", wall, peak, f"{wall:.2f} s (< 1 s)"))
    print(f"{'run':<32} {'wall s':>8} {'peak MiB':>9}  ratio (target)")
    for name, wall, peak, ratio in rows:
        print(f"{name:<32} {wall:8.2f} {peak:9.0f}  {ratio}")


def _best(previous: tuple[float, float], current: tuple[float, float]) -> tuple[float, float]:
    if not previous[0]:
        return current
    return (min(previous[0], current[0]), max(previous[1], current[1]))


if __name__ == "__main__":
    main()
