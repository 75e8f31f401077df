"""The FPR stage's training data (``train.py --stage fpr``, steps 1-2; ``src.train.fpr``
trains on it):

1. *OOF maps* (``detect.candidate_source: oof``): each fold teacher predicts the whole lungs
   of its own validation scans, so every training candidate comes from a model that never
   trained on its scan - the distribution the student's candidates have at test time.
2. *Candidates*: per non-hold-out scan, the detected candidates (the map's peaks merged
   with classical blobs, ``src.predict.detect``), the annotated nodules themselves
   (positives even where the map missed them), and ``candidates_V2.csv`` negatives where
   the dataset has them; labelled from coordinates alone
   (``src.data.candidates.match_candidates``); their cubes cut into ``candidates.h5``.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from src.config import config_hash
from src.data.candidates import (
    DETECTED,
    HIT,
    CandidateCache,
    cube_side,
    cut_cubes,
    excluded_table,
    match_candidates,
    merge_candidate_shards,
    nodule_table,
    write_candidate_shard,
)
from src.data.context import StageContext
from src.data.folds import development_uids, file_hash, fold_ids, split_uids
from src.data.manifest import read_dataset
from src.data.scan import Scan
from src.errors import DataError
from src.predict.detect import candidates, read_map, write_maps
from src.predict.experiment import TrainedExperiment
from src.predict.segment import to_model_volume
from src.runtime import Runtime
from src.utils import progress

# ----------------------------------------------------------------------------- 1. OOF maps


def teachers_id(ctx: StageContext) -> str:
    """What the OOF maps, and the candidates cut from them, are a pass of: the fold
    teachers' checkpoint files and the folds."""
    return config_hash({"teachers": [file_hash(p) for p in ctx.layout.teacher_checkpoints(fold_ids(ctx.folds))],
                        "folds": ctx.folds_hash})


def write_oof_maps(ctx: StageContext, rt: Runtime, teachers: str) -> None:
    """Each fold teacher's whole-scan probability on its own validation scans (``teachers``:
    :func:`teachers_id`); maps already there are kept, so an interrupted pass resumes."""
    records = {r.seriesuid: r for r in read_dataset(ctx.cfg.paths)}

    def map_of(uid: str) -> Path:
        return ctx.layout.fpr_map(uid, teachers)

    todo = {fold: [records[u] for u in sorted(split_uids(ctx.folds, fold)["val"]) if not map_of(u).is_file()]
            for fold in fold_ids(ctx.folds)}
    if not any(todo.values()):
        return
    members = TrainedExperiment(ctx.layout, ctx.cfg).models("ensemble", rt, tta=False, fpr=False).predictor.members()
    members_of = {p.models[0].checkpoint_meta.get("fold"): p for p in members}
    for fold, scans in todo.items():
        if scans:
            if fold not in members_of:
                raise DataError(f"{ctx.layout.teacher_checkpoint(fold)}: no teacher for fold {fold}; train it first")
            write_maps(scans, members_of[fold], ctx.cache.config, ctx.cfg.infer.batch_size, map_of,
                       desc=f"OOF maps, fold {fold}")


# ----------------------------------------------------------------------------- 2. candidates


