"""`ortforge` command line: parse, call a verb, render. Flags come from the options dataclasses and the verbs'
signatures (`arguments.py`); each command's flags and run function are in `commands.py`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from ortforge.cli.arguments import flags_of
from ortforge.cli.commands import COMMANDS
from ortforge.cli.display import stderr_console
from ortforge.core.errors import OptionError, UserError
from ortforge.core.runtime import VERBOSE_ENV
from ortforge.version import __version__


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2), as every other ortforge error."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("ortforge").strip()
        stderr_console().print(f"[red]ortforge: error:[/] {command + ': ' if command else ''}{message} (see {self.prog} --help)", highlight=False,
                               soft_wrap=True)  # fmt: skip
        sys.exit(2)


def build_parser() -> Parser:
    parser = Parser(prog="ortforge", description="Make ONNX models fast on ONNX Runtime, on the machine they run on, without breaking their answers.")
    parser.add_argument("--version", action="version", version=f"ortforge {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        subparser = commands.add_parser(command.name, help=command.help, description=command.description or command.help)
        command.add(subparser)
        subparser.add_argument("--verbose", action="store_true", help="also show onnxruntime's own warnings and errors (kept off the terminal by default)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    command = next(c for c in COMMANDS if c.name == args.command)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # read where sessions are made, here and in the measurement processes
    try:
        command.run(args, Console())
    except OptionError as exc:  # named by option below the CLI; the user typed a flag
        subparser = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
        flag = flags_of(subparser).get(exc.option)
        return _fail(exc.with_flag(flag) if flag else str(exc), exc.exit_code)
    except UserError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        stderr_console().print("ortforge: interrupted")
        return 130
    return 0


def _fail(message: str, code: int) -> int:
    stderr_console().print(f"[red]ortforge: error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
