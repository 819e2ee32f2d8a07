"""The exporter counts exactly what ``wslog analyze`` finds on the same lines: same
connections per label set, same line accounting, each connection once. Also its HTTP
endpoints, settings validation, SIGTERM, and the series cap."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

from analyzer.cli import AnalysisOptions, analyze_paths
from analyzer.formats import default_formats
from exporter.files import FileSource
from exporter.metrics import CONNECTION_LABELS, UNKNOWN
from exporter.run import run_exporter
from exporter.settings import ExporterSettings, FileSettings, Listen, PipelineSettings, SourceKind
from exporter.sources import Source, StdinSource
from tests.conftest import ROOT, TESTDATA, run_wslog

DEADLINE_S = 60
Samples = dict[
    str, list[tuple[dict[str, str], float]]
]  # metric sample name -> (labels, value) pairs


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def total(samples: Samples, name: str) -> float:
    return sum(value for _, value in samples.get(name, []))


def counted_connections(
    samples: Samples,
) -> Counter[tuple[str, ...]]:
    counts: Counter[tuple[str, ...]] = Counter()
    for labels, value in samples.get("wslog_connections_total", []):
        counts[tuple(labels[k] for k in CONNECTION_LABELS)] += int(value)
    return counts


def analysed_connections(paths: list[str]) -> tuple[Counter[tuple[str, ...]], dict[str, int]]:
    result = analyze_paths(paths)
    frame = result.connections.select(
        [pl.col(k).fill_null(UNKNOWN).cast(pl.String) for k in CONNECTION_LABELS]
    )
    counts = Counter(tuple(row) for row in frame.iter_rows())
    return counts, {str(k): v for k, v in result.lines.items()}


class Exporter:
    """``run_exporter`` in a thread of this process, on a free port."""

    def __init__(
        self,
        globs: list[str],
        max_series: int = 2000,
        source: Source | None = None,
        buffer_bytes: int = 8 << 20,
    ) -> None:
        self.stop = threading.Event()
        self.port: int | None = None
        ready = threading.Event()
        settings = ExporterSettings(
            SourceKind.FILES if globs else SourceKind.STDIN,
            Listen("127.0.0.1", 0),
            max_series,
            PipelineSettings(
                timedelta(seconds=2),
                timedelta(seconds=1),
                200_000,
                0.1,
                None,
                max_buffered_bytes=buffer_bytes,
            ),
        )
        if source is None:
            source = FileSource(FileSettings(globs=tuple(globs), from_start=True, once=True))

        def listening(port: int) -> None:
            self.port = port
            ready.set()

        self.thread = threading.Thread(
            target=run_exporter,
            args=(settings, source, default_formats(), self.stop, listening),
            daemon=True,
        )
        self.thread.start()
        assert ready.wait(10), "exporter did not start listening"

    def settle(self, lines: int) -> Samples:
        """Scrape until every line is counted and nothing is pending (bounded)."""
        assert self.port is not None
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            samples = scrape(self.port)
            done = total(samples, "wslog_log_lines_total") == lines
            if done and total(samples, "wslog_pending_entries") == 0:
                time.sleep(0.3)  # one more tick: nothing may change any more
                again = scrape(self.port)
                if counted_connections(again) == counted_connections(samples):
                    return again
            time.sleep(0.1)
        raise AssertionError(f"exporter did not settle on {lines} lines in {DEADLINE_S}s")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


def replay(globs: list[str], *, lines: int, max_series: int = 2000) -> Samples:
    """Run the exporter on ``globs`` until it settles on ``lines`` lines; its last scrape."""
    exporter = Exporter(globs, max_series)
    try:
        return exporter.settle(lines)
    finally:
        exporter.close()


def lab_logs(fmt: str) -> list[str]:
    return sorted(str(p) for p in (TESTDATA / "lab" / fmt).glob("*/*.log"))


def line_count(paths: list[str]) -> int:
    return sum(len(Path(p).read_bytes().splitlines()) for p in paths)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_exporter_counts_exactly_what_analyze_finds(fmt: str) -> None:
    paths = lab_logs(fmt)
    expected, lines = analysed_connections(paths)
    samples = replay(paths, lines=line_count(paths))
    assert counted_connections(samples) == expected
    by_result = {labels["result"]: int(v) for labels, v in samples["wslog_log_lines_total"]}
    assert by_result == {k: v for k, v in lines.items() if v}
    # every lab connection but those showing no WebSocket evidence (app-down, app-refuses,
    # gateway-no-route, gateway-server-down)
    assert sum(expected.values()) == 17


def _side_by_side(directory: Path, copies: int) -> list[str]:
    """Both sidecars' logs of ``copies`` h1 connections, one every 3 s (past the 2 s window of
    ``Exporter``), each side's in its own file, as a node's files are after a busy while."""
    paths = []
    for side in ("client", "server"):
        (line,) = (TESTDATA / "lab" / "json" / "h1" / f"{side}.log").read_text().splitlines()
        entry = json.loads(line)
        written = []
        for i in range(copies):
            at = datetime(2026, 11, 26, tzinfo=UTC) + timedelta(seconds=3 * i)
            entry["start_time"] = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            entry["request_id"] = f"{i:08x}-0000-4000-8000-000000000000"
            written.append(json.dumps(entry) + "\n")
        path = directory / f"{side}.log"
        path.write_text("".join(written))
        paths.append(str(path))
    return paths


def test_a_replay_of_files_much_longer_than_a_block_pairs_what_analyze_pairs(
    tmp_path: Path,
) -> None:
    """Two sides' files of 300 connections (15 minutes), read 4 KiB at a time into a 16 KiB
    buffer (so the analyzer works through them a few blocks at a time, as it does through
    a backlog of gigabytes): the source reads the file furthest behind in time first and the
    analyzer waits for every file it opened, so no connection is released before its other
    side is read (reading one file to its end first released them one-sided)."""
    paths = _side_by_side(tmp_path, 300)
    expected, _ = analysed_connections(paths)
    assert [k for k in expected if "paired" in k] and sum(expected.values()) == 300
    settings = FileSettings(globs=(str(tmp_path / "*.log"),), once=True, read_size=4096)
    exporter = Exporter([], source=FileSource(settings), buffer_bytes=16 << 10)
    try:
        samples = exporter.settle(600)
    finally:
        exporter.close()
    assert counted_connections(samples) == expected
    assert total(samples, "wslog_pending_evicted_total") == 0


@pytest.mark.parametrize("fmt", ["json", "text"])
@pytest.mark.parametrize("reverse", [False, True], ids=["client-first", "server-first"])
@pytest.mark.parametrize("kind", ["stdin", "one-file"])
def test_exporter_on_one_stream_holding_both_sides_counts_what_analyze_finds(
    tmp_path: Path, fmt: str, reverse: bool, kind: str
) -> None:
    """``kubectl logs ... | wslog exporter --source stdin``, or one file holding both sidecars'
    logs: each scenario's two logs concatenated count as the two files do (the 503 included)."""
    paths = lab_logs(fmt)
    expected, _ = analysed_connections(paths)
    scenarios = sorted({Path(p).parent for p in paths})
    sides = ("server", "client") if reverse else ("client", "server")
    stream = b"".join((d / f"{side}.log").read_bytes() for d in scenarios for side in sides)
    if kind == "stdin":
        exporter = Exporter([], source=StdinSource(io.BytesIO(stream), chunk_max_lines=1))
    else:
        (tmp_path / "both.log").write_bytes(stream)
        exporter = Exporter([str(tmp_path / "both.log")])
    try:
        samples = exporter.settle(stream.count(b"\n"))
    finally:
        exporter.close()
    assert counted_connections(samples) == expected
    failed_503 = [k for k in expected if "h2-connect-not-allowed" in k]
    assert failed_503 and all(counted_connections(samples)[k] for k in failed_503)


