"""Stage 5: false-positive reduction (FPR) for whole-scan detection.

``train.py --stage fpr`` runs, resumably, in ``outputs/<experiment>/fpr/`` (``src.layout``):

1-2. *OOF maps and candidates* (``src.train.fpr_candidates``): the fold teachers' maps on
   their own validation scans, every non-hold-out scan's candidates labelled from
   coordinates, their cubes in ``candidates.h5``.
3. *Classifiers* (here): one per fold, trained on the other folds' candidates, their
   inputs sampled from rotated, flipped, scaled and shifted cubes, selected on its fold's
   AUC, then hard-negative rounds from it (the negatives it scores highest drawn more
   often); the best round scores its fold's candidates (OOF).
4. *Combination* (``src.evaluation.fpr_combination``): the classifier's weight against the
   map, chosen on the pooled OOF CPM. The hold-out is never touched.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import Dataset

from src.config import dump_config, to_dict
from src.data.candidates import (
    HIT,
    IGNORED,
    CandidateCache,
)
from src.data.context import StageContext
from src.data.folds import fold_ids, split_uids
from src.data.manifest import read_dataset
from src.data.preprocess import normalise
from src.errors import DataError
from src.evaluation.fpr_combination import choose_combination
from src.models.checkpoint import load_checkpoint, model_from_checkpoint
from src.models.classifier import classifier_input, sample_input
from src.models.factory import build_model
from src.predict.fpr import CandidateScorer
from src.runtime import Runtime
from src.train.fpr_candidates import build_candidate_cache, teachers_id, write_oof_maps
from src.train.trainer import RunInfo, Trainer
from src.utils import (
    atomic_to_csv,
    copy_file,
    progress,
    seed_everything,
)

ROTATE_DEG, SCALE, SHIFT_MM = 180.0, 0.15, 1.5      # augmentation of the training cubes


# ----------------------------------------------------------------------------- 3. classifiers


def random_affines(seeds: torch.Tensor, side: int, spacing_mm: float) -> torch.Tensor:
    """(N, 3, 4) augmentations for :func:`sample_input`, one per seed: a rotation about the
    cranio-caudal axis, flips of every axis, scaling and a shift of up to ``SHIFT_MM``."""
    out = torch.zeros(len(seeds), 3, 4)
    for i, seed in enumerate(seeds.tolist()):
        g = torch.Generator().manual_seed(int(seed))
        u = torch.rand(8, generator=g)
        angle = math.radians(ROTATE_DEG * (2 * u[0].item() - 1))
        scale = 1 + SCALE * (2 * u[1].item() - 1)
        c, s = math.cos(angle), math.sin(angle)
        rotate = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])     # (x, y, z): about z
        flips = torch.diag(torch.where(u[2:5] < 0.5, -1.0, 1.0))
        out[i, :, :3] = scale * rotate @ flips
        out[i, :, 3] = (2 * u[5:8] - 1) * (SHIFT_MM / spacing_mm) * 2 / side  # voxels -> normalised
    return out


class CandidateDataset(Dataset):
    """Items: (position, augmentation seed) from the sampler; the objective augments the
    batch's cubes at once."""

    def __init__(self, cache: CandidateCache, indices: np.ndarray, window: tuple[float, float]):
        self.cache, self.indices, self.window = cache, np.asarray(indices), window
        self.labels = cache.table["label"].to_numpy(dtype=np.float32)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item):
        pos, seed = item
        row = int(self.indices[pos])
        return {"cube": torch.from_numpy(normalise(self.cache.cube(row), self.window)),
                "label": torch.tensor(self.labels[row]), "seed": torch.tensor(seed)}


class FprObjective:
    needs_two_views = False

    def __init__(self, offsets: np.ndarray, spacing_mm: float):
        self.offsets, self.spacing_mm = offsets, spacing_mm   # the model's input points (its ``offsets``)

    def __call__(self, model: nn.Module, ema: nn.Module, batch: dict, progress: float):
        cubes = batch["cube"]
        affines = random_affines(batch["seed"], cubes.shape[-1], self.spacing_mm).to(cubes)
        logits = model(sample_input(cubes, affines, self.offsets))[:, 0]
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch["label"])
        return loss, {"bce": float(loss.detach())}


