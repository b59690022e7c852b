"""The ``cell2net-attr`` application: the root callback and every command, registered here explicitly."""

from __future__ import annotations

import typer

from .._version import __version__
from . import attribution_commands as attribution
from . import downstream_commands as downstream
from .common import state

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Integrated-Gradients TF attributions for Cell2Net models.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cell2net-attr {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    state["debug"] = debug


app.command()(attribution.run)
app.command("run-many")(attribution.run_many)
app.command()(attribution.merge)
app.command()(attribution.inspect)
app.command(help=downstream.SUMMARIZE_HELP)(downstream.summarize)
app.command(help=downstream.ACTIVITY_HELP)(downstream.activity)
app.command(help=downstream.PLOT_HELP)(downstream.plot)


def main() -> None:
    """Console-script entry point."""
    app()
