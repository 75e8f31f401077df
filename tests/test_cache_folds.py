"""The HDF5 cache (shapes, dtypes, metadata, masks) and the patient-level folds."""
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from src.config import FoldsConfig, load_config
from src.data.cache import PatchCache, build_cache
from src.data.folds import HOLDOUT, make_folds, read_folds
from src.data.io import DataError
from src.data.luna16 import read_luna16


def test_cache_shapes_dtypes_and_metadata(tiny_cache, tiny_cfg):
    c, cfg = tiny_cache, tiny_cfg.cache
    n, k, p = len(c.patches), cfg.k_slices, cfg.patch_size
    f = c.file
    assert f["patches/image"].shape == (n, k, p, p) and f["patches/image"].dtype == np.int16
    assert f["patches/image"].chunks == (1, k, p, p) and f["patches/image"].compression is None
    for name, dtype in (("fine", np.uint8), ("coarse", np.uint8), ("coarse_dist", np.int8)):
        assert f[f"patches/{name}"].shape == (n, p, p) and f[f"patches/{name}"].dtype == dtype
    assert c.attrs["image_unit"] == "HU" and list(c.attrs["spacing_zyx"]) == list(cfg.spacing_zyx)
    meta = c.patches
    assert set(meta["kind"]) == {"nodule", "hard", "random"}
    assert (meta["negative"] == (meta["kind"] != "nodule")).all()
    assert set(meta.loc[~meta["negative"], "nodule_uid"]) == set(c.nodules["nodule_uid"])
    assert set(meta["seriesuid"]) == set(c.scans["seriesuid"])
    # the nodule table keeps each nodule's attachment (text) and texture; patches repeat them
    loaded = {n.nodule_uid: n.attachment for r in read_luna16(tiny_cfg.paths.data)
              for n in r.load(with_image=False).nodules}
    assert dict(zip(c.nodules["nodule_uid"], c.nodules["attachment"])) == loaded
    assert len(set(loaded.values())) == 4 and c.nodules["texture"].isna().all()
    pos = meta[~meta["negative"]]
    assert (pos["attachment"] == pos["nodule_uid"].map(loaded)).all()
    assert (meta.loc[meta["negative"], "attachment"] == "").all()
    # per nodule: every slice of its coarse sphere is a positive patch
    for nod in c.nodules.itertuples(index=False):
        zs = meta.loc[meta["nodule_uid"] == nod.nodule_uid, "z"].to_numpy()
        rz = nod.diameter_mm / 2 / cfg.spacing_zyx[0]
        assert set(range(int(np.ceil(nod.center_z - rz)), int(np.floor(nod.center_z + rz)) + 1)) <= set(zs)


