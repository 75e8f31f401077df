"""What each stage learns from a batch: which loss applies to which samples.

Teacher: fine patches -> Dice + BCE on the fine mask; coarse patches -> the coarse loss
chosen by ``loss.coarse`` (never the fine mask: ``fine_ok`` is 0 for them). ``prior``: Dice +
BCE on the coarse prior (the half-max pseudo-mask made from the coordinates) where the
nodule stood out enough to have one, the mean teacher on the other coarse patches.
Student: Dice + BCE on fine masks, KD to the ensemble's soft targets weighted toward the
nodule region, and optionally attention transfer from a teacher's encoder.
"""
from __future__ import annotations

import torch
from torch import nn

from src.config import COARSE_MODES, DistillConfig, LossConfig
from src.errors import ConfigError
from src.losses.coarse import CoarseMeanTeacherLoss, SphereLoss, sigmoid_rampup
from src.losses.distill import AttentionTransferLoss, BinaryKDLoss, nodule_region, nodule_region_weights
from src.losses.supervised import DiceBCELoss
from src.models.factory import forward_with_features


class TeacherObjective:
    def __init__(self, cfg: LossConfig):
        if cfg.coarse not in COARSE_MODES:
            raise ConfigError(f"loss.coarse must be one of {COARSE_MODES}, got {cfg.coarse!r}")
        self.cfg = cfg
        self.fine = DiceBCELoss(cfg.dice_weight, cfg.bce_weight)
        self.sphere = SphereLoss(cfg.dice_weight, cfg.bce_weight)
        self.mt = CoarseMeanTeacherLoss(cfg.coarse_background_margin_mm, cfg.mt_confidence, cfg.coarse_core_fraction)

    @property
    def needs_two_views(self) -> bool:
        return self.cfg.coarse in ("mt", "prior")

    @property
    def learns_from_coarse(self) -> bool:
        return self.cfg.coarse != "ignore"

    def __call__(self, model: nn.Module, ema: nn.Module, batch: dict, progress: float):
        logits = model(batch["image"])
        fine = batch["fine_ok"] > 0.5
        terms = {"fine": self.fine(logits[fine], batch["fine"][fine])}
        coarse = ~fine
        weight = self.cfg.coarse_weight
        if self.cfg.coarse == "sphere":
            terms.update(self.sphere(logits[coarse], batch["coarse"][coarse]))
            loss = terms["fine"] + weight * terms["coarse_sphere"]
        elif self.cfg.coarse in ("mt", "prior") and coarse.any():
            loss = terms["fine"]
            if self.cfg.coarse == "prior":
                with_prior = coarse & (batch["prior_ok"] > 0.5)
                if with_prior.any():
                    terms["coarse_prior"] = self.fine(logits[with_prior], batch["prior"][with_prior])
                    loss = loss + weight * terms["coarse_prior"]
                    coarse = coarse & ~with_prior
            if coarse.any():
                with torch.no_grad():
                    teacher_prob = torch.sigmoid(ema(batch["image_b"][coarse]).float())
                terms.update(self.mt(logits[coarse], batch["coarse_dist"][coarse], teacher_prob,
                                     batch["radius_mm"][coarse]))
                ramp = sigmoid_rampup(progress, self.cfg.mt_rampup_epochs)
                loss = loss + weight * (terms["coarse_bg"] + terms["coarse_core"] + ramp * terms["coarse_mt"])
        else:
            loss = terms["fine"]
        return loss, {k: float(v.detach()) for k, v in terms.items()}


class StudentObjective:
    def __init__(self, loss: LossConfig, cfg: DistillConfig, feature_teacher: nn.Module | None = None):
        self.cfg = cfg
        self.fine = DiceBCELoss(loss.dice_weight, loss.bce_weight)
        self.kd = BinaryKDLoss(cfg.temperature)
        self.at = AttentionTransferLoss()
        self.feature_teacher = feature_teacher.eval() if feature_teacher is not None else None
        if cfg.feature_weight > 0 and feature_teacher is None:
            raise ConfigError("distill.feature_weight > 0 needs a feature teacher")

    needs_two_views = False

    def __call__(self, model: nn.Module, ema: nn.Module, batch: dict, progress: float):
        want_features = self.cfg.feature_weight > 0
        logits, feats = forward_with_features(model, batch["image"]) if want_features \
            else (model(batch["image"]), None)
        fine = batch["fine_ok"] > 0.5
        soft = batch["soft_ok"] > 0.5
        region = nodule_region(batch["coarse_dist"], batch["soft"], self.cfg.region_margin_mm)
        weights = nodule_region_weights(region, self.cfg.region_weight)
        terms = {"fine": self.fine(logits[fine], batch["fine"][fine]),
                 "kd": self.kd(logits[soft], batch["soft"][soft], weights[soft])}
        loss = self.cfg.supervised_weight * terms["fine"] + self.cfg.kd_weight * terms["kd"]
        if want_features:
            with torch.no_grad():
                teacher_feats = self.feature_teacher.encoder(batch["image"])[1:]   # as forward_with_features
            terms["feature"] = self.at(feats, teacher_feats, region)
            loss = loss + self.cfg.feature_weight * terms["feature"]
        return loss, {k: float(v.detach()) for k, v in terms.items()}
