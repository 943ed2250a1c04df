"""What a command prints when it is done: its summary (lines, or JSON with --json) and what to do next."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from activessf_engine.cli.options import EXIT_USAGE, TILE_SECTIONS, run_flags
from activessf_engine.device import summary_line

SHOWN_WITHOUT_ROI = 10  # sources without ROI named in the terminal summary (--json lists all)


def named_sources_lines(label: str, paths: list[str]) -> list[str]:
    """A summary line naming the first few of `paths` after `label` (none where there are none)."""
    if not paths:
        return []
    named = ", ".join(paths[:SHOWN_WITHOUT_ROI])
    more = f" and {len(paths) - SHOWN_WITHOUT_ROI} more (--json lists all)" if len(paths) > SHOWN_WITHOUT_ROI else ""
    return [f"{label:<17}{len(paths)} source(s): {named}{more}"]


def quoted(path: Any) -> str:
    return shlex.quote(str(path))


def command_line(command: str, *arguments: Any) -> str:
    """`activessf-engine COMMAND ARGUMENTS...`, quoted for a shell."""
    return shlex.join(["activessf-engine", command, *map(str, arguments)])


def what_next(args: argparse.Namespace, summary: dict[str, Any]) -> str:
    """One line on what to do after `args.command` (printed on stderr after every command's summary)."""
    command = args.command
    if command == "filter" and summary.get("dry_run"):
        tiles = ("--input", args.input, "--out", "overlays", "--limit", args.limit)
        overlay = command_line("overlay", *tiles, *run_flags(args, TILE_SECTIONS))
        run = command_line("filter", "--input", args.input, "--out", "STORE", *run_flags(args))
        return f"next: see why regions were kept or rejected: {overlay}; then the whole input: {run}"
    if command == "filter":
        return (
            f"next: look at it: activessf-engine preview {quoted(args.out)} (or report {quoted(args.out)} --out report)"
        )
    if command == "prototypes":
        return f"next: activessf-engine select --candidates STORE --prototypes {quoted(args.out)} --out selected"
    if command == "select":
        return f"next: see what was kept and left out: activessf-engine report {quoted(args.out)} --out report"
    if command == "run":
        return f"next: activessf-engine report {quoted(args.out / 'selected')} --out {quoted(args.out / 'report')}"
    if command == "preview":
        sheet = quoted(summary["sheets"][0])
        return f"next: open {sheet}; all of it: activessf-engine report {quoted(args.store)} --out report"
    if command == "overlay":
        return (
            f"next: open the PNGs in {quoted(args.out)}; to fit the filter to your tiles: "
            "activessf-engine calibrate --help"
        )
    if command == "calibrate":
        return f"next: activessf-engine filter --config {quoted(args.out)} --input {quoted(args.input)} --out STORE"
    if command == "verify" and summary["problems"]:
        return f"next: activessf-engine verify --repair {quoted(args.store)}, then run the same filter again to redo"
    if command in ("verify", "manifest"):
        return f"next: look at it: activessf-engine report {quoted(args.store)} --out report"
    if command == "export" and args.format == "webdataset":
        return (
            f"next: train on {quoted(args.out)}/rois-*.tar with webdataset (each ROI its image, .json and, in a "
            "clustered store, .cls); metadata.csv lists every ROI"
        )
    if command == "export":
        return (
            f"next: train on it: torchvision.datasets.ImageFolder({quoted(args.out / 'train')}), or MAE's "
            f"main_pretrain.py --data_path {quoted(args.out)}; metadata.csv lists every ROI"
        )
    if command in ("report", "demo"):
        return f"next: open {quoted(summary['report'])} in a browser"
    return "next: activessf-engine --help lists every command"


def print_summary(args: argparse.Namespace, summary: dict[str, Any], lines: list[str]) -> None:
    """The summary as JSON on stdout (--json) or as lines on stderr, then the what-next line."""
    if getattr(args, "json", False):
        json.dump(summary, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        for line in lines:
            print(line, file=sys.stderr)
    print(what_next(args, summary), file=sys.stderr)


def end_with_selection(
    args: argparse.Namespace, summary: dict[str, Any], lines: list[str], warnings: list[str], selected: dict[str, Any]
) -> int | None:
    """Print the summary of a command that selected (`selected` is its select summary) with `warnings`.

    A selection that kept nothing is an error, never a quiet exit 0: the warnings (each names its cause and
    what to try) become the error line, and EXIT_USAGE is returned. Otherwise they are printed as WARNING
    lines and None is returned (the command's own exit code stands). A warning given twice (by prototypes and
    by select) is said once."""
    warnings = list(dict.fromkeys(warnings))
    if selected["selected"]:
        print_summary(args, summary, lines + [f"WARNING: {warning}" for warning in warnings])
        return None
    print_summary(args, summary, lines)
    causes = ". ".join(w[:1].upper() + w[1:].rstrip(".") for w in warnings) or "No candidate came within its threshold"
    print(
        f"error: nothing was selected (0 of {selected['candidates']} candidates; the store "
        f"{quoted(selected['selected_store'])} holds no ROI). {causes}.",
        file=sys.stderr,
    )
    return EXIT_USAGE


def device_lines(described: dict[str, Any], host_work: list[str]) -> list[str]:
    """The summary's device line (and what runs on the host) from a `DeviceChoice.describe()`."""
    if "kind" not in described:  # a Dask run with nothing left to do
        return []
    workers = f" on each of {described['workers']} Dask workers" if described.get("workers") else ""
    if described.get("processes", 1) > 1:
        workers = f" in each of {described['processes']} filter worker processes"
    lines = [f"device           {summary_line(described)}{workers}"]
    return lines + [f"  on the host    {work}" for work in host_work]
