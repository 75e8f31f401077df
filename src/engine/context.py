"""What every training/scoring stage loads first: config paths resolved, cache, folds."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from src.config import Config, config_hash
from src.data.cache import PatchCache
from src.data.folds import check_against_cache, file_hash, read_folds


@dataclass
class StageContext:
    cfg: Config
    cache: PatchCache
    folds: pd.DataFrame
    folds_hash: str

    @property
    def experiment_dir(self) -> Path:
        return Path(self.cfg.paths.outputs) / self.cfg.paths.experiment

    def teacher_dir(self, fold: int) -> Path:
        return self.experiment_dir / "teacher" / f"fold_{fold}"

    @property
    def student_dir(self) -> Path:
        return self.experiment_dir / "student"

    @property
    def pseudo_path(self) -> Path:
        return self.experiment_dir / "pseudo.h5"

    @property
    def cache_hash(self) -> str:
        return str(self.cache.attrs["config_hash"])

    @property
    def k(self) -> int:
        return int(self.cache.attrs["k_slices"])

    @property
    def patch_size(self) -> int:
        return int(self.cache.attrs["patch_size"])

    @property
    def window(self) -> tuple[float, float]:
        return tuple(float(v) for v in self.cache.attrs["window"])

    def run_hash(self, *sections) -> str:
        """Identity of a training run: its config sections + the data it sees."""
        return config_hash({"sections": [config_hash(s) for s in sections],
                            "cache": self.cache_hash, "folds": self.folds_hash})


def load_context(cfg: Config) -> StageContext:
    cache = PatchCache(cfg.paths.cache)
    folds = read_folds(cfg.paths.folds)
    check_against_cache(folds, cache.scans, cfg.paths.folds)
    return StageContext(cfg, cache, folds, file_hash(cfg.paths.folds))
