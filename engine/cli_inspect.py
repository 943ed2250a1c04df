"""The commands that show a person what a run did: preview, overlay, report, calibrate, demo; and the
one line after every command that says what to do next.

`add_parsers(sub, common)` registers them on the main parser (`cli.build_parser`); `COMMANDS` maps each
name to its handler. Handlers return the CLI's exit codes and raise ValueError/FileNotFoundError for bad
input, which `cli.main` turns into exit 2.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SHOWN_WITHOUT_ROI = 10  # sources without ROI named in the terminal summary (--json lists all)


def sources_without_roi_lines(paths: list[str]) -> list[str]:
    """The summary lines naming the sources read in which no region was kept."""
    if not paths:
        return []
    named = ", ".join(paths[:SHOWN_WITHOUT_ROI])
    more = f" and {len(paths) - SHOWN_WITHOUT_ROI} more (--json lists all)" if len(paths) > SHOWN_WITHOUT_ROI else ""
    return [f"no ROI in        {len(paths)} source(s): {named}{more}"]


def _q(path: Any) -> str:
    return shlex.quote(str(path))


def what_next(args: argparse.Namespace, summary: dict[str, Any]) -> str:
    """One line on what to do after `args.command` (printed on stderr after every command's summary)."""
    command = args.command
    if command == "filter" and summary.get("dry_run"):
        return (
            f"next: see why regions were kept or rejected: activessf-engine overlay --input {_q(args.input)} "
            f"--out overlays --limit {args.limit}; then run without --limit and with --out"
        )
    if command == "filter":
        return f"next: look at it: activessf-engine preview {_q(args.out)} (or report {_q(args.out)} --out report)"
    if command == "prototypes":
        return f"next: activessf-engine select --candidates STORE --prototypes {_q(args.out)} --out selected"
    if command == "select":
        return f"next: see what was kept and left out: activessf-engine report {_q(args.out)} --out report"
    if command == "run":
        return f"next: activessf-engine report {_q(args.out / 'selected')} --out {_q(args.out / 'report')}"
    if command == "preview":
        sheet = _q(summary["sheets"][0])
        return f"next: open {sheet}; all of it: activessf-engine report {_q(args.store)} --out report"
    if command == "overlay":
        return (
            f"next: open the PNGs in {_q(args.out)}; to fit the filter to your tiles: activessf-engine calibrate --help"
        )
    if command == "calibrate":
        return f"next: activessf-engine filter --config {_q(args.out)} --input {_q(args.input)} --out STORE"
    if command == "verify" and summary["problems"]:
        return f"next: activessf-engine verify --repair {_q(args.store)}, then run the same filter again to redo"
    if command in ("verify", "manifest"):
        return f"next: look at it: activessf-engine report {_q(args.store)} --out report"
    if command in ("report", "demo"):
        return f"next: open {_q(summary['report'])} in a browser"
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


def cmd_preview(args: argparse.Namespace) -> int:
    from activessf_engine.contact import write_contact_sheets

    out = args.out or args.store.parent / f"{args.store.name}-preview"
    sheets = write_contact_sheets(args.store, out, rows=args.rows, per_row=args.per_row)
    summary = {"store": str(args.store), "sheets": [str(p) for p in sheets]}
    print_summary(args, summary, [f"contact sheet    {p}" for p in sheets])
    return 0


def cmd_overlay(args: argparse.Namespace) -> int:
    from activessf_engine.cli import _config, _device
    from activessf_engine.overlay import write_overlays

    tiles = write_overlays(args.input, args.out, _config(args), args.limit, _device(args))
    lines = [
        f"overlay          {t['overlay']}: kept {t['kept']}, fill rate {t['fill rate']}, too small {t['too small']}"
        for t in tiles
    ]
    print_summary(args, {"overlays": tiles}, lines)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from activessf_engine.calibrate import calibrate
    from activessf_engine.cli import _config, _device

    labels = set(args.label) if args.label else None
    summary = calibrate(
        args.input,
        args.annotations,
        args.out,
        _config(args),
        labels=labels,
        fit=args.fit,
        seed=args.seed,
        iou=args.iou,
        device=_device(args),
    )
    lines = [
        f"fitted on        {len(summary['fit_tiles'])} tiles ({summary['configurations_tried']} configurations tried)",
        f"{'':20}{'recall':>8} {'precision':>9} {'F1':>6}  found/annotated  kept",
    ]
    for where in ("fit", "held_out"):
        for when in ("before", "after"):
            m = summary[where][when]
            names = {"fit": "fit tiles", "held_out": f"{summary['held_out_tiles']} held out"}
            label = f"{names[where]} {when}"
            lines.append(
                f"{label:<20}{m['recall']:>8.3f} {m['precision']:>9.3f} {m['f1']:>6.3f}  "
                f"{m['found']:>5}/{m['annotated']:<9} {m['kept']:>5}"
            )
    lines.append(f"changed          {', '.join(f'{k}={v}' for k, v in summary['changed'].items()) or 'nothing'}")
    lines.append(f"config           {summary['out']}")
    print_summary(args, summary, lines)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from activessf_engine.report import build_report

    page = build_report(args.store, args.out)
    summary = {"store": str(args.store), "report": str(page)}
    print_summary(args, summary, [f"report           {page}"])
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from activessf_engine.demo import DEMO_FEATURES, SAMPLE_DATA, run_demo

    summary = run_demo(args.out, device=args.device, progress=not args.quiet)
    filtered, selected = summary["filter"], summary["select"]
    lines = [
        f"sample data      {SAMPLE_DATA} (SOURCE.md: licences and attribution)",
        f"filter           {filtered['sources_read']} tiles, {filtered['regions_found']} regions found, "
        f"{filtered['rejected_size']} too small, {filtered['rejected_fill']} under the fill rate, "
        f"{filtered['rois']} kept",
        f"prototypes       {summary['prototypes']['prototypes']} ({summary['prototypes']['labeled']} labeled images, "
        f"model {DEMO_FEATURES['model']}, weights {DEMO_FEATURES['weights']})",
        f"select           {selected['selected']} of {selected['candidates']} candidates kept",
        f"report           {summary['report']}",
        f"wall time        {summary['wall_seconds']:.1f} s",
    ]
    if selected["untrained_weights"]:
        lines.append("WARNING: the demo's features come from an untrained network (--weights random)")
    print_summary(args, summary, lines)
    return 0


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser, tuple[str, ...]], None]) -> None:
    """Register this module's commands on `sub` (the main parser's subparsers); `common` adds the shared flags
    and the config sections' flags."""
    p = sub.add_parser("preview", help="contact sheets (PNG) of a store's ROIs: by source, and by cluster if selected")
    p.add_argument("store", type=Path, help="a store made by `filter` or `select`")
    p.add_argument("--out", type=Path, help="folder for the PNGs (default STORE-preview beside the store)")
    p.add_argument("--rows", type=int, default=12, help="rows (sources) per sheet")
    p.add_argument("--per-row", type=int, default=8, help="ROIs per row")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")

    p = sub.add_parser("demo", help="filter, prototypes, select and report on the sample data shipped with the engine")
    p.add_argument("--out", type=Path, default=Path("activessf-demo"), help="folder for the demo's outputs")
    common(p, ())

    p = sub.add_parser("overlay", help="tiles with their HSV mask, components and kept/rejected boxes with reasons")
    p.add_argument("--input", required=True, type=Path, help="folder of tiles, one image, or a .txt list of paths")
    p.add_argument("--out", required=True, type=Path, help="folder for one PNG per tile")
    p.add_argument("--limit", type=int, default=8, help="only the first N tiles, in path order (default 8)")
    common(p, ("input", "filter"))

    p = sub.add_parser("calibrate", help="fit the filter to a few tiles with boxes round the wanted cells; writes TOML")
    p.add_argument("--input", required=True, type=Path, help="folder of tiles, one image, or a .txt list of paths")
    p.add_argument(
        "--annotations",
        required=True,
        type=Path,
        help="folder of Pascal VOC .xml files, a COCO .json, or a .csv (image,x0,y0,x1,y1[,label]); paired with "
        "the tiles by file name without suffix",
    )
    p.add_argument("--out", required=True, type=Path, help="TOML file to write ([filter] section, for --config)")
    p.add_argument("--label", action="append", help="only boxes with this label (repeatable; default all)")
    p.add_argument("--fit", type=int, default=5, help="annotated tiles to fit on; the rest are held out (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choice of the fit tiles")
    p.add_argument("--iou", type=float, default=0.5, help="IoU at which a kept box matches an annotated one")
    common(p, ("input", "filter"))

    p = sub.add_parser("report", help="one HTML page about a store: sources, rejections, ROIs, clusters, throughput")
    p.add_argument("store", type=Path, help="a store made by `filter` or `select`")
    p.add_argument("--out", type=Path, required=True, help="folder for index.html and its PNGs")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "preview": cmd_preview,
    "report": cmd_report,
    "demo": cmd_demo,
    "overlay": cmd_overlay,
    "calibrate": cmd_calibrate,
}
