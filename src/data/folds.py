"""Patient-level folds: ``folds/folds.csv`` is the single source of truth for every stage.

Columns: seriesuid, patient_id, fold ("0".."4" or "holdout"), label_kind (fine | coarse),
has_fine_mask, n_nodules, max_diameter_mm, size_bin. It is plain CSV so a person can edit
it (move a patient, withhold a mask); ``read_folds`` re-checks it on every load.

* A patient never spans two folds; the hold-out patients are never trained on by any
  teacher or student and are drawn only from scans with fine masks (they are scored).
* Folds are stratified by the size bin of each patient's largest nodule; size bins with
  fewer patients than folds are pooled, so any dataset of at least ``n_folds`` patients
  (plus one for the hold-out) can be split.
* ``label_kind`` says what training may use: ``fine`` scans keep their masks, ``coarse``
  scans contribute only centre + diameter (their masks, where they exist, are withheld
  from training and used solely to measure pseudo-label quality).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from src.config import FoldsConfig
from src.data.groups import size_bin
from src.data.tables import FOLDS, check_table, read_table
from src.errors import DataError, HoldoutLeak

HOLDOUT = "holdout"
COLUMNS = ["seriesuid", "patient_id", "fold", "label_kind", "has_fine_mask", "n_nodules",
           "max_diameter_mm", "size_bin"]


def _group_split(patients: pd.DataFrame, n_splits: int, seed: int, what: str) -> np.ndarray:
    """Fold index per patient row, stratified by size bin, patients as groups."""
    if len(patients) < n_splits:
        raise DataError(f"{what}: {len(patients)} patient(s) cannot fill {n_splits} groups; need at least "
                        f"{n_splits} (lower folds.n_folds or folds.holdout_fraction, or add scans)")
    # Size bins with fewer patients than groups are pooled; a pool still too small joins the
    # largest bin (scikit-learn refuses strata smaller than n_splits when all are).
    strata = patients["size_bin"].copy()
    rare = strata.map(strata.value_counts()) < n_splits
    strata[rare] = "pooled"
    if 0 < rare.sum() < n_splits:
        strata[rare] = strata.value_counts().index[0]
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    fold = np.full(len(patients), -1)
    with warnings.catch_warnings():  # uneven strata are expected on small datasets
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, test) in enumerate(splitter.split(patients, strata, patients["patient_id"])):
            fold[test] = k
    return fold


def make_folds(scans: pd.DataFrame, nodules: pd.DataFrame, cfg: FoldsConfig) -> pd.DataFrame:
    """``scans``/``nodules``: the cache's tables (scans/meta, nodules/meta)."""
    diam = nodules.groupby("seriesuid")["diameter_mm"].max()
    table = scans[["seriesuid", "patient_id", "has_fine_mask", "n_nodules"]].copy()
    table["has_fine_mask"] = table["has_fine_mask"].astype(bool)
    table["max_diameter_mm"] = table["seriesuid"].map(diam).fillna(0.0)
    table["size_bin"] = [size_bin(d) if d > 0 else "none" for d in table["max_diameter_mm"]]

    patients = (table.groupby("patient_id", sort=True)
                .agg(max_diameter_mm=("max_diameter_mm", "max"), has_fine=("has_fine_mask", "all"))
                .reset_index())
    patients["size_bin"] = [size_bin(d) if d > 0 else "none" for d in patients["max_diameter_mm"]]
    patients["fold"] = ""

    need = cfg.n_folds + (1 if cfg.holdout_fraction > 0 else 0)
    if len(patients) < need:
        raise DataError(f"{len(patients)} patient(s) cannot fill {cfg.n_folds} folds"
                        f"{' and a hold-out' if need > cfg.n_folds else ''}: need at least {need}")
    if cfg.holdout_fraction > 0:
        eligible = patients[patients["has_fine"]]
        if len(eligible) < 2:
            raise DataError(f"hold-out: needs at least 2 patients with fine masks; found {len(eligible)}")
        n_splits = min(max(2, int(round(1.0 / cfg.holdout_fraction))), len(eligible))
        if len(patients) - int(np.ceil(len(eligible) / n_splits)) < cfg.n_folds:
            n_splits = len(eligible)  # small data: hold out a single patient, so every fold keeps one
        first = _group_split(eligible.reset_index(drop=True), n_splits, cfg.seed, "hold-out") == 0
        patients.loc[eligible.index[first], "fold"] = HOLDOUT
    rest = patients[patients["fold"] != HOLDOUT]
    patients.loc[rest.index, "fold"] = _group_split(rest.reset_index(drop=True), cfg.n_folds, cfg.seed,
                                                    "folds").astype(str)

    table["fold"] = table["patient_id"].map(dict(zip(patients["patient_id"], patients["fold"])))
    table["label_kind"] = np.where(table["has_fine_mask"], "fine", "coarse")
    _withhold_fine_masks(table, cfg)
    return table.sort_values(["fold", "seriesuid"], kind="stable")[COLUMNS].reset_index(drop=True)


