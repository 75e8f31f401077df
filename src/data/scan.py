"""The in-memory scan every reader produces: HU volume + geometry + nodules (+ masks).

Readers (``luna16.py``, ``manifest.py``) only find files and tables and return
:class:`ScanRecord` objects; ``ScanRecord.load()`` reads the volumes, checks them against
each other and against the coordinates, and returns a :class:`Scan`. Everything after
that (cache, inference) sees one code path whatever the source was.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import cc3d
import numpy as np
import pandas as pd

from src.data.geometry import Geometry, sphere_diameter_mm
from src.data.groups import UNKNOWN, attachment_class
from src.data.io import read_image
from src.data.tables import NODULE_COLUMNS
from src.errors import DataError


@dataclass
class Nodule:
    nodule_uid: str                 # "<seriesuid>#<k>", stable for a given annotation table
    center_xyz: np.ndarray          # world mm (x, y, z)
    diameter_mm: float
    fine_label: int = 0             # label in the fine mask volume; 0 = no fine mask (coarse only)
    texture: float = float("nan")   # LIDC texture 1 (ground glass) .. 5 (solid)
    n_readers: float = float("nan")
    attachment: str = UNKNOWN       # one of ATTACHMENT_LABELS
    from_mask: bool = False         # centre/diameter derived from the mask, not given


@dataclass
class ScanRecord:
    """Where one scan's data lives on disk, and its rows of the coordinate tables."""
    seriesuid: str
    patient_id: str
    image_path: Path
    mask_path: Path | None = None
    lung_path: Path | None = None
    readers_path: Path | None = None
    nodules: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=NODULE_COLUMNS))
    excluded: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=NODULE_COLUMNS))
    candidates: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["coordX", "coordY", "coordZ"]))
    source: str = ""                # which table(s) the coordinates came from, for messages
    mask_only_nodules: bool = False # mask labels without a coordinate: nodules (True) or ignored findings

    def __post_init__(self) -> None:
        check_seriesuid(self.seriesuid, self.source or str(self.image_path))

    def load(self, with_image: bool = True, with_masks: bool = True) -> "Scan":
        return load_scan(self, with_image=with_image, with_masks=with_masks)


@dataclass
class Scan:
    record: ScanRecord
    image: np.ndarray | None        # HU, int16, (z, y, x)
    geometry: Geometry
    nodules: list[Nodule]
    fine_mask: np.ndarray | None    # label volume (z, y, x); ids match Nodule.fine_label
    lung_mask: np.ndarray | None    # bool (z, y, x)
    reader_bits: np.ndarray | None  # uint8 (z, y, x): bit r = reader slot r marked the voxel
    excluded_xyzd: np.ndarray       # (n, 4) world x, y, z, diameter: ignored when scoring
    candidates_xyz: np.ndarray      # (n, 3) world: vessel-like false candidates (hard negatives)

    @property
    def seriesuid(self) -> str:
        return self.record.seriesuid

    @property
    def patient_id(self) -> str:
        return self.record.patient_id


# ----------------------------------------------------------------------------- helpers


def check_seriesuid(uid: str, where: str) -> str:
    """A seriesuid names output files, so it must be a plain file name: no folders, no '..'."""
    text = str(uid)
    if (not text.strip() or text != text.strip() or any(c in text for c in '/\\\0:') or text.startswith(".")
            or Path(text).is_absolute()):
        raise DataError(f"{where}: seriesuid {text!r} is not a plain file name (no '/', '\\', ':' or "
                        "leading '.'); it would name files outside the output folder")
    return text


def _as_labels(mask: np.ndarray) -> np.ndarray:
    """A binary mask holding several nodules becomes one label per connected component."""
    if mask.max() <= 1:
        return cc3d.connected_components(mask > 0, connectivity=26).astype(np.uint16)
    return mask.astype(np.uint16, copy=False)


def _match_label(labels: np.ndarray, geometry: Geometry, center_xyz, diameter_mm) -> int:
    """Fine label of the nodule at a coordinate: the label at the centre voxel, else the
    most frequent label inside the coarse sphere, else 0."""
    zyx = geometry.world_to_voxel(center_xyz)
    idx = tuple(int(round(v)) for v in zyx)
    if labels[idx] > 0:
        return int(labels[idx])
    radius = np.maximum(diameter_mm / 2.0 / geometry.spacing_zyx, 1.0)
    lo = np.maximum(np.floor(zyx - radius).astype(int), 0)
    hi = np.minimum(np.ceil(zyx + radius).astype(int) + 1, labels.shape)
    box = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)
    inside = (((grid - zyx) / radius) ** 2).sum(-1) <= 1.0
    found = box[inside & (box > 0)]
    return int(np.bincount(found).argmax()) if found.size else 0


def nodules_from_labels(labels: np.ndarray, geometry: Geometry, ids) -> list[tuple[int, np.ndarray, float]]:
    """(label, world centre, equivalent-sphere diameter mm) for each label id."""
    out = []
    voxel_mm3 = float(np.prod(geometry.spacing_zyx))
    stats = cc3d.statistics(labels.astype(np.uint32))
    for label in ids:
        count = int(stats["voxel_counts"][label])
        if count == 0:
            continue
        center = geometry.voxel_to_world(stats["centroids"][label])
        diameter = sphere_diameter_mm(count * voxel_mm3)
        out.append((int(label), center, diameter))
    return out


