"""Detection candidates: their labels from coordinates, their patches, and their cache.

A candidate is a point (world mm) in a scan. Its label follows the LUNA16 evaluation: a hit
(1) when it lies within the radius (diameter / 2) of an annotated nodule, ignored (-1) when
it lies within an ``annotations_excluded.csv`` finding, a false positive (0) otherwise. The
FROC scorer uses the same :func:`match_candidates`, so training labels and scores agree.

The classifier sees a candidate through views or a cube of ``view_size``-pixel sides at
``view_spacing_mm`` (axes along world z, y, x), cut from the scan by trilinear
interpolation; the cache stores a larger cube (``CUBE_MARGIN``) so that rotated and scaled
copies can be cut from it in training (the inputs are taken by ``src.models.classifier``).

Layout of ``candidates.h5`` (one cube per chunk):

    attrs   format_version, config (JSON of the detect section), config_hash, cube_size
    cubes   (M, D, D, D) int16 HU of the candidates that train (M <= N)
    meta/*  one row per candidate (N): CANDIDATE_COLUMNS; ``cube`` indexes ``cubes`` or is -1
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from scipy import ndimage

from src.config import DetectConfig, config_hash, to_dict
from src.data.cache import read_table, write_table
from src.data.geometry import Geometry
from src.errors import ConfigError, DataError
from src.utils import atomic_path

FORMAT_VERSION = 1
CUBE_MARGIN = 1.25     # stored cube side / view side: room for rotations and scaling in training
HIT, FALSE_POSITIVE, IGNORED = 1, 0, -1
# candidates a detector found (src.predict.detect: the map's peaks, classical blobs, or both),
# as opposed to the annotated nodules and listed negatives added for training
DETECTED = ("map", "blob", "both")
CANDIDATE_COLUMNS = ["seriesuid", "fold", "source", "coordX", "coordY", "coordZ", "seg_probability", "label",
                     "nodule_uid", "diameter_mm", "texture", "attachment", "cube"]


# ----------------------------------------------------------------------------- labels


# The LUNA16 evaluation script's diameter for a finding listed without one (-1 in
# annotations_excluded.csv): candidates within 5 mm of it are ignored, not false positives.
UNKNOWN_DIAMETER_MM = 10.0


def match_candidates(candidates: pd.DataFrame, annotations: pd.DataFrame,
                     excluded: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(label per candidate: HIT / FALSE_POSITIVE / IGNORED, index into ``annotations`` of the
    nodule hit or -1). A candidate within several nodules hits the nearest one. Radii as in the
    LUNA16 evaluation script: half the diameter, ``UNKNOWN_DIAMETER_MM`` where it is missing."""
    n = len(candidates)
    labels = np.full(n, FALSE_POSITIVE, dtype=np.int8)
    hit = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return labels, hit
    xyz = candidates[["coordX", "coordY", "coordZ"]].to_numpy(float)
    uid = candidates["seriesuid"].to_numpy()
    for table, kind in ((excluded, IGNORED), (annotations, HIT)):   # a hit outranks an exclusion
        if table.empty:
            continue
        t_xyz = table[["coordX", "coordY", "coordZ"]].to_numpy(float)
        diameter = table["diameter_mm"].to_numpy(float)
        t_r = np.where(np.isfinite(diameter) & (diameter > 0), diameter, UNKNOWN_DIAMETER_MM) / 2
        t_uid = table["seriesuid"].to_numpy()
        for u in np.intersect1d(np.unique(uid), np.unique(t_uid)):
            rows, cols = np.flatnonzero(uid == u), np.flatnonzero(t_uid == u)
            d = np.linalg.norm(xyz[rows, None, :] - t_xyz[None, cols, :], axis=-1)
            inside = d <= t_r[cols]
            found = inside.any(axis=1)
            labels[rows[found]] = kind
            if kind == HIT:
                nearest = np.where(inside, d, np.inf).argmin(axis=1)
                hit[rows[found]] = cols[nearest[found]]
    return labels, hit


def nodule_table(scans) -> pd.DataFrame:
    """The annotated nodules of some scans, one row each (the FROC's reference standard)."""
    rows = [dict(seriesuid=s.seriesuid, nodule_uid=n.nodule_uid, coordX=n.center_xyz[0], coordY=n.center_xyz[1],
                 coordZ=n.center_xyz[2], diameter_mm=n.diameter_mm, texture=n.texture, attachment=n.attachment)
            for s in scans for n in s.nodules]
    return pd.DataFrame(rows, columns=["seriesuid", "nodule_uid", "coordX", "coordY", "coordZ", "diameter_mm",
                                       "texture", "attachment"])


def excluded_table(scans) -> pd.DataFrame:
    """Their ``annotations_excluded.csv`` findings (ignored when scoring)."""
    rows = [dict(seriesuid=s.seriesuid, coordX=x, coordY=y, coordZ=z, diameter_mm=d)
            for s in scans for x, y, z, d in np.asarray(s.excluded_xyzd).reshape(-1, 4)]
    return pd.DataFrame(rows, columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])


# ----------------------------------------------------------------------------- patches


