"""`activessf-engine`: a thin layer that parses, calls the library and reports.

Each group of commands lives in its own module (`run_commands`, `store_commands`, `inspect_commands`),
with an `add_parsers(sub)` and a `COMMANDS` table; this module puts them together and runs one.
"""

from __future__ import annotations

import argparse
import difflib
import signal
import sys
from collections.abc import Sequence
from typing import Any

from activessf_engine import __version__
from activessf_engine.cli import inspect_commands, run_commands, store_commands
from activessf_engine.cli.options import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, log, setup_logging
from activessf_engine.device import DeviceUnavailableError
from activessf_engine.store import StoreLockedError

COMMANDS = {**inspect_commands.COMMANDS, **run_commands.COMMANDS, **store_commands.COMMANDS}
# Commands that open no store: they leave zarr unimported (and so unconfigured).
WITHOUT_STORE = frozenset({"overlay", "calibrate"})


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """ "; did you mean X?" with the choice nearest to `word`, or "" when none is near."""
    near = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {near[0]}?" if near else ""


class Parser(argparse.ArgumentParser):
    """argparse that takes no flag by a prefix of its name (`--min-fil` is not `--min-fill`), and says what
    was meant: a wrong flag gets the command's own usage and the nearest flag, a wrong command the nearest
    command. Its commands' parsers are made by this class too."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs, allow_abbrev=False)
        self.commands: dict[str, argparse.ArgumentParser] = {}  # filled by `build_parser` on the main parser

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:
        args = sys.argv[1:] if args is None else list(args)
        command = next((arg for arg in args if not arg.startswith("-")), None)  # the main parser has no valued flag
        if self.commands and command is not None and command not in self.commands:
            self.error(f"unknown command {command!r}{did_you_mean(command, list(self.commands))}")
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            parser = self.commands.get(getattr(parsed, "command", None), self)
            flags = list(parser._option_string_actions)
            hints = "".join(did_you_mean(arg.split("=")[0], flags) for arg in unknown if arg.startswith("-"))
            parser.error(f"unrecognized arguments: {' '.join(unknown)}{hints}")
        return parsed


def build_parser() -> Parser:
    parser = Parser(
        prog="activessf-engine",
        description="ActiveSSF: Cell Region Filtering and Active Sample Selection into sharded Zarr v3 stores.",
        epilog=(
            "Exit codes: 0 done, 1 failed, 2 bad usage or input (or nothing selected), 3 done with skipped inputs, "
            "130 interrupted."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for commands in (inspect_commands, run_commands, store_commands):
        commands.add_parsers(sub)
    parser.commands = sub.choices
    return parser


_stops: list[int] = []  # the stop signals this run received


def _interrupt(signum: int, frame: Any) -> None:
    _stops.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def _interrupted() -> int:
    print("interrupted: committed parts are kept; run the same command again to resume", file=sys.stderr)
    return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    if args.command not in WITHOUT_STORE:
        from activessf_engine.store import configure_zarr  # imports zarr: only for the commands that use it

        configure_zarr()
    # Batch schedulers stop jobs with SIGTERM: treat it like Ctrl-C, so the run ends cleanly (exit 130).
    _stops.clear()
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return _interrupted()
    except (FileNotFoundError, FileExistsError, ValueError, DeviceUnavailableError, StoreLockedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        log.debug("failure", exc_info=True)
        print(f"failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    # Python drops an exception raised where it cannot propagate (a __del__, a finalizer callback): a stop whose
    # KeyboardInterrupt landed there still ends the run as interrupted (seen in CI: a planted SIGINT, exit 0).
    return _interrupted() if _stops else code


if __name__ == "__main__":
    sys.exit(main())