def _withhold_fine_masks(table: pd.DataFrame, cfg: FoldsConfig) -> None:
    """Keep fine masks on ``fine_fraction`` of the training scans, spread over the folds."""
    train = table[(table["fold"] != HOLDOUT) & table["has_fine_mask"]]
    n_keep = max(1, int(round(cfg.fine_fraction * (table["fold"] != HOLDOUT).sum()))) if len(train) else 0
    rng = np.random.default_rng(cfg.seed)
    # Round-robin over folds in a seeded order, so every fold gets its share of fine scans.
    queues = {f: list(rng.permutation(g.index.to_numpy())) for f, g in train.groupby("fold", sort=True)}
    keep: list[int] = []
    while len(keep) < n_keep and any(queues.values()):
        for f in sorted(queues):
            if queues[f] and len(keep) < n_keep:
                keep.append(queues[f].pop(0))
    withheld = train.index.difference(keep)
    table.loc[withheld, "label_kind"] = "coarse"


def read_folds(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: folds file not found; run make_folds.py first")
    df = check_table(read_table(path, "folds file"), FOLDS, path)
    spans = df.groupby("patient_id")["fold"].nunique()
    if (spans > 1).any():
        raise DataError(f"{path}: patient {spans[spans > 1].index[0]} spans several folds")
    if df["seriesuid"].duplicated().any():
        raise DataError(f"{path}: seriesuid {df.loc[df['seriesuid'].duplicated(), 'seriesuid'].iloc[0]} listed twice")
    return df


def fold_ids(folds: pd.DataFrame) -> list[int]:
    return sorted(int(f) for f in folds["fold"].unique() if f != HOLDOUT)


def holdout_uids(folds: pd.DataFrame) -> set[str]:
    return set(folds.loc[folds["fold"] == HOLDOUT, "seriesuid"])


def development_uids(folds: pd.DataFrame, label_kind: str | None = None) -> set[str]:
    """Every scan outside the hold-out set (the folds' training and validation scans), of
    one ``label_kind`` (fine / coarse) when given."""
    keep = folds["fold"] != HOLDOUT
    if label_kind is not None:
        keep &= folds["label_kind"] == label_kind
    return set(folds.loc[keep, "seriesuid"])


def split_uids(folds: pd.DataFrame, fold: int | None) -> dict[str, set[str]]:
    """Series of the training, validation (fold ``fold``; none for the student) and hold-out sets."""
    holdout = holdout_uids(folds)
    val = set(folds.loc[folds["fold"] == str(fold), "seriesuid"]) if fold is not None else set()
    train = set(folds["seriesuid"]) - holdout - val
    return dict(train=train, val=val, holdout=holdout)


def refuse_holdout(uids, holdout: set[str], what: str) -> None:
    """Raise :class:`HoldoutLeak` when any of ``uids`` is a hold-out scan."""
    leaked = sorted(set(uids) & holdout)
    if leaked:
        raise HoldoutLeak(f"{len(leaked)} hold-out scan(s) reached {what}, e.g. {leaked[0]}")


def check_against_cache(folds: pd.DataFrame, cache_scans: pd.DataFrame, folds_path: str | Path) -> None:
    """folds.csv and the cache must describe the same scans (edited CSVs are re-checked)."""
    in_folds, in_cache = set(folds["seriesuid"]), set(cache_scans["seriesuid"])
    if in_folds - in_cache:
        raise DataError(f"{folds_path}: {len(in_folds - in_cache)} seriesuid(s) not in the cache, "
                        f"e.g. {sorted(in_folds - in_cache)[0]}; rerun make_folds.py")
    if in_cache - in_folds:
        raise DataError(f"{folds_path}: {len(in_cache - in_folds)} cached scan(s) have no fold, "
                        f"e.g. {sorted(in_cache - in_folds)[0]}; rerun make_folds.py")


def file_hash(path: str | Path) -> str:
    import hashlib
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:12]
