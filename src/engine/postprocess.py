"""Post-processing chosen on out-of-fold predictions (as nnU-Net does): the probability
threshold that maximises the pooled OOF nodule Dice of the fold teachers.

``cv.py`` writes it to ``outputs/<experiment>/postprocessing.json``; the hold-out
leaderboard and ``infer.py`` use it (``infer.threshold_from_oof``). It is chosen on
training patients only, so the hold-out stays untouched.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from src.config import InferConfig
from src.data.cache import PatchCache
from src.engine.evaluate import roi_centre, segment_at
from src.engine.metrics import dice
from src.utils import atomic_write_text

THRESHOLDS = tuple(np.round(np.arange(0.1, 0.71, 0.05), 2))
FILENAME = "postprocessing.json"


def choose_threshold(cache: PatchCache, teacher_dir: Path) -> dict:
    """Pooled OOF Dice at each candidate threshold; the best one (ties: closest to 0.5)."""
    spacing = np.asarray(cache.attrs["spacing_zyx"], dtype=float)
    nodules = cache.nodules.set_index("roi")
    scores = {float(t): [] for t in THRESHOLDS}
    for path in sorted(Path(teacher_dir).glob("fold_*/val_predictions.h5")):
        with h5py.File(path, "r") as f:
            for key, ds in f["prob"].items():
                prob, nod, roi = ds[()].astype(np.float32), nodules.loc[int(key)], cache.roi(int(key))
                centre = roi_centre(nod)
                for t in scores:
                    scores[t].append(dice(segment_at(prob, centre, nod.diameter_mm / 2, spacing, t), roi["fine"] > 0))
    if not scores[0.5]:
        raise FileNotFoundError(f"{teacher_dir}: no fold_*/val_predictions.h5")
    mean = {t: float(np.mean(v)) for t, v in scores.items()}
    best = max(mean, key=lambda t: (round(mean[t], 6), -abs(t - 0.5)))
    return {"threshold": best, "oof_dice_at_threshold": mean, "nodules": len(scores[0.5])}


def write(result: dict, experiment_dir: Path) -> Path:
    path = Path(experiment_dir) / FILENAME
    atomic_write_text(path, json.dumps(result, indent=1))
    return path


def apply(cfg: InferConfig, experiment_dir: Path) -> str:
    """Set ``cfg.threshold`` from the experiment's OOF choice when enabled and available;
    returns where the threshold came from."""
    path = Path(experiment_dir) / FILENAME
    if cfg.threshold_from_oof and path.is_file():
        cfg.threshold = float(json.loads(path.read_text())["threshold"])
        return f"{path} (chosen on OOF)"
    return "config infer.threshold"
