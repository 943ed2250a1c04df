"""`report`: one self-contained HTML page about a store, with its PNG plots and contact sheets beside it.

The page needs no network: no script, no web font, no remote image; every image is a file in the same
folder. What it shows, the answer first: what was kept of what was found, why the rest was rejected (with
the thresholds used) and any warning; then the store; the sources read and skipped (with reasons); ROIs per
source; the filter's rejection counts; overlays of a few input tiles (every region's verdict drawn);
contact sheets; for a selected store the clusters' n_i, LB, UB and thresholds and the distance histograms;
the throughput of each stage of every recorded run; the config.
"""

from __future__ import annotations

import html
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from activessf_engine.config import EngineConfig, dumps_toml, from_dict
from activessf_engine.filter import REJECTION_COUNTS
from activessf_engine.inspect import plots
from activessf_engine.inspect.contact_sheets import StoredDecisions, candidates_of, read_summary, write_contact_sheets
from activessf_engine.inspect.overlay import write_overlays
from activessf_engine.store import RoiStore

log = logging.getLogger(__name__)

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 2px 8px; }
th { background: #f0f0f0; text-align: left; } td.n { text-align: right; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.3em 0; }
.answer { background: #eef4ee; border-left: 4px solid #3a9a4f; padding: 0.4em 1em; font-size: 1.1em; }
.warning { background: #fbeeee; border-left: 4px solid #c0504d; padding: 0.4em 1em; }
"""
SKIPPED_LISTED = 200  # rows of the skipped-sources table; the rest are counted
OVERLAY_TILES = 3  # input tiles drawn with every region's verdict
DISTANCE = (
    "Distance: the Euclidean distance, in the backbone's feature space, from a candidate's features to the "
    "nearest prototype (Eq. 7). LB and UB are the least and greatest distance of a cluster's labeled images to "
    "its prototype; the threshold lies between them (Eq. 8), and a candidate is kept when its distance is at "
    "most its cluster's threshold (Eq. 9)."
)


def _table(headers: list[str] | None, rows: list[list[Any]]) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>" if headers else ""
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{v}</td>' if isinstance(v, int | float) else f"<td>{html.escape(str(v))}</td>" for v in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table>{head}{body}</table>"


def _image(path: Path, alt: str) -> str:
    return f'<p><img src="{html.escape(path.name)}" alt="{html.escape(alt)}"></p>'


def rejection_counts(sources: list[dict[str, Any]], limits: dict[str, Any]) -> dict[str, int] | None:
    """Regions found / rejected for size / rejected for fill / kept over the sources read, from the sources
    tables, each named with the threshold used (`limits`: the filter's config); None for a store written
    before the engine recorded rejections."""
    read = [s for s in sources if s["status"] == "ok"]
    if any(name not in s for s in read for name in REJECTION_COUNTS):
        return None
    total = {name: sum(s[name] for s in read) for name in REJECTION_COUNTS}
    return {
        "regions found": total["regions_found"],
        f"rejected: box under min_box = {limits['min_box']} px a side": total["rejected_size"],
        f"rejected: fill rate under min_fill = {limits['min_fill']}": total["rejected_fill"],
        "kept (ROIs)": sum(s["rois"] for s in read),
    }


def _answer(
    store: RoiStore,
    limits: dict[str, Any],
    select: dict[str, Any] | None,
    candidates: RoiStore | None,
    labels: dict[str, str] | None,
) -> str:
    """The first thing on the page: what was kept of what was found, why the rest went, and any warning."""
    sources = store.sources()
    read = sum(s["status"] == "ok" for s in sources)
    skipped = f", {len(sources) - read} skipped (see Sources)" if len(sources) > read else ""
    counts = rejection_counts(sources, limits)
    if counts is None:
        found = f"{sum(s['rois'] for s in sources if s['status'] == 'ok')} ROIs from {read} sources read{skipped}."
    else:
        found_, size, fill, kept = counts.values()
        found = (
            f"Kept <b>{kept} of {found_}</b> regions as ROIs, from {read} sources read{skipped}. Rejected: {size} "
            f"with a bounding box under min_box = {limits['min_box']} px a side, {fill} with a fill rate (region "
            f"pixels / box pixels) under min_fill = {limits['min_fill']}."
        )
    lines = [found]
    warnings = []
    if counts is not None and read and not counts["kept (ROIs)"]:
        warnings.append("no region passed the filter: lower min_fill or min_box, or check the HSV ranges")
    if select is not None:
        lines.append(selection_headline(store, candidates, select, labels))
        warnings += select.get("warnings", [])
    text = [f'<div class="answer">{"".join(f"<p>{line}</p>" for line in lines)}</div>']
    text += [f'<p class="warning">WARNING: {html.escape(w)}</p>' for w in warnings]
    return "".join(text)


def _overlays_section(input_root: str | None, config: EngineConfig, out: Path) -> str:
    """Overlays of the first input tiles: every region's box and verdict, as `overlay` draws them."""
    command = f"activessf-engine overlay --input {html.escape(str(input_root))} --out overlays"
    try:
        if input_root is None:
            raise FileNotFoundError("the store names no input")
        tiles = write_overlays(input_root, out / "overlays", config, OVERLAY_TILES)
    except (FileNotFoundError, ValueError) as exc:
        log.info("no overlays in the report: %s", exc)
        return f"<p>No overlay drawn ({html.escape(str(exc))}); draw them with <code>{command}</code>.</p>"
    text = [
        f"<p>The first {len(tiles)} input tiles with every region the filter found: its box, and whether it was "
        f"kept or why not (too small, fill rate). More: <code>{command} --limit N</code>.</p>",
        "<p>",
    ]
    for tile in tiles:
        name = f"overlays/{Path(tile['overlay']).name}"
        alt = f"{tile['source']}: kept {tile['kept']}"
        text.append(f'<a href="{html.escape(name)}"><img src="{html.escape(name)}" alt="{html.escape(alt)}"></a>')
    return "".join([*text, "</p>"])


def _sources_section(store: RoiStore, limits: dict[str, Any], out: Path) -> str:
    sources = store.sources()
    read = [s for s in sources if s["status"] == "ok"]
    skipped = [s for s in sources if s["status"] != "ok"]
    reasons = Counter(s["error"].split(":", 1)[0] for s in skipped)
    parts = f"{len(store.parts)} of {len(store.meta.get('plan', []))} parts committed"
    text = [
        f"<p>{len(sources)} sources in the committed parts ({parts}): {len(read)} read, {len(skipped)} skipped.</p>"
    ]
    if skipped:
        text.append(_table(["reason", "sources"], [[r, n] for r, n in reasons.most_common()]))
        rows = [[s["path"], s["error"]] for s in skipped[:SKIPPED_LISTED]]
        more = len(skipped) - len(rows)
        text.append(_table(["skipped source", "why"], rows) + (f"<p>... and {more} more.</p>" if more else ""))
    if read:
        rois = [s["rois"] for s in read]
        text.append(_image(plots.rois_per_source(rois, out / "rois-per-source.png"), "ROIs per source"))
    counts = rejection_counts(sources, limits)
    text.append("<h2>Rejection counts</h2>")
    if counts is None:
        text.append("<p>Not recorded: this store was written before the engine counted rejections.</p>")
    else:
        text.append(_table(["", "count"], [[k, v] for k, v in counts.items()]))
        if counts["regions found"]:
            text.append(_image(plots.rejections(counts, out / "rejections.png"), "rejection counts"))
        empty = [s["path"] for s in read if not s["rois"]]
        if empty:
            shown = ", ".join(empty[:SKIPPED_LISTED]) + (" ..." if len(empty) > SKIPPED_LISTED else "")
            text.append(f"<p>{len(empty)} source(s) read gave no ROI: {html.escape(shown)}</p>")
    return "".join(text)


def _throughput_section(runs: list[dict[str, Any]], select: dict[str, Any] | None, out: Path) -> str:
    text = []
    if runs:
        rows = [
            [
                i + 1,
                r.get("device", ""),
                r["sources_read"],
                r["rois"],
                round(r["wall_seconds"], 2),
                r["images_per_second"],
                r["megapixels_per_second"],
            ]
            for i, r in enumerate(runs)
        ]
        text.append("<p>Filter runs recorded in the candidates store:</p>")
        text.append(_table(["run", "device", "sources read", "ROIs", "wall s", "images/s", "megapixels/s"], rows))
        stages: Counter = Counter()
        for r in runs:
            stages.update(r.get("stage_seconds", {}))
        if stages:
            text.append(_image(plots.stage_seconds(dict(stages), out / "filter-stages.png"), "filter stages"))
    else:
        text.append("<p>No filter run recorded in the store (written before the engine recorded runs).</p>")
    if select is not None:
        rows = [[k, v] for k, v in select["seconds"].items()]
        rows += [["features per second", select.get("features_per_second") or ""]]
        rows += [["assignments per second", select.get("assignments_per_second") or ""]]
        text.append("<p>The select run:</p>" + _table(["stage", "seconds"], rows))
        text.append(_image(plots.stage_seconds(select["seconds"], out / "select-stages.png"), "select stages"))
    return "".join(text)


RARE_CLASSES = 3  # the rare classes of the headline: the fewest among the candidates of known class


def _class_counts(store: RoiStore, labels: dict[str, str]) -> Counter:
    return Counter(labels[n] for n in (Path(p).name for p in store.columns()["source_path"]) if n in labels)


def selection_headline(
    selected: RoiStore, candidates: RoiStore | None, select: dict[str, Any], labels: dict[str, str] | None = None
) -> str:
    """One sentence (HTML) for the top of the page: selected X of Y; with `labels` (source file name -> class),
    the rare classes' share of the candidates of known class before and after."""
    total = select["candidates"]
    share = f" ({select['selected'] / total:.0%})" if total else ""
    text = (
        f"Selected {select['selected']} of {total} candidates{share}: those within their cluster's distance "
        f"threshold ({select['strategy']}, alpha {select['alpha']})."
    )
    if labels and candidates is not None:
        before, after = _class_counts(candidates, labels), _class_counts(selected, labels)
        rare = [name for name, _ in sorted(before.items(), key=lambda item: (item[1], item[0]))[:RARE_CLASSES]]
        if before:
            rare_before, rare_after = sum(before[r] for r in rare), sum(after[r] for r in rare)
            known_before, known_after = sum(before.values()), sum(after.values())
            after_share = f"{rare_after / known_after:.0%}" if known_after else "none kept"
            text += (
                f" Rare classes ({', '.join(rare)}) are {rare_before} of the {known_before} candidates of known class "
                f"({rare_before / known_before:.0%}) before and {rare_after} of {known_after} ({after_share}) after."
            )
    return html.escape(text)


def _selection_section(store: RoiStore, select: dict[str, Any], out: Path) -> str:
    clusters = select["clusters"]
    rows = [
        [
            c["cluster"],
            c["dominant_class"],
            c["n"],
            c["lb"],
            c["ub"],
            c.get("threshold", ""),
            c["candidates"],
            c["selected"],
            "yes" if c.get("degenerate") else "",
        ]
        for c in clusters
    ]
    text = [
        f"<p>Strategy {html.escape(select['strategy'])}, alpha {select['alpha']}, {select['threshold_mode']} "
        f"thresholds, {select['bounds']} bounds: {select['selected']} of {select['candidates']} candidates kept.</p>",
        _table(["cluster", "dominant class", "n_i", "LB", "UB", "threshold", "candidates", "kept", "degenerate"], rows),
        *(f"<p><b>Warning.</b> {html.escape(w)}</p>" for w in select.get("warnings", [])),
        _image(plots.cluster_bounds(clusters, out / "clusters.png"), "clusters"),
    ]
    if select.get("degenerate_clusters"):
        text.append(f"<p><b>Degenerate clusters.</b> {html.escape(select['degenerate_clusters']['message'])}.</p>")
    if select.get("untrained_weights"):
        text.append("<p><b>The features came from an untrained network (--weights random).</b></p>")
    decisions = StoredDecisions.load(store.root)
    with_candidates = [c for c in clusters if c["candidates"]]
    if with_candidates:
        path = plots.distance_histograms(decisions.cluster, decisions.distance, with_candidates, out / "distances.png")
        text.append(_image(path, "distance histograms"))
    empty = [str(c["cluster"]) for c in clusters if not c["candidates"]]
    if empty:
        text.append(f"<p>No candidate is nearest to the prototype of cluster(s) {', '.join(empty)}.</p>")
    text.append(f"<p>{DISTANCE}</p>")
    return "".join(text)


def build_report(store_path: str | Path, out_dir: str | Path, labels: dict[str, str] | None = None) -> Path:
    """Write the report of the store at `store_path` into `out_dir` (index.html and PNGs); returns the page.
    `labels` (source file name -> class), where known, give a selected store's headline the rare share."""
    store = RoiStore(store_path)
    out = Path(out_dir)
    if out.resolve() == store.root.resolve() or store.root.resolve() in out.resolve().parents:
        raise ValueError(f"--out {out_dir} lies inside the store {store_path}: choose a folder outside it")
    out.mkdir(parents=True, exist_ok=True)
    select = read_summary(store) if store.kind == "selected" else None
    candidates = candidates_of(store) if select is not None else store
    runs = candidates.meta.get("runs", []) if candidates is not None else []
    sheets = write_contact_sheets(store.root, out)
    meta = store.meta
    filtered = (candidates or store).meta  # the filter's own config and input, also for a selected store
    config = from_dict(EngineConfig, filtered.get("config", {}))
    limits = {"min_box": config.filter.min_box, "min_fill": config.filter.min_fill}
    sections = [
        f"<h1>activessf-engine report: {html.escape(str(store.root))}</h1>",
        _answer(store, limits, select, candidates, labels),
        _table(
            None,
            [
                ["store kind", meta["kind"]],
                ["ROIs", len(store)],
                ["engine version", meta.get("engine_version", "?")],
                ["input", meta.get("input_root", meta.get("candidates", ""))],
            ],
        ),
        "<h2>Sources</h2>",
        _sources_section(store, limits, out),
        "<h2>Overlays</h2>",
        _overlays_section(filtered.get("input_root"), config, out),
        "<h2>Contact sheets</h2>",
        f"<p>{sheets.sources_shown} of the {sheets.sources_with_rois} sources with ROIs are shown by source.</p>",
        *(_image(p, p.stem) for p in sheets.paths),
    ]
    if select is not None:
        sections += ["<h2>Selection</h2>", _selection_section(store, select, out)]
    sections += ["<h2>Throughput</h2>", _throughput_section(runs, select, out)]
    config = html.escape(dumps_toml(meta.get("config", {})))
    sections += ["<h2>Config</h2>", f"<p>As TOML, for <code>--config</code>:</p><pre>{config}</pre>"]
    page = out / "index.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>activessf-engine report</title>"
        f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>",
        encoding="utf-8",
    )
    return page
