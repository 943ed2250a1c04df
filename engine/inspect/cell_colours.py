"""The colours of the cells a person boxed: a table of them (config.ColourTable) learned from tiles and boxes.

A colour is a cell's when it is at least 2^level times likelier inside the boxes than outside them, counted over
the cells of the table (each channel >> 3) in the blurred, normalized tile G. `calibrate` searches the level.
Not in the paper: it replaces the paper's HSV ranges (II-B2) where they miss other stains and scanners.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
import torch

from activessf_engine.config import ColourTable
from activessf_engine.kernels import table_index

LEVELS = (1.0, 2.0, 3.0, 4.0, 5.0)  # log2 of how much likelier a colour of the table is inside the boxes than out
# The colour histograms are smoothed by a Gaussian of this many table cells (8 levels each): 5 tiles leave most
# cells empty, and a colour next to a cell's is a cell's. Chosen on BCCD's val split (1.0 to 3.0 tried).
HISTOGRAM_SIGMA = 2.0


def colour_histograms(smooth: torch.Tensor, boxes: np.ndarray) -> np.ndarray:
    """(2, cells) pixel counts of each colour-table cell in G's (H, W, 3) pixels: inside any of `boxes` (x0, y0, x1,
    y1; exclusive ends), and outside all of them."""
    index = table_index(smooth).cpu().numpy()
    inside = np.zeros(index.shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        inside[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True  # a box past the edge: its part inside
    cells = ColourTable.CELLS
    return np.stack([np.bincount(index[inside], minlength=cells), np.bincount(index[~inside], minlength=cells)])


def enrichment(histograms: np.ndarray) -> np.ndarray | None:
    """log2 of how much likelier each colour cell is inside the boxes than outside them, from (2, cells) counts
    smoothed over colour space by HISTOGRAM_SIGMA cells; both shares are raised by one inside pixel's share, so
    that a colour seen a few times inside and never outside is not certain. None without pixels on both sides."""
    if not histograms[0].sum() or not histograms[1].sum():
        return None
    shape = (1 << ColourTable.BITS,) * 3
    inside, outside = (ndi.gaussian_filter(h.reshape(shape).astype(np.float64), HISTOGRAM_SIGMA) for h in histograms)
    prior = 1.0 / inside.sum()
    return np.log2((inside / inside.sum() + prior) / (outside / outside.sum() + prior)).ravel()


def colour_table(enriched: np.ndarray | None, level: float) -> ColourTable:
    """The table of the cells at least 2^level times likelier inside the boxes than out (none set without any)."""
    cells = np.zeros(ColourTable.CELLS, dtype=bool) if enriched is None else enriched >= level
    return ColourTable.of_packed(np.packbits(cells).tobytes())
