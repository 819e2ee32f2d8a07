"""The exporter's and tail's errors, through the real entry point: one line that says what to do,
the right exit code, never a traceback; an unreachable API server is loud."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import ROOT, run_wslog


def without_credentials(home: Path) -> dict[str, str]:
    """An environment with no kubeconfig and no in-cluster service account."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "WSLOG_"))}
    return {**env, "HOME": str(home)}


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_wslog("exporter", "--source", "stdin", "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 2
    assert f"--listen 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "another process listens there" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_address_this_machine_lacks_is_one_line_and_exit_2() -> None:
    result = run_wslog("exporter", "--source", "stdin", "--listen", "192.0.2.1:9090")  # TEST-NET-1
    assert result.returncode == 2
    assert "no such address: use 0.0.0.0" in result.stderr
    assert "Traceback" not in result.stderr


def test_tail_without_credentials_exits_2_with_the_ways_out(tmp_path: Path) -> None:
    result = run_wslog("tail", env=without_credentials(tmp_path))
    assert result.returncode == 2
    for fix in ("--kubeconfig", "--context", "--source files", "--source stdin"):
        assert fix in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_an_unreachable_api_server_is_logged_and_said_by_readyz(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]  # nothing listens there once closed
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{dead}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    command = [sys.executable, "-m", "wslog", "exporter", "--kubeconfig", str(kubeconfig)]
    command += ["--listen", "127.0.0.1:0", "--drain-seconds", "0"]
    with subprocess.Popen(
        command,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**without_credentials(tmp_path), "PYTHONUNBUFFERED": "1"},
    ) as proc:
        assert proc.stderr is not None
        try:
            records = _records_until(proc, "cannot reach the API server", bound_s=30)
            port = next(int(r["port"]) for r in records if "port" in r)
            warning = next(r for r in records if "cannot reach" in r.get("msg", ""))
            assert warning["level"] == "warning"
            assert f"127.0.0.1:{dead}" in warning["msg"]
            code, body = _get(port, "/readyz")
            assert code == 503 and "cannot reach the API server" in body
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _records_until(
    proc: subprocess.Popen[bytes], text: str, bound_s: float
) -> list[dict[str, str]]:
    assert proc.stderr is not None
    records, deadline = [], time.monotonic() + bound_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
        if text in records[-1].get("msg", ""):
            return records
    raise AssertionError(f"no log line saying {text!r} within {bound_s} s: {records}")


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


def test_tail_in_a_pipe_prints_whole_lines_and_explains_failures_at_the_end() -> None:
    logs = str(ROOT / "testdata" / "lab" / "json" / "h2-no-allow-connect" / "*.log")
    result = run_wslog("tail", "--source", "files", "--path", logs, "--from-start", "--once")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("h1-h2 failed h2-connect-not-allowed paired 1004ms 95B")
    assert "websockets-server.default.svc.cluster.local /h2-no-allow-connect/0" in lines[0]
    assert any(line.strip().startswith("why:") and line.endswith("answered 503.") for line in lines)
    assert any(line.strip().startswith("fix:") and "allow_connect: true" in line for line in lines)


def test_an_unknown_outcome_lists_the_choices() -> None:
    result = run_wslog("tail", "--outcome", "bogus")
    assert result.returncode == 2
    assert "choose from upgraded, rejected, failed, open" in result.stderr
