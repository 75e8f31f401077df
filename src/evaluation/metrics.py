"""Per-nodule segmentation metrics, computed by MONAI (``monai.metrics``).

All take a predicted and a true binary 3D mask on the same grid and the grid's spacing
(z, y, x) in mm:

* Dice and IoU;
* sensitivity (recall) and precision, from MONAI's confusion matrix;
* HD95: MONAI's ``compute_hausdorff_distance(percentile=95)``, the larger of the two
  directed 95th-percentile surface distances, as nnU-Net and the challenges report it;
* NSD: normalised surface Dice at a tolerance of ``NSD_TOLERANCE_MM``.

Empty-mask policy: a nodule is scored only when its truth mask is non-empty (otherwise
:func:`segmentation_metrics` raises). An empty prediction scores Dice, IoU, sensitivity
and NSD 0, with precision and HD95 undefined (NaN); leaderboards average HD95 over
non-empty predictions and say how many there are.
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import torch
from monai.metrics import (compute_confusion_matrix_metric, compute_dice, compute_hausdorff_distance,
                           compute_iou, compute_surface_dice, get_confusion_matrix)

NSD_TOLERANCE_MM = 1.0
METRICS = ("dice", "iou", "sensitivity", "precision", "hd95_mm", "nsd")


def _tensor(mask: np.ndarray) -> torch.Tensor:
    """(Z, Y, X) bool -> (1, 1, Z, Y, X) float, MONAI's batch-first, channel-first layout."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=bool)).float()[None, None]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two masks; 1.0 when both are empty (used for reader agreement and sweeps)."""
    return float(compute_dice(_tensor(pred), _tensor(truth), ignore_empty=False)[0, 0])


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray, spacing_zyx, distances: bool = True) -> dict[str, float]:
    """``distances=False`` skips HD95 and NSD (surface distances are most of the cost): the
    per-epoch validation, which only selects checkpoints, uses it."""
    p, t = pred.astype(bool), truth.astype(bool)
    if not t.any():
        raise ValueError("segmentation_metrics: the truth mask is empty; such a nodule is not scored")
    tp, tt = _tensor(p), _tensor(t)
    confusion = get_confusion_matrix(tp, tt)
    row = dict(dice=float(compute_dice(tp, tt, ignore_empty=False)[0, 0]),
               iou=float(compute_iou(tp, tt, ignore_empty=False)[0, 0]),
               sensitivity=float(compute_confusion_matrix_metric("sensitivity", confusion)[0, 0]),
               precision=float("nan"), hd95_mm=float("nan"), nsd=0.0)
    if p.any():
        row["precision"] = float(compute_confusion_matrix_metric("precision", confusion)[0, 0])
    if not distances:
        del row["hd95_mm"], row["nsd"]
    elif p.any():
        spacing = [float(s) for s in spacing_zyx]
        with warnings.catch_warnings():  # MONAI's deprecation notice about its own internals
            warnings.simplefilter("ignore", FutureWarning)
            row["hd95_mm"] = float(compute_hausdorff_distance(tp, tt, percentile=95, spacing=spacing)[0, 0])
            row["nsd"] = float(compute_surface_dice(tp, tt, class_thresholds=[NSD_TOLERANCE_MM],
                                                    spacing=spacing)[0, 0])
    return row


def inter_reader_dice(reader_bits: np.ndarray, n_readers: int) -> float:
    """Mean pairwise Dice between the readers (bit r = reader r) of one nodule; NaN if < 2."""
    masks = [((reader_bits >> r) & 1).astype(bool) for r in range(n_readers)]
    masks = [m for m in masks if m.any()]
    if len(masks) < 2:
        return float("nan")
    return float(np.mean([dice(a, b) for a, b in itertools.combinations(masks, 2)]))
