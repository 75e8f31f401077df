"""Validation in model space on the cache: per nodule in 3D, and per 2.5D patch.

Per nodule: every slice of the nodule's ROI is predicted as a 2.5D stack, the slices are
stacked into a probability volume, thresholded, and the connected component at the
nodule's centre (or nearest to it, within its radius) is compared with the fine mask.
This is the same rule ``infer.py`` applies to given coordinates.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm import tqdm

from src.config import InferConfig
from src.data.cache import PatchCache
from src.engine.metrics import component_at, dice, segmentation_metrics, size_bin, texture_class
from src.infer.predictor import Predictor


def stacks_from_volume(volume: np.ndarray, k: int) -> np.ndarray:
    """(Z + k - 1, H, W) -> (Z, k, H, W): the 2.5D stack of every inner slice (a view)."""
    return np.lib.stride_tricks.sliding_window_view(volume, k, axis=0).transpose(0, 3, 1, 2)


def segment_at(prob: np.ndarray, centre_zyx, radius_mm: float, spacing_zyx, threshold: float) -> np.ndarray:
    """The nodule at a given centre: thresholded probability, the component at the centre."""
    return component_at(prob >= threshold, centre_zyx, spacing_zyx, max_distance_mm=radius_mm)


def roi_centre(nod) -> np.ndarray:
    """A cache nodule row's centre as a voxel index (z, y, x) into its ROI crop."""
    return np.array([nod.center_z - nod.roi_z0, nod.center_y - nod.roi_y0, nod.center_x - nod.roi_x0])


def roi_prior(coarse: np.ndarray, spacing_zyx, margin_mm: float) -> np.ndarray:
    """Bool ROI mask: inside the coarse sphere or within ``margin_mm`` of it."""
    return ndimage.distance_transform_edt(~coarse.astype(bool), sampling=spacing_zyx) <= margin_mm


def predict_roi(predictor: Predictor, roi: dict, k: int) -> np.ndarray:
    return predictor.prob(stacks_from_volume(roi["image"], k))


def evaluate_nodules(predictor: Predictor, cache: PatchCache, nodules: pd.DataFrame, cfg: InferConfig,
                     keep_probs: bool = False, desc: str = "validate") -> tuple[pd.DataFrame, dict]:
    """Metrics per nodule (rows of cache.nodules with fine masks), and optionally the
    probability volumes (float16, ROI grid) keyed by nodule_uid. The threshold and the
    coarse prior follow ``cfg`` (infer.*), as in ``infer.py``'s coordinates mode."""
    k = int(cache.attrs["k_slices"])
    spacing = np.asarray(cache.attrs["spacing_zyx"], dtype=float)
    rows, probs = [], {}
    for nod in tqdm(nodules.itertuples(index=False), total=len(nodules), desc=desc, leave=False):
        roi = cache.roi(nod.roi)
        prob = predict_roi(predictor, roi, k)
        if cfg.coarse_prior:
            prob = np.where(roi_prior(roi["coarse"], spacing, cfg.prior_margin_mm), prob, 0.0).astype(np.float32)
        centre = roi_centre(nod)
        pred = segment_at(prob, centre, nod.diameter_mm / 2, spacing, cfg.threshold)
        rows.append(dict(nodule_uid=nod.nodule_uid, seriesuid=nod.seriesuid, diameter_mm=nod.diameter_mm,
                         size_bin=size_bin(nod.diameter_mm), texture=texture_class(nod.texture),
                         reader_dice=nod.reader_dice, **segmentation_metrics(pred, roi["fine"] > 0, spacing)))
        if keep_probs:
            probs[nod.nodule_uid] = prob.astype(np.float16)
    return pd.DataFrame(rows), probs


def evaluate_patches(predictor: Predictor, cache: PatchCache, rows: np.ndarray, threshold: float,
                     batch: int = 256) -> float:
    """Mean Dice over 2.5D patches (empty truth and empty prediction count as 1)."""
    scores = []
    for i in range(0, len(rows), batch):
        idx = np.sort(rows[i:i + batch])  # h5py reads sorted indices fastest
        image = cache.file["patches/image"][idx]
        truth = cache.file["patches/fine"][idx] > 0
        pred = predictor.prob(image) >= threshold
        scores += [dice(p, t) for p, t in zip(pred, truth)]
    return float(np.mean(scores)) if scores else float("nan")


def summarize_nodules(table: pd.DataFrame, prefix: str = "val_") -> dict[str, float]:
    if table.empty:
        return {}
    out = {f"{prefix}dice": float(table["dice"].mean()), f"{prefix}iou": float(table["iou"].mean()),
           f"{prefix}sensitivity": float(table["sensitivity"].mean()),
           f"{prefix}precision": float(table["precision"].mean()),
           f"{prefix}hd95_mm": float(np.nanmean(table["hd95_mm"])) if table["hd95_mm"].notna().any() else float("nan")}
    return out