def test_exporter_on_mixed_noise_and_malformed_lines_loses_nothing(tmp_path: Path) -> None:
    lab = TESTDATA / "lab" / "json"
    mixed = tmp_path / "mixed.log"
    noise = [
        "2026-11-25T10:00:00.000000Z\tinfo\tenvoy main\tstarting",
        '{"start_time": "2026-11-26T00:13:28.246Z", "response_code": "not a number"',
        "",
    ]
    body = []
    for scenario in ("h1", "h2", "h2-no-allow-connect"):
        body += (lab / scenario / "client.log").read_text().splitlines()
        body += noise
        body += (lab / scenario / "server.log").read_text().splitlines()
    mixed.write_text("\n".join(body) + "\n")
    expected, lines = analysed_connections([str(mixed)])
    samples = replay([str(mixed)], lines=len(body))
    assert counted_connections(samples) == expected
    by_result = {labels["result"]: int(v) for labels, v in samples["wslog_log_lines_total"]}
    assert by_result == {k: v for k, v in lines.items() if v}
    assert by_result["malformed"] >= 3


def test_series_cap_folds_labels_and_counts_the_overflow() -> None:
    paths = lab_logs("json")
    samples = replay(paths, max_series=1, lines=line_count(paths))
    connection_total = total(samples, "wslog_connections_total")
    assert connection_total == 17  # as in test_exporter_counts_exactly_what_analyze_finds
    assert total(samples, "wslog_series_overflow_total") > 0
    folded = [labels for labels, _ in samples["wslog_connections_total"]]
    assert any(labels["destination_service"] == "__overflow__" for labels in folded)


