"""``wslog lab``: run the scenarios, or list them with the Istio configuration each mirrors."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:  # the runner needs the lab extra (websockets); import it only to run
    from lab.runner import Notify, ScenarioResult
from lab.scenarios import SCENARIOS, LogFormat, Scenario, UnknownScenarioError, select

app = typer.Typer(
    help="Real Envoy sidecars on 127.0.0.1 producing WebSocket access logs (wslog's ground truth).",
    no_args_is_help=True,
)


@app.command("list")
def list_scenarios(
    yaml: Annotated[
        bool, typer.Option("--yaml", help="Also print the Istio YAML of each.")
    ] = False,
) -> None:
    """Print the scenarios and the Istio configuration each one mirrors."""
    width = max(len(s.name) for s in SCENARIOS)
    for scenario in SCENARIOS:
        typer.echo(f"{scenario.name:<{width}}  {scenario.mirrors}")
        typer.echo(f"{'':<{width}}  shows: {scenario.shows}")
        if yaml:
            typer.echo("\n" + scenario.istio_yaml)


@contextmanager
def _progress(scenarios: tuple[Scenario, ...]) -> Iterator[Notify]:
    """A live progress display on stderr when it is a terminal; silence otherwise."""
    if not sys.stderr.isatty():
        yield lambda name, phase: None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        tasks: dict[str, TaskID] = {s.name: progress.add_task(s.name, total=1) for s in scenarios}

        def notify(name: str, phase: str) -> None:
            done = phase in ("done", "failed")
            progress.update(tasks[name], description=f"{name}: {phase}", completed=int(done))

        yield notify


def _report(results: tuple[ScenarioResult, ...], total_s: float, out: Path) -> None:
    width = max(len(r.name) for r in results)
    for r in results:
        status = "ok  " if r.ok else "FAIL"
        entries = f"{r.client_entries} client / {r.server_entries} server entries"
        detail = entries if r.ok else r.message
        typer.echo(f"{status} {r.name:<{width}}  {r.seconds:5.1f}s  {detail}")
    typer.echo(f"{len(results)} scenario(s) in {total_s:.1f}s; logs in {out}/<scenario>/")


@app.command("run")
def run(
    scenarios: Annotated[
        list[str] | None, typer.Argument(help="Scenario names (default: all).", show_default=False)
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("out/lab"),
    fmt: Annotated[
        LogFormat, typer.Option("--format", help="Istio access-log encoding the sidecars write.")
    ] = LogFormat.JSON,
    timeout: Annotated[float, typer.Option(help="Seconds before a scenario is failed.")] = 30.0,
    parallel: Annotated[int, typer.Option(min=1, help="Scenarios run at once.")] = 4,
) -> None:
    """Run scenarios; logs go to OUT/<scenario>/client.log, server.log, client-result.json."""
    # The runtime (asyncio, websockets, Envoy processes) is imported only to run: every other
    # command starts without it.
    import asyncio

    from lab.processes import LabError, find_envoy

    try:
        from lab.runner import RunSettings, run_scenarios
    except ImportError as exc:
        hint = "install the lab extra: pip install -e '.[lab]' from the clone"
        typer.echo(f"error: {exc}; {hint}", err=True)
        raise typer.Exit(2) from exc
    try:
        chosen = select(scenarios or [])
        settings = RunSettings(
            out, fmt, find_envoy(), scenario_timeout_s=timeout, parallel=parallel
        )
    except (UnknownScenarioError, LabError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    start = time.monotonic()
    try:
        with _progress(chosen) as notify:
            results = asyncio.run(run_scenarios(chosen, settings, notify))
    except KeyboardInterrupt:
        typer.echo("interrupted: every lab process was stopped", err=True)
        raise typer.Exit(130) from None
    _report(results, time.monotonic() - start, out)
    if not all(r.ok for r in results):
        raise typer.Exit(1)
