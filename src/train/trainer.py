"""The training loop shared by the fold teachers, the student and the FPR classifiers.

timm/nnU-Net conventions: ``args.yaml`` next to the outputs, ``summary.csv`` with one row
per epoch, ``checkpoint_last.pt`` (everything needed to resume, written at every epoch end
and every ``checkpoint_every_steps``, a quarter epoch by default), ``checkpoint_best.pt``
by the validation metric, and a training-curve PNG. AMP, EMA, gradient clipping, warm-up + cosine LR, DDP.

The stage decides *what* is learnt through an ``objective(model, ema_model, batch,
progress) -> (loss, logs)`` and how to score through ``validate(model) -> metrics``.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from src.config import StageConfig, code_version
from src.errors import UserError
from src.layout import ExperimentLayout
from src.models.checkpoint import load_checkpoint, save_checkpoint
from src.runtime import Runtime, channels_last
from src.train.datasets import EpochSampler
from src.train.optim import make_optimizer, warmup_cosine
from src.utils import atomic_to_csv, progress
from src.viz import line_plot

MAX_BAD_STEPS = 20   # consecutive non-finite losses before a run gives up

Objective = Callable[[nn.Module, nn.Module, dict, float], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class RunInfo:
    """What a checkpoint records besides weights: enough to rebuild and to trace."""
    stage: str
    fold: int | None
    model_config: dict
    in_channels: int
    patch_size: int
    config: dict
    config_hash: str
    cache_hash: str
    extra: dict = field(default_factory=dict)


class TrainingDiverged(UserError):
    """The loss stayed NaN/inf: lower the learning rate, or turn AMP off (``amp=off``)."""


class Trainer:
    def __init__(self, stage: StageConfig, model: nn.Module, objective: Objective, dataset: Dataset,
                 weights: np.ndarray, validate: Callable[[nn.Module], dict[str, float]] | None,
                 out_dir: Path, rt: Runtime, info: RunInfo, select_metric: str = "val_dice",
                 checkpoint_every_steps: int | None = None):
        self.stage, self.objective, self.validate, self.rt, self.info = stage, objective, validate, rt, info
        self.out_dir, self.select_metric = Path(out_dir), select_metric
        # a killed run loses at most a quarter of an epoch (0: epoch ends only)
        self.every = max(1, stage.steps_per_epoch // 4) if checkpoint_every_steps is None else checkpoint_every_steps
        self.model = channels_last(model.to(rt.device)) if stage.channels_last else model.to(rt.device)
        # warm-up (timm): the average starts short and lengthens to ema_decay, so that early
        # validations and the mean teacher do not see a mix of the random initial weights
        self.ema = ModelEmaV3(self.model, decay=stage.ema_decay, use_warmup=True)
        self.optimizer = make_optimizer(self.model.parameters(), stage.lr, stage.weight_decay, rt.device)
        total = stage.epochs * stage.steps_per_epoch
        self.scheduler = warmup_cosine(self.optimizer, int(stage.warmup_epochs * stage.steps_per_epoch), total)
        self.scaler = rt.grad_scaler()
        self.train_model: nn.Module = self.model
        if rt.distributed:
            ids = [rt.device.index] if rt.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        if stage.compile:
            self.train_model = torch.compile(self.train_model)
        self.sampler = EpochSampler(weights, stage.steps_per_epoch * stage.batch_size, stage.seed, rt.rank, rt.world)
        self.loader = DataLoader(dataset, batch_size=stage.batch_size, sampler=self.sampler,
                                 num_workers=stage.num_workers, pin_memory=rt.device.type == "cuda",
                                 drop_last=True, persistent_workers=False)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best, self.history = -math.inf, []
        self.epoch_sums: dict[str, float] = {}   # running loss sums of the current epoch (kept on resume)
        self.bad_steps = 0

    # ------------------------------------------------------------------ checkpoints
    def _payload(self) -> dict:
        return dict(stage=self.info.stage, fold=self.info.fold, model_config=self.info.model_config,
                    in_channels=self.info.in_channels, patch_size=self.info.patch_size,
                    config=self.info.config, config_hash=self.info.config_hash, cache_hash=self.info.cache_hash,
                    code_version=code_version(), **self.info.extra,
                    model=self.model.state_dict(), ema=self.ema.module.state_dict(),
                    optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                    scaler=self.scaler.state_dict(), epoch=self.epoch, step_in_epoch=self.step_in_epoch,
                    global_step=self.global_step, best=self.best, history=self.history,
                    epoch_sums=dict(self.epoch_sums), torch_rng=torch.get_rng_state())

    def save(self, kind: str) -> None:
        if self.rt.is_main:
            save_checkpoint(self._payload(), ExperimentLayout.checkpoint(self.out_dir, kind))

    def resume(self) -> bool:
        path = ExperimentLayout.checkpoint(self.out_dir, "last")
        if not path.is_file():
            return False
        ckpt = load_checkpoint(path)
        if ckpt.get("config_hash") != self.info.config_hash:
            raise UserError(f"{path}: trained with another config ({ckpt.get('config_hash')} != "
                             f"{self.info.config_hash}); use a new experiment name or drop --resume")
        self.model.load_state_dict(ckpt["model"])
        self.ema.module.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler.is_enabled() and ckpt["scaler"]:   # a run saved without fp16 starts a fresh scale
            self.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["torch_rng"])
        self.epoch, self.step_in_epoch = ckpt["epoch"], ckpt["step_in_epoch"]
        self.global_step, self.best, self.history = ckpt["global_step"], ckpt["best"], list(ckpt["history"])
        self.epoch_sums = dict(ckpt.get("epoch_sums", {}))
        return True

    # ------------------------------------------------------------------ loop
    def _train_step(self, batch: dict, progress: float) -> dict[str, float]:
        batch = {k: v.to(self.rt.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        with self.rt.autocast():
            loss, logs = self.objective(self.train_model, self.ema.module, batch, progress)
        finite = torch.isfinite(loss.detach()).float()
        if self.rt.distributed:   # every rank skips together, or the others wait in backward's all-reduce
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if not finite.item():
            # a bad batch (or an fp16 overflow) is skipped, never stepped into the weights
            self.bad_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            print(f"warning: loss is {loss.item()} at step {self.global_step} (here or on another rank); "
                  f"step skipped ({logs})", file=sys.stderr)
            if self.bad_steps >= MAX_BAD_STEPS:
                raise TrainingDiverged(f"{self.out_dir}: the loss was not finite for {self.bad_steps} steps in a row; "
                                       "lower the learning rate or set amp=off (checkpoints keep the last good state)")
            return {}
        self.bad_steps = 0
        self.scaler.scale(loss).backward()
        if self.stage.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.stage.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.ema.update(self.model, step=self.global_step + 1)
        return {"loss": float(loss.detach()), **logs}

    def fit(self) -> pd.DataFrame:
        steps = self.stage.steps_per_epoch
        if self.global_step == 0 and self.rt.is_main:   # a new run: an earlier run's best or final must not pass for its own
            for kind in ("best", "final"):
                ExperimentLayout.checkpoint(self.out_dir, kind).unlink(missing_ok=True)
        while self.epoch < self.stage.epochs:
            start = time.time()
            self.sampler.set_epoch(self.epoch, skip=self.step_in_epoch * self.stage.batch_size)
            self.train_model.train()
            self.ema.module.eval()  # the EMA model is a teacher (mean teacher, validation): never in train mode
            bar = progress(self.loader, total=steps - self.step_in_epoch, enabled=self.rt.is_main,
                           desc=f"{self.info.stage} epoch {self.epoch + 1}/{self.stage.epochs}")
            for batch in bar:
                logs = self._train_step(batch, self.epoch + self.step_in_epoch / steps)
                for key, value in logs.items():
                    self.epoch_sums[key] = self.epoch_sums.get(key, 0.0) + value
                self.epoch_sums["steps"] = self.epoch_sums.get("steps", 0.0) + bool(logs)
                self.step_in_epoch += 1
                self.global_step += 1
                if logs:
                    bar.set_postfix(loss=f"{logs['loss']:.3f}")
                if self.every and self.step_in_epoch % self.every == 0 and self.step_in_epoch < steps:
                    self.save("last")
            n = max(1.0, self.epoch_sums.pop("steps", 0.0))
            row = {"epoch": self.epoch + 1, "step": self.global_step, "lr": self.scheduler.get_last_lr()[0],
                   **{f"train_{k}": v / n for k, v in self.epoch_sums.items()}}
            self.epoch_sums = {}
            validated = self.validate is not None and ((self.epoch + 1) % max(1, self.stage.val_every) == 0
                                                       or self.epoch + 1 == self.stage.epochs)
            if self.rt.is_main and validated:
                row.update(self.validate(self.ema.module))
            self.rt.barrier()
            row["seconds"] = time.time() - start
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            score = row.get(self.select_metric)   # None: not validated; NaN: e.g. a one-class AUC
            scored = score is not None and math.isfinite(score)
            improved = score > self.best if scored else self.validate is None   # no validation: the latest
            if improved and scored:
                self.best = score
            row["best"] = improved
            self.history.append(row)
            if improved:
                self.save("best")
            self.save("last")
            self._write_summary()
        if self.best == -math.inf and self.validate is not None:   # never a score: the last weights stand
            print(f"warning: {self.out_dir}: no validation gave a {self.select_metric}; the last epoch is kept "
                  "as the best", file=sys.stderr)
            self.save("best")
        self.save("final")
        return pd.DataFrame(self.history)

    def _write_summary(self) -> None:
        if not self.rt.is_main:
            return
        table = pd.DataFrame(self.history)
        atomic_to_csv(table, ExperimentLayout.run_summary(self.out_dir), float_format="%.5g")
        curves = [c for c in table.columns if c.startswith(("train_", "val_"))]
        line_plot(table, "epoch", curves, ExperimentLayout.run_curves(self.out_dir),
                  title=f"{self.info.stage} fold {self.info.fold}" if self.info.fold is not None else self.info.stage)
