"""The commands that check, list and export a store: verify, manifest, export."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
from pathlib import Path
from typing import Any

from activessf_engine.cli.options import EXIT_FAILED, EXIT_OK
from activessf_engine.cli.summary import print_summary, what_next


def _clusters(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected cluster numbers such as 1,4,7, got {text!r}") from None


def add_parsers(sub: Any) -> None:
    """Register verify, manifest and export on `sub` (the main parser's subparsers)."""
    from activessf_engine.feed import EXPORT_FORMATS, IMAGE_FORMATS

    p = sub.add_parser("verify", help="check a store and say what is wrong with it")
    p.add_argument("store", type=Path)
    p.add_argument("--deep", action="store_true", help="also read every ROI and compare it with its checksum")
    p.add_argument(
        "--repair",
        action="store_true",
        help="move damaged parts of a candidates store to STORE/quarantine/ (a resume then redoes them)",
    )
    p.add_argument("--json", action="store_true", help="print the findings as JSON")

    p = sub.add_parser("manifest", help="print the per-ROI table of a store as CSV")
    p.add_argument("store", type=Path)
    p.add_argument("--output", type=Path, help="write to this file instead of stdout")

    p = sub.add_parser("export", help="write a store's ROIs as an ImageFolder or WebDataset tars, with metadata.csv")
    p.add_argument("store", type=Path, help="a candidates or selected store")
    p.add_argument("--out", required=True, type=Path, help="folder to create (ImageFolder: OUT/train/<class>/)")
    p.add_argument("--format", default="imagefolder", choices=EXPORT_FORMATS, help="file layout")
    p.add_argument("--image-format", default="png", choices=IMAGE_FORMATS, help="png is lossless")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality, 1-100")
    p.add_argument("--samples-per-tar", type=int, default=1000, help="ROIs per tar (webdataset)")
    p.add_argument("--clusters", type=_clusters, help="only ROIs of these prototype clusters, e.g. 1,4,7")
    p.add_argument("--sources", nargs="+", default=(), metavar="GLOB", help="only ROIs of sources matching one")
    p.add_argument(
        "--exclude-sources", nargs="+", default=(), metavar="GLOB", help="leave out sources matching any (held out)"
    )
    p.add_argument(
        "--selected-by",
        type=Path,
        help="a selected store made from STORE: only the candidates it kept",
    )
    p.add_argument("--threads", type=int, default=0, help="encoder threads (0: one per core)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous export at --out")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_verify(args: argparse.Namespace) -> int:
    from activessf_engine.store import repair_store, verify_store

    if args.repair:
        problems, repaired = repair_store(args.store)
    else:
        problems, repaired = verify_store(args.store, deep=args.deep), []
    if args.json:
        summary = {"store": str(args.store), "ok": not problems, "problems": problems, "repaired": repaired}
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for line in problems or [f"{args.store}: OK"]:
            print(line)
        for line in repaired:
            print(f"repaired: {line}")
    print(what_next(args, {"problems": problems}), file=sys.stderr)
    return EXIT_FAILED if problems else EXIT_OK


def cmd_manifest(args: argparse.Namespace) -> int:
    from activessf_engine.store import RoiStore, manifest_header, manifest_rows, spreadsheet_safe

    store = RoiStore(args.store)
    sink = open(args.output, "w", newline="") if args.output else contextlib.nullcontext(sys.stdout)  # noqa: SIM115
    with sink as out:
        writer = csv.writer(out)
        writer.writerow(manifest_header(store))
        writer.writerows(map(spreadsheet_safe, manifest_rows(store)))
    print(what_next(args, {}), file=sys.stderr)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from activessf_engine.feed import RoiQuery, export_store

    query = RoiQuery(
        clusters=args.clusters,
        sources=tuple(args.sources),
        exclude_sources=tuple(args.exclude_sources),
        selected_by=args.selected_by,
    )
    summary = export_store(
        args.store,
        args.out,
        export_format=args.format,
        image_format=args.image_format,
        quality=args.quality,
        query=query,
        samples_per_tar=args.samples_per_tar,
        threads=args.threads,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print_summary(
        args,
        summary,
        [f"exported         {summary['rois']} of {summary['store_rois']} ROIs to {summary['out']} ({args.format})"],
    )
    return EXIT_OK


COMMANDS = {"verify": cmd_verify, "manifest": cmd_manifest, "export": cmd_export}