def scan_candidates(ctx: StageContext, scan: Scan, fold: str, threshold: float, teachers: str = "") -> pd.DataFrame:
    """Every training candidate of one scan, labelled from its coordinates (``teachers``:
    whose OOF maps, :func:`teachers_id`; unused for listed candidates only)."""
    cfg, uid = ctx.cfg.detect, scan.seriesuid
    parts = []
    if cfg.candidate_source == "oof":
        map_path = ctx.layout.fpr_map(uid, teachers)
        if not map_path.is_file():
            raise DataError(f"{map_path}: OOF map missing; rerun train.py --stage fpr")
        _, _, table = candidates(to_model_volume(scan, ctx.cache.config), read_map(map_path), cfg, threshold)
        parts.append(table[["coordX", "coordY", "coordZ", "seg_probability", "source"]])
    nodules = nodule_table([scan])
    parts.append(nodules[["coordX", "coordY", "coordZ"]].assign(source="annotation", seg_probability=np.nan))
    if cfg.listed_negatives and len(scan.candidates_xyz):
        xyz = np.asarray(scan.candidates_xyz, dtype=float).reshape(-1, 3)
        parts.append(pd.DataFrame(xyz, columns=["coordX", "coordY", "coordZ"]).assign(source="listed",
                                                                                      seg_probability=np.nan))
    table = pd.concat([p for p in parts if len(p)], ignore_index=True).assign(seriesuid=uid, fold=fold)
    labels, hit = match_candidates(table, nodules, excluded_table([scan]))
    table["label"] = labels
    found = hit >= 0
    for column, missing in (("nodule_uid", ""), ("diameter_mm", 0.0), ("texture", np.nan), ("attachment", "")):
        values = np.full(len(table), missing, dtype=object if isinstance(missing, str) else float)
        values[found] = nodules[column].to_numpy()[hit[found]]   # a scan may have no nodule at all
        table[column] = values
    return table


def training_rows(table: pd.DataFrame, negatives: int, rng: np.random.Generator) -> np.ndarray:
    """The rows whose cubes train: every positive, every annotation and listed row, and a
    random draw of ``negatives`` of the detected false positives (all when there are fewer)."""
    map_fp = table["source"].isin(DETECTED).to_numpy() & (table["label"] != HIT).to_numpy()
    keep = ~map_fp
    drawn = rng.permutation(np.flatnonzero(map_fp))[:negatives]
    keep[drawn] = True
    return np.flatnonzero(keep)


def build_candidate_cache(ctx: StageContext, threshold: float, teachers: str) -> CandidateCache:
    """``candidates.h5`` for every non-hold-out scan (one shard per scan: resumable); made
    again when the teachers, the folds, the detect settings or the draw of negatives change."""
    out = ctx.layout.fpr_candidates
    want = config_hash({"detect": config_hash(ctx.cfg.detect), "threshold": threshold, "cache": ctx.cache_hash,
                        "teachers": teachers, "seed": ctx.cfg.fpr.seed})
    if out.is_file():
        cache = CandidateCache(out)
        if cache.attrs.get("build_hash") == want:
            return cache
        out.unlink()   # other teachers or settings: rebuild (maps of the same teachers are kept)
    development = development_uids(ctx.folds)
    fold_of = ctx.folds.set_index("seriesuid")["fold"]
    records = [r for r in read_dataset(ctx.cfg.paths) if r.seriesuid in development]
    parts = out.parent / f".candidates.parts-{want}"
    parts.mkdir(parents=True, exist_ok=True)
    side = cube_side(ctx.cfg.detect)
    for record in progress(records, desc="candidate cubes"):
        shard = parts / f"{record.seriesuid}.h5"
        if shard.is_file():
            continue
        scan = record.load()
        table = scan_candidates(ctx, scan, str(fold_of[record.seriesuid]), threshold, teachers)
        train = training_rows(table, ctx.cfg.detect.train_negatives_per_scan,
                              np.random.default_rng([ctx.cfg.fpr.seed, zlib.crc32(record.seriesuid.encode())]))
        table["cube"] = -1
        table.loc[train, "cube"] = np.arange(len(train))
        cubes = cut_cubes(scan.image, scan.geometry, table.loc[train, ["coordX", "coordY", "coordZ"]].to_numpy(float),
                          side, ctx.cfg.detect.view_spacing_mm)
        write_candidate_shard(shard, table, cubes)
    merge_candidate_shards([parts / f"{r.seriesuid}.h5" for r in records], out, ctx.cfg.detect,
                           extra_attrs={"build_hash": want})
    for shard in parts.iterdir():
        shard.unlink()
    parts.rmdir()
    return CandidateCache(out)
