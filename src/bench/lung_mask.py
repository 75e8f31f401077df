"""The HU-only lung mask (``lung_mask_from_hu``, whole-scan mode when a scan ships no lung
mask) against LUNA16's own lung masks, seen whole and through tight fields of view.

For the first ``n_scans`` scans of a LUNA16-layout folder with ``seg-lungs-LUNA16/`` (in
subset order: subset0 first) it computes the mask on four crops of the scan and its Dice
against the shipped mask on the same crop:

* ``a``: the whole scan;
* ``b``: the central 70 % in x (the lungs touch both lateral borders);
* ``c``: inside the chest wall on all sides in-plane: the lungs' y-x bounding box shrunk
  by 10 % of its size on every side (the lungs touch all four borders), all slices;
* ``d``: a box inside one lung (the larger; its bounding box shrunk by 10 % in z and 15 %
  in y and x) widened by ~15 mm of mediastinum on its medial side.

The truth is every labelled voxel of seg-lungs (> 0: lungs 3 and 4 and trachea 5), since
``lung_mask_from_hu`` keeps the trachea and main bronchi with the lungs they join. The input
is the native grid, HU clipped to the cache's stored range (``cache.hu_clip``), as in
``to_model_space``. The seconds are wall time of ``lung_mask_from_hu`` alone (one call per
scan and field of view; reading and cropping excluded).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from src.bench.report import markdown
from src.config import CacheConfig
from src.data.geometry import Geometry
from src.data.io import read_image
from src.data.preprocess import lung_mask_from_hu
from src.errors import DataError
from src.utils import atomic_to_csv, progress

LUNG_LABELS = (3, 4)                  # seg-lungs-LUNA16: the two lungs (5: trachea)
FIELDS = {
    "a": "whole scan",
    "b": "central 70 % in x (lungs on both lateral borders)",
    "c": "inside the chest wall on all sides (lungs on all four borders)",
    "d": "inside one lung + ~15 mm of mediastinum",
}
CENTRAL_X = (0.15, 0.85)              # (b): the kept x range, shares of the width (the central 70 %)
WALL_INSET = 0.10                     # (c): inset of the lungs' y-x box, share of its size per side
LUNG_INSET_Z, LUNG_INSET_YX = 0.10, 0.15   # (d): inset of one lung's box, share of its size per side
MEDIASTINUM_MM = 15.0                 # (d): how far the box reaches past the lung's medial edge


def _box(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last + 1) of ``mask``'s True voxels along each axis."""
    return [(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask)]


def _inset(lo: int, hi: int, share: float) -> slice:
    cut = int(share * (hi - lo))
    return slice(lo + cut, hi - cut)


def fields_of_view(labels: np.ndarray, geometry: Geometry) -> dict[str, tuple[slice, slice, slice]]:
    """The (z, y, x) crop of each field of view (``FIELDS``), from the seg-lungs labels."""
    Z, Y, X = labels.shape
    lungs = np.isin(labels, LUNG_LABELS)
    if not lungs.any():
        raise DataError(f"no lung voxels (labels {LUNG_LABELS}) in the lung mask")
    _, (y0, y1), (x0, x1) = _box(lungs)
    out = {"a": (slice(0, Z), slice(0, Y), slice(0, X)),
           "b": (slice(0, Z), slice(0, Y), slice(int(CENTRAL_X[0] * X), int(CENTRAL_X[1] * X))),
           "c": (slice(0, Z), _inset(y0, y1, WALL_INSET), _inset(x0, x1, WALL_INSET))}
    side = max(LUNG_LABELS, key=lambda label: int((labels == label).sum()))   # the larger; a tie: the first
    (z0, z1), (y0, y1), (x0, x1) = _box(labels == side)
    inner = _inset(x0, x1, LUNG_INSET_YX)
    reach = int(round(MEDIASTINUM_MM / geometry.spacing_xyz[0]))
    if (x0 + x1) / 2 < X / 2:         # lung on the image's left: the mediastinum lies to its right
        xs = slice(inner.start, min(X, x1 + reach))
    else:
        xs = slice(max(0, x0 - reach), inner.stop)
    out["d"] = (_inset(z0, z1, LUNG_INSET_Z), _inset(y0, y1, LUNG_INSET_YX), xs)
    return out


def dice(mask: np.ndarray, truth: np.ndarray) -> float:
    total = int(mask.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((mask & truth).sum()) / total


def measure_scan(hu: np.ndarray, labels: np.ndarray, geometry: Geometry, fn=lung_mask_from_hu) -> list[dict]:
    """One row per field of view: Dice of ``fn`` against ``labels > 0``, shares, seconds."""
    rows = []
    for name, box in fields_of_view(labels, geometry).items():
        crop = geometry.crop([s.start for s in box], [s.stop - s.start for s in box])
        image = np.ascontiguousarray(hu[box])
        start = time.perf_counter()
        mask = fn(image, crop)
        seconds = time.perf_counter() - start
        truth = labels[box] > 0
        rows.append(dict(field_of_view=name, shape_zyx="x".join(map(str, image.shape)), dice=dice(mask, truth),
                         mask_share=float(mask.mean()), truth_share=float(truth.mean()), seconds=seconds))
    return rows


def select_scans(data: Path, n_scans: int) -> list:
    """The first ``n_scans`` scans with a seg-lungs mask, in subset order (subset0 first)."""
    from src.data.luna16 import read_luna16

    records = sorted((r for r in read_luna16(data) if r.lung_path is not None), key=lambda r: str(r.image_path))
    if not records:
        raise DataError(f"{data}: no scan has a lung mask under seg-lungs-LUNA16/")
    return records[:n_scans]


def summarise(per_scan: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for name, what in FIELDS.items():
        g = per_scan[per_scan["field_of_view"] == name]
        rows.append({"field of view": f"({name}) {what}", "n scans": len(g), "mean Dice": g["dice"].mean(),
                     "min Dice": g["dice"].min(), "empty masks": int((g["mask_share"] == 0).sum()),
                     "s per scan": g["seconds"].mean()})
    return pd.DataFrame(rows)


def run_lung_mask_bench(data: Path, n_scans: int, out: Path) -> str:
    """Writes ``out``/per_scan.csv and ``out``/summary.csv; returns the summary as Markdown."""
    lo, hi = CacheConfig().hu_clip
    rows = []
    for record in progress(select_scans(data, n_scans), desc="lung mask"):
        hu, geometry = read_image(record.image_path, np.float32)
        labels, _ = read_image(record.lung_path)
        if labels.shape != hu.shape:
            raise DataError(f"{record.lung_path}: shape {labels.shape} differs from its scan's {hu.shape}")
        for row in measure_scan(np.clip(hu, lo, hi), labels, geometry):
            rows.append(dict(seriesuid=record.seriesuid, **row))
    per_scan = pd.DataFrame(rows)
    summary = summarise(per_scan)
    atomic_to_csv(per_scan, out / "per_scan.csv", float_format="%.4g")
    atomic_to_csv(summary, out / "summary.csv", float_format="%.4g")
    return markdown(summary)
