"""Reader for a LUNA16-layout folder (the official download, or the built-in phantom).

    DATA/
      subset0/ ... subset9/<seriesuid>.mhd + .raw       CT in HU
      annotations.csv            seriesuid,coordX,coordY,coordZ,diameter_mm   (world mm)
      annotations_excluded.csv   same columns; ignored when scoring            (optional)
      candidates_V2.csv          seriesuid,coordX,coordY,coordZ,class          (optional)
      seg-lungs-LUNA16/<seriesuid>.mhd                                          (optional)
      masks/<seriesuid>.{mhd,nii.gz,nrrd}        fine nodule label masks        (optional)
      masks/readers/<seriesuid>.*                per-reader bit masks           (optional)
      scans.csv                  seriesuid,patient_id[,...]                    (optional)
      nodules.csv                annotations.csv + texture,n_readers,attachment (optional)

annotations.csv is the reference standard: only its rows are nodules. nodules.csv (written by
the built-in phantom) only adds columns to rows it shares with annotations.csv.

LUNA16 itself has no patient ids; without ``scans.csv`` the seriesuid stands in for the
patient (LIDC has a handful of patients with two series: add scans.csv to group them).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from src.data.io import IMAGE_SUFFIXES, image_stem
from src.data.scan import ScanRecord
from src.data.tables import (
    CANDIDATES,
    EXCLUDED,
    NODULE_COLUMNS,
    OPTIONAL_NODULE_COLUMNS,
    SCANS,
    XYZ,
    check_coordinates,
    check_table,
    read_table,
)
from src.errors import DataError

MATCH_DECIMALS = 3   # mm: nodules.csv rows join annotations.csv rows on rounded coordinates


def _find_images(folder: Path) -> dict[str, Path]:
    """seriesuid -> path for every image file directly inside ``folder``."""
    if not folder.is_dir():
        return {}
    return {image_stem(p): p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)}


def _check_known(df: pd.DataFrame, known: set[str], path: Path, allow_partial: bool) -> pd.DataFrame:
    unknown = sorted(set(df["seriesuid"]) - known)
    if unknown and not allow_partial:
        raise DataError(f"{path}: {len(unknown)} seriesuid(s) have no image under subset*/ "
                        f"(e.g. {unknown[0]}); if only some subsets were downloaded, set "
                        "paths.allow_partial=true to ignore their rows")
    keep = df["seriesuid"].isin(known)
    if not keep.all():   # dropped rows are counted, never silent
        print(f"note: {path}: {int((~keep).sum())} row(s) of {len(unknown)} scan(s) not on disk ignored "
              "(paths.allow_partial)", file=sys.stderr)
    return df[keep]


def _with_reader_columns(annotations: pd.DataFrame, rich_path: Path) -> pd.DataFrame:
    """annotations.csv plus the optional columns of the nodules.csv rows that match it."""
    rich = check_coordinates(read_table(rich_path, "nodule table"), rich_path)
    extra = [c for c in OPTIONAL_NODULE_COLUMNS if c in rich.columns]
    if not extra:
        return annotations
    key = ["seriesuid", *NODULE_COLUMNS]
    rich = rich[key + extra].copy()
    left = annotations.drop(columns=[c for c in extra if c in annotations.columns])
    for df in (left, rich):
        df[NODULE_COLUMNS] = df[NODULE_COLUMNS].round(MATCH_DECIMALS)
    merged = left.merge(rich.drop_duplicates(key), on=key, how="left", indicator="_matched")
    stale = len(rich) - int((merged.pop("_matched") == "both").sum())   # by key: a match may be all empty
    if stale > 0:
        print(f"note: {rich_path}: {stale} row(s) match no annotations.csv row; annotations.csv wins", file=sys.stderr)
    merged[NODULE_COLUMNS] = annotations[NODULE_COLUMNS].to_numpy()  # the unrounded coordinates
    return merged


def read_luna16(data_dir: str | Path, allow_partial: bool = False, mask_only_nodules: bool = False
                ) -> list[ScanRecord]:
    data = Path(data_dir)
    if not data.is_dir():
        raise DataError(f"{data}: LUNA16 folder does not exist")
    images: dict[str, Path] = {}
    for subset in sorted(p for p in data.glob("subset*") if p.is_dir()):
        for uid, path in _find_images(subset).items():
            if uid in images:
                raise DataError(f"{path}: seriesuid {uid} also found at {images[uid]}")
            images[uid] = path
    if not images:
        raise DataError(f"{data}: no images found in subset*/ folders")
    known = set(images)

    ann_path = data / "annotations.csv"
    if not ann_path.is_file():
        raise DataError(f"{ann_path}: annotations file is missing")
    table_path = ann_path
    annotations = check_coordinates(read_table(ann_path, "annotations file"), ann_path)
    if (data / "nodules.csv").is_file():
        annotations = _with_reader_columns(annotations, data / "nodules.csv")
    annotations = _check_known(annotations, known, table_path, allow_partial)

    excluded = pd.DataFrame(columns=["seriesuid", *NODULE_COLUMNS])
    if (data / "annotations_excluded.csv").is_file():
        path = data / "annotations_excluded.csv"
        excluded = read_table(path, "excluded findings")
        if "diameter_mm" not in excluded:
            excluded["diameter_mm"] = float("nan")
        excluded = check_table(excluded, EXCLUDED, path)
        # LUNA16 writes -1 as the diameter of excluded findings without one.
        excluded.loc[excluded["diameter_mm"] <= 0, "diameter_mm"] = float("nan")
        excluded = _check_known(excluded, known, path, allow_partial)

    candidates = pd.DataFrame(columns=["seriesuid", *XYZ, "class"])
    for name in ("candidates_V2.csv", "candidates.csv"):
        if (data / name).is_file():
            candidates = check_table(read_table(data / name, "candidates table"), CANDIDATES, data / name)
            candidates = _check_known(candidates, known, data / name, allow_partial)
            break

    masks = _find_images(data / "masks")
    for uid, path in masks.items():
        if uid not in known:
            raise DataError(f"{path}: mask for seriesuid {uid}, which has no image under subset*/")
    readers = _find_images(data / "masks" / "readers")
    lungs = _find_images(data / "seg-lungs-LUNA16")

    patients: dict[str, str] = {}
    if (data / "scans.csv").is_file():
        scans = check_table(read_table(data / "scans.csv", "scans table"), SCANS, data / "scans.csv")
        patients = dict(zip(scans["seriesuid"], scans["patient_id"].astype(str)))

    by_uid = {uid: df for uid, df in annotations.groupby("seriesuid", sort=False)}
    ex_by_uid = {uid: df for uid, df in excluded.groupby("seriesuid", sort=False)}
    cand_negative = candidates[candidates["class"] == 0]
    cand_by_uid = {uid: df for uid, df in cand_negative.groupby("seriesuid", sort=False)}
    empty = annotations.iloc[0:0]
    records = []
    for uid in sorted(images):
        records.append(ScanRecord(
            seriesuid=uid, patient_id=patients.get(uid, uid), image_path=images[uid],
            mask_path=masks.get(uid), lung_path=lungs.get(uid), readers_path=readers.get(uid),
            nodules=by_uid.get(uid, empty).reset_index(drop=True),
            excluded=ex_by_uid.get(uid, excluded.iloc[0:0]).reset_index(drop=True),
            candidates=cand_by_uid.get(uid, cand_negative.iloc[0:0]).reset_index(drop=True),
            source=str(table_path), mask_only_nodules=mask_only_nodules))
    return records
