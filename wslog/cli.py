"""``wslog``: one typer app, one subcommand per capability."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from lab.cli import app as lab_app
from wslog.analyze import analyze
from wslog.doctor import doctor
from wslog.live import exporter, tail

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


def _summary(function: Callable[..., object]) -> str:
    """A command's row in ``wslog --help``: its docstring's first paragraph as one line (the
    list keeps a docstring's line breaks, which leaves ragged rows)."""
    first = inspect.cleandoc(function.__doc__ or "").split("\n\n")[0]
    return " ".join(first.split())


# Subcommands register below, one line each.
app.command(short_help=_summary(analyze))(analyze)
app.add_typer(lab_app, name="lab")
app.command(short_help=_summary(exporter))(exporter)
app.command(short_help=_summary(tail))(tail)
app.command(short_help=_summary(doctor))(doctor)


def command() -> Callable[[], object]:
    """The app as a click command, its on/off flags shown without a ``<bool>`` value (which
    invites ``--connections true``: a flag takes no value)."""
    root = typer.main.get_command(app)
    _flags_take_no_value(root)
    return root


def _flags_take_no_value(cmd: Any) -> None:
    for param in cmd.params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    made = cmd.get_help_option  # --help is made per invocation

    def help_option(ctx: Any) -> Any:
        option = made(ctx)
        if option is not None:
            option.metavar = ""
        return option

    cmd.get_help_option = help_option
    for sub in getattr(cmd, "commands", {}).values():
        _flags_take_no_value(sub)


def main() -> None:
    command()()
