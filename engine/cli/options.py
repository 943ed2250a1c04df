"""What every command shares: exit codes, the common flags, and the config and device of a run from its flags.

Exit codes: 0 done; 1 failed (or `verify` found problems); 2 bad usage, config or input path;
3 done, but some inputs were skipped (see the summary); 130 interrupted (run again to resume).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from activessf_engine.cli.flags import add_section_flags, apply_flags, flag_name, given_fields, given_flags
from activessf_engine.config import EngineConfig, load_config
from activessf_engine.device import DeviceChoice, resolve_device

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SKIPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEFAULT_DEVICE = "cpu"
TILE_SECTIONS = ("input", "filter")  # the config sections of the commands that look at tiles: overlay, calibrate

log = logging.getLogger("activessf_engine")
HSV_MASK_FIELDS = ("hsv_source", "purple", "deep_blue")  # what a colour table makes the mask in place of
# The loggers of the libraries a run starts (a Dask cluster and its workers): they follow -v, and --quiet
# leaves them only their errors.
LIBRARY_LOGGERS = ("dask", "distributed")


def add_input_flag(parser: argparse.ArgumentParser) -> None:
    """--input, as `filter`, `run`, `overlay` and `calibrate` read it (`find_sources`)."""
    parser.add_argument(
        "--input",
        required=True,
        type=Path,
        help="folder of tiles or whole slides (searched recursively), one image or slide, or a list file (.txt, "
        ".lst, .list) of one path per line: relative paths in a list are taken from the list file's folder, "
        "not from the working directory",
    )


def add_common_flags(parser: argparse.ArgumentParser, sections: tuple[str, ...]) -> None:
    """--config, --device, --json, --quiet, -v, and a flag for every field of the config `sections`."""
    parser.add_argument("--config", type=Path, help="TOML file with [section] tables of parameters")
    parser.add_argument(
        "--device",
        default=DEFAULT_DEVICE,
        choices=("auto", "cpu", "cuda"),
        help=f"where to compute (default {DEFAULT_DEVICE})",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    for section in sections:
        add_section_flags(parser, section)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_dask_flags(parser: argparse.ArgumentParser, what: str = "filter") -> None:
    """--workers N (a local Dask cluster) or --scheduler ADDRESS (a running one)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--workers", type=positive_int, help=f"{what} on a local Dask cluster of N worker processes (a part per task)"
    )
    group.add_argument("--scheduler", help=f"{what} on the Dask cluster at this address (tcp://host:8786)")


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Warnings, -v info, -vv debug; Dask's and distributed's loggers the same, or errors only with --quiet,
    here and in the worker processes a run starts (Dask reads its logging config from the environment)."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    library_level = logging.ERROR if quiet else level
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)
        os.environ[f"DASK_LOGGING__{name.upper()}"] = logging.getLevelName(library_level).lower()


def run_flags(args: argparse.Namespace, sections: tuple[str, ...] | None = None) -> list[str]:
    """--config, --device (where not the default) and the config flags (of `sections`) given to this command,
    as arguments for another that should run the same way."""
    config = ["--config", str(args.config)] if args.config else []
    device = ["--device", args.device] if args.device != DEFAULT_DEVICE else []
    return [*config, *device, *given_flags(args, sections)]


def run_config(args: argparse.Namespace) -> EngineConfig:
    """The config of a run: --config's TOML, then the flags given. A flag of the HSV ranges given with a learned
    colour table is logged as not read."""
    config = apply_flags(load_config(args.config), args)
    given = given_fields(args)
    unread = [flag_name("filter", name) for name in HSV_MASK_FIELDS if ("filter", name) in given]
    if config.filter.cell_colours.cells and unread:
        log.warning(
            "%s not read: %s holds a colour table learned by `calibrate` (filter.cell_colours), which makes the mask",
            ", ".join(unread),
            args.config,
        )
    return config


def run_device(args: argparse.Namespace) -> DeviceChoice:
    """The device choice (logged); its `describe()` goes into every summary."""
    choice = resolve_device(args.device)
    log.info("device: %s (%s)", choice.kind, choice.reason)
    return choice


def on_dask(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "scheduler", None) or getattr(args, "workers", None))


def dask_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Dask options of a run: its cluster, and the device each worker resolves for itself."""
    return {"scheduler": args.scheduler, "workers": args.workers or 0, "device": args.device, "quiet": args.quiet}
