"""Runs the quality benchmark's protocol (``src.bench.protocol``) with the pipeline's own
stages: the built-in dataset, the cache, folds, fold teachers, OOF threshold choice,
pseudo-labels, students, and hold-out scoring through the one truth-free path.

Everything goes under one folder (``outputs/bench/quality/`` by default):

    data/<condition>/           the built-in dataset (LUNA16 layout), cache.h5, folds_<f>.csv
    runs/<condition>/seed<k>/<arm>/   teacher/fold_K/, postprocessing.json, pseudo.h5,
                                      student-<variant>/ (the pipeline's layout)
    scores/<condition>/seed<k>/<arm>.csv   per-nodule hold-out metrics of one arm
    cases/<condition>.pkl       the hold-out nodules as read once (a cache of the scans)

Each finished step leaves its file, and a rerun skips it: an interrupted run resumes
(teachers and students mid-training too, from their checkpoint_last.pt). ``recipe.yaml``
holds the config the folder's results were made under; another one is refused.
"""
from __future__ import annotations

import pickle
import re
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import yaml

from src.config import Config, config_changes, load_config, to_dict
from src.data.classical import BINARY_LEVEL, HalfMaxSegmenter
from src.data.cache import PatchCache, build_cache
from src.data.context import StageContext, load_context
from src.data.folds import HOLDOUT, development_uids, fold_ids, holdout_uids, make_folds
from src.data.manifest import read_dataset
from src.errors import DataError
from src.evaluation.baselines import SphereSegmenter, ThresholdSegmenter, fit_threshold
from src.evaluation.cases import NoduleCase, load_cases
from src.evaluation.holdout import score_cases
from src.evaluation.oof import choose_threshold, read_oof, score_oof
from src.evaluation.speed import lung_slices, speed_table
from src.layout import ExperimentLayout
from src.phantom.dataset import GENERATOR, generate_dataset, is_current, stamp
from src.predict.experiment import TrainedExperiment
from src.predict.predictor import Predictor
from src.predict.segment import NetworkSegmenter, to_model_volume
from src.runtime import Runtime
from src.bench.protocol import DEFAULT, Arm, Budget, Condition
from src.train.pseudo import write_pseudo_labels
from src.train.student import train_student
from src.train.teacher import train_teacher
from src.utils import atomic_to_csv, atomic_write_text

REFERENCES = ("HU threshold in sphere (fit on train)", "half-max in sphere", "coarse sphere")
UNPROMPTED = " (no prompt)"   # a prompted arm scored without its coordinates' channel