def test_no_label_carries_a_path_an_id_or_an_address() -> None:
    paths = lab_logs("json")
    result = analyze_paths(paths, AnalysisOptions(include_all=True, keep_query=True)).connections
    forbidden = set(result.get_column("request_id").drop_nulls())
    forbidden |= set(result.get_column("path").drop_nulls())
    for side in ("client", "server"):
        for field in ("upstream_host", "upstream_local_address", "downstream_remote_address"):
            forbidden |= set(result.get_column(side).struct.field(field).drop_nulls())
    assert len(forbidden) > 30
    samples = replay(paths, lines=line_count(paths))
    values = {v for series in samples.values() for labels, _ in series for v in labels.values()}
    assert values and not values & forbidden


def _start_cli(*args: str, stdin: int | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "wslog", "exporter", *args],
        stdin=stdin,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stdin_blocked_on_an_open_pipe_stops_cleanly_on_a_signal(sig: signal.Signals) -> None:
    """``kubectl logs -f ... | wslog exporter --source stdin``: the pipe stays open and empty."""
    read_fd, write_fd = os.pipe()
    try:
        proc = _start_cli("--source", "stdin", "--listen", "127.0.0.1:0", stdin=read_fd)
        try:
            port = _port_from_logs(proc)
            os.write(write_fd, (TESTDATA / "lab" / "json" / "h1" / "client.log").read_bytes())
            deadline = time.monotonic() + 20  # read, and blocked reading again: then the signal
            while total(scrape(port), "wslog_log_lines_total") < 1:
                assert time.monotonic() < deadline, "the line was never counted"
                time.sleep(0.1)
            proc.send_signal(sig)
            assert proc.wait(timeout=20) == 0
            assert proc.stderr is not None
            assert b"Fatal Python error" not in proc.stderr.read()
        finally:
            _reap(proc)
    finally:
        os.close(read_fd)
        os.close(write_fd)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill the exporter if it still runs, and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _port_from_logs(proc: subprocess.Popen[bytes]) -> int:
    assert proc.stderr is not None
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # e.g. a Python warning: the exporter's own log lines are JSON
        if "port" in record:
            return int(record["port"])
    proc.kill()
    raise AssertionError("exporter never logged its port")


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


