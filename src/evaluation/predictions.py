"""``evaluate.py``: score the output folder of ``infer.py`` against the dataset's truth."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from src.data.candidates import excluded_table, nodule_table
from src.data.io import read_image
from src.data.scan import ScanRecord
from src.data.tables import PREDICTIONS, SUBMISSION, check_table, read_table
from src.errors import DataError
from src.evaluation.cases import score_full
from src.evaluation.froc import froc_with_ci
from src.layout import InferenceOutputs
from src.utils import progress


def read_nodule_table(pred_dir: Path) -> pd.DataFrame:
    path = InferenceOutputs(pred_dir).nodules
    if not path.is_file():
        raise DataError(f"{path}: not found; is {pred_dir} an output folder of infer.py?")
    return check_table(read_table(path, "prediction table"), PREDICTIONS, path)


def run_record(outputs: InferenceOutputs) -> dict:
    """run.json, or {} where it is missing, unreadable, of an older version or edited: what
    it adds (scans without a detection, the detections kept per scan) is then left out."""
    try:
        record = json.loads(outputs.run_json.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def scored_uids(pred_dir: Path, records: list[ScanRecord], keep: set[str] | None = None) -> list[str]:
    """The predicted scans (run.json lists them, also those without a detection) that are in
    the truth ``records`` and in ``keep`` (a split), sorted. A prediction of a scan the truth
    does not hold is an error (wrong --data?); scans outside the split are counted in a note."""
    path = InferenceOutputs(pred_dir).nodules
    table = read_nodule_table(pred_dir)
    listed = run_record(InferenceOutputs(pred_dir)).get("seriesuids")
    predicted = set(table["seriesuid"]) | (set(map(str, listed)) if isinstance(listed, list) else set())
    if not predicted:
        raise DataError(f"{path}: no predictions (no rows) to score")
    truth = {r.seriesuid for r in records}
    unknown = sorted(predicted - truth)
    if unknown:
        raise DataError(f"{path}: {len(unknown)} of its {len(predicted)} seriesuid(s) are not in the truth data "
                        f"({len(truth)} scans), e.g. {unknown[0]}; wrong --data?")
    scored = predicted & (keep if keep is not None else truth)
    if not scored:
        raise DataError(f"{path}: none of its {len(predicted)} scans is in the split to score (--split)")
    if len(scored) < len(predicted):
        print(f"note: {path}: {len(predicted) - len(scored)} predicted scan(s) outside the split are not scored",
              file=sys.stderr)
    return sorted(scored)


def score_mode1(pred_dir: Path, records: list[ScanRecord]) -> pd.DataFrame:
    """Per-nodule metrics of a mode-1 run: label k of <uid> mask vs the fine mask of the
    true nodule nearest to the k-th given coordinate (within that nodule's radius)."""
    table = read_nodule_table(pred_dir)
    rows = []
    for record in progress([r for r in records if r.seriesuid in set(table["seriesuid"])], desc="score"):
        scan = record.load()
        pred_files = InferenceOutputs(pred_dir).masks(record.seriesuid)
        if not pred_files:
            raise DataError(f"{pred_dir}: no mask for {record.seriesuid}")
        labels, geometry = read_image(pred_files[0])
        if not geometry.same_grid(scan.geometry):
            raise DataError(f"{pred_files[0]}: geometry differs from its scan {record.image_path}")
        truth = [n for n in scan.nodules if n.fine_label]
        for row in table[table["seriesuid"] == record.seriesuid].itertuples(index=False):
            given = np.array([row.given_coordX, row.given_coordY, row.given_coordZ])
            nearest = min(truth, key=lambda n: np.linalg.norm(n.center_xyz - given), default=None)
            if nearest is None or np.linalg.norm(nearest.center_xyz - given) > nearest.diameter_mm / 2:
                continue  # no fine mask for this coordinate
            rows.append(score_full(scan, nearest, labels == row.nodule_id))
    return pd.DataFrame(rows)


def score_mode2(pred_dir: Path, records: list[ScanRecord], uids: list[str]) -> dict[str, dict]:
    """FROC/CPM (bootstrap CI over scans) of a whole-scan run and, when it used FPR, of the
    detections the map alone would have given: its candidates ranked by their peak
    probability, as many per scan as the run keeps (what ``infer.py --no-fpr`` writes)."""
    scans = [r.load(with_image=False) for r in records if r.seriesuid in set(uids)]
    truth, excluded = nodule_table(scans), excluded_table(scans)
    outputs = InferenceOutputs(pred_dir)
    path = outputs.submission
    rankings = {"final": check_table(read_table(path, "submission"), SUBMISSION, path)}
    every = outputs.candidates
    if every.is_file():
        found = read_table(every, "candidate table")
        missing = sorted({"seriesuid", "seg_probability", "fpr_probability"} - set(found.columns))
        if missing:
            raise DataError(f"{every}: missing column(s) {missing}; is it infer.py's candidates.csv?")
        if pd.to_numeric(found["fpr_probability"], errors="coerce").notna().any():
            keep = run_record(outputs).get("max_detections")
            keep = keep if isinstance(keep, int) and keep > 0 else len(found)
            found["seg_probability"] = pd.to_numeric(found["seg_probability"], errors="coerce")
            by_map = found.sort_values("seg_probability", ascending=False, kind="stable")
            by_map = by_map.groupby("seriesuid").head(keep)
            rankings["without FPR"] = by_map.assign(probability=by_map["seg_probability"])
    return {name: froc_with_ci(table, truth, excluded, uids) for name, table in rankings.items()}


def summary_line(per_nodule: pd.DataFrame) -> str:
    if per_nodule.empty:
        return "no nodules with fine masks to score"
    return (f"{len(per_nodule)} nodules: Dice {per_nodule['dice'].mean():.4f}, IoU {per_nodule['iou'].mean():.4f}, "
            f"sensitivity {per_nodule['sensitivity'].mean():.4f}, NSD {per_nodule['nsd'].mean():.4f}, "
            f"HD95 {np.nanmean(per_nodule['hd95_mm']):.2f} mm")
