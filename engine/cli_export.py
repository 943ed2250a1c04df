"""`activessf-engine export`: a store's ROIs as an ImageFolder or WebDataset tars, with the metadata beside."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from activessf_engine.export import EXPORT_FORMATS, IMAGE_FORMATS, export_store
from activessf_engine.query import RoiQuery


def _clusters(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected cluster numbers such as 1,4,7, got {text!r}") from None


def add_parsers(sub: Any) -> None:
    """Add the `export` command to the CLI's subparsers."""
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


def cmd_export(args: argparse.Namespace) -> int:
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
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"exported {summary['rois']} of {summary['store_rois']} ROIs to {summary['out']} ({args.format})")
    return 0


COMMANDS = {"export": cmd_export}