def _wait_status(port: int, path: str, code: int, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _status(port, path) == code:
            return True
        time.sleep(0.1)
    return False


def test_cli_serves_endpoints_and_stops_cleanly_on_sigterm() -> None:
    paths = lab_logs("json")
    proc = _start_cli(
        "--source",
        "files",
        "--from-start",
        "--once",
        "--listen",
        "127.0.0.1:0",
        *[arg for p in paths for arg in ("--path", p)],
    )
    try:
        port = _port_from_logs(proc)
        # Ready once the source has opened its files: poll, the port is logged before that.
        assert _wait_status(port, "/readyz", 200), "/readyz never answered 200"
        for path, code in (("/healthz", 200), ("/readyz", 200), ("/nope", 404)):
            assert _status(port, path) == code
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        _reap(proc)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "nowhere"], "HOST:PORT"),
        (["--pair-window", "0"], "--pair-window"),
        (["--source", "files"], "--path"),
        (["--max-series", "0"], "--max-series"),
        (["--log-format", "@/no/such/file"], "cannot read"),
        (["--source", "files", "--path", "x.log", "--state-dir", "/dev/null/x"], "cannot write"),
        (["--source", "stdin", "--state-dir", "state"], "only to --source files"),
        (["--drain-seconds", "-1"], "--drain-seconds must be in [0, 600]"),
        (["--min-render-interval", "61"], "--min-render-interval must be in [0, 60]"),
    ],
)
def test_bad_settings_exit_2_with_the_fix(args: list[str], message: str) -> None:
    proc = run_wslog("exporter", *args)
    assert proc.returncode == 2
    assert message in proc.stderr


@pytest.mark.parametrize(
    ("args", "messages"),
    [
        (
            ["exporter", "--source", "files", "--listen", "nowhere", "--max-series", "0"],
            ["--path", "HOST:PORT", "--max-series"],
        ),
        (
            ["tail", "--source", "stdin", "--outcome", "bogus", "--max-streams", "0"],
            ["--outcome bogus", "--max-streams"],
        ),
        (
            ["exporter", "--pair-window", "0", "--since", "-1", "--state-dir", "s"],
            ["--pair-window", "--since", "--state-dir"],
        ),
    ],
)
def test_every_bad_flag_is_reported_at_once(args: list[str], messages: list[str]) -> None:
    """One run names every problem, shared flags and the command's own alike: a user fixes
    them all before the next try."""
    proc = run_wslog(*args)
    assert proc.returncode == 2, proc.stderr
    listed = proc.stderr.splitlines()[1:]
    assert len(listed) == len(messages), proc.stderr
    for message in messages:
        assert sum(message in line for line in listed) == 1, (message, proc.stderr)


def test_client_chosen_hosts_never_become_labels(tmp_path: Path) -> None:
    """Server-only WebSockets whose Host the client chose (issue: exporter under attack): 8 KB
    hosts, addresses and malformed names fold into "unknown"; /metrics stays small."""
    template = json.loads((TESTDATA / "lab" / "json" / "h1" / "server.log").read_text())
    hosts = ["a" * 60 + f".{i}" * 2000 for i in range(100)]  # 8 KB of valid-looking labels
    hosts += [f"10.244.{i}.17:8080" for i in range(100)] + ["bad_host:80", "[::1]:8080"]
    lines = [
        json.dumps(template | {"authority": host, "request_id": f"attack-{i}"})
        for i, host in enumerate(hosts)
    ]
    (tmp_path / "server.log").write_text("\n".join(lines) + "\n")
    exporter = Exporter([str(tmp_path / "server.log")])
    try:
        samples = exporter.settle(len(lines))
        assert exporter.port is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5) as r:
            size = len(r.read())
    finally:
        exporter.close()
    services = {labels["destination_service"] for labels, _ in samples["wslog_connections_total"]}
    assert services == {UNKNOWN}
    assert total(samples, "wslog_connections_total") == len(hosts)
    assert size < 64 * 1024, f"/metrics is {size} bytes"


