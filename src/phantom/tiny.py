"""A tiny LUNA16-layout dataset made in code, in seconds: box-shaped chests (a soft-tissue
body in air around a -850 HU lung), a few vessels along z and 1-2 spherical nodules per
scan. Not the built-in dataset (``src.phantom.dataset``): it is what the tests and the
bad-input probe run the whole pipeline on, so it must be small and exactly reproducible.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from src.data.geometry import Geometry
from src.data.io import write_image

TINY_SHAPE = (40, 112, 112)            # z, y, x
TINY_SPACING_XYZ = (0.8, 0.8, 1.25)
# nodules.csv: the k-th annotated nodule's attachment (None: an empty cell, read as "unknown")
TINY_ATTACHMENTS = ("isolated", "juxta-pleural", "juxta-vascular", None)


def tiny_scan(rng: np.random.Generator, shape=TINY_SHAPE, spacing_xyz=TINY_SPACING_XYZ,
              n_nodules: int | None = None):
    """-> (int16 image in HU, nodule label mask, lung labels 3/4, [(centre zyx, radius mm)],
    [vessel centre zyx]); ``n_nodules`` None: 1 or 2."""
    z, y, x = np.indices(shape, dtype=np.float32)
    sz, sy, sx = spacing_xyz[::-1]
    image = np.full(shape, -1000.0, np.float32)
    lung = np.zeros(shape, np.uint8)
    body = ((y - shape[1] / 2) / (shape[1] * 0.47)) ** 2 + ((x - shape[2] / 2) / (shape[2] * 0.47)) ** 2 <= 1
    image[body] = 40.0
    inner = ((y - shape[1] / 2) / (shape[1] * 0.40)) ** 2 + ((x - shape[2] / 2) / (shape[2] * 0.40)) ** 2 <= 1
    image[inner] = -850.0
    lung[inner & (x < shape[2] / 2)] = 3
    lung[inner & (x >= shape[2] / 2)] = 4
    vessels = []
    for _ in range(4):
        cy, cx = rng.uniform(0.3, 0.7, 2) * shape[1:]
        tube = ((y - cy) * sy) ** 2 + ((x - cx) * sx) ** 2 <= 1.6 ** 2
        image[tube & inner] = 30.0
        vessels.append((shape[0] / 2, cy, cx))
    labels = np.zeros(shape, np.uint8)
    nodules = []
    margin = min(12.0, 0.4 * shape[0])   # slices kept free above and below a nodule's centre
    mm = np.array([sz, sy, sx])
    for k in range(1, (int(rng.integers(1, 3)) if n_nodules is None else n_nodules) + 1):
        for _ in range(100):   # clear of the nodules already drawn: a merged blob would be two labels cut apart
            r = rng.uniform(2.5, 7.0)
            c = np.array([rng.uniform(margin, shape[0] - margin), *rng.uniform(0.3, 0.7, 2) * shape[1:]])
            if all(np.linalg.norm((c - c2) * mm) > r + r2 + 1.0 for c2, r2 in nodules):
                break
        ball = ((z - c[0]) * sz) ** 2 + ((y - c[1]) * sy) ** 2 + ((x - c[2]) * sx) ** 2 <= r ** 2
        image[ball] = 30.0
        labels[ball] = k
        nodules.append((c, r))
    image += rng.normal(0, 15, shape).astype(np.float32)
    return np.rint(image).astype(np.int16), labels, lung, nodules, vessels


def tiny_geometry(i: int = 0, shape=TINY_SHAPE, spacing_xyz=TINY_SPACING_XYZ) -> Geometry:
    """Scan ``i``'s grid: each scan a little elsewhere in the world."""
    return Geometry.axis_aligned((-44.5 + i, -40.0, -100.0 - 3 * i), spacing_xyz, shape)


def make_tiny_luna(root: Path, n_scans: int = 10, seed: int = 0) -> Path:
    """subset0-2, masks, seg-lungs, annotations.csv, nodules.csv (with attachments),
    candidates_V2.csv (the vessels) and scans.csv (scans 0 and 1: one patient)."""
    rng = np.random.default_rng(seed)
    ann, cand, scans = [], [], []
    for i in range(n_scans):
        uid = f"1.3.6.1.4.1.0.{i:04d}"
        image, labels, lung, nodules, vessels = tiny_scan(rng)
        geo = tiny_geometry(i)
        write_image(image, geo, root / f"subset{i % 3}" / f"{uid}.mhd")
        write_image(labels, geo, root / "masks" / f"{uid}.mhd", compress=True)
        write_image(lung, geo, root / "seg-lungs-LUNA16" / f"{uid}.mhd", compress=True)
        for c, r in nodules:
            x, y, z = geo.voxel_to_world(c)
            ann.append(dict(seriesuid=uid, coordX=x, coordY=y, coordZ=z, diameter_mm=2 * r))
        for c in vessels:
            x, y, z = geo.voxel_to_world(c)
            cand.append(dict(seriesuid=uid, coordX=x, coordY=y, coordZ=z, **{"class": 0}))
        # scans 0 and 1 belong to one patient: folds must keep them together
        scans.append(dict(seriesuid=uid, patient_id=f"P{max(i, 1):03d}"))
    pd.DataFrame(ann).to_csv(root / "annotations.csv", index=False)
    attachment = [TINY_ATTACHMENTS[k % len(TINY_ATTACHMENTS)] for k in range(len(ann))]
    pd.DataFrame(ann).assign(attachment=attachment).to_csv(root / "nodules.csv", index=False)
    pd.DataFrame(cand).to_csv(root / "candidates_V2.csv", index=False)
    pd.DataFrame(scans).to_csv(root / "scans.csv", index=False)
    return root
