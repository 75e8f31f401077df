"""The HDF5 patch cache: format, parallel build (one shard per scan, resumable), reading.

Layout of ``cache.h5`` (one 2.5D patch per chunk, uncompressed: random reads are ~10x
faster than with lzf/gzip, see docs/benchmarks.md):

    attrs   format_version, config (JSON of the cache section), config_hash, source,
            code_version, image_unit="HU", window, spacing_zyx, k_slices, patch_size
    patches/image   (N, k, P, P) int16 HU        chunk (1, k, P, P)
    patches/fine    (N, P, P)    uint8 0/1       fine mask of the centre slice (0 if unknown)
    patches/prior   (N, P, P)    uint8 0/1       coarse prior: half-max pseudo-masks from coordinates
    patches/coarse  (N, P, P)    uint8 0/1       coarse spheres cut by the centre slice
    patches/coarse_dist (N, P, P) int8           distance to the nearest sphere surface, 0.25 mm
    patches/meta/*  one column per dataset       see PATCH_COLUMNS
    nodules/meta/*  one row per nodule           joins patches on nodule_uid
    scans/meta/*    one row per scan             joins folds.csv on seriesuid

The cache is for training only. Validation and every leaderboard segment nodules from their
coordinates in the scans themselves (``src.evaluation.cases``), never from cached crops.
"""
from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from src.config import CacheConfig, code_version, config_hash, to_dict
from src.data.groups import SIZE_BIN_LABELS, size_bin
from src.data.patches import ModelScan, sample_patch_centres, stack_at, to_model_scan
from src.data.scan import ScanRecord
from src.errors import DataError
from src.utils import atomic_path, parallel_map, progress

FORMAT_VERSION = 3    # 2: no validation ROIs (validation reads the scans); 3: coarse prior
PATCH_ARRAYS = {"image": np.int16, "fine": np.uint8, "prior": np.uint8, "coarse": np.uint8, "coarse_dist": np.int8}
# Cache settings that change what a network sees; a run asking for others must rebuild.
MODEL_SPACE_KEYS = ("spacing_zyx", "hu_clip", "window", "k_slices", "patch_size")


# ----------------------------------------------------------------------------- tables


def write_table(group: h5py.Group, df: pd.DataFrame) -> None:
    for col in df.columns:
        values = df[col].to_numpy()
        if values.dtype == object or pd.api.types.is_string_dtype(df[col]):
            group.create_dataset(col, data=df[col].astype(str).to_numpy(dtype=object),
                                 dtype=h5py.string_dtype())
        else:
            group.create_dataset(col, data=values)
    group.attrs["columns"] = json.dumps(list(df.columns))


def read_table(group: h5py.Group) -> pd.DataFrame:
    columns = json.loads(group.attrs["columns"])
    data = {}
    for col in columns:
        ds = group[col]
        data[col] = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
    return pd.DataFrame(data, columns=columns)


# ----------------------------------------------------------------------------- one scan


def _patch_rows(ms: ModelScan, items: list[dict]) -> pd.DataFrame:
    scan_fine = ms.fine is not None
    rows = []
    for it in items:
        mn = it["nodule"]
        world = ms.geometry.voxel_to_world((it["z"], it["y"], it["x"]))
        fine_known = scan_fine and (mn is None or mn.nodule.fine_label > 0)
        rows.append(dict(
            seriesuid=ms.scan.seriesuid, patient_id=ms.scan.patient_id, kind=it["kind"],
            negative=mn is None, nodule_uid=mn.nodule.nodule_uid if mn else "",
            label_kind="fine" if fine_known else "coarse",
            z=it["z"], y=it["y"], x=it["x"], world_x=world[0], world_y=world[1], world_z=world[2],
            diameter_mm=mn.nodule.diameter_mm if mn else 0.0,
            texture=mn.nodule.texture if mn else np.nan, attachment=mn.nodule.attachment if mn else "",
            has_prior=mn.has_prior if mn else True))   # a negative's prior (none) is known
    return pd.DataFrame(rows)


