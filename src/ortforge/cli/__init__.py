"""`ortforge` command line: parse, call a verb, render. Flags come from the options dataclasses and the verbs'
signatures (`arguments.py`); each command's flags and run function are in `commands.py`."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ortforge.cli.arguments import effective_settings, flags_of
from ortforge.cli.commands import COMMANDS
from ortforge.cli.config import config_path, config_tokens
from ortforge.cli.display import DISPLAY, announce, configure, log_line, result_console, stderr_console
from ortforge.core.errors import OptionError, UserError
from ortforge.core.runtime import VERBOSE_ENV
from ortforge.core.scratch import remove_scratch_folders
from ortforge.version import __version__


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2), as every other ortforge error."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("ortforge").strip()
        stderr_console().print(f"[red]ortforge: error:[/] {command + ': ' if command else ''}{message} (see {self.prog} --help)", highlight=False,
                               soft_wrap=True)  # fmt: skip
        sys.exit(2)


class _Version(argparse.Action):
    """--version: asks for onnxruntime's version and flavour only when shown (importing ORT costs a few hundred ms)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, default: str = argparse.SUPPRESS, help: str | None = None) -> None:  # noqa: A002
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object, option_string: str | None = None) -> None:
        from ortforge.core import runtime

        try:
            ort = f"{runtime.flavour()} {runtime.version()}"
        except UserError as exc:  # no onnxruntime installed
            ort = f"no onnxruntime ({exc})"
        print(f"ortforge {__version__} on {ort}")
        parser.exit()


def build_parser() -> Parser:
    parser = Parser(prog="ortforge", description="Make ONNX models fast on ONNX Runtime, on the machine they run on, without breaking their answers.")
    parser.add_argument("--version", action=_Version, help="ortforge's version and the onnxruntime it runs on")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        subparser = commands.add_parser(command.name, help=command.help, description=command.description or command.help)
        command.add(subparser)
        shown = subparser.add_argument_group("output on the terminal")
        shown.add_argument("--verbose", action="store_true", help="also show onnxruntime's own warnings and errors (kept off the terminal by default)")
        shown.add_argument("--quiet", action="store_true", help="no progress and no settings line: the result (and errors) only")
        shown.add_argument("--log-file", metavar="FILE", help="append timestamped progress, the settings in effect and the outcome to FILE")
    return parser


def _exit_now_if_threads_linger(code: int) -> None:
    """Leave at once when worker threads are still running (a Ray driver's pair threads): at interpreter exit they would
    call into a Ray already shut down, and Ray's core worker then ends the process with status 1, not ours. Every output
    is written atomically and finally-blocks have run, so only the scratch folders are left to remove."""
    if threading.active_count() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        remove_scratch_folders()
        os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        argv, config_model = _with_config(parser, list(sys.argv[1:] if argv is None else argv))
    except UserError as exc:
        return _fail(str(exc), exc.exit_code)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if getattr(args, "model", "") is None:  # a command whose model a --config file may give
        if config_model is None:
            _subparser(parser, args.command).error("give a MODEL (or `model = ...` in the --config file)")
        args.model = config_model
    command = next(c for c in COMMANDS if c.name == args.command)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # read where sessions are made, here and in the measurement processes
    configure(quiet=args.quiet, command=command.name, settings=effective_settings(_subparser(parser, args.command), args))
    if args.log_file:  # checked before any work, as outputs are
        try:
            with open(args.log_file, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            return _fail(f"--log-file {args.log_file}: cannot write ({exc.strerror})", 2)
        DISPLAY.log_file = Path(args.log_file)
    try:
        command.run(args, result_console())
    except OptionError as exc:  # named by option below the CLI; the user typed a flag
        flag = flags_of(_subparser(parser, args.command)).get(exc.option)
        return _fail(exc.with_flag(flag) if flag else str(exc), exc.exit_code)
    except UserError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        stderr_console().print("ortforge: interrupted")
        log_line("interrupted")
        _exit_now_if_threads_linger(130)
        return 130
    announce(log_only=True)  # a command that showed no progress: its settings go to the log (and --json) only
    log_line(f"{command.name}: done")
    return 0


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    return parser._subparsers._group_actions[0].choices[name]  # type: ignore[union-attr]


def _with_config(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], str | None]:
    """The arguments with a --config file's options put before the typed ones (which win), and the model it names."""
    if not argv or argv[0].startswith("-") or argv[0] not in {c.name for c in COMMANDS}:
        return argv, None
    path = config_path(argv[1:])
    if path is None:
        return argv, None
    tokens, model = config_tokens(_subparser(parser, argv[0]), path)
    return [argv[0], *tokens, *argv[1:]], model


def _fail(message: str, code: int) -> int:
    stderr_console().print(f"[red]ortforge: error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    log_line(f"error: {message}")
    return code


if __name__ == "__main__":
    sys.exit(main())
