"""The one owner of the ``outputs/<experiment>/`` layout (as nnU-Net's file_path_utilities).

    outputs/<experiment>/
      teacher/fold_K/   args.yaml, summary.csv, training_curves.png,
                        checkpoint_{last,best,final}.pt, val_metrics.csv, val_predictions.h5
      student/          the same files (validated on the fine training scans), its own
                        postprocessing.json (its threshold), student.onnx
      pseudo.h5, pseudo_quality.csv          soft pseudo-labels and their quality
      .pseudo.h5.parts-<id>/                 an interrupted pass's finished batches (resumed)
      postprocessing.json                    the probability threshold chosen on OOF
      leaderboard.{csv,md}, oof_nodules.csv  cross-validation (cv.py)
      holdout_leaderboard.{csv,md}, holdout_nodules.csv
      fpr/              false-positive reduction (train.py --stage fpr):
        maps/<seriesuid>.npz     OOF whole-scan probability (each fold teacher, its own scans)
        candidates.h5            candidate cubes + labels; fold_K/ classifier of fold K (as a
                                 teacher's folder; hard_negatives_R/ its mining rounds,
                                 classifier.pt the best round's, val_candidates.csv its OOF scores)
        combination.json, oof_froc.{csv,png}, detection_leaderboard.md

``infer.py``'s output folder (``InferenceOutputs``):

    <out>/
      <seriesuid>.nii.gz (or --format)   label mask per scan, in its own geometry; _prob: map
      <seriesuid>_seg.dcm, _sr.dcm       DICOM-SEG and SR (TID 1500), for DICOM inputs
      qa/<seriesuid>.png                 with --qa
      nodules.csv, run.json, report.html every run; whole-scan mode also submission.csv
                                         (LUNA16) and candidates.csv (every candidate)
      scores.csv | froc.{csv,png}, froc_summary.csv    evaluate.py's scores of the run
      .infer.parts-<id>/                 an interrupted run's finished scans (resumed; gone when all are done)

Every stage asks this module for its paths; none builds them by hand. Postprocessing is
read from its file and passed on explicitly, never written into a config in place.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from src.config import InferConfig, PathsConfig
from src.errors import DataError
from src.utils import atomic_write_text

CHECKPOINTS = ("last", "best", "final")
MASK_FORMATS = (".nii.gz", ".mhd", ".nrrd")     # infer.py --format


@dataclass(frozen=True)
class ExperimentLayout:
    root: Path
    student: str = "student"   # the student's folder: benchmarks distil variants from one ensemble
    fpr: str = "fpr"           # the FPR classifiers' folder: benchmarks compare variants on one candidate set

    @classmethod
    def from_paths(cls, paths: PathsConfig, experiment: str | None = None) -> "ExperimentLayout":
        return cls(Path(paths.outputs) / (experiment or paths.experiment))

    # ------------------------------------------------------------------ models
    def teacher_dir(self, fold: int) -> Path:
        return self.root / "teacher" / f"fold_{fold}"

    @property
    def student_dir(self) -> Path:
        return self.root / self.student

    @staticmethod
    def checkpoint(stage_dir: Path, kind: str = "best") -> Path:
        if kind not in CHECKPOINTS:
            raise ValueError(f"checkpoint kind must be one of {CHECKPOINTS}")
        return stage_dir / f"checkpoint_{kind}.pt"

    # a training run's folder (a fold teacher, the student, an FPR classifier or its round)
    @staticmethod
    def run_config(run_dir: Path) -> Path:
        return run_dir / "args.yaml"

    @staticmethod
    def run_summary(run_dir: Path) -> Path:
        return run_dir / "summary.csv"

    @staticmethod
    def run_curves(run_dir: Path) -> Path:
        return run_dir / "training_curves.png"

    def teacher_checkpoint(self, fold: int, kind: str = "best") -> Path:
        return self.checkpoint(self.teacher_dir(fold), kind)

    def student_checkpoint(self, kind: str = "best") -> Path:
        return self.checkpoint(self.student_dir, kind)

    def teacher_checkpoints(self, folds: list[int] | None = None) -> list[Path]:
        """Best checkpoint of each fold teacher (all trained folds when ``folds`` is None)."""
        if folds is None:
            paths = sorted(self.checkpoint(d) for d in self.root.glob("teacher/fold_*") if self.checkpoint(d).is_file())
        else:
            paths = [self.teacher_checkpoint(f) for f in folds]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing or not paths:
            raise DataError(f"{self.root}: teacher checkpoint(s) missing ({', '.join(missing) or 'none trained'}); "
                            "run train.py --fold K first")
        return paths

    def model_checkpoints(self, model: str) -> list[Path]:
        """``student`` -> its best checkpoint; ``ensemble`` -> every fold teacher's."""
        if model == "ensemble":
            return self.teacher_checkpoints()
        path = self.student_checkpoint()
        if not path.is_file():
            raise DataError(f"{path}: no trained student; run train.py --stage student first")
        return [path]

    def has(self, model: str) -> bool:
        if model == "ensemble":
            return any(self.checkpoint(d).is_file() for d in self.root.glob("teacher/fold_*"))
        return self.student_checkpoint().is_file()

    def onnx(self, stage_dir: Path) -> Path:
        return stage_dir / f"{stage_dir.name}.onnx"

    # ------------------------------------------------------------------ false-positive reduction
    @property
    def fpr_dir(self) -> Path:
        return self.root / self.fpr

    def fpr_fold_dir(self, fold: int) -> Path:
        return self.fpr_dir / f"fold_{fold}"

    def fpr_map(self, seriesuid: str, teachers: str) -> Path:
        """A fold teacher's whole-scan map of one of its validation scans, kept per
        ``teachers`` (the id of the teachers' checkpoints and folds that made it): retrained
        teachers make new maps. Every classifier variant shares ``fpr/``'s."""
        return self.root / "fpr" / "maps" / teachers / f"{seriesuid}.npz"

    @property
    def fpr_candidates(self) -> Path:
        return self.root / "fpr" / "candidates.h5"

    @property
    def fpr_combination(self) -> Path:
        return self.fpr_dir / "combination.json"

    def fpr_val_candidates(self, fold: int) -> Path:
        """Fold ``fold``'s validation candidates with the chosen classifier's OOF scores."""
        return self.fpr_fold_dir(fold) / "val_candidates.csv"

    def fpr_mining_dir(self, fold: int, round_: int) -> Path:
        """A hard-negative round of fold ``fold``'s classifier (a trainer's folder)."""
        return self.fpr_fold_dir(fold) / f"hard_negatives_{round_}"

    def fpr_classifier(self, fold: int) -> Path:
        """Fold ``fold``'s classifier: the best checkpoint of its best round."""
        return self.fpr_fold_dir(fold) / "classifier.pt"

    def fpr_checkpoints(self) -> list[Path]:
        """Every fold's classifier ([] when the FPR stage has not run)."""
        return sorted(self.fpr_dir.glob(f"fold_*/{self.fpr_classifier(0).name}"))

    def has_fpr(self) -> bool:
        return bool(self.fpr_checkpoints()) and self.fpr_combination.is_file()

    # ------------------------------------------------------------------ stage outputs
    @property
    def pseudo_labels(self) -> Path:
        return self.root / "pseudo.h5"

    def pseudo_parts(self, identity: str) -> Path:
        """Finished batches of an interrupted pseudo-labelling pass (``identity``: its inputs)."""
        return self.root / f".{self.pseudo_labels.name}.parts-{identity}"

    @property
    def pseudo_quality(self) -> Path:
        return self.root / "pseudo_quality.csv"

    @staticmethod
    def oof_predictions(fold_dir: Path) -> Path:
        return fold_dir / "val_predictions.h5"

    @staticmethod
    def oof_metrics(fold_dir: Path) -> Path:
        return fold_dir / "val_metrics.csv"

    def all_oof_predictions(self) -> list[Path]:
        return sorted(self.root.glob("teacher/fold_*/val_predictions.h5"))

    def leaderboard(self, name: str) -> tuple[Path, Path]:
        """(tidy CSV, Markdown) of a leaderboard: ``leaderboard`` or ``holdout_leaderboard``."""
        return self.root / f"{name}.csv", self.root / f"{name}.md"

    def per_nodule(self, name: str) -> Path:
        return self.root / f"{name}_nodules.csv"

    # ------------------------------------------------------------------ postprocessing
    @property
    def postprocessing(self) -> Path:
        return self.root / "postprocessing.json"

    def write_postprocessing(self, result: dict, model: str = "ensemble") -> Path:
        """The threshold choice of the teachers (cv.py) or of the ``student``."""
        path = self.student_postprocessing if model == "student" else self.postprocessing
        atomic_write_text(path, json.dumps(result, indent=1))
        return path

    @property
    def student_postprocessing(self) -> Path:
        return self.student_dir / "postprocessing.json"

    def threshold(self, cfg: InferConfig, model: str = "ensemble") -> tuple[float, str]:
        """The probability threshold to apply to ``model`` and where it comes from: the
        student's own choice (on its validation nodules) for the student, the teachers' OOF
        choice (cv.py) for the ensemble and a student without one, when
        ``infer.threshold_from_oof``; else ``infer.threshold``."""
        if not cfg.threshold_from_oof:
            return float(cfg.threshold), "config infer.threshold"
        own = [self.student_postprocessing] if model == "student" else []
        for path, why in [*((p, "the student's own, on its validation nodules") for p in own),
                          (self.postprocessing, "chosen on OOF")]:
            if path.is_file():
                try:
                    return float(json.loads(path.read_text())["threshold"]), f"{path} ({why})"
                except (ValueError, KeyError, TypeError):
                    raise DataError(f"{path}: unreadable; rerun the stage that wrote it") from None
        return float(cfg.threshold), "config infer.threshold"