def cube_side(cfg: DetectConfig) -> int:
    """The stored cube's side: odd, as the views' size and slices are, so that every view is
    centred on the candidate."""
    if cfg.view_size % 2 == 0 or cfg.view_slices % 2 == 0:
        raise ConfigError(f"detect.view_size ({cfg.view_size}) and detect.view_slices ({cfg.view_slices}) must be "
                          "odd: the views are centred on the candidate")
    return int(np.ceil(cfg.view_size * CUBE_MARGIN)) // 2 * 2 + 1


def _axis(n: int, spacing_mm: float) -> np.ndarray:
    return (np.arange(n) - (n - 1) / 2) * spacing_mm


def sample_around(image: np.ndarray, geometry: Geometry, centres_xyz: np.ndarray, offsets_zyx: np.ndarray,
                  pad_hu: float = -1000.0) -> np.ndarray:
    """int16 HU at ``centre + offset`` (mm along world z, y, x; offsets (..., 3)) for each
    centre: (N, *offsets.shape[:-1]), trilinear, air outside the scan."""
    grid_xyz = offsets_zyx.reshape(-1, 3)[:, ::-1]
    out = np.empty((len(centres_xyz), *offsets_zyx.shape[:-1]), dtype=np.int16)
    for i, centre in enumerate(np.asarray(centres_xyz, dtype=float).reshape(-1, 3)):
        coords = geometry.world_to_voxel(grid_xyz + centre).T
        values = ndimage.map_coordinates(image, coords, order=1, mode="constant", cval=pad_hu, prefilter=False)
        out[i] = np.rint(values).reshape(offsets_zyx.shape[:-1])
    return out


def cut_cubes(image: np.ndarray, geometry: Geometry, centres_xyz: np.ndarray, side: int,
              spacing_mm: float) -> np.ndarray:
    """(N, side, side, side) cubes around world centres, axes along world z, y, x."""
    axis = _axis(side, spacing_mm)
    return sample_around(image, geometry, centres_xyz, np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1))


def cut_inputs(image: np.ndarray, geometry: Geometry, centres_xyz: np.ndarray, offsets_vox: np.ndarray,
               spacing_mm: float) -> np.ndarray:
    """(N, *offsets.shape[:-1]) HU at a classifier's input points (``offsets_vox``: voxels
    (z, y, x) of ``spacing_mm`` from each centre, as the model's ``offsets``): the same
    values as the classifier's input cut from ``cut_cubes``, and only those voxels."""
    return sample_around(image, geometry, centres_xyz, np.asarray(offsets_vox, dtype=float) * spacing_mm)


# ----------------------------------------------------------------------------- cache


def write_candidate_shard(path: Path, table: pd.DataFrame, cubes: np.ndarray) -> None:
    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("cubes", data=cubes)
        write_table(f.create_group("meta"), table.reindex(columns=CANDIDATE_COLUMNS))


def merge_candidate_shards(shards: list[Path], out: Path, cfg: DetectConfig, extra_attrs: dict | None = None) -> Path:
    tables, counts = [], []
    for shard in shards:
        with h5py.File(shard, "r") as f:
            table = read_table(f["meta"])
            table.loc[table["cube"] >= 0, "cube"] += sum(counts)   # shard-local -> file-wide index
            tables.append(table)
            counts.append(f["cubes"].shape[0])
    total, side = int(sum(counts)), cube_side(cfg)
    if total == 0:
        raise DataError(f"{out}: no candidates in any of {len(shards)} scan(s)")
    with atomic_path(out, suffix=".h5") as tmp, h5py.File(tmp, "w") as dst:
        dst.attrs.update(format_version=FORMAT_VERSION, config=json.dumps(to_dict(cfg)),
                         config_hash=config_hash(cfg), cube_size=side, **(extra_attrs or {}))
        cubes = dst.create_dataset("cubes", (total, side, side, side), np.int16, chunks=(1, side, side, side))
        start = 0
        for shard, n in zip(shards, counts):
            with h5py.File(shard, "r") as src:
                cubes[start:start + n] = src["cubes"][()]
            start += n
        write_table(dst.create_group("meta"), pd.concat([t for t in tables if len(t)], ignore_index=True))
    return out


class CandidateCache:
    """Read access to ``candidates.h5``; the handle opens lazily (one per DataLoader worker)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: candidate cache not found; run train.py --stage fpr")
        try:
            with h5py.File(self.path, "r") as f:
                if int(f.attrs.get("format_version", -1)) != FORMAT_VERSION:
                    raise DataError(f"{self.path}: candidate cache format {f.attrs.get('format_version')} != "
                                    f"{FORMAT_VERSION}; delete it and rerun train.py --stage fpr")
                self.attrs = {key: f.attrs[key] for key in f.attrs}
                self.table = read_table(f["meta"])
                self.cube_index = self.table["cube"].to_numpy()
        except (OSError, KeyError) as err:
            raise DataError(f"{self.path}: not a readable candidate cache ({str(err).splitlines()[0]})") from None
        self._file: h5py.File | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = None
        return state

    def cube(self, row: int) -> np.ndarray:
        """The cube of table row ``row`` (a row that trains: ``cube >= 0``)."""
        if self.cube_index[row] < 0:
            raise IndexError(f"{self.path}: candidate {row} has no cube")
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return self._file["cubes"][int(self.cube_index[row])]

    def cubes(self, rows) -> np.ndarray:
        return np.stack([self.cube(int(i)) for i in rows]) if len(rows) else np.zeros((0,) * 4, np.int16)
