"""Running scenarios: app, two sidecars and client per scenario, several scenarios at once.

Each scenario gets its own ports and its own output directory ``OUT/<scenario>/`` holding
``client.log``, ``server.log`` (the sidecars' access logs) and ``client-result.json``. A scenario
is bounded in time as a whole; whatever happens, its processes are stopped before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from analyzer.vocab import Hop
from lab.apps import run_app
from lab.client import ConnectionResult, run_client
from lab.envoy_config import (
    Ports,
    app_proxy_bootstrap,
    front_bootstrap,
    server_bootstrap,
)
from lab.processes import LabError, PortAllocator, Sidecar
from lab.scenarios import Front, LogFormat, Scenario

LOG_SETTLE_S = 0.3
POLL_S = 0.05

Notify = Callable[[str, str], None]


@dataclass(frozen=True)
class RunSettings:
    out: Path
    fmt: LogFormat
    envoy: Path
    scenario_timeout_s: float = 30.0
    ready_timeout_s: float = 15.0
    log_wait_s: float = 5.0
    parallel: int = 4


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    ok: bool
    seconds: float
    message: str
    client_entries: int = 0
    server_entries: int = 0
    connections: tuple[ConnectionResult, ...] = field(default=())


@dataclass
class _Phase:
    """Where a running scenario is, for the timeout message and the progress display."""

    name: str
    notify: Notify
    current: str = "starting"

    def enter(self, phase: str) -> None:
        self.current = phase
        self.notify(self.name, phase)


def count_entries(path: Path) -> int:
    try:
        return sum(1 for line in path.read_bytes().splitlines() if line.strip())
    except FileNotFoundError:
        return 0


async def wait_for_entries(
    paths: tuple[Path, Path], wanted: tuple[int, int], bound_s: float
) -> bool:
    """Wait until each log holds at least its wanted entries and both stopped growing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    last: tuple[int, int] = (-1, -1)
    stable_since = loop.time()
    while loop.time() < deadline:
        sizes = (count_entries(paths[0]), count_entries(paths[1]))
        if sizes != last:
            last, stable_since = sizes, loop.time()
        enough = sizes[0] >= wanted[0] and sizes[1] >= wanted[1]
        if enough and loop.time() - stable_since >= LOG_SETTLE_S:
            return True
        await asyncio.sleep(POLL_S)
    return False


INCOMPLETE = "INCOMPLETE.json"


def _prepare_dir(directory: Path, scenario: Scenario) -> None:
    """Empty logs and no stale client result, so nothing of an earlier run is mistaken for this;
    a marker says the directory is being written until the scenario has run to its end (an
    interrupted or killed run leaves it, so its partial logs are never taken for a capture)."""
    directory.mkdir(parents=True, exist_ok=True)
    marker = {"scenario": scenario.name, "state": "running or interrupted: the logs are partial"}
    (directory / INCOMPLETE).write_text(json.dumps(marker) + "\n")
    for log in ("client.log", "server.log"):
        (directory / log).write_bytes(b"")
    (directory / "client-result.json").unlink(missing_ok=True)


def _write_result(path: Path, scenario: Scenario, results: tuple[ConnectionResult, ...]) -> None:
    document = {"scenario": scenario.name, "connections": [asdict(r) for r in results]}
    path.write_text(json.dumps(document, indent=2) + "\n")


def _allocate(ports: PortAllocator) -> Ports:
    return Ports(*(ports.take() for _ in range(7)))


