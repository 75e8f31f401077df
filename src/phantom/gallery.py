"""Preview figures of a built-in dataset: axial and coronal crops through nodules of each
attachment class, density class and reconstruction kernel, read back through the LUNA16
loader (so they also prove that the written files round-trip)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from src.viz import nodule_gallery

CROP_MM = 40.0                       # side of each panel


def _crops(scan, nodule) -> list[dict]:
    """Axial and coronal panels (square mm) through the nodule's centre, consensus outlined."""
    geo = scan.geometry
    z, y, x = np.rint(geo.world_to_voxel(nodule.center_xyz)).astype(int)
    sz, sy, sx = geo.spacing_zyx
    half_y, half_x = int(CROP_MM / 2 / sy), int(CROP_MM / 2 / sx)
    half_z = int(CROP_MM / 2 / sz)
    ys, xs = slice(max(y - half_y, 0), y + half_y), slice(max(x - half_x, 0), x + half_x)
    zs = slice(max(z - half_z, 0), z + half_z)
    truth = scan.fine_mask == nodule.fine_label
    axial = (scan.image[z, ys, xs], truth[z, ys, xs], (0, (xs.stop - xs.start) * sx, (ys.stop - ys.start) * sy, 0))
    # coronal: z up (the image's z grows toward the head)
    coronal = (scan.image[zs, y, xs][::-1], truth[zs, y, xs][::-1],
               (0, (xs.stop - xs.start) * sx, 0, (zs.stop - zs.start) * sz))
    return [dict(image=im, masks={"truth": (m, "lime")}, extent=ext) for im, m, ext in (axial, coronal)]


def gallery(data: Path, picks: list[tuple[str, str, int]], path: Path, title: str) -> Path:
    """One axial + coronal pair per pick: (seriesuid, panel label, index of the nodule among
    its scan's annotated nodules), as ``pick`` gives them."""
    from src.data.luna16 import read_luna16

    records = {r.seriesuid: r for r in read_luna16(data)}
    items = []
    for uid, label, index in picks:
        scan = records[uid].load()
        axial, coronal = _crops(scan, scan.nodules[index])
        axial["title"], coronal["title"] = f"{label} (axial)", f"{label} (coronal)"
        items += [axial, coronal]
    return nodule_gallery(items, path, columns=4, title=title)


def pick(nodules: pd.DataFrame, column: str, values, rng: np.random.Generator, per_value: int = 2
         ) -> list[tuple[str, str, int]]:
    """(seriesuid, label, index of the nodule in its scan) for ``per_value`` random nodules of
    each value of ``column`` (nodules.csv rows, in file order within each scan)."""
    nodules = nodules.assign(index=nodules.groupby("seriesuid").cumcount())
    out = []
    for value in values:
        rows = nodules[nodules[column] == value]
        for i in rng.permutation(len(rows))[:per_value]:
            row = rows.iloc[i]
            out.append((row["seriesuid"], f"{value}, {row['diameter_mm']:.0f} mm", int(row["index"])))
    return out
