"""Dataset integrity checks before any work (as nnU-Net's ``--verify_dataset_integrity``).

:func:`verify_records` reads every scan as the pipeline will and reports, per scan:
errors (unreadable or inconsistent: the run would stop or be wrong) and warnings (it would
run, but a person should look). :func:`verify_folds` and :func:`verify_cache` check the
split file and a patch cache against the dataset (and ``verify.py`` also checks that no
checkpoint saw a hold-out scan). ``verify.py`` prints the report;
``prepare.py`` runs the header-level checks first and stops on any error.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.data.io import read_header
from src.data.scan import Scan, ScanRecord
from src.errors import DataError
from src.utils import progress

LUNG_MARGIN_MM = 10.0        # a nodule centre this close to the lungs counts as inside (pleural nodules)
ORTHONORMAL_TOL = 1e-3


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    def count(self, what: str, n: int = 1) -> None:
        self.checked[what] = self.checked.get(what, 0) + n

    def merge(self, other: "Report") -> "Report":
        self.errors += other.errors
        self.warnings += other.warnings
        for k, v in other.checked.items():
            self.count(k, v)
        return self

    @property
    def ok(self) -> bool:
        return not self.errors

    def render(self) -> str:
        lines = [f"ERROR {e}" for e in self.errors] + [f"WARN  {w}" for w in self.warnings]
        counts = ", ".join(f"{v} {k}" for k, v in self.checked.items())
        lines.append(f"checked {counts}: {len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        return "\n".join(lines)


def _geometry_warnings(scan: Scan) -> list[str]:
    geo, out = scan.geometry, []
    matrix = np.asarray(geo.direction).reshape(3, 3)
    if not np.allclose(matrix @ matrix.T, np.eye(3), atol=ORTHONORMAL_TOL):
        out.append(f"{scan.record.image_path}: direction matrix is not orthonormal")
    elif not np.allclose(np.abs(matrix), np.eye(3), atol=ORTHONORMAL_TOL):
        out.append(f"{scan.record.image_path}: oblique orientation (direction {np.round(matrix, 3).tolist()}); "
                   "coordinates are taken as world mm")
    return out


def _nodule_warnings(scan: Scan) -> list[str]:
    out, where = [], scan.record.source or str(scan.record.image_path)
    if scan.fine_mask is not None:
        unmatched = [n for n in scan.nodules if not n.fine_label]
        if unmatched:
            out.append(f"{where}: {len(unmatched)} nodule(s) of {scan.seriesuid} have no label in its mask "
                       f"{scan.record.mask_path} (e.g. {unmatched[0].nodule_uid}); they train as coarse only")
        labels = set(np.unique(scan.fine_mask)) - {0}
        used = {n.fine_label for n in scan.nodules}
        if labels - used and not scan.record.mask_only_nodules:
            out.append(f"{scan.record.mask_path}: {len(labels - used)} mask label(s) have no coordinate; ignored "
                       "(set paths.mask_only_nodules=true if the masks come without coordinates)")
    if scan.lung_mask is not None and scan.nodules:
        geo = scan.geometry
        reach = np.ceil(LUNG_MARGIN_MM / geo.spacing_zyx).astype(int)
        for n in scan.nodules:  # any lung voxel within LUNG_MARGIN_MM of the centre (a small box, not a full EDT)
            c = geo.world_to_voxel(n.center_xyz)
            lo = np.maximum(np.floor(c).astype(int) - reach, 0)
            hi = np.minimum(np.ceil(c).astype(int) + reach + 1, geo.shape_zyx)
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)
            near = np.linalg.norm((grid - c) * geo.spacing_zyx, axis=-1) <= LUNG_MARGIN_MM
            if not scan.lung_mask[box][near].any():
                out.append(f"{where}: nodule {n.nodule_uid} lies more than {LUNG_MARGIN_MM:.0f} mm outside the "
                           f"lungs of {scan.record.lung_path}")
    return out


def check_headers(record: ScanRecord) -> int:
    """What the headers alone can tell: readable 3D files, masks on the CT's grid, every
    coordinate inside the volume. Returns the number of nodules; raises DataError."""
    geometry = read_header(record.image_path)
    for path, what in ((record.mask_path, "mask"), (record.lung_path, "lung mask"), (record.readers_path, "reader mask")):
        if path is not None and not read_header(path).same_grid(geometry):
            raise DataError(f"{path}: {what} geometry differs from its image {record.image_path}")
    for k, row in enumerate(record.nodules.itertuples(index=False)):
        if not geometry.contains(geometry.world_to_voxel([row.coordX, row.coordY, row.coordZ])):
            raise DataError(f"{record.source}: nodule {k} of {record.seriesuid} at world ({row.coordX:.1f}, "
                            f"{row.coordY:.1f}, {row.coordZ:.1f}) mm lies outside the volume {record.image_path}")
    return len(record.nodules)


def verify_records(records: list[ScanRecord], full: bool = True, desc: str = "verify scans") -> Report:
    """``full``: read every volume (HU range, NaN, masks' labels, lungs); else headers only."""
    report = Report()
    seen: dict[str, Path] = {}
    for record in progress(records, desc=desc):
        report.count("scans")
        if record.seriesuid in seen:
            report.errors.append(f"{record.image_path}: seriesuid {record.seriesuid} also names {seen[record.seriesuid]}")
            continue
        seen[record.seriesuid] = Path(record.image_path)
        try:
            if not full:
                report.count("nodules", check_headers(record))
                continue
            scan = record.load()
        except DataError as err:
            report.errors.append(str(err))
            continue
        report.count("nodules", len(scan.nodules))
        report.warnings += _geometry_warnings(scan) + _nodule_warnings(scan)
    return report


def _compare_scans(report: Report, path, listed: set[str], uids: set[str], remedy: str) -> None:
    """A file naming scans the dataset lacks is an error; one missing some of them, a warning."""
    if listed - uids:
        report.errors.append(f"{path}: names {len(listed - uids)} scan(s) the dataset lacks, "
                             f"e.g. {sorted(listed - uids)[0]}; {remedy}")
    if uids - listed:
        report.warnings.append(f"{path}: lacks {len(uids - listed)} scan(s) of the dataset, "
                               f"e.g. {sorted(uids - listed)[0]}; {remedy}")


def verify_folds(folds_path: str | Path, uids: set[str]) -> Report:
    """The split file: readable, patients disjoint (read_folds), and the same scans as the data."""
    from src.data.folds import HOLDOUT, read_folds

    report = Report()
    try:
        folds = read_folds(folds_path)
    except DataError as err:
        report.errors.append(str(err))
        return report
    report.count("folds files")
    _compare_scans(report, folds_path, set(folds["seriesuid"]), uids, "rerun make_folds.py")
    if not (folds["fold"] == HOLDOUT).any():
        report.warnings.append(f"{folds_path}: no hold-out patients")
    return report


def verify_folds_against_cache(folds_path: str | Path, cache_path: str | Path) -> Report:
    """folds.csv and the cache must hold the same scans: the training stages refuse them otherwise."""
    from src.data.cache import PatchCache
    from src.data.folds import check_against_cache, read_folds

    report = Report()
    try:
        check_against_cache(read_folds(folds_path), PatchCache(cache_path).scans, folds_path)
    except DataError as err:
        report.errors.append(str(err))
    return report


def verify_cache(cache_path: str | Path, uids: set[str], source: str | None = None) -> Report:
    """A patch cache: readable, and built from these scans (and this source, if given)."""
    from src.data.cache import PatchCache

    report = Report()
    try:
        cache = PatchCache(cache_path)
    except DataError as err:
        report.errors.append(str(err))
        return report
    report.count("caches")
    _compare_scans(report, cache_path, set(cache.scans["seriesuid"]), uids, "rebuild it with prepare.py --overwrite")
    if source and str(cache.attrs.get("source")) != source:
        report.warnings.append(f"{cache_path}: built from {cache.attrs.get('source')}, not {source}")
    report.warnings += [] if "code_version" in cache.attrs else [f"{cache_path}: records no code version"]
    return report

