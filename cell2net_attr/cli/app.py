"""The ``cell2net-attr`` application: the root callback and every command, registered here explicitly."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from .._compat import click_exceptions
from .._version import __version__
from ..errors import EXIT_USER
from . import attribution_commands as attribution
from . import downstream_commands as downstream
from . import plan_commands
from . import sequence_commands as sequence


class _OneLineErrors(TyperGroup):
    """The command group, with usage errors (unknown option, missing argument, bad value or choice) as one
    ``error:`` line and exit code 2, like every other bad input."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        errors = click_exceptions()
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except errors.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:  # a bare command: its help
                print(exc.ctx.get_help())
                sys.exit(0)
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            print(f"error: {exc.format_message()}{where}", file=sys.stderr)
            sys.exit(EXIT_USER)
        except (typer.Abort, KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(cls=_OneLineErrors, add_completion=True, pretty_exceptions_enable=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Integrated-Gradients attributions (TFs and peaks), saturation mutagenesis and variant effects for "
                       "Cell2Net models, and their summaries.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cell2net-attr {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    ctx.obj = {"debug": debug}  # read by common.debugging()


app.command()(attribution.run)
app.command("run-many")(attribution.run_many)
app.command()(attribution.merge)
app.command()(attribution.inspect)
app.command(help=sequence.MUTAGENESIS_HELP)(sequence.mutagenesis)
app.command(help=sequence.VARIANTS_HELP)(sequence.variants)
app.command(help=plan_commands.PLAN_HELP)(plan_commands.plan)
app.command(help=downstream.SUMMARIZE_HELP)(downstream.summarize)
app.command(help=downstream.ACTIVITY_HELP)(downstream.activity)
app.command(help=downstream.PLOT_HELP)(downstream.plot)


def main() -> None:
    """Console-script entry point."""
    from ..pipeline.threads import prefer_passive_waiting

    prefer_passive_waiting()  # before anything imports torch
    app()
