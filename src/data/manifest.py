"""Reader for a hospital-style dataset (the paper's "LC183"): one CSV manifest.

One row per nodule, or one row per scan when it has no coordinates::

    seriesuid,patient_id,image,mask,lung,coordX,coordY,coordZ,diameter_mm
    case001,P001,scans/case001.nii.gz,masks/case001.nii.gz,,-61.2,20.5,-140.0,8.5
    case001,P001,scans/case001.nii.gz,masks/case001.nii.gz,,40.0,-12.0,-180.0,14.0
    case002,P002,dicom/case002/,,,12.0,30.5,-95.0,6.0
    case003,P003,scans/case003.mhd,masks/case003.mhd,,,,,

``image`` is a .mhd/.nii(.gz)/.nrrd file or a DICOM series folder; ``mask`` (optional) a
label volume on the same grid; coordinates are world mm (x, y, z), as a viewer such as
3D Slicer shows them in LPS. Paths are relative to the manifest's folder. A scan may have
a mask, coordinates, or both; ``patient_id`` defaults to ``seriesuid``. Mask labels without
a coordinate row are nodules only with ``paths.mask_only_nodules=true`` (masks that come
with no coordinates at all); otherwise they are ignored findings, as in LUNA16.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from src.config import PathsConfig
from src.data.scan import ScanRecord
from src.data.tables import MANIFEST, NODULE_COLUMNS, check_coordinates, check_table, read_table
from src.errors import DataError


def _path(base: Path, value, manifest: Path, what: str, uid: str) -> Path | None:
    if pd.isna(value) or str(value).strip() == "":
        return None
    path = Path(str(value).strip())
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise DataError(f"{manifest}: {what} of {uid} not found: {path}")
    return path


def read_manifest(manifest: str | Path, mask_only_nodules: bool = False) -> list[ScanRecord]:
    manifest = Path(manifest)
    df = read_table(manifest, "manifest")
    for col in ["patient_id", "mask", "lung", *NODULE_COLUMNS]:
        if col not in df.columns:
            df[col] = None
    df = check_table(df, MANIFEST, manifest)

    has_coords = df[NODULE_COLUMNS].notna()
    partial = has_coords.any(axis=1) & ~has_coords.all(axis=1)
    if partial.any():
        row = int(partial.to_numpy().argmax())
        raise DataError(f"{manifest}: row {row + 2} has only some of {NODULE_COLUMNS}")
    coords = check_coordinates(df[has_coords.all(axis=1)], manifest)

    base = manifest.parent
    records = []
    for uid, rows in df.groupby("seriesuid", sort=True):
        for col in ("image", "mask", "lung", "patient_id"):
            if rows[col].nunique(dropna=False) > 1:
                raise DataError(f"{manifest}: rows of {uid} disagree on '{col}'")
        first = rows.iloc[0]
        patient = first["patient_id"] if pd.notna(first["patient_id"]) else uid
        if pd.isna(first["image"]) or not str(first["image"]).strip():
            raise DataError(f"{manifest}: scan {uid} has no image path")
        records.append(ScanRecord(
            seriesuid=str(uid), patient_id=str(patient),
            image_path=_path(base, first["image"], manifest, "image", uid),
            mask_path=_path(base, first["mask"], manifest, "mask", uid),
            lung_path=_path(base, first["lung"], manifest, "lung mask", uid),
            nodules=coords[coords["seriesuid"] == uid].reset_index(drop=True),
            source=str(manifest), mask_only_nodules=mask_only_nodules))
    if not records:
        raise DataError(f"{manifest}: no scans listed")
    return records


def dataset_source(paths: PathsConfig, data: str | Path | None = None, manifest: str | Path | None = None) -> str:
    """The dataset :func:`read_dataset` reads, as an absolute path: what a cache records as
    its ``source``."""
    manifest = manifest or (None if data else paths.manifest)
    return str(Path(manifest or data or paths.data).resolve())


def read_dataset(paths: PathsConfig, data: str | Path | None = None, manifest: str | Path | None = None
                 ) -> list[ScanRecord]:
    """The records of the dataset the config names (``paths.manifest`` wins over
    ``paths.data``); ``data``/``manifest`` override the config's."""
    from src.data.luna16 import read_luna16

    manifest = manifest or (None if data else paths.manifest)
    if manifest:
        return read_manifest(manifest, paths.mask_only_nodules)
    return read_luna16(data or paths.data, paths.allow_partial, paths.mask_only_nodules)