def build_scan_shard(record: ScanRecord, cfg: CacheConfig, shard: Path) -> Path:
    """Load one scan, cut its patches, write them to ``shard`` (atomically)."""
    scan = record.load()
    ms = to_model_scan(scan, cfg)
    rng = np.random.default_rng([cfg.seed, zlib.crc32(record.seriesuid.encode())])
    items = sample_patch_centres(ms, cfg, rng)
    stacks = [stack_at(ms, it["z"], it["y"], it["x"], cfg) for it in items]
    p, k = cfg.patch_size, cfg.k_slices
    patches = {name: (np.stack([s[name] for s in stacks]) if stacks else
                      np.zeros((0, k, p, p) if name == "image" else (0, p, p), dtype))
               for name, dtype in PATCH_ARRAYS.items()}
    nodule_rows = [dict(nodule_uid=n.nodule_uid, seriesuid=record.seriesuid, patient_id=record.patient_id,
                        coordX=n.center_xyz[0], coordY=n.center_xyz[1], coordZ=n.center_xyz[2],
                        diameter_mm=n.diameter_mm, texture=n.texture, attachment=n.attachment,
                        n_readers=n.n_readers, has_fine=n.fine_label > 0, from_mask=n.from_mask, has_prior=mn.has_prior,
                        center_z=mn.center_zyx[0], center_y=mn.center_zyx[1], center_x=mn.center_zyx[2])
                   for mn in ms.nodules for n in [mn.nodule]]
    with atomic_path(shard, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        for name, arr in patches.items():
            f.create_dataset(f"patches/{name}", data=arr)
        write_table(f.create_group("patches/meta"), _patch_rows(ms, items))
        write_table(f.create_group("nodules/meta"), pd.DataFrame(nodule_rows, columns=NODULE_COLUMNS))
        write_table(f.create_group("scans/meta"), pd.DataFrame([dict(
            seriesuid=record.seriesuid, patient_id=record.patient_id, image_path=str(record.image_path),
            has_fine_mask=ms.fine is not None, n_nodules=len(ms.nodules), n_patches=len(items),
            spacing_x=scan.geometry.spacing_xyz[0], spacing_y=scan.geometry.spacing_xyz[1],
            spacing_z=scan.geometry.spacing_xyz[2], n_slices=scan.geometry.size_xyz[2])]))
    return shard


NODULE_COLUMNS = ["nodule_uid", "seriesuid", "patient_id", "coordX", "coordY", "coordZ", "diameter_mm",
                  "texture", "attachment", "n_readers", "has_fine", "from_mask", "has_prior",
                  "center_z", "center_y", "center_x"]


# ----------------------------------------------------------------------------- whole cache


def _shard_job(job: tuple[ScanRecord, CacheConfig, Path]) -> Path:
    return build_scan_shard(*job)


def _attrs(cfg: CacheConfig, source: str) -> dict:
    return dict(format_version=FORMAT_VERSION, config=json.dumps(to_dict(cfg)), config_hash=config_hash(cfg),
                source=source, code_version=code_version(), image_unit="HU",
                window=list(cfg.window), spacing_zyx=list(cfg.spacing_zyx), k_slices=cfg.k_slices,
                patch_size=cfg.patch_size)


def build_cache(records: list[ScanRecord], cfg: CacheConfig, out: Path, source: str,
                overwrite: bool = False) -> Path:
    """Build ``out`` from ``records``. Scans already cut (shards from an interrupted run with
    the same config) are reused; the final file appears atomically."""
    out = Path(out)
    attrs = _attrs(cfg, source)
    if out.exists() and not overwrite:
        try:
            with h5py.File(out, "r") as f:
                same = f.attrs.get("config_hash") == attrs["config_hash"] and f.attrs.get("source") == source
        except OSError as err:   # h5py's message names no file
            raise DataError(f"{out}: an unreadable file is in the way ({str(err).splitlines()[0][:100]}); "
                            "pass --overwrite or choose another --out") from None
        if same:
            return out
        raise DataError(f"{out}: a cache with another config or source already exists; "
                        "pass --overwrite or choose another --out")
    parts = out.parent / f".{out.name}.parts-{attrs['config_hash']}"
    parts.mkdir(parents=True, exist_ok=True)
    jobs = [(r, cfg, parts / f"{r.seriesuid}.h5") for r in records]
    todo = [j for j in jobs if not j[2].exists()]
    parallel_map(_shard_job, todo, cfg.workers, desc="cache scans")
    merge_shards([j[2] for j in jobs], out, attrs)
    shutil.rmtree(parts, ignore_errors=True)
    return out


def merge_shards(shards: list[Path], out: Path, attrs: dict) -> None:
    counts = []
    for s in shards:
        with h5py.File(s, "r") as f:
            counts.append(f["patches/image"].shape[0])
    total = int(sum(counts))
    if total == 0:
        raise DataError(f"{out}: none of the {len(shards)} scan(s) yielded a patch (no nodule and no lung "
                        "voxels found); check the coordinates and the images")
    k, p = attrs["k_slices"], attrs["patch_size"]
    tables: dict[str, list[pd.DataFrame]] = {"patches": [], "nodules": [], "scans": []}
    with atomic_path(out, suffix=".h5") as tmp, h5py.File(tmp, "w") as dst:
        dst.attrs.update(attrs)
        dsets = {name: dst.create_dataset(f"patches/{name}", (total, *shape), dtype, chunks=(1, *shape))
                 for name, dtype in PATCH_ARRAYS.items()
                 for shape in [(k, p, p) if name == "image" else (p, p)]}
        start = 0
        for shard, n in progress(list(zip(shards, counts)), desc="merge cache"):
            with h5py.File(shard, "r") as src:
                for name, ds in dsets.items():
                    ds[start:start + n] = src[f"patches/{name}"][()]
                for group in tables:
                    tables[group].append(read_table(src[f"{group}/meta"]))
            start += n
        for group, parts in tables.items():
            parts = [p for p in parts if len(p)]  # empty shard tables carry no dtypes
            df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
            write_table(dst.create_group(f"{group}/meta"), df)


# ----------------------------------------------------------------------------- reading


class PatchCache:
    """Read access; the HDF5 handle opens lazily so that DataLoader workers each get one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: cache not found; run prepare.py first")
        try:
            with h5py.File(self.path, "r") as f:
                if int(f.attrs.get("format_version", -1)) != FORMAT_VERSION:
                    raise DataError(f"{self.path}: cache format {f.attrs.get('format_version')} != "
                                    f"{FORMAT_VERSION}; rebuild it with prepare.py --overwrite")
                self.attrs = {key: f.attrs[key] for key in f.attrs}
                self.patches = read_table(f["patches/meta"])
                self.nodules = read_table(f["nodules/meta"])
                self.scans = read_table(f["scans/meta"])
        except (OSError, KeyError) as err:  # truncated or foreign file
            raise DataError(f"{self.path}: not a readable patch cache ({str(err).splitlines()[0]}); "
                            "rebuild it with prepare.py --overwrite") from None
        self.config = CacheConfig(**{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in json.loads(self.attrs["config"]).items()})
        self._file: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}

    @property
    def file(self) -> h5py.File:
        if self._file is None:
            self._file = h5py.File(self.path, "r")
            # dataset handles looked up once: a lookup costs more than reading a patch
            self._datasets = {name: self._file[f"patches/{name}"] for name in PATCH_ARRAYS}
        return self._file

    def __getstate__(self):  # h5py handles cannot be pickled into workers
        state = dict(self.__dict__)
        state["_file"], state["_datasets"] = None, {}
        return state

    def patch(self, index: int) -> dict[str, np.ndarray]:
        if self._file is None:
            self.file  # noqa: B018 - opens the file and looks up the datasets
        return {name: ds[index] for name, ds in self._datasets.items()}

    def check_matches(self, cfg: CacheConfig) -> None:
        """A run must ask for the model space the cache was built in."""
        differ = [f"{key}={getattr(self.config, key)} (run asks {getattr(cfg, key)})" for key in MODEL_SPACE_KEYS
                  if tuple(np.ravel(getattr(self.config, key))) != tuple(np.ravel(getattr(cfg, key)))]
        if differ:
            raise DataError(f"{self.path}: built with {'; '.join(differ)}; rebuild it with prepare.py "
                            "--overwrite, or run with the cache's settings")


def summarize(cache: PatchCache) -> str:
    """Counts for the terminal: scans, nodules by size bin, patches by kind."""
    bins = cache.nodules["diameter_mm"].map(size_bin).value_counts()
    kinds = cache.patches["kind"].value_counts()
    fine = int(cache.nodules["has_fine"].sum()) if len(cache.nodules) else 0
    lines = [
        f"{cache.path}: {len(cache.scans)} scans, {cache.scans['patient_id'].nunique()} patients, "
        f"{len(cache.nodules)} nodules ({fine} with fine masks)",
        "  nodules by size (mm): " + ", ".join(f"{b}: {int(bins.get(b, 0))}" for b in ("<3", *SIZE_BIN_LABELS)
                                                 if b != "<3" or bins.get(b, 0)),
        f"  patches: {len(cache.patches)} = " + ", ".join(f"{k} {int(v)}" for k, v in kinds.items())
        + f"; {cache.attrs['k_slices']} x {cache.attrs['patch_size']}^2 px at "
        f"{tuple(float(s) for s in cache.attrs['spacing_zyx'])} mm (z, y, x)",
    ]
    return "\n".join(lines)