async def _exercise(
    scenario: Scenario, settings: RunSettings, ports: Ports, phase: _Phase
) -> tuple[ConnectionResult, ...]:
    """Start app and sidecars, run the client, wait for the logs; stop everything on the way out."""
    directory = settings.out / scenario.name
    logs = (directory / "client.log", directory / "server.log")
    client_config = front_bootstrap(scenario, ports, str(logs[0]), settings.fmt)
    async with contextlib.AsyncExitStack() as stack:
        front = "gateway" if scenario.front is Front.GATEWAY else "client"
        envoys = [Sidecar(front, settings.envoy, client_config, ports.client_admin)]
        if scenario.server_running:
            await stack.enter_async_context(run_app(scenario.app, ports.app))
            server_config = server_bootstrap(scenario, ports, str(logs[1]), settings.fmt)
            envoys.append(Sidecar("server", settings.envoy, server_config, ports.server_admin))
        entry_port = ports.client_outbound
        if scenario.app_protocol is Hop.H2:
            app_proxy = app_proxy_bootstrap(ports)
            envoys.insert(0, Sidecar("app", settings.envoy, app_proxy, ports.app_proxy_admin))
            entry_port = ports.app_proxy
        started = [await stack.enter_async_context(envoy) for envoy in reversed(envoys)]
        phase.enter("waiting for envoy")
        bound = settings.ready_timeout_s
        await asyncio.gather(*(envoy.wait_ready(bound) for envoy in started))
        phase.enter("client")
        results = await run_client(scenario, entry_port)
        _write_result(directory / "client-result.json", scenario, results)
        phase.enter("waiting for log entries")
        wanted = (scenario.expected.client, scenario.expected.server)
        await wait_for_entries(logs, wanted, settings.log_wait_s)
    return results


def _judge(
    scenario: Scenario, settings: RunSettings, results: tuple[ConnectionResult, ...], seconds: float
) -> ScenarioResult:
    directory = settings.out / scenario.name
    client, server = (
        count_entries(directory / "client.log"),
        count_entries(directory / "server.log"),
    )
    ok = client >= scenario.expected.client and server >= scenario.expected.server
    message = (
        "ok"
        if ok
        else (
            f"expected at least {scenario.expected.client} client and {scenario.expected.server} "
            f"server entries within {settings.log_wait_s:g}s, found {client} and {server}"
        )
    )
    return ScenarioResult(scenario.name, ok, seconds, message, client, server, results)


async def _run(
    scenario: Scenario, settings: RunSettings, ports: Ports, phase: _Phase
) -> ScenarioResult:
    directory = settings.out / scenario.name
    _prepare_dir(directory, scenario)
    start = time.monotonic()
    results = await _exercise(scenario, settings, ports, phase)
    judged = _judge(scenario, settings, results, time.monotonic() - start)
    (directory / INCOMPLETE).unlink()
    return judged


async def run_scenario(
    scenario: Scenario, settings: RunSettings, ports: PortAllocator, notify: Notify
) -> ScenarioResult:
    """Run one scenario within its time bound; failures become a result, not an exception."""
    phase = _Phase(scenario.name, notify)
    start = time.monotonic()
    try:
        result = await asyncio.wait_for(
            _run(scenario, settings, _allocate(ports), phase), settings.scenario_timeout_s
        )
    except TimeoutError:
        message = (
            f"did not finish within {settings.scenario_timeout_s:g}s "
            f"(stuck while {phase.current}); its processes were stopped"
        )
        result = ScenarioResult(scenario.name, False, time.monotonic() - start, message)
    except (LabError, OSError) as exc:
        result = ScenarioResult(scenario.name, False, time.monotonic() - start, str(exc))
    notify(scenario.name, "done" if result.ok else "failed")
    return result


async def run_scenarios(
    scenarios: Sequence[Scenario], settings: RunSettings, notify: Notify
) -> tuple[ScenarioResult, ...]:
    """Run scenarios concurrently, at most ``settings.parallel`` at a time."""
    gate = asyncio.Semaphore(settings.parallel)
    ports = PortAllocator()

    async def gated(scenario: Scenario) -> ScenarioResult:
        async with gate:
            return await run_scenario(scenario, settings, ports, notify)

    return tuple(await asyncio.gather(*(gated(s) for s in scenarios)))


def ignore(name: str, phase: str) -> None:
    """A ``Notify`` that does nothing."""
