"""The ``credit`` command line: one argparse parser, one subcommand per module.

Each module in ``service/commands/`` exposes ``register(subparsers)``, which adds its
parser(s) with ``set_defaults(func=...)``; ``func(args) -> int`` checks the input and
runs the command's action (``service.commands.actions``, loaded only then, so that
``credit --help``, the listings and bad input answer at once).

Errors: bad input exits 2, a failed run 1, Ctrl-C 130 — each with exactly one line
on stderr (``credit: ...``), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import NoReturn

from service.commands import paper, search, serve, spaces, studies, train
from service.commands.options import UsageError
from service.quiet import quiet_third_party, set_verbose
from trainables.errors import ConfigError, CreditError, DataUnavailableError, DivergenceError

PROG = "credit"

#: The command modules, in the order ``credit --help`` lists them.
COMMAND_MODULES = (train, search, spaces, paper, serve, studies)


class ArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line and an exception, not usage + exit.

    ``main`` turns the ``UsageError`` into ``credit: error: ...`` and exit status 2, so
    a subcommand's errors look the same as the top level's.

    ``deferred``: functions that add arguments whose declaration needs a heavy import
    (``credit train``'s flags come from ``TrainConfig``); they run the first time this
    parser parses or formats its help, so other commands never pay for them.
    """

    def __init__(self, *args, deferred=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.deferred = list(deferred)

    def _add_deferred(self) -> None:
        while self.deferred:
            self.deferred.pop(0)(self)

    def parse_known_args(self, args=None, namespace=None):
        self._add_deferred()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._add_deferred()
        return super().format_help()

    def format_usage(self) -> str:
        self._add_deferred()
        return super().format_usage()

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _version() -> str:
    try:
        return metadata.version("credit-search")
    except metadata.PackageNotFoundError:  # running from a tree that is not installed
        return "unknown"


def build_parser() -> ArgumentParser:
    """The full parser: the top level and every registered subcommand."""
    parser = ArgumentParser(
        prog=PROG,
        description="Train and search learning rules that avoid weight transport "
        "(Lansdell, Prakash & Kording 2019).",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--verbose", action="store_true",
                        help="let Ray, Optuna and MLflow log lines and warnings through")
    subparsers = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", parser_class=ArgumentParser
    )
    for module in COMMAND_MODULES:
        module.register(subparsers)

    def missing_command(args: argparse.Namespace) -> int:
        names = ", ".join(subparsers.choices)
        raise UsageError(f"missing command; valid: {names} (see '{PROG} --help')")

    parser.set_defaults(func=missing_command)  # a subcommand's own func overrides it
    return parser


def _fail(message: str, code: int) -> int:
    message = " ".join(str(message).split())  # one line, whatever the message held
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``credit`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help and --version print, then exit
            return e.code if isinstance(e.code, int) else 0
        set_verbose(args.verbose)
        quiet_third_party()
        return int(args.func(args) or 0)
    except (ConfigError, DataUnavailableError) as e:  # UsageError is a ConfigError
        return _fail(f"error: {e}", 2)
    except DivergenceError as e:
        return _fail(str(e), 1)
    except CreditError as e:
        return _fail(f"error: {e}", 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:  # `credit spaces | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