def _merge_fragments(labels: np.ndarray, geometry: Geometry, nodules: list[Nodule], used: set[int]) -> None:
    """A binary mask was split into components; a component without a coordinate of its own
    whose centroid lies within 1.5 radii of a given nodule is a fragment of that nodule."""
    extra = sorted(set(np.unique(labels)) - used - {0})
    for label, centre, _ in nodules_from_labels(labels, geometry, extra):
        for nod in nodules:
            if nod.fine_label and np.linalg.norm(centre - nod.center_xyz) <= 0.75 * nod.diameter_mm:
                labels[labels == label] = nod.fine_label
                used.add(label)
                break


def _xyz(df: pd.DataFrame) -> np.ndarray:
    return df[["coordX", "coordY", "coordZ"]].to_numpy(dtype=float).reshape(-1, 3)


def _read_aligned(path: Path | None, geometry: Geometry, image_path: Path, what: str):
    if path is None:
        return None
    array, geo = read_image(path)
    if not geo.same_grid(geometry):
        raise DataError(f"{path}: {what} geometry (size {geo.size_xyz}, spacing {geo.spacing_xyz}, "
                        f"origin {geo.origin_xyz}) differs from its image {image_path}")
    return array


def check_hu(image: np.ndarray, path: Path) -> np.ndarray:
    """CT in Hounsfield units as int16, or a clear error; a warning for images that read
    but do not look like HU (8-bit exports, no air)."""
    if not np.issubdtype(image.dtype, np.integer):
        finite = np.isfinite(image)
        if not finite.all():
            raise DataError(f"{path}: {int((~finite).sum())} of {image.size} voxels are NaN or infinite")
        image = np.rint(image)
    lo, hi = float(image.min()), float(image.max())
    if lo < -32768 or hi > 32767:
        raise DataError(f"{path}: intensities {lo:.4g}..{hi:.4g} are not Hounsfield units (outside int16)")
    if lo >= 0 and hi <= 255:
        print(f"warning: {path}: intensities {lo:.0f}..{hi:.0f} look like an 8-bit image, not CT in HU", file=sys.stderr)
    elif lo > -500:
        print(f"warning: {path}: no air-like voxels (minimum {lo:.0f}); is this CT in HU?", file=sys.stderr)
    return image.astype(np.int16)


def load_scan(record: ScanRecord, with_image: bool = True, with_masks: bool = True) -> Scan:
    """``with_masks=False`` skips the nodule and reader masks (the lung mask is still read):
    finding nodules never looks at them, and on a 512 x 512 x 300 scan they are ~0.4 GB."""
    if with_image:
        image, geometry = read_image(record.image_path)
        image = check_hu(image, record.image_path)
    else:  # header only: used to validate tables cheaply
        from src.data.io import read_sitk
        image, geometry = None, Geometry.from_sitk(read_sitk(record.image_path))

    fine = _read_aligned(record.mask_path if with_masks else None, geometry, record.image_path, "mask")
    labels = _as_labels(fine) if fine is not None else None
    binary = fine is not None and fine.max() <= 1
    lung = _read_aligned(record.lung_path, geometry, record.image_path, "lung mask")
    if lung is not None:
        # LUNA16 seg-lungs: 3 = right lung, 4 = left lung, 5 = trachea; others: any non-zero.
        lungs = (lung == 3) | (lung == 4)
        lung = lungs if lungs.any() else lung > 0
    readers = _read_aligned(record.readers_path if with_masks else None, geometry, record.image_path, "reader mask")

    nodules: list[Nodule] = []
    used: set[int] = set()
    for k, row in enumerate(record.nodules.itertuples(index=False)):
        center = np.array([row.coordX, row.coordY, row.coordZ], dtype=float)
        if not geometry.contains(geometry.world_to_voxel(center)):
            raise DataError(f"{record.source}: nodule {k} of {record.seriesuid} at world "
                            f"({row.coordX:.1f}, {row.coordY:.1f}, {row.coordZ:.1f}) mm lies outside "
                            f"the volume {record.image_path}")
        label = _match_label(labels, geometry, center, row.diameter_mm) if labels is not None else 0
        used.add(label)
        nodules.append(Nodule(f"{record.seriesuid}#{k}", center, float(row.diameter_mm), label,
                              float(getattr(row, "texture", np.nan)),
                              float(getattr(row, "n_readers", np.nan)),
                              attachment_class(getattr(row, "attachment", None))))
    if binary and nodules:
        _merge_fragments(labels, geometry, nodules, used)
    excluded = record.excluded
    excluded_xyzd = np.c_[_xyz(excluded), excluded["diameter_mm"].to_numpy(dtype=float)] \
        if len(excluded) else np.zeros((0, 4))
    if labels is not None:  # labels with no coordinate: centre and diameter come from the mask
        extra = sorted(set(np.unique(labels)) - used - {0})
        found = nodules_from_labels(labels, geometry, extra)
        if record.mask_only_nodules:
            nodules += [Nodule(f"{record.seriesuid}#m{label}", center, diameter, label, from_mask=True)
                        for label, center, diameter in found]
        elif found:  # LUNA16 rule: not a nodule of the reference standard, so never scored
            excluded_xyzd = np.concatenate([excluded_xyzd, [[*c, d] for _, c, d in found]])
    return Scan(record, image, geometry, nodules, labels, lung, readers,
                excluded_xyzd, _xyz(record.candidates))
