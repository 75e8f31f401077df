"""LUNA16 FROC and CPM of a whole-scan submission.

FROC follows the LUNA16 evaluation: a candidate is a hit when it lies within the radius
(diameter / 2) of an annotated nodule; each nodule counts once (its best candidate);
candidates that hit an ``annotations_excluded.csv`` finding are ignored; every other
candidate is a false positive. CPM = mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8
false positives per scan.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

FROC_FPS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


# ----------------------------------------------------------------------------- FROC / CPM


def froc(candidates: pd.DataFrame, annotations: pd.DataFrame, excluded: pd.DataFrame,
         seriesuids: list[str]) -> tuple[pd.DataFrame, float, pd.DataFrame]:
    """-> (curve: fps_per_scan, sensitivity, threshold; CPM; sensitivity at the 7 FP rates)."""
    uids = set(seriesuids)
    annotations = annotations[annotations["seriesuid"].isin(uids)]
    excluded = excluded[excluded["seriesuid"].isin(uids)]
    candidates = candidates[candidates["seriesuid"].isin(uids)]
    n_nodules = len(annotations)
    best_hit = np.full(n_nodules, -np.inf)        # best candidate probability per nodule
    false_pos: list[float] = []
    ann_xyz = annotations[["coordX", "coordY", "coordZ"]].to_numpy(float)
    ann_r = annotations["diameter_mm"].to_numpy(float) / 2
    ann_uid = annotations["seriesuid"].to_numpy()
    exc_xyz = excluded[["coordX", "coordY", "coordZ"]].to_numpy(float)
    exc_r = np.nan_to_num(excluded["diameter_mm"].to_numpy(float), nan=0.0) / 2
    exc_uid = excluded["seriesuid"].to_numpy()
    for row in candidates.itertuples(index=False):
        p = np.array([row.coordX, row.coordY, row.coordZ])
        mine = ann_uid == row.seriesuid
        d = np.linalg.norm(ann_xyz - p, axis=1)
        hits = np.flatnonzero(mine & (d <= ann_r))
        if hits.size:
            best_hit[hits] = np.maximum(best_hit[hits], row.probability)
            continue
        ex = (exc_uid == row.seriesuid) & (np.linalg.norm(exc_xyz - p, axis=1) <= np.maximum(exc_r, 0))
        if ex.any():
            continue  # findings outside the reference standard are neither hit nor FP
        false_pos.append(float(row.probability))
    thresholds = np.unique(np.concatenate([best_hit[np.isfinite(best_hit)], false_pos, [np.inf]]))[::-1]
    fp = np.asarray(false_pos)
    curve = pd.DataFrame({
        "threshold": thresholds,
        "fps_per_scan": [(fp >= t).sum() / max(len(uids), 1) for t in thresholds],
        "sensitivity": [(best_hit >= t).sum() / max(n_nodules, 1) for t in thresholds],
    })
    at = [float(curve.loc[curve["fps_per_scan"] <= r, "sensitivity"].max()) if (curve["fps_per_scan"] <= r).any()
          else 0.0 for r in FROC_FPS]
    points = pd.DataFrame({"fps_per_scan": FROC_FPS, "sensitivity": at})
    return curve, float(np.mean(at)), points


def plot_froc(curve: pd.DataFrame, points: pd.DataFrame, cpm: float, path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from src.utils import atomic_path

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(curve["fps_per_scan"], curve["sensitivity"], lw=1.5)
    ax.plot(points["fps_per_scan"], points["sensitivity"], "o")
    ax.set_xscale("log", base=2)
    ax.set_xlim(1 / 16, 16)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"{title} FROC, CPM = {cpm:.3f}".strip())
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)
