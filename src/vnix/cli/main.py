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
    from vnix.cli import agent, cluster, host, image, run  # noqa: F401
    from vnix.cli import job, manager, node, snapshot, up, user, vm  # noqa: F401  (manager's CLI)
    from vnix.cli import vmm  # noqa: F401  (one native VMM's control API)


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
    except Exception as exc:
        # Typer's (vendored) click reports usage errors and --help exits as exceptions when
        # standalone_mode is off; recognise them by shape so either click layout works.
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            err_console.print(f"vnix: error: {exc.format_message()}", markup=False)
            sys.exit(2 if exc.exit_code in (None, 1, 2) else exc.exit_code)
        if type(exc).__name__ == "Exit" and hasattr(exc, "exit_code"):
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
