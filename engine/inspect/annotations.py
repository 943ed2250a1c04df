"""Boxes drawn by a person round the cells they want, read from Pascal VOC XML, COCO JSON or CSV; and the
one-to-one IoU matching that scores the filter's boxes against them.

Every reader returns {image stem: (n, 4) int64 boxes (x0, y0, x1, y1)} for the labels asked for, plus the
labels it saw (so that a label that matches nothing can be named in the error).
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

Boxes = dict[str, np.ndarray]
CSV_COLUMNS = {  # accepted spellings of each CSV column
    "image": ("image", "filename", "file", "image_id", "path"),
    "x0": ("x0", "xmin", "x_min", "left"),
    "y0": ("y0", "ymin", "y_min", "top"),
    "x1": ("x1", "xmax", "x_max", "right"),
    "y1": ("y1", "ymax", "y_max", "bottom"),
    "label": ("label", "class", "name", "category"),
}


def _stack(found: dict[str, list[list[float]]]) -> Boxes:
    return {k: np.asarray(np.rint(v), dtype=np.int64).reshape(-1, 4) for k, v in found.items()}


def _valid(box: list[float]) -> bool:
    return box[2] > box[0] and box[3] > box[1]


def read_voc(files: list[Path], labels: set[str] | None) -> tuple[Boxes, set[str]]:
    """Pascal VOC XML files, one per image (its <filename>, else the XML's own name)."""
    found: dict[str, list[list[float]]] = {}
    seen: set[str] = set()
    for path in files:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as exc:
            raise ValueError(f"{path} is not Pascal VOC XML: {exc}") from None
        stem = Path((root.findtext("filename") or path.name).strip()).stem
        boxes = found.setdefault(stem, [])
        for obj in root.iter("object"):
            name = (obj.findtext("name") or "").strip()
            seen.add(name)
            box = [float(obj.findtext(f"bndbox/{t}") or 0) for t in ("xmin", "ymin", "xmax", "ymax")]
            if (labels is None or name in labels) and _valid(box):
                boxes.append(box)
    return _stack(found), seen


def read_coco(path: Path, labels: set[str] | None) -> tuple[Boxes, set[str]]:
    """A COCO JSON file: `images` (id, file_name), `categories` (id, name), `annotations` (bbox x, y, w, h)."""
    try:
        data = json.loads(path.read_text())
        names = {c["id"]: c["name"] for c in data.get("categories", [])}
        images = {i["id"]: Path(i["file_name"]).stem for i in data["images"]}
        annotations = data.get("annotations", [])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not COCO JSON (images, categories, annotations): {exc}") from None
    found: dict[str, list[list[float]]] = {stem: [] for stem in images.values()}
    for ann in annotations:
        name = names.get(ann.get("category_id"), str(ann.get("category_id")))
        x, y, w, h = ann["bbox"]
        box = [x, y, x + w, y + h]
        if (labels is None or name in labels) and _valid(box):
            found[images[ann["image_id"]]].append(box)
    return _stack(found), set(names.values())


def read_csv(path: Path, labels: set[str] | None) -> tuple[Boxes, set[str]]:
    """A CSV of boxes with a header: image, x0, y0, x1, y1 and optionally label (other spellings in
    CSV_COLUMNS). An image listed with no box of the labels asked for counts as annotated and empty."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = {h.strip().lower(): h for h in reader.fieldnames or []}
        columns = {key: next((header[a] for a in aliases if a in header), None) for key, aliases in CSV_COLUMNS.items()}
        missing = [k for k, v in columns.items() if v is None and k != "label"]
        if missing:
            raise ValueError(f"{path}: no column for {missing}; the header needs image,x0,y0,x1,y1[,label]")
        found: dict[str, list[list[float]]] = {}
        seen: set[str] = set()
        for row in reader:
            boxes = found.setdefault(Path(row[columns["image"]]).stem, [])
            name = row[columns["label"]].strip() if columns["label"] else ""
            seen.add(name)
            try:
                box = [float(row[columns[k]]) for k in ("x0", "y0", "x1", "y1")]
            except ValueError:
                continue  # a row without a box marks an image with no cell
            if (labels is None or not columns["label"] or name in labels) and _valid(box):
                boxes.append(box)
    return _stack(found), seen


def read_annotations(path: str | Path, labels: set[str] | None = None) -> Boxes:
    """The boxes of `labels` (all labels if None) per image stem, from a folder of VOC XML files, a COCO
    .json file, a .csv file, or a folder holding one .json or .csv."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--annotations {path} does not exist")
    if path.is_dir():
        xmls = sorted(path.glob("*.xml"))
        others = sorted(p for p in path.iterdir() if p.suffix.lower() in (".json", ".csv"))
        if xmls:
            boxes, seen = read_voc(xmls, labels)
        elif len(others) == 1:
            return read_annotations(others[0], labels)
        else:
            raise ValueError(f"{path} holds no Pascal VOC .xml files and not exactly one .json or .csv of boxes")
    elif path.suffix.lower() == ".json":
        boxes, seen = read_coco(path, labels)
    elif path.suffix.lower() == ".csv":
        boxes, seen = read_csv(path, labels)
    elif path.suffix.lower() == ".xml":
        boxes, seen = read_voc([path], labels)
    else:
        raise ValueError(f"--annotations {path}: expected VOC .xml files, a COCO .json or a .csv of boxes")
    if labels and not labels & seen and seen - {""}:
        raise ValueError(f"no box labelled {sorted(labels)} in {path}; labels found: {sorted(seen - {''})}")
    return boxes


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) IoU of (n, 4) and (m, 4) boxes (x0, y0, x1, y1), x1 and y1 exclusive."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def greedy_match(iou: np.ndarray, threshold: float) -> dict[int, int]:
    """One-to-one row -> column matching of pairs with IoU >= threshold, highest IoU first."""
    rows, cols = np.nonzero(iou >= threshold)
    order = np.argsort(-iou[rows, cols], kind="stable")
    matched: dict[int, int] = {}
    taken: set[int] = set()
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in matched and c not in taken:
            matched[r] = c
            taken.add(c)
    return matched


def matched(iou: np.ndarray, threshold: float) -> tuple[int, float]:
    """The pairs of a (found, truth) IoU matrix that `greedy_match` makes: how many, and the sum of their IoUs."""
    if not iou.size:
        return 0, 0.0
    pairs = greedy_match(iou, threshold)
    return len(pairs), float(sum(iou[r, c] for r, c in pairs.items()))


def match_boxes(found: np.ndarray, truth: np.ndarray, threshold: float) -> tuple[int, float]:
    """How many of the `truth` boxes a one-to-one IoU >= threshold matching gives a `found` box, and the sum
    of the IoUs of those pairs."""
    if not len(found) or not len(truth):
        return 0, 0.0
    return matched(iou_matrix(found, truth), threshold)
