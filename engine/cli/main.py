"""`activessf-engine`: a thin layer that parses, calls the library and reports.

Each group of commands lives in its own module (`run_commands`, `store_commands`, `inspect_commands`),
with an `add_parsers(sub)` and a `COMMANDS` table; this module puts them together and runs one.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from activessf_engine import __version__
from activessf_engine.cli import inspect_commands, run_commands, store_commands
from activessf_engine.cli.options import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, log, setup_logging
from activessf_engine.device import DeviceUnavailableError
from activessf_engine.store import StoreLockedError, configure_zarr

COMMANDS = {**inspect_commands.COMMANDS, **run_commands.COMMANDS, **store_commands.COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="activessf-engine",
        description="ActiveSSF: Cell Region Filtering and Active Sample Selection into sharded Zarr v3 stores.",
        epilog="Exit codes: 0 done, 1 failed, 2 bad usage or input, 3 done with skipped inputs, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for commands in (inspect_commands, run_commands, store_commands):
        commands.add_parsers(sub)
    return parser


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", 0))
    configure_zarr()
    # Batch schedulers stop jobs with SIGTERM: treat it like Ctrl-C, so the run ends cleanly (exit 130).
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted: committed parts are kept; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (FileNotFoundError, FileExistsError, ValueError, DeviceUnavailableError, StoreLockedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        log.debug("failure", exc_info=True)
        print(f"failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
