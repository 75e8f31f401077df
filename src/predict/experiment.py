"""One way to load what a trained experiment predicts with (as nnU-Net's predictor is
initialised from a trained model folder): its networks, *the* probability threshold, its
false-positive-reduction classifiers and the detection settings. ``infer.py``,
``export.py``, the hold-out leaderboard and the benchmarks take their models from here.

The threshold has one owner, read when the models are loaded: the experiment's OOF choice
(``postprocessing.json``, written by ``cv.py``), else the config's ``infer.threshold``. A
checkpoint's stamp records what was known when it trained (a student trained before
``cv.py`` carries the default); it is used only for a checkpoint loaded on its own, outside
an experiment, and a stamp that disagrees with the experiment's choice is named in a note.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from src.config import CacheConfig, Config, DetectConfig, InferConfig
from src.data.classical import BINARY_LEVEL, HalfMaxSegmenter
from src.errors import DataError
from src.layout import ExperimentLayout, find_experiment
from src.models.checkpoint import load_models
from src.predict.fpr import CandidateScorer
from src.predict.predictor import Predictor
from src.predict.segment import NetworkSegmenter
from src.runtime import Runtime, setup_runtime


@dataclass
class Models:
    """What one inference run predicts with."""
    predictor: Predictor | None  # None: no network, each given nodule's half-max level (mode 1 only)
    cache_cfg: CacheConfig       # model space: the networks' (from their checkpoint), else the config's
    threshold: float             # applied to the probabilities (0.5 on half-max's binary masks)
    threshold_source: str
    checkpoints: list[Path] = field(default_factory=list)
    detect: DetectConfig = field(default_factory=DetectConfig)   # whole-scan candidates
    fpr: CandidateScorer | None = None    # rescores whole-scan candidates (None: the map's peak)

    @property
    def prompted(self) -> bool:
        """The networks take the given coordinates as an input (coordinates mode)."""
        return self.predictor is not None and self.predictor.prompted

    def segmenter(self, cfg: InferConfig):
        """What segments a given nodule's window (``src.predict.segment``)."""
        if self.predictor is None:
            return HalfMaxSegmenter(self.cache_cfg.k_slices, cfg.prior_margin_mm)
        return NetworkSegmenter(self.predictor, self.cache_cfg.k_slices)


def half_max_models(cache_cfg: CacheConfig) -> Models:
    """The training-free segmenter: no checkpoints, binary masks (coordinates mode only)."""
    return Models(None, cache_cfg, BINARY_LEVEL, "half-max in the sphere (binary masks, no network)")


def stamped_threshold(models: list, checkpoints: list[Path]) -> tuple[float, str] | None:
    """The threshold stamped into every one of these checkpoints, if they agree on one."""
    stamped = {m.checkpoint_meta.get("threshold") for m in models}
    if len(stamped) == 1 and None not in stamped:
        return float(stamped.pop()), f"{checkpoints[0]} (stamped at training)"
    return None


def checkpoint_models(checkpoints: list[Path], cfg: Config, rt: Runtime, tta: bool = False) -> Models:
    """Checkpoints loaded on their own (``infer.py --checkpoint``): their stamped threshold,
    else the config's; no FPR."""
    models, cache_cfg = load_models(checkpoints)
    threshold = stamped_threshold(models, checkpoints) or (float(cfg.infer.threshold), "config infer.threshold")
    return Models(Predictor(models, rt, cache_cfg.window, tta=tta, batch_size=cfg.infer.batch_size), cache_cfg,
                  *threshold, checkpoints, cfg.detect)


@dataclass
class TrainedExperiment:
    layout: ExperimentLayout
    cfg: Config

    @classmethod
    def find(cls, cfg: Config, named: str | None, model: str) -> TrainedExperiment:
        """``--experiment`` (an error if it lacks ``model``), else the config's or the newest
        experiment with one (``src.layout.find_experiment``)."""
        return cls(find_experiment(cfg.paths, named, model), cfg)

    def threshold(self, model: str = "ensemble") -> tuple[float, str]:
        """The probability threshold ``model`` (student | ensemble) of this experiment is
        applied at, and where it comes from."""
        return self.layout.threshold(self.cfg.infer, model)

    def models(self, model: str, rt: Runtime, tta: bool | None = None, fpr: bool = True,
               cache_hash: str | None = None, batch_size: int | None = None) -> Models:
        """``student`` or ``ensemble`` (every fold teacher), at the experiment's threshold; with
        the FPR classifiers when ``fpr`` and the experiment has them. ``cache_hash``: the
        networks must have trained on that patch cache (scoring against it). ``tta`` and
        ``batch_size`` default to the config's ``infer`` settings."""
        checkpoints = self.layout.model_checkpoints(model)
        networks, cache_cfg = load_models(checkpoints)
        for path, network in zip(checkpoints, networks):
            if cache_hash is not None and network.checkpoint_meta.get("cache_hash") != cache_hash:
                raise DataError(f"{path}: trained on another patch cache (retrain, or use that cache)")
        threshold, source = self.threshold(model)
        stamp = stamped_threshold(networks, checkpoints)
        if stamp is not None and stamp[0] != threshold:
            print(f"note: {checkpoints[0]} was stamped with threshold {stamp[0]:g} at training; "
                  f"the experiment's is {threshold:g} ({source})", file=sys.stderr)
        tta = self.cfg.infer.tta if tta is None else tta
        predictor = Predictor(networks, rt, cache_cfg.window, tta=tta, batch_size=batch_size or self.cfg.infer.batch_size)
        scorer = self.fpr_scorer(rt) if fpr and self.layout.has_fpr() else None
        return Models(predictor, cache_cfg, threshold, source, checkpoints, self.cfg.detect, scorer)

    def fpr_scorer(self, rt: Runtime) -> CandidateScorer:
        return CandidateScorer.load(self.layout.fpr_checkpoints(), self.layout.fpr_combination, rt)


def load_models_for(cfg: Config, model: str, experiment: str | None = None, checkpoints: list[Path] | None = None,
                    device: str | None = None, tta: bool = False, fpr: bool = True) -> Models:
    """What ``infer.py`` predicts with: half-max (no network), the given ``checkpoints``, or
    ``model`` (student | ensemble) of ``experiment`` (``TrainedExperiment.find``). ``tta``
    adds to the config's; ``fpr``: the experiment's classifiers, where it has them."""
    if model == "half-max":
        return half_max_models(cfg.cache)
    rt = setup_runtime(device or cfg.device, cfg.amp)
    print(rt.describe())
    tta = tta or cfg.infer.tta
    if checkpoints:
        if fpr:
            print("note: --checkpoint: no false-positive reduction (the map's peak ranks the candidates)",
                  file=sys.stderr)
        return checkpoint_models(checkpoints, cfg, rt, tta)
    models = TrainedExperiment.find(cfg, experiment, model).models(model, rt, tta, fpr=fpr)
    if models.fpr is not None:
        print(f"false-positive reduction: {len(models.fpr.checkpoints)} classifier(s), weight {models.fpr.weight:g} "
              f"from {models.fpr.weight_source}")
    return models
