"""Benchmark ``wslog analyze`` against the floor any polars analysis pays, in the same run.

    python bench/run.py [--lines 1000000]

Generates the input with ``bench/generate.py`` (replicated lab captures), then runs, each as a
child process measured for wall time and peak RSS:
- ``wslog analyze DIR --format json`` (the whole job: inputs, decode, correlate, classify, report);
- the polars floor: read the same files, keep the JSON lines, ``str.json_decode`` them, count by
  protocol and response code;
- ``jq -R 'fromjson? | ...'`` doing the same count.
Figures are printed as ratios against the polars floor: machines here are noisy, ratios less so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
PY = sys.executable
WSLOG = [PY, "-m", "wslog"]

POLARS_FLOOR = """
import sys, polars as pl
from pathlib import Path
dtype = pl.Struct({"protocol": pl.String, "response_code": pl.Int64})
frames = []
for path in sorted(Path(sys.argv[1]).glob("*.log")):
    lines = pl.read_csv(path, has_header=False, separator="\\x01", quote_char=None,
                        new_columns=["text"], schema_overrides={"text": pl.String})
    frames.append(lines.filter(pl.col("text").str.starts_with("{"))
                  .select(pl.col("text").str.json_decode(dtype).alias("e")).unnest("e")
                  .group_by("protocol", "response_code").len())
print(pl.concat(frames).group_by("protocol", "response_code").agg(pl.col("len").sum()))
"""

JQ_COUNT = 'fromjson? | select(type == "object") | "\\(.protocol) \\(.response_code)"'


def measure(name: str, argv: list[str], stdin_path: Path | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process (its own rusage, via wait4)."""
    start = time.perf_counter()
    with open(stdin_path or os.devnull, "rb") as stdin:
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed with exit status {os.waitstatus_to_exitcode(status)}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark wslog analyze (see module doc).")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    data = OUT / f"data-{args.lines}"
    if not data.exists():
        subprocess.run(
            [
                PY,
                str(ROOT / "bench" / "generate.py"),
                "--lines",
                str(args.lines),
                "--out",
                str(data),
            ],
            check=True,
        )
    size = sum(p.stat().st_size for p in data.glob("*.log")) / 2**20
    print(f"input: {args.lines:,} lines, {size:,.0f} MiB in {data}")
    results: dict[str, tuple[float, float]] = {}
    jq = shutil.which("jq")
    concatenated = OUT / f"all-{args.lines}.log"
    if jq:
        with concatenated.open("wb") as sink:
            for path in sorted(data.glob("*.log")):
                sink.write(path.read_bytes())
    for _ in range(args.repeat):
        results["polars floor"] = _best(
            results.get("polars floor"), measure("polars", [PY, "-c", POLARS_FLOOR, str(data)])
        )
        if jq:
            results["jq"] = _best(
                results.get("jq"), measure("jq", [jq, "-R", JQ_COUNT], concatenated)
            )
        results["wslog analyze"] = _best(
            results.get("wslog analyze"),
            measure("wslog", [*WSLOG, "analyze", str(data)]),
        )
    floor_wall = results["polars floor"][0]
    print(f"{'run':<15} {'wall s':>8} {'x floor':>8} {'peak MiB':>9}")
    for name, (wall, peak) in results.items():
        print(f"{name:<15} {wall:8.2f} {wall / floor_wall:8.2f} {peak:9.0f}")


def _best(
    previous: tuple[float, float] | None, current: tuple[float, float]
) -> tuple[float, float]:
    if previous is None:
        return current
    return (min(previous[0], current[0]), max(previous[1], current[1]))


if __name__ == "__main__":
    main()