def test_patch_masks_agree_with_the_image(tiny_cache):
    c = tiny_cache
    meta = c.patches
    pos = np.flatnonzero(~meta["negative"].to_numpy())
    neg = np.flatnonzero(meta["negative"].to_numpy())
    brighter = []
    for i in pos:
        p = c.patch(i)
        centre = p["image"][p["image"].shape[0] // 2]
        if p["fine"].sum() > 5 and (p["fine"] == 0).sum() > 5:
            brighter.append(centre[p["fine"] > 0].mean() - centre[(p["fine"] == 0) & (centre < -500)].mean())
        # coarse mask = sphere distance <= 0 (quarter-mm units)
        np.testing.assert_array_equal(p["coarse"] > 0, p["coarse_dist"] <= 0)
    assert len(brighter) > 10 and np.median(brighter) > 500, "nodules must be brighter than the lung"
    for i in neg:
        p = c.patch(i)
        centre_dist = p["coarse_dist"][p["coarse_dist"].shape[0] // 2, p["coarse_dist"].shape[1] // 2] / 4
        assert centre_dist > 4.0, "negatives keep clear of every nodule"


def test_cache_of_scans_without_any_patch_is_a_clear_error(tiny_cfg, tmp_path):
    import dataclasses
    records = read_luna16(tiny_cfg.paths.data)[:1]
    records[0] = dataclasses.replace(records[0], nodules=records[0].nodules.iloc[0:0], lung_path=None,
                                     candidates=records[0].candidates.iloc[0:0])
    cfg = dataclasses.replace(tiny_cfg.cache, negatives_per_positive=0.0)
    with pytest.raises(DataError, match="none of the 1 scan.* yielded a patch"):
        build_cache(records, cfg, tmp_path / "c.h5", "tiny")
    assert not (tmp_path / "c.h5").exists()


def test_cache_settings_must_match_the_run(tiny_cache, tiny_cfg):
    import dataclasses
    tiny_cache.check_matches(tiny_cfg.cache)
    with pytest.raises(DataError, match=r"built with patch_size=32 \(run asks 64\)"):
        tiny_cache.check_matches(dataclasses.replace(tiny_cfg.cache, patch_size=64))


def test_cache_refuses_to_mix_and_reuses_itself(tiny_cfg, tiny_cache, tmp_path):
    records = read_luna16(tiny_cfg.paths.data)
    path = Path(tiny_cfg.paths.cache)
    mtime = path.stat().st_mtime
    build_cache(records, tiny_cfg.cache, path, "tiny")
    assert path.stat().st_mtime == mtime, "same config and source: nothing rebuilt"
    other = load_config(None, ["cache.patch_size=64"]).cache
    with pytest.raises(DataError, match="another config or source"):
        build_cache(records, other, path, "tiny")


def test_interrupted_build_resumes_from_shards(tiny_cfg, tmp_path):
    from src.config import config_hash
    from src.data.cache import build_scan_shard
    records = read_luna16(tiny_cfg.paths.data)[:3]
    out = tmp_path / "c.h5"
    parts = tmp_path / f".c.h5.parts-{config_hash(tiny_cfg.cache)}"
    done = build_scan_shard(records[0], tiny_cfg.cache, parts / f"{records[0].seriesuid}.h5")
    with h5py.File(done, "a") as f:  # mark the shard, to see it is reused rather than redone
        f.attrs["marker"] = 1
    build_cache(records, tiny_cfg.cache, out, "tiny")
    cache = PatchCache(out)
    assert len(cache.scans) == 3 and not parts.exists()
    with h5py.File(done.parent.parent / "c.h5", "r") as f:
        assert f["patches/image"].shape[0] == len(cache.patches)


def test_folds_patient_disjoint_deterministic_and_holdout(tiny_cache, tiny_cfg, tiny_folds):
    folds = tiny_folds
    again = make_folds(tiny_cache.scans, tiny_cache.nodules, tiny_cfg.folds)
    pd.testing.assert_frame_equal(folds, again)
    assert (folds.groupby("patient_id")["fold"].nunique() == 1).all()
    assert folds.loc[folds["seriesuid"].isin(["1.3.6.1.4.1.0.0000", "1.3.6.1.4.1.0.0001"]), "fold"].nunique() == 1
    holdout = folds[folds["fold"] == HOLDOUT]
    assert 0 < holdout["patient_id"].nunique() < folds["patient_id"].nunique()
    assert set(folds.loc[folds["fold"] != HOLDOUT, "fold"]) == {"0", "1", "2"}
    train = folds[folds["fold"] != HOLDOUT]
    fine = (train["label_kind"] == "fine").sum()
    assert fine == max(1, round(tiny_cfg.folds.fine_fraction * len(train)))
    assert (holdout["label_kind"] == "fine").all()
    other = make_folds(tiny_cache.scans, tiny_cache.nodules, FoldsConfig(n_folds=3, holdout_fraction=0.25, seed=7))
    assert not other["fold"].equals(folds.set_index("seriesuid").loc[other["seriesuid"], "fold"].reset_index(drop=True))


def test_edited_folds_are_checked(tiny_folds, tmp_path):
    broken = tiny_folds.copy()
    p = broken["patient_id"] == "P001"
    broken.loc[broken.index[p][0], "fold"] = "holdout" if broken.loc[p, "fold"].iloc[0] != "holdout" else "0"
    broken.to_csv(tmp_path / "f.csv", index=False)
    with pytest.raises(DataError, match="patient P001 spans several folds"):
        read_folds(tmp_path / "f.csv")


@pytest.mark.parametrize("n_patients,n_folds", [(4, 3), (6, 5), (10, 5)])
def test_folds_work_down_to_n_folds_plus_one_patients(tiny_cache, n_patients, n_folds):
    scans = tiny_cache.scans.copy()
    scans = pd.concat([scans.assign(seriesuid=scans["seriesuid"] + f"_{i}", patient_id=scans["patient_id"] + f"_{i}")
                       for i in range(2)], ignore_index=True)
    keep = scans["patient_id"].drop_duplicates().iloc[:n_patients]
    scans = scans[scans["patient_id"].isin(keep)]
    nodules = pd.concat([tiny_cache.nodules.assign(seriesuid=tiny_cache.nodules["seriesuid"] + f"_{i}")
                         for i in range(2)], ignore_index=True)
    folds = make_folds(scans, nodules, FoldsConfig(n_folds=n_folds, holdout_fraction=0.2))
    assert set(folds.loc[folds["fold"] != HOLDOUT, "fold"]) == {str(k) for k in range(n_folds)}
    assert (folds["fold"] == HOLDOUT).any()


def test_too_few_patients_for_the_folds_is_a_clear_error(tiny_cache):
    scans = tiny_cache.scans[tiny_cache.scans["patient_id"].isin(["P001", "P002", "P003"])]
    with pytest.raises(DataError, match=r"3 patient\(s\) cannot fill 3 folds and a hold-out: need at least 4"):
        make_folds(scans, tiny_cache.nodules, FoldsConfig(n_folds=3, holdout_fraction=0.2))


def test_a_holdout_leak_raises_even_under_python_O():
    from src.data.folds import refuse_holdout
    from src.errors import HoldoutLeak
    refuse_holdout({"a", "b"}, {"c"}, "training")
    with pytest.raises(HoldoutLeak, match="1 hold-out scan\\(s\\) reached training, e.g. c"):
        refuse_holdout(["a", "c"], {"c", "d"}, "training")


def test_a_cache_built_from_another_dataset_is_named_before_any_stage(tiny_ctx, tmp_path):
    """Stages read the scans too (validation, scoring, FPR): a config naming another dataset
    than the cache's would leave them nothing to score. The same scans moved elsewhere pass."""
    import dataclasses
    import shutil

    from src.data.context import load_context

    def naming(folder, **paths):
        return dataclasses.replace(tiny_ctx.cfg, paths=dataclasses.replace(tiny_ctx.cfg.paths, data=str(folder),
                                                                           **paths))
    moved = Path(shutil.copytree(tiny_ctx.cfg.paths.data, tmp_path / "moved"))
    assert len(load_context(naming(moved)).cache.scans) == len(tiny_ctx.cache.scans)
    gone = [p.stem for p in (moved / "subset0").glob("*.mhd")]
    for path in [p for uid in gone for p in moved.rglob(f"{uid}*")]:   # the scans, their masks and lungs
        path.unlink()
    with pytest.raises(DataError, match=r"cache.h5: built from .*are not in the configured dataset"):
        load_context(naming(moved, allow_partial=True))