def find_experiment(paths: PathsConfig, named: str | None, model: str) -> ExperimentLayout:
    """outputs/<named>/ when ``--experiment`` named one (an error if it lacks the wanted
    models); else the config's experiment, or the newest one that has them, with a note."""
    outputs = Path(paths.outputs)
    wanted = ExperimentLayout(outputs / (named or paths.experiment))
    if wanted.has(model):
        return wanted
    found = sorted((ExperimentLayout(p) for p in outputs.glob("*") if p.is_dir() and ExperimentLayout(p).has(model)),
                   key=lambda e: e.root.stat().st_mtime)
    others = f"; experiments with one: {', '.join(e.root.name for e in found)}" if found else ""
    if named:
        raise DataError(f"{wanted.root}: no trained {model} in experiment '{named}'{others}")
    if not found:
        raise DataError(f"{outputs}: no trained {model} in any experiment; run `make demo` or train.py first")
    print(f"note: using the models of {found[-1].root} ({wanted.root} has no {model})", file=sys.stderr)
    return found[-1]


@dataclass(frozen=True)
class InferenceOutputs:
    """The files of one ``infer.py`` output folder: infer.py writes them, evaluate.py and the
    benchmarks read them."""
    root: Path

    @property
    def nodules(self) -> Path:
        return self.root / "nodules.csv"

    @property
    def submission(self) -> Path:
        return self.root / "submission.csv"

    @property
    def candidates(self) -> Path:
        return self.root / "candidates.csv"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    # evaluate.py's scores, written beside the predictions
    @property
    def scores(self) -> Path:
        return self.root / "scores.csv"

    @property
    def froc_curve(self) -> Path:
        return self.root / "froc.csv"

    @property
    def froc_plot(self) -> Path:
        return self.root / "froc.png"

    @property
    def froc_summary(self) -> Path:
        return self.root / "froc_summary.csv"

    def mask(self, seriesuid: str, fmt: str) -> Path:
        return self.root / f"{seriesuid}{fmt}"

    def masks(self, seriesuid: str) -> list[Path]:
        """The label masks written for a scan, in any of ``MASK_FORMATS``."""
        return [self.mask(seriesuid, fmt) for fmt in MASK_FORMATS if self.mask(seriesuid, fmt).is_file()]

    def probability(self, seriesuid: str, fmt: str) -> Path:
        return self.root / f"{seriesuid}_prob{fmt}"

    def qa(self, seriesuid: str) -> Path:
        return self.root / "qa" / f"{seriesuid}.png"

    def parts(self, run_id: str) -> Path:
        """Each finished scan's rows of an interrupted run (``run_id``: its models and settings),
        until the run ends with every scan done."""
        return self.root / f".infer.parts-{run_id}"

    def dicom_stem(self, seriesuid: str) -> str:
        return seriesuid     # <stem>_seg.dcm, <stem>_sr.dcm (src.predict.dicom_out)