# Folders claimed before recipe.yaml named its generator were all made by this one.
PRE_RECIPE_GENERATOR = "nodule-kd phantom v2"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class BenchRun:
    def __init__(self, out: Path, budget: Budget, base_config: str, rt: Runtime):
        self.out, self.budget, self.base_config, self.rt = Path(out), budget, base_config, rt
        self.start = time.time()
        self._cases: dict[str, list[NoduleCase]] = {}

    def claim_folder(self) -> None:
        """One recipe per folder. A rerun skips every model and score already there, so results
        made under another config must never pass for this one's: the first run writes
        ``recipe.yaml``, a later one under another recipe is refused, naming what changed."""
        recipe = {k: v for k, v in to_dict(self.config(DEFAULT)).items() if k not in ("paths", "device")}
        recipe["generator"] = GENERATOR        # same config, another renderer: other data
        path = self.out / "recipe.yaml"
        if not path.is_file():
            atomic_write_text(path, yaml.safe_dump(recipe, sort_keys=False))
            return
        before = yaml.safe_load(path.read_text()) or {}
        before.setdefault("generator", PRE_RECIPE_GENERATOR)
        changed = config_changes(before, recipe)
        if changed:
            raise DataError(f"{path}: this folder's models and scores were made under another recipe "
                            f"({'; '.join(changed[:3])}{'; ...' if len(changed) > 3 else ''}); "
                            "pass another --out, or delete the folder to start again")

    def log(self, text: str) -> None:
        minutes = (time.time() - self.start) / 60
        print(f"[bench {minutes:6.1f} min] {text}", flush=True)

    # ------------------------------------------------------------------ data
    def data_dir(self, cond: Condition) -> Path:
        return self.out / "data" / slug(cond.name)

    def prepare(self, cond: Condition) -> None:
        """The condition's dataset and cache (skipped when already there)."""
        cfg = self.config(cond)
        folder = self.data_dir(cond)
        if not is_current(cfg.phantom, folder / "luna16"):
            from src.phantom.dataset import clear_out_dir
            self.log(f"{cond.name}: generating {cfg.phantom.n_scans} scans ({cond.description})")
            clear_out_dir(folder / "luna16")
            generate_dataset(cfg.phantom, folder / "luna16")
            atomic_write_text(folder / "luna16" / "phantom.json", stamp(cfg.phantom))
        if cond.holdout_only:   # scored from the scans, never trained on: no patch cache
            return
        cache = Path(cfg.paths.cache)
        if not cache.is_file():
            self.log(f"{cond.name}: building the cache")
        build_cache(read_dataset(cfg.paths), cfg.cache, cache, source=str((folder / "luna16").resolve()))

    def folds_path(self, cond: Condition, fraction: float) -> Path:
        path = self.data_dir(cond) / f"folds_fine{fraction:g}.csv"
        if not path.is_file():
            cfg = self.config(cond)
            cache = PatchCache(cfg.paths.cache)
            atomic_to_csv(make_folds(cache.scans, cache.nodules, replace(cfg.folds, fine_fraction=fraction)), path)
        return path

    # ------------------------------------------------------------------ configs
    def config(self, cond: Condition, arm: Arm | None = None, seed: int = 0) -> Config:
        folder = self.data_dir(cond)
        phantom = {"n_scans": self.budget.n_scans(cond), **cond.phantom}
        sets = [f"paths.data={folder / 'luna16'}", f"paths.cache={folder / 'cache.h5'}",
                f"paths.outputs={self.out / 'runs' / slug(cond.name) / f'seed{seed}'}",
                *[f"phantom.{k}={v}" for k, v in phantom.items()], *self.budget.overrides,
                f"teacher.seed={seed}", f"student.seed={seed}"]
        if arm is not None:
            teacher_arm = arm.teachers or arm.name
            sets += [f"paths.experiment={slug(teacher_arm)}", *arm.overrides]
        cfg = load_config(self.base_config, sets)
        cfg.device = self.rt.device.type
        return cfg

    def context(self, cond: Condition, arm: Arm, seed: int) -> StageContext:
        cfg = self.config(cond, arm, seed)
        cfg.paths.folds = str(self.folds_path(cond, arm.fine_fraction))
        ctx = load_context(cfg)
        if arm.kind == "student":
            ctx = replace(ctx, layout=ExperimentLayout(ctx.layout.root, student=f"student-{slug(arm.name)}"))
        return ctx

    # ------------------------------------------------------------------ training
    def train(self, cond: Condition, arm: Arm, seed: int, teachers: Arm | None = None) -> StageContext:
        """Train an arm (a student's teachers first); skips what is done."""
        ctx = self.context(cond, arm, seed)
        if arm.kind == "student":
            self.train(cond, teachers, seed)
            if not ctx.layout.pseudo_labels.is_file():
                self.log(f"{cond.name} seed {seed}: pseudo-labels from '{teachers.name}'")
                _, quality = write_pseudo_labels(ctx, self.rt)
                atomic_to_csv(quality, ctx.layout.pseudo_quality, float_format="%.4g")
            if not ctx.layout.student_checkpoint("final").is_file():
                self.log(f"{cond.name} seed {seed}: training '{arm.name}'")
                train_student(ctx, self.rt, resume=True)
            return ctx
        for fold in fold_ids(ctx.folds):
            done = ctx.layout.teacher_checkpoint(fold, "final").is_file() and \
                ctx.layout.oof_predictions(ctx.layout.teacher_dir(fold)).is_file()
            if not done:
                self.log(f"{cond.name} seed {seed}: training '{arm.name}' fold {fold}")
                train_teacher(ctx, fold, self.rt, resume=True)
        if not ctx.layout.postprocessing.is_file():
            ctx.layout.write_postprocessing(choose_threshold(read_oof(ctx.layout.all_oof_predictions(), ctx.layout.root)))
        return ctx

    def oof_folds(self, ctx: StageContext) -> pd.DataFrame:
        """Mean OOF Dice per fold at the arm's chosen threshold (the fold-to-fold spread)."""
        threshold, _ = ctx.layout.threshold(ctx.cfg.infer)
        scored = score_oof(read_oof(ctx.layout.all_oof_predictions(), ctx.layout.root), threshold)
        return scored.groupby("fold")["dice"].agg(["mean", "size"]).reset_index()

    # ------------------------------------------------------------------ scoring
    def cases(self, cond: Condition, split: str = HOLDOUT) -> list[NoduleCase]:
        """The condition's scored nodules of the hold-out (or of the fine training scans), read once.
        A hold-out-only condition's hold-out is every scan of a patient the default set does not
        hold; its training scans are the default set's."""
        if cond.holdout_only and split != HOLDOUT:
            return self.cases(DEFAULT, split)
        key = f"{slug(cond.name)}-{split}"
        path = self.out / "cases" / f"{key}.pkl"
        if key not in self._cases:
            if path.is_file():
                with open(path, "rb") as f:
                    self._cases[key] = pickle.load(f)
            else:
                cfg = self.config(cond)
                if cond.holdout_only:
                    uids = self.new_patients_scans(cond)
                else:   # the fine training scans: what the HU threshold may be fit on
                    folds = pd.read_csv(self.folds_path(cond, 0.2), dtype=str)
                    uids = holdout_uids(folds) if split == HOLDOUT else development_uids(folds, "fine")
                records = [r for r in read_dataset(cfg.paths) if r.seriesuid in uids]
                self._cases[key] = load_cases(records, cfg.cache, cfg.infer, desc=f"read {split} scans")
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as f:
                    pickle.dump(self._cases[key], f)
        return self._cases[key]

    def new_patients_scans(self, cond: Condition, seen: set[str] | None = None) -> set[str]:
        """The seriesuids of ``cond``'s scans whose patient is not in ``seen`` (default: every
        patient of the default set)."""
        scans = pd.read_csv(self.data_dir(cond) / "luna16" / "scans.csv", dtype=str)
        if seen is None:
            seen = set(pd.read_csv(self.data_dir(DEFAULT) / "luna16" / "scans.csv", dtype=str)["patient_id"])
        return set(scans.loc[~scans["patient_id"].isin(seen), "seriesuid"])

    def default_development_patients(self) -> set[str]:
        """The patients the default set's models trained or validated on (every fine-mask
        fraction shares one hold-out, so one folds file answers for all)."""
        folds = pd.read_csv(self.folds_path(DEFAULT, 0.2), dtype=str)
        return set(folds.loc[folds["fold"] != HOLDOUT, "patient_id"])

    def scores_path(self, cond: Condition, seed: int, name: str) -> Path:
        return self.out / "scores" / slug(cond.name) / f"seed{seed}" / f"{slug(name)}.csv"

    def segmenter(self, ctx: StageContext, arm: Arm) -> tuple[NetworkSegmenter, float, Predictor]:
        """An arm's network(s) as a segmenter, loaded as ``infer.py`` loads them, at their threshold."""
        models = TrainedExperiment(ctx.layout, ctx.cfg).models(
            "student" if arm.kind == "student" else "ensemble", self.rt, tta=False, fpr=False, cache_hash=ctx.cache_hash)
        return NetworkSegmenter(models.predictor, ctx.k), models.threshold, models.predictor

    def scored(self, cond: Condition, seed: int, name: str) -> pd.DataFrame | None:
        """The stored scores, unless missing or made before the sphere fallback (those are
        scored again: scoring is minutes, and mixing the two rules would bias the means)."""
        path = self.scores_path(cond, seed, name)
        table = pd.read_csv(path) if path.is_file() else None
        return table if table is not None and "sphere_fallback" in table else None

    def score(self, cond: Condition, seed: int, name: str, segmenters: dict,
              cases: list[NoduleCase] | None = None) -> pd.DataFrame:
        """Per-nodule hold-out metrics of ``segmenters`` (name -> (segmenter, threshold)) on
        ``cases`` (default: the condition's hold-out), written once to
        scores/<condition>/seed<k>/<name>.csv."""
        path = self.scores_path(cond, seed, name)
        if (table := self.scored(cond, seed, name)) is not None:
            return table
        cfg = self.config(cond)
        table = score_cases(self.cases(cond) if cases is None else cases, segmenters, cfg.infer)
        table.insert(0, "seed", seed)
        table.insert(0, "condition", cond.name)
        atomic_to_csv(table, path, float_format="%.5g")
        return table

    def score_arm(self, cond: Condition, arm: Arm, seed: int, ctx: StageContext,
                  label: str | None = None, on: Condition | None = None) -> pd.DataFrame:
        """Score an arm trained on ``cond`` on the hold-out of ``on`` (default: its own). On a
        shifted set, the default set's models see only patients they never trained on (the sets
        draw from the same LIDC patients); a hold-out-only batch holds no others anyway."""
        target = on or cond
        name = label or arm.name
        if (table := self.scored(target, seed, name)) is not None:
            return table
        self.log(f"{target.name} seed {seed}: scoring '{name}'")
        segmenter, threshold, predictor = self.segmenter(ctx, arm)
        segmenters = {name: (segmenter, threshold)}
        if predictor.prompted:   # the same networks as they see a nodule in whole-scan search
            segmenters[name + UNPROMPTED] = (NetworkSegmenter(predictor, ctx.k, prompt=False), threshold)
        cases = None
        if target is not cond and not target.holdout_only:
            unseen = self.new_patients_scans(target, self.default_development_patients())
            cases = [c for c in self.cases(target) if c.seriesuid in unseen]
        return self.score(target, seed, name, segmenters, cases)

    def score_references(self, cond: Condition) -> pd.DataFrame:
        """The references that need no training; the HU threshold is fit on the fine training scans."""
        if (table := self.scored(cond, 0, "references")) is not None:
            return table
        cfg = self.config(cond)
        k, margin = cfg.cache.k_slices, cfg.infer.prior_margin_mm
        hu, _ = fit_threshold(self.cases(cond, "fine-train"), k, cfg.infer)
        self.log(f"{cond.name}: references (HU threshold fit on the fine training scans: {hu:.0f})")
        table = self.score(cond, 0, "references", {
            REFERENCES[0]: (ThresholdSegmenter(hu, k, margin), BINARY_LEVEL),
            REFERENCES[1]: (HalfMaxSegmenter(k, margin), BINARY_LEVEL),
            REFERENCES[2]: (SphereSegmenter(), BINARY_LEVEL),
        })
        return table

    def speed(self, ctx_teachers: StageContext, ctx_student: StageContext) -> pd.DataFrame:
        """Throughput of one teacher, the teacher ensemble and the student, in one run: on
        cache patches, and on the lung-box slices of the first hold-out scan."""
        path = self.out / "speed.csv"
        if path.is_file():
            return pd.read_csv(path)
        cfg = ctx_teachers.cfg
        first = sorted(holdout_uids(pd.read_csv(self.folds_path(DEFAULT, 0.2), dtype=str)))[0]
        record = next(r for r in read_dataset(cfg.paths) if r.seriesuid == first)
        slices = lung_slices(to_model_volume(record.load(with_masks=False), cfg.cache))
        ensemble = TrainedExperiment(ctx_teachers.layout, ctx_teachers.cfg).models(
            "ensemble", self.rt, tta=False, fpr=False, cache_hash=ctx_teachers.cache_hash).predictor
        student = TrainedExperiment(ctx_student.layout, ctx_student.cfg).models(
            "student", self.rt, tta=False, fpr=False, cache_hash=ctx_student.cache_hash).predictor
        predictors = {"teacher (one fold)": ensemble.members()[0], "teacher ensemble": ensemble, "student": student}
        table = speed_table(predictors, ctx_teachers.cache, ctx_teachers.k, ctx_teachers.patch_size, slices)
        atomic_to_csv(table, path, float_format="%.4g")
        return table


def write_pseudo_quality(run: BenchRun, cond: Condition, seed: int, ctx: StageContext, teachers: str) -> None:
    """Keep the pseudo-label quality table of the ``teachers`` arm's ensemble beside the
    scores (pseudo/<condition>/seed<k>/<teachers>.csv; every student of it shares it)."""
    if ctx.layout.pseudo_quality.is_file():
        table = pd.read_csv(ctx.layout.pseudo_quality)
        table.insert(0, "teachers", teachers)
        table.insert(0, "seed", seed)
        table.insert(0, "condition", cond.name)
        atomic_to_csv(table, run.out / "pseudo" / slug(cond.name) / f"seed{seed}" / f"{slug(teachers)}.csv",
                      float_format="%.4g")
