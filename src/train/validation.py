"""Validation during training: the model's per-nodule 3D scores on its validation patients,
through the one scoring path (``src.evaluation.cases``), as the leaderboards measure them.

The scans are read once, when training starts; each epoch then segments every validation
nodule from its coordinates with the EMA weights and scores it against its mask.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from torch import nn

from src.config import InferConfig
from src.evaluation.cases import NoduleCase
from src.predict.predictor import Predictor
from src.predict.segment import NetworkSegmenter, Segmented
from src.runtime import Runtime
from src.utils import progress


def summarize_nodules(table: pd.DataFrame, prefix: str = "val_") -> dict[str, float]:
    """Means over nodules; HD95 over the nodules with a non-empty prediction."""
    if table.empty:
        return {}
    out = {f"{prefix}{m}": float(table[m].mean()) for m in ("dice", "iou", "sensitivity", "nsd")}
    out[f"{prefix}hd95_mm"] = float(np.nanmean(table["hd95_mm"])) if table["hd95_mm"].notna().any() else float("nan")
    return out


class NoduleValidator:
    def __init__(self, cases: list[NoduleCase], rt: Runtime, window: tuple[float, float], k: int,
                 cfg: InferConfig, threshold: float):
        self.cases, self.rt, self.window, self.k = cases, rt, window, k
        self.cfg, self.threshold = cfg, threshold

    def segment(self, model: nn.Module, desc: str = "validate") -> tuple[pd.DataFrame, list[Segmented]]:
        segmenter = NetworkSegmenter(Predictor([model], self.rt, self.window, batch_size=self.cfg.batch_size), self.k)
        rows, segs = [], []
        for case in progress(self.cases, desc=desc):
            seg = case.segment(segmenter, self.cfg, self.threshold)
            rows.append(case.score(seg))
            segs.append(seg)
        return pd.DataFrame(rows), segs

    def __call__(self, model: nn.Module) -> dict[str, float]:
        return summarize_nodules(self.segment(model)[0])
