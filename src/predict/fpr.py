"""False-positive reduction at inference: rescore whole-scan candidates.

Each candidate's multi-view patch goes through the fold classifiers (their logits
averaged, as the teachers' are), and the final probability combines that evidence with the
segmentation map's peak probability:

    final = sigmoid(w * classifier_logit + (1 - w) * logit(seg_probability))

with ``w`` chosen on out-of-fold candidates by ``train.py --stage fpr`` (``combination.json``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from src.config import DetectConfig, from_dict
from src.data.candidates import cut_inputs
from src.data.preprocess import normalise
from src.data.scan import Scan
from src.data.tables import XYZ
from src.errors import ConfigError, DataError
from src.models.checkpoint import load_checkpoint, model_from_checkpoint
from src.runtime import Runtime

EPS = 1e-4   # map probabilities saturate at 1.0; keep their logits finite


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def combine(classifier_logit: np.ndarray, seg_probability: np.ndarray, weight: float) -> np.ndarray:
    z = weight * np.asarray(classifier_logit, dtype=np.float64) + (1 - weight) * logit(seg_probability)
    return 1.0 / (1.0 + np.exp(-z))


@dataclass
class CandidateScorer:
    models: list[torch.nn.Module]
    rt: Runtime
    detect: DetectConfig            # view geometry the classifiers were trained with
    window: tuple[float, float]
    weight: float
    weight_source: str
    checkpoints: list[Path]
    batch_size: int = 64

    @classmethod
    def load(cls, checkpoints: list[Path], combination: Path, rt: Runtime) -> "CandidateScorer":
        first = load_checkpoint(checkpoints[0])
        try:
            detect = from_dict(DetectConfig, first["config"].get("detect", {}))
        except ConfigError as err:
            raise DataError(f"{checkpoints[0]}: not a usable FPR checkpoint ({err})") from None
        window = tuple(float(v) for v in first["config"]["cache"]["window"])
        try:
            chosen = json.loads(Path(combination).read_text())
            weight, source = float(chosen["weight"]), str(chosen.get("weight_source", ""))
        except (OSError, ValueError, KeyError, TypeError):
            raise DataError(f"{combination}: missing or unreadable; rerun train.py --stage fpr") from None
        models = [model_from_checkpoint(p).to(rt.device) for p in checkpoints]
        return cls(models, rt, detect, window, weight, f"{combination} ({source})" if source else f"{combination}",
                   checkpoints)

    @torch.inference_mode()
    def classifier_logits(self, inputs_hu: np.ndarray) -> np.ndarray:
        """(N, ...) HU inputs (:meth:`inputs`) -> (N,) mean logit over the fold classifiers."""
        out = np.zeros(len(inputs_hu), dtype=np.float64)
        for i in range(0, len(inputs_hu), self.batch_size):
            x = torch.from_numpy(normalise(inputs_hu[i:i + self.batch_size], self.window)).to(self.rt.device)
            with self.rt.autocast():
                out[i:i + len(x)] = np.mean([m(x).float()[:, 0].cpu().numpy() for m in self.models], axis=0)
        return out

    def inputs(self, scan: Scan, table: pd.DataFrame) -> np.ndarray:
        """The classifiers' HU inputs at the candidates (views or cubes, as they were trained)."""
        return cut_inputs(scan.image, scan.geometry, table[XYZ].to_numpy(float),
                          self.models[0].offsets, self.detect.view_spacing_mm)

    def rescore(self, scan: Scan, table: pd.DataFrame) -> pd.DataFrame:
        """The candidates with ``fpr_probability`` and the combined ``probability``, best first."""
        table = table.copy()
        if table.empty:
            table["fpr_probability"] = []
            return table
        z = self.classifier_logits(self.inputs(scan, table))
        table["fpr_probability"] = 1.0 / (1.0 + np.exp(-z))
        table["probability"] = combine(z, table["seg_probability"].to_numpy(), self.weight)
        return table.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)
