"""The commands that show a person what a run did: preview, overlay, report, calibrate, demo.

`add_parsers(sub)` registers them on the main parser (`main.build_parser`); `COMMANDS` maps each name to
its handler. Handlers return the CLI's exit codes and raise ValueError/FileNotFoundError for bad input,
which `main.main` turns into exit 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from activessf_engine.cli.options import TILE_SECTIONS, add_common_flags, add_input_flag, run_config, run_device
from activessf_engine.cli.summary import end_with_selection, print_summary
from activessf_engine.config import STAIN_VALUES, ColourTable


def cmd_preview(args: argparse.Namespace) -> int:
    from activessf_engine.inspect import write_contact_sheets

    out = args.out or args.store.parent / f"{args.store.name}-preview"
    sheets = write_contact_sheets(args.store, out, rows=args.rows, per_row=args.per_row)
    summary = {
        "store": str(args.store),
        "sheets": [str(p) for p in sheets.paths],
        "sources_shown": sheets.sources_shown,
        "sources_with_rois": sheets.sources_with_rois,
    }
    more = " (--rows N shows more)" if sheets.sources_shown < sheets.sources_with_rois else ""
    lines = [
        f"sources shown    {sheets.sources_shown} of {sheets.sources_with_rois} sources with ROIs{more}",
        *(f"contact sheet    {p}" for p in sheets.paths),
    ]
    print_summary(args, summary, lines)
    return 0


def cmd_overlay(args: argparse.Namespace) -> int:
    from activessf_engine.inspect import write_overlays

    tiles = write_overlays(args.input, args.out, run_config(args), args.limit, run_device(args))
    lines = [
        f"overlay          {t['overlay']}: kept {t['kept']}, fill rate {t['fill rate']}, too small {t['too small']}"
        for t in tiles
    ]
    print_summary(args, {"overlays": tiles}, lines)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from activessf_engine.inspect import DEFAULT_STAINS, Objective, calibrate

    labels = set(args.label) if args.label else None
    summary = calibrate(
        args.input,
        args.annotations,
        args.out,
        run_config(args),
        labels=labels,
        fit=args.fit,
        seed=args.seed,
        iou=args.iou,
        objective=Objective.parse(args.objective),
        stains=tuple(dict.fromkeys(args.stain or DEFAULT_STAINS)),
        device=run_device(args),
        progress=not args.quiet,
    )
    lines = [
        f"fitted on        {len(summary['fit_tiles'])} tiles ({summary['configurations_tried']} configurations tried, "
        f"best {summary['objective']})",
        f"{'':23}{'recall':>8} {'precision':>9} {'F1':>6}  found/annotated  kept",
    ]
    held = (
        "left out 1 by 1" if summary["scored_by"] == "leave_one_tile_out" else f"{summary['held_out_tiles']} held out"
    )
    names = {"fit": "fit tiles", "held_out": held}
    for where in ("fit", "held_out"):
        for when in ("before", "after"):
            m = summary[where][when]
            label = f"{names[where]} {when}"
            lines.append(
                f"{label:<23}{m['recall']:>8.3f} {m['precision']:>9.3f} {m['f1']:>6.3f}  "
                f"{m['found']:>5}/{m['annotated']:<9} {m['kept']:>5}"
            )
    changed = {k: _in_brief(k, v) for k, v in summary["changed"].items()}
    lines.append(f"changed          {', '.join(f'{k}={v}' for k, v in changed.items()) or 'nothing'}")
    lines.append(f"config           {summary['out']}")
    print_summary(args, summary, lines)
    return 0


def _in_brief(name: str, value: Any) -> Any:
    """A changed setting as the summary's line shows it: what a measured one is, its numbers being in the TOML."""
    if name == "stain":
        return value["method"]
    if name == "cell_colours":
        packed = ColourTable(**value).packed()
        return f"a table of {int.from_bytes(packed).bit_count()} of {len(packed) * 8} colour cells"
    return value


def cmd_report(args: argparse.Namespace) -> int:
    from activessf_engine.inspect import build_report

    page = build_report(args.store, args.out)
    summary = {"store": str(args.store), "report": str(page)}
    print_summary(args, summary, [f"report           {page}"])
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from activessf_engine.cli.demo import DEMO_FEATURES, SAMPLE_DATA, run_demo

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
    warnings = [*summary["prototypes"]["warnings"], *selected["warnings"]]
    return end_with_selection(args, summary, lines, warnings, selected) or 0


def add_parsers(sub: Any) -> None:
    """Register this module's commands on `sub` (the main parser's subparsers)."""
    p = sub.add_parser("preview", help="contact sheets (PNG) of a store's ROIs: by source, and by cluster if selected")
    p.add_argument("store", type=Path, help="a store made by `filter` or `select`")
    p.add_argument("--out", type=Path, help="folder for the PNGs (default STORE-preview beside the store)")
    p.add_argument("--rows", type=int, default=12, help="rows (sources) per sheet")
    p.add_argument("--per-row", type=int, default=8, help="ROIs per row")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")

    p = sub.add_parser("demo", help="filter, prototypes, select and report on the sample data shipped with the engine")
    p.add_argument("--out", type=Path, default=Path("activessf-demo"), help="folder for the demo's outputs")
    add_common_flags(p, ())

    p = sub.add_parser("overlay", help="tiles with their HSV mask, components and kept/rejected boxes with reasons")
    add_input_flag(p)
    p.add_argument("--out", required=True, type=Path, help="folder for one PNG per tile")
    p.add_argument("--limit", type=int, default=8, help="only the first N tiles, in path order (default 8)")
    add_common_flags(p, TILE_SECTIONS)

    p = sub.add_parser("calibrate", help="fit the filter to a few tiles with boxes round the wanted cells; writes TOML")
    add_input_flag(p)
    p.add_argument(
        "--annotations",
        required=True,
        type=Path,
        help="folder of Pascal VOC .xml files, a COCO .json, or a .csv (image,x0,y0,x1,y1[,label]); paired with "
        "the tiles by file name without suffix",
    )
    p.add_argument("--out", required=True, type=Path, help="TOML file to write ([filter] section, for --config)")
    p.add_argument("--label", action="append", help="only boxes with this label (repeatable; default all)")
    p.add_argument(
        "--fit",
        type=int,
        default=5,
        help="annotated tiles to fit on; the rest are held out (default 5); with no more tiles than this, the fit "
        "is on all and each tile is scored by a fit on the others (leave one tile out)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random choice of the fit tiles")
    p.add_argument("--iou", type=float, default=0.5, help="IoU at which a kept box matches an annotated one")
    p.add_argument(
        "--objective",
        nargs="+",
        default=["f1"],
        metavar="WORD",
        help="what the search maximizes: `f1` (default), or `recall-at-precision P`: the best recall among the "
        "settings with precision >= P on the fit tiles (the best F1 where none reaches P; with a few annotated "
        "cells a high P allows no false box there and ranks only strict settings first)",
    )
    p.add_argument(
        "--stain",
        action="append",
        choices=tuple(STAIN_VALUES),
        help="a stain normalization the search may choose, with a reference measured on the fit tiles (repeatable, "
        "e.g. --stain none --stain macenko; default none: the learned colours fit the stain)",
    )
    add_common_flags(p, TILE_SECTIONS)

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
