"""``wslog``: one typer app, one subcommand per capability."""

from __future__ import annotations

from typing import Annotated

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
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("wslog")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e . from the clone)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"wslog {_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Explain WebSocket upgrades through Istio / Envoy sidecars from their access logs."""


@app.command()
def version() -> None:
    """Print wslog's version."""
    typer.echo(f"wslog {_version()}")


# Subcommands register below, one line each.
app.command()(analyze)
app.add_typer(lab_app, name="lab")
app.command()(exporter)
app.command()(tail)
app.command()(doctor)


def main() -> None:
    app()
