"""The ``vnix`` command: one Typer app, a sub-app per noun.

Every command raises :class:`vnix.errors.VnixError` subclasses for failures a user can act on;
:func:`main` prints them as one line on stderr and exits with the error's ``exit_code``
(2 for bad input). Tracebacks are for bugs only.
"""
from __future__ import annotations

import sys

import typer
from rich.console import Console

from vnix.errors import VnixError

app = typer.Typer(
    name="vnix",
    help="vnix: run and manage virtual machines on KVM and QEMU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


@app.command()
def version() -> None:
    """Print vnix's version."""
    from vnix import __version__

    print(__version__)


def _register() -> None:
    # Each module adds its commands to ``app``; the list is the CLI's table of contents.
    from vnix.cli import host, image, run  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        app(args=argv, standalone_mode=False)
    except VnixError as exc:
        err_console.print(f"vnix: error: {exc}", markup=False)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("vnix: aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click's own usage errors arrive as ClickException
        import click

        if isinstance(exc, click.exceptions.ClickException):
            err_console.print(f"vnix: error: {exc.format_message()}", markup=False)
            sys.exit(2)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
