"""``wslog doctor``'s output: the JSON contract and the table for people.

JSON: ``{"services": [{"service", "namespace", "port", "upgrade_path", "verdict", "cause",
"evidence", "remedy"}]}``; with ``--logs`` each service also has ``observed``, ``agreement``
and ``disagreements``, and ``observed_only`` lists services seen in the logs that no
configuration predicts. ``problems`` lists the manifests that could not be read.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from analyzer.doctor.compare import Agreement, Comparison, Observed, unpredicted_failures
from analyzer.doctor.model import Verdict
from analyzer.doctor.predict import Prediction
from analyzer.vocab import Cause

REMEDY_LEAD = "  remedy: apply ONE option, its YAML document alone (kubectl apply -f -):"


@dataclass(frozen=True)
class Report:
    predictions: tuple[Prediction, ...]
    comparisons: tuple[Comparison, ...] | None = None  # None: no --logs
    observed_only: tuple[Observed, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return any(p.verdict is Verdict.FAIL for p in self.predictions)

    @property
    def disagreements(self) -> int:
        return sum(1 for c in self.comparisons or () if c.agreement is Agreement.DISAGREE)

    @property
    def unpredicted(self) -> tuple[Observed, ...]:
        """Failures in the logs that the configuration does not predict."""
        return tuple(unpredicted_failures(self.comparisons or (), self.observed_only))


def to_json(report: Report) -> dict[str, object]:
    if report.comparisons is None:
        services = [p.to_json() for p in report.predictions]
    else:
        services = [_compared(c) for c in report.comparisons]
    out: dict[str, object] = {"services": services}
    if report.comparisons is not None:
        out["observed_only"] = [o.to_json() for o in report.observed_only]
    if report.problems:
        out["problems"] = list(report.problems)
    return out


def _compared(comparison: Comparison) -> dict[str, object]:
    row = comparison.prediction.to_json()
    row["observed"] = comparison.observed.to_json() if comparison.observed else None
    row["agreement"] = comparison.agreement.value
    row["disagreements"] = list(comparison.disagreements)
    return row


def render_table(report: Report, console: Console) -> None:
    console.print(_table(report))
    for prediction in report.predictions:
        _explain(prediction, console)
    for comparison in report.comparisons or ():
        for text in comparison.disagreements:
            console.print(f"[bold red]disagreement[/] {comparison.prediction.service}: {text}")
    for observed in report.observed_only:
        paths = ", ".join(p.value for p in observed.upgrade_paths) or "unknown"
        if observed.connect_failures:
            paths += f", {observed.connect_failures} failing with {Cause.H2_CONNECT_NOT_ALLOWED}"
        console.print(
            f"observed only: {observed.service} ({observed.connections} connections, {paths}): "
            "no Service in the configuration",
            highlight=False,
        )
    for problem in report.problems:
        console.print(f"[yellow]not read[/] {problem}")
    console.print(summary(report))


def _table(report: Report) -> Table:
    table = Table(title="WebSocket upgrade paths predicted from configuration")
    for column in ("service", "port", "upgrade path", "verdict", "cause"):
        table.add_column(column, overflow="fold")
    if report.comparisons is not None:
        table.add_column("observed", overflow="fold")
        table.add_column("agreement")
        for c in report.comparisons:
            table.add_row(*_cells(c.prediction), *_observed_cells(c))
    else:
        for p in report.predictions:
            table.add_row(*_cells(p))
    return table


def _cells(p: Prediction) -> tuple[str, ...]:
    verdict = "[green]ok[/]" if p.verdict is Verdict.OK else "[bold red]fail[/]"
    return (p.service, str(p.port), p.upgrade_path.value, verdict, p.cause.value)


def _observed_cells(c: Comparison) -> tuple[str, str]:
    if c.observed is None:
        return ("-", c.agreement.value)
    o = c.observed
    paths = ", ".join(p.value for p in o.upgrade_paths) or "unknown"
    return (f"{paths} {o.verdict.value} ({o.connections})", c.agreement.value)


def _explain(p: Prediction, console: Console) -> None:
    console.print(f"\n[bold]{p.service}:{p.port}[/] {p.upgrade_path} {p.verdict}")
    for line in p.evidence:
        console.print(f"  - {line}", highlight=False, markup=False, soft_wrap=True)
    if p.remedy:
        console.print(REMEDY_LEAD, highlight=False, soft_wrap=True)
        console.out(p.remedy, highlight=False, end="")  # as is: never indented nor wrapped
        console.line()


def summary(report: Report) -> str:
    failed = sum(1 for p in report.predictions if p.verdict is Verdict.FAIL)
    text = f"{len(report.predictions)} service port(s), {failed} failing"
    if report.comparisons is not None:
        text += f", {report.disagreements} disagreeing with the logs"
    if report.unpredicted:
        text += f", {len(report.unpredicted)} failing in the logs where no failure is predicted"
    return text
