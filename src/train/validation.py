"""Validation during training: the model's per-nodule 3D scores on its validation patients,
through the one scoring path (``src.evaluation.cases``), as the leaderboards measure them.

The scans are read once, when training starts; each epoch then segments every validation
nodule from its coordinates with the EMA weights and scores its overlap with the mask
(the best checkpoint's OOF scores add the surface distances).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from torch import nn

from pathlib import Path

from src.config import InferConfig, code_version
from src.data.context import StageContext
from src.data.manifest import read_dataset
from src.evaluation.cases import NoduleCase, load_cases
from src.evaluation.oof import write_oof
from src.models.checkpoint import model_from_checkpoint
from src.predict.predictor import Predictor
from src.predict.segment import NetworkSegmenter, Segmented
from src.runtime import Runtime
from src.utils import atomic_to_csv, progress


def summarize_nodules(table: pd.DataFrame) -> dict[str, float]:
    """Means over nodules; precision and HD95 over the nodules with a non-empty prediction."""
    if table.empty:
        return {}
    out = {}
    for metric in ("dice", "iou", "sensitivity", "precision", "nsd", "hd95_mm"):
        if metric in table:  # a column even when all NaN (no prediction yet), so summary.csv keeps its shape
            out[f"val_{metric}"] = float(np.nanmean(table[metric])) if table[metric].notna().any() else np.nan
    return out


class NoduleValidator:
    def __init__(self, cases: list[NoduleCase], rt: Runtime, window: tuple[float, float], k: int,
                 cfg: InferConfig, threshold: float):
        self.cases, self.rt, self.window, self.k = cases, rt, window, k
        self.cfg, self.threshold = cfg, threshold

    def segment(self, model: nn.Module, desc: str = "validate", distances: bool = True
                ) -> tuple[pd.DataFrame, list[Segmented]]:
        # the network's own masks: an epoch that finds nothing must not score as the sphere does
        segmenter = NetworkSegmenter(Predictor([model], self.rt, self.window, batch_size=self.cfg.batch_size), self.k,
                                     sphere_fallback=False)
        rows, segs = [], []
        for case in progress(self.cases, desc=desc):
            seg = case.segment(segmenter, self.cfg, self.threshold)
            rows.append(case.score(seg, distances))
            segs.append(seg)
        return pd.DataFrame(rows), segs

    def __call__(self, model: nn.Module) -> dict[str, float]:
        """Per-epoch scores (overlap only: the checkpoint choice needs no surface distances)."""
        return summarize_nodules(self.segment(model, distances=False)[0])


def scan_validator(ctx: StageContext, uids: set[str], rt: Runtime, threshold: float, desc: str) -> NoduleValidator:
    """Every scored nodule of the scans ``uids``, read once."""
    records = [r for r in read_dataset(ctx.cfg.paths) if r.seriesuid in uids]
    cases = load_cases(records, ctx.cache.config, ctx.cfg.infer, desc=desc)
    return NoduleValidator(cases, rt, ctx.window, ctx.k, ctx.cfg.infer, threshold)


def write_validation_predictions(ctx: StageContext, validator: NoduleValidator, checkpoint: Path, out_dir: Path,
                                 fold: int) -> pd.DataFrame:
    """Score a best checkpoint on its validation nodules and keep their probabilities (for
    the threshold choice): val_metrics.csv and val_predictions.h5 in ``out_dir``."""
    table, segs = validator.segment(model_from_checkpoint(checkpoint), desc="OOF" if fold >= 0 else "validate")
    table.insert(0, "fold", fold)
    atomic_to_csv(table, ctx.layout.oof_metrics(out_dir), float_format="%.5g")
    write_oof(validator.cases, segs, ctx.layout.oof_predictions(out_dir),
              dict(fold=fold, checkpoint=str(checkpoint), cache_hash=ctx.cache_hash,
                   code_version=code_version()))
    return table