def test_bytes_that_are_not_utf8_count_as_analyze_counts_them(tmp_path: Path) -> None:
    """One rule for every source: a line that is not UTF-8 is malformed (encoding)."""
    good = (TESTDATA / "lab" / "json" / "h1" / "client.log").read_bytes()
    log = tmp_path / "mixed.log"
    log.write_bytes(b"\xff\xfe not utf-8 at all\n" + good + b'{"start_time": "\xc3\x28"}\n')
    _, lines = analysed_connections([str(log)])
    assert lines["malformed"] == 2
    samples = replay([str(log)], lines=3)
    by_result = {labels["result"]: int(v) for labels, v in samples["wslog_log_lines_total"]}
    assert by_result == {k: v for k, v in lines.items() if v}
    reasons = {labels["reason"]: v for labels, v in samples["wslog_malformed_lines_total"]}
    assert reasons == {"encoding": 2}


def _count_lines_until(port: int, expected: int, *, quiet_s: float = 0.6) -> None:
    """Wait until ``wslog_log_lines_total`` is ``expected``; then it must stay there."""
    deadline = time.monotonic() + 30
    while (counted := total(scrape(port), "wslog_log_lines_total")) != expected:
        assert counted < expected, f"counted {counted} lines, expected {expected}"
        assert time.monotonic() < deadline, f"counted {counted} lines, expected {expected}"
        time.sleep(0.1)
    time.sleep(quiet_s)
    assert total(scrape(port), "wslog_log_lines_total") == expected


def _stop(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    proc.send_signal(sig)
    assert proc.wait(timeout=20) == (0 if sig is signal.SIGTERM else -sig)


def _saved_offset(state: Path) -> int:
    """The offset ``--state-dir`` holds for the one followed file (-1 before a save)."""
    try:
        (entry,) = json.loads((state / "files.json").read_bytes())["files"]
    except FileNotFoundError:
        return -1
    return int(entry["offset"])


@pytest.mark.parametrize(
    ("state_dir", "from_start", "sig", "second_counts"),
    [
        (True, False, signal.SIGTERM, "M"),
        (True, True, signal.SIGTERM, "M"),
        (True, True, signal.SIGKILL, "M"),  # killed after the periodic save covered the N
        (False, False, signal.SIGTERM, "0"),  # documented: what was written while down is lost
        (False, True, signal.SIGTERM, "N+M"),  # documented: counted again after the reset
    ],
    ids=["state", "state-from-start", "state-sigkill", "no-state", "no-state-from-start"],
)
def test_a_restart_through_the_cli_counts_lines_written_while_down_once_with_a_state_dir(
    tmp_path: Path, state_dir: bool, from_start: bool, sig: signal.Signals, second_counts: str
) -> None:
    """Count N lines, stop, M lines written while down, start again; then K
    more lines once the file is followed, to see that nothing else arrives late."""
    log, state = tmp_path / "access.log", tmp_path / "state"
    n, m, k = 50, 30, 7
    log.write_text("".join(f"line {i} before the restart\n" for i in range(n)))
    flags = ["--source", "files", "--path", str(log), "--listen", "127.0.0.1:0"]
    flags += ["--batch-interval", "0.1", *(["--state-dir", str(state)] if state_dir else [])]
    first = _start_cli(*flags, "--from-start")
    try:
        _count_lines_until(_port_from_logs(first), n)
        deadline = time.monotonic() + 20
        while sig is signal.SIGKILL and _saved_offset(state) != log.stat().st_size:
            assert time.monotonic() < deadline, "the positions were never saved"
            time.sleep(0.1)
        _stop(first, sig)
    finally:
        _reap(first)
    with log.open("a") as handle:
        handle.write("".join(f"line {i} while the exporter was down\n" for i in range(m)))
    second = _start_cli(*flags, *(["--from-start"] if from_start else []))
    try:
        port = _port_from_logs(second)
        deadline = time.monotonic() + 30
        while total(scrape(port), "wslog_streams_active") < 1:
            assert time.monotonic() < deadline, "the file was never opened"
            time.sleep(0.05)
        with log.open("a") as handle:
            handle.write("".join(f"line {i} after the restart\n" for i in range(k)))
        expected = {"M": m, "0": 0, "N+M": n + m}[second_counts] + k
        _count_lines_until(port, expected)
        _stop(second, signal.SIGTERM)
    finally:
        _reap(second)