class FoldScorer:
    """Validation: the classifier's AUC on its fold's candidates (all sources, ignored ones out)."""

    def __init__(self, cache: CandidateCache, indices: np.ndarray, window, rt: Runtime):
        self.cubes = cache.cubes(indices)
        self.labels = cache.table["label"].to_numpy()[indices]
        self.window, self.rt = window, rt

    @torch.inference_mode()
    def logits(self, model: nn.Module) -> np.ndarray:
        out = []
        for i in range(0, len(self.cubes), 128):
            x = classifier_input(self.cubes[i:i + 128], self.window, model.offsets).to(self.rt.device)
            with self.rt.autocast():
                out.append(model(x).float()[:, 0].cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def __call__(self, model: nn.Module) -> dict[str, float]:
        z = self.logits(model)
        both = len(np.unique(self.labels)) == 2
        return {"val_auc": float(roc_auc_score(self.labels, z)) if both else float("nan")}


def classifier_logits_in_scans(ctx: StageContext, model: nn.Module, table: pd.DataFrame, rt: Runtime) -> np.ndarray:
    scorer = CandidateScorer([model.to(rt.device)], rt, ctx.cfg.detect, ctx.window, weight=1.0,
                             weight_source="", checkpoints=[])
    records = {r.seriesuid: r for r in read_dataset(ctx.cfg.paths)}
    out = np.zeros(len(table))
    for uid, rows in progress(list(table.groupby("seriesuid").indices.items()), desc="OOF candidate scores"):
        scan = records[uid].load()
        out[rows] = scorer.classifier_logits(scorer.inputs(scan, table.iloc[rows]))
    return out


def mined_weights(table: pd.DataFrame, train_idx: np.ndarray, logits: np.ndarray, positive_fraction: float,
                  hard_fraction: float) -> np.ndarray:
    """Sampling weights of a hard-negative round: positives keep ``positive_fraction``; half
    of the negatives' share goes to the ``hard_fraction`` of them the classifier scored
    highest (vessel spots, pleura it confuses with nodules), half to all of them."""
    positive = table["label"].to_numpy()[train_idx] == HIT
    negatives = np.flatnonzero(~positive)
    hard = negatives[np.argsort(-logits[negatives], kind="stable")[:max(1, round(hard_fraction * len(negatives)))]]
    weights = np.where(positive, positive_fraction / positive.sum(), (1 - positive_fraction) / 2 / max(len(negatives), 1))
    weights[hard] += (1 - positive_fraction) / 2 / len(hard)
    return weights


def train_fpr_fold(ctx: StageContext, cache: CandidateCache, fold: int, rt: Runtime, resume: bool = False) -> Path:
    """One fold's classifier: a round on every training candidate, then
    ``detect.mining_rounds`` rounds from the best so far with the negatives it scores
    highest drawn more often; the round with the best validation AUC is the fold's
    classifier (``layout.fpr_classifier``), which scores the fold's candidates (OOF)."""
    cfg, stage, det = ctx.cfg, ctx.cfg.fpr, ctx.cfg.detect
    splits = split_uids(ctx.folds, fold)
    table = cache.table
    usable = (table["label"].to_numpy() != IGNORED) & (table["cube"].to_numpy() >= 0)
    train_idx = np.flatnonzero(usable & table["seriesuid"].isin(splits["train"]).to_numpy())
    val_idx = np.flatnonzero(usable & table["seriesuid"].isin(splits["val"]).to_numpy())
    if not (table["label"].to_numpy()[train_idx] == HIT).any():
        raise DataError(f"{cache.path}: no positive candidate outside fold {fold}; more scans with nodules are needed")
    seed_everything(stage.seed + fold)
    out_dir = ctx.layout.fpr_fold_dir(fold)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rt.is_main:
        dump_config(cfg, ctx.layout.run_config(out_dir))
    positive = table["label"].to_numpy()[train_idx] == HIT
    weights = np.where(positive, stage.positive_fraction / positive.sum(),
                       (1 - stage.positive_fraction) / max((~positive).sum(), 1))
    window = ctx.window
    dataset = CandidateDataset(cache, train_idx, window)
    base_hash = ctx.run_hash(stage, det, {"fold": fold, "candidates": cache.attrs["build_hash"]})
    rounds = [out_dir] + [ctx.layout.fpr_mining_dir(fold, r) for r in range(1, det.mining_rounds + 1)]

    def info(r: int) -> RunInfo:
        return RunInfo(stage="fpr", fold=fold, model_config=to_dict(stage.model), in_channels=det.view_slices,
                       patch_size=det.view_size, config=to_dict(cfg), cache_hash=str(cache.attrs["build_hash"]),
                       config_hash=f"{base_hash}-round{r}" if r else base_hash,
                       extra={"train_uids": sorted(splits["train"]), "val_uids": sorted(splits["val"])})

    oof_path = ctx.layout.fpr_val_candidates(fold)
    classifier = ctx.layout.fpr_classifier(fold)
    if oof_path.is_file() and classifier.is_file() and \
            load_checkpoint(classifier).get("config_hash") in {info(r).config_hash for r in range(len(rounds))} and \
            ctx.layout.checkpoint(rounds[-1], "final").is_file():
        return out_dir   # done with this config and these candidates
    scorer = FoldScorer(cache, val_idx, window, rt)
    best_dir, best_auc = out_dir, -math.inf
    for r, round_dir in enumerate(rounds):
        model = build_model(stage.model, det.view_slices, det.view_size)
        round_stage = stage
        if r:   # from the best so far, half the schedule, its hardest negatives drawn more often
            model.load_state_dict(load_checkpoint(ctx.layout.checkpoint(best_dir))["ema"])
            train_logits = FoldScorer(cache, train_idx, window, rt).logits(
                model_from_checkpoint(ctx.layout.checkpoint(best_dir)))
            weights = mined_weights(table, train_idx, train_logits, stage.positive_fraction,
                                    det.mined_fraction)
            round_stage = replace(stage, epochs=max(1, math.ceil(stage.epochs / 2)), warmup_epochs=0.0)
        round_dir.mkdir(parents=True, exist_ok=True)
        objective = FprObjective(model.offsets, det.view_spacing_mm)
        trainer = Trainer(round_stage, model, objective, dataset, weights, scorer, round_dir, rt, info(r),
                          select_metric="val_auc")
        last = ctx.layout.checkpoint(round_dir, "last")
        # a run of another config or on other candidates is stale: it is trained anew
        if resume and last.is_file() and load_checkpoint(last).get("config_hash") == info(r).config_hash:
            trainer.resume()
            if rt.is_main:
                print(f"resumed FPR fold {fold} round {r} at epoch {trainer.epoch}")
        trainer.fit()
        if trainer.best > best_auc:
            best_dir, best_auc = round_dir, trainer.best
    if rt.is_main:
        print(f"FPR fold {fold}: the classifier of round {rounds.index(best_dir)} (validation AUC {best_auc:.4f})")
    copy_file(ctx.layout.checkpoint(best_dir), classifier)
    # OOF scores of the chosen classifier on every candidate of the fold (ignored ones too),
    # their cubes cut from the scans as infer.py cuts them
    oof = table[table["seriesuid"].isin(splits["val"])].reset_index(drop=True)
    model = model_from_checkpoint(classifier)
    oof["fpr_logit"] = classifier_logits_in_scans(ctx, model, oof, rt)
    atomic_to_csv(oof, oof_path, float_format="%.5g")
    return out_dir


def train_fpr(ctx: StageContext, rt: Runtime, folds: list[int] | None = None, resume: bool = False) -> dict:
    """The whole stage (or the classifiers of ``folds`` only); returns combination.json's content."""
    if ctx.cfg.detect.candidate_source not in ("oof", "listed"):
        raise DataError(f"detect.candidate_source must be oof or listed, got {ctx.cfg.detect.candidate_source!r}")
    todo = folds if folds is not None else fold_ids(ctx.folds)
    unknown = sorted(set(todo) - set(fold_ids(ctx.folds)))
    if unknown:
        raise DataError(f"{ctx.cfg.paths.folds}: no fold {unknown[0]} (its folds: "
                        f"{', '.join(map(str, fold_ids(ctx.folds)))})")
    threshold = ctx.layout.threshold(ctx.cfg.infer)[0]
    teachers = teachers_id(ctx)
    if ctx.cfg.detect.candidate_source == "oof":
        write_oof_maps(ctx, rt, teachers)
    cache = build_candidate_cache(ctx, threshold, teachers)
    for fold in todo:
        train_fpr_fold(ctx, cache, fold, rt, resume=resume)
    if folds is not None and any(not (ctx.layout.fpr_val_candidates(f)).is_file()
                                 for f in fold_ids(ctx.folds)):
        return {}
    return choose_combination(ctx, read_dataset(ctx.cfg.paths))


def report_line(result: dict, fpr_dir: Path) -> str:
    if not result:
        return f"FPR classifiers trained -> {fpr_dir} (the combination waits for every fold)"
    auc = "n/a" if result["oof_auc"] is None else f"{result['oof_auc']:.3f}"
    line = f"FPR: OOF AUC {auc}, classifier weight {result['weight']:g} ({result['weight_source']})"
    if "with_fpr" in result:
        a, b = result["without_fpr"], result["with_fpr"]
        line += (f"; OOF CPM over {a['scans']} scans: {a['cpm']:.3f} ({a['ci_low']:.3f}-{a['ci_high']:.3f}) without, "
                 f"{b['cpm']:.3f} ({b['ci_low']:.3f}-{b['ci_high']:.3f}) with FPR")
    return f"{line} -> {fpr_dir}"
