"""What every training and scoring stage loads first: the config, the cache, the folds and
the experiment's layout, checked against each other."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from src.config import Config, PathsConfig, config_hash
from src.data.cache import PatchCache
from src.data.folds import check_against_cache, file_hash, read_folds
from src.data.manifest import dataset_source, read_dataset
from src.errors import DataError
from src.layout import ExperimentLayout


@dataclass
class StageContext:
    cfg: Config
    cache: PatchCache
    folds: pd.DataFrame
    folds_hash: str
    layout: ExperimentLayout

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
    cache.check_matches(cfg.cache)
    check_source(cache, cfg.paths)
    folds = read_folds(cfg.paths.folds)
    check_against_cache(folds, cache.scans, cfg.paths.folds)
    return StageContext(cfg, cache, folds, file_hash(cfg.paths.folds), ExperimentLayout.from_paths(cfg.paths))


def check_source(cache: PatchCache, paths: PathsConfig) -> None:
    """The configured dataset holds the cache's scans. Stages read the scans themselves
    (validation, scoring, FPR): a cache built from another dataset (``prepare.py
    --manifest`` while ``paths.manifest`` is unset) would leave them nothing to score. A
    dataset moved to another folder passes."""
    source = dataset_source(paths)
    if str(cache.attrs.get("source")) == source:
        return
    missing = sorted(set(cache.scans["seriesuid"]) - {r.seriesuid for r in read_dataset(paths)})
    if missing:
        raise DataError(f"{cache.path}: built from {cache.attrs.get('source')}; {len(missing)} of its "
                        f"{len(cache.scans)} scans (e.g. {missing[0]}) are not in the configured dataset {source} "
                        "(set paths.data / paths.manifest as for prepare.py, or rebuild the cache)")
