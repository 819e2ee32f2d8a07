"""The exporter replaying saved files against mtail counting the same lines, in the same run.

    python bench/exporter_vs_mtail.py [--lines 1000000] [--format text|json|both]

- mtail (Debian's ``mtail`` package): ``--one_shot`` over the same files with a program of one
  regex per line (``bench/mtail/{text,json}/istio.mtail``) counting lines by protocol, response
  code, response flags and upstream cluster; it exits when it has read every file.
- ``wslog exporter --source files --path DIR/*.log --from-start --once --listen 127.0.0.1:0``,
  a real process. It keeps serving its final counts after ``--once`` (that is the command), so
  it is timed until ``/metrics`` shows every line counted (``wslog_log_lines_total``), no
  stream open and nothing pending (the final flush ran), scraped every 0.2 s; then it gets
  SIGTERM and its peak RSS comes from ``wait4``.
The figure is the exporter's wall time over mtail's: at most 1.0 is the target.
Where mtail is not installed, the comparison is skipped with a message and the exporter alone
is timed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
PY = sys.executable
SCRAPE_EVERY_S = 0.2
TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Run:
    wall_s: float
    peak_mib: float


def corpus(lines: int, fmt: str) -> Path:
    """``bench/out/{data,text}-LINES``, generated when missing."""
    data = OUT / f"{'data' if fmt == 'json' else 'text'}-{lines}"
    if not data.exists():
        generate = [PY, str(ROOT / "bench" / "generate.py"), "--lines", str(lines)]
        subprocess.run([*generate, "--out", str(data), "--format", fmt], check=True)
    return data


def count_lines(data: Path) -> int:
    total = 0
    for path in data.glob("*.log"):
        with path.open("rb") as handle:
            total += sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
    return total


def mtail(data: Path, fmt: str) -> Run | None:
    binary = shutil.which("mtail")
    if binary is None:
        return None
    logs = ",".join(str(p) for p in sorted(data.glob("*.log")))
    progs = ROOT / "bench" / "mtail" / fmt
    argv = [binary, "--one_shot", "--one_shot_format=prometheus", "--logtostderr"]
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*argv, "--progs", str(progs), "--logs", logs],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"mtail failed with status {os.waitstatus_to_exitcode(status)}")
    return Run(wall, usage.ru_maxrss / 1024)


def exporter(data: Path, lines: int, extra: tuple[str, ...] = ()) -> Run:
    argv = [PY, "-m", "wslog", "exporter", "--source", "files", "--path", f"{data}/*.log"]
    argv += ["--from-start", "--once", "--listen", "127.0.0.1:0", "--drain-seconds", "0"]
    argv += ["--min-render-interval", "0", *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        port = _port(proc)
        _wait_done(port, lines, start)
        wall = time.perf_counter() - start
    finally:
        proc.send_signal(signal.SIGTERM)
    _, _, usage = os.wait4(proc.pid, 0)
    assert proc.stderr is not None
    proc.stderr.close()
    return Run(wall, usage.ru_maxrss / 1024)


def _port(proc: subprocess.Popen[bytes]) -> int:
    """The port from the exporter's start-up log line; its stderr is drained from then on."""
    assert proc.stderr is not None
    stderr = proc.stderr
    for raw in stderr:
        match = re.search(rb'"port":\s*(\d+)', raw)
        if match:
            threading.Thread(target=lambda: [None for _ in stderr], daemon=True).start()
            return int(match.group(1))
    raise SystemExit("the exporter exited before listening")


def _wait_done(port: int, lines: int, start: float) -> None:
    while time.perf_counter() - start < TIMEOUT_S:
        time.sleep(SCRAPE_EVERY_S)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
            text = answer.read().decode()
        counted = sum(_values(text, "wslog_log_lines_total"))
        open_or_pending = _values(text, "wslog_streams_active") + _values(
            text, "wslog_pending_entries"
        )
        if counted >= lines and not any(open_or_pending):
            return
    raise SystemExit(f"the exporter did not finish {lines:,} lines in {TIMEOUT_S:.0f} s")


def _values(text: str, name: str) -> list[float]:
    pattern = re.compile(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return [float(value) for value in pattern.findall(text)]


def compare(lines: int, fmt: str, repeat: int = 1) -> list[tuple[str, Run]]:
    """mtail and the exporter, interleaved ``repeat`` times: best wall, highest peak."""
    data = corpus(lines, fmt)
    total = count_lines(data)
    runs: dict[str, Run] = {}
    for _ in range(repeat):
        base = mtail(data, fmt)
        if base is not None:
            runs["mtail"] = _best(runs.get("mtail"), base)
        runs["exporter"] = _best(runs.get("exporter"), exporter(data, total))
    return [(f"{name} ({fmt})", run) for name, run in runs.items()]


def _best(previous: Run | None, current: Run) -> Run:
    if previous is None:
        return current
    return Run(min(previous.wall_s, current.wall_s), max(previous.peak_mib, current.peak_mib))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--format", choices=("text", "json", "both"), default="both")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    if shutil.which("mtail") is None:
        print("mtail is not installed (apt-get install mtail): timing the exporter alone")
    for fmt in ("text", "json") if args.format == "both" else (args.format,):
        rows = dict(compare(args.lines, fmt, args.repeat))
        for name, run in rows.items():
            print(f"{name:<18} {run.wall_s:8.2f} s {run.peak_mib:8.0f} MiB")
        base = rows.get(f"mtail ({fmt})")
        if base is not None:
            ratio = rows[f"exporter ({fmt})"].wall_s / base.wall_s
            print(f"exporter / mtail ({fmt}): {ratio:.2f} (target <= 1.0)")


if __name__ == "__main__":
    main()
