"""``wslog``: one typer app, one subcommand per capability."""

from __future__ import annotations

import typer

from analyzer.cli import analyze
from analyzer.lab.cli import app as lab_app
from exporter.cli import exporter, tail
from exporter.doctor_cli import doctor

app = typer.Typer(
    name="wslog",
    help=(
        "Explain WebSocket upgrades through Istio / Envoy sidecars from their access logs: "
        "which sidecar-to-sidecar protocol each connection took, whether it worked, and why not."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Explain WebSocket upgrades through Istio / Envoy sidecars from their access logs."""


@app.command()
def version() -> None:
    """Print wslog's version."""
    from importlib.metadata import version as dist_version

    typer.echo(dist_version("wslog"))


# Subcommands register below, one line each.
app.command()(analyze)
app.add_typer(lab_app, name="lab")
app.command()(exporter)
app.command()(tail)
app.command()(doctor)


def main() -> None:
    app()
