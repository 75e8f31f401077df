"""Image I/O through SimpleITK: MetaImage (.mhd/.mha), NIfTI, NRRD and DICOM series folders.

Every failure raises :class:`DataError` naming the file and the problem; every write is
atomic (temporary file(s) beside the target, renamed only when complete).
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from src.data.geometry import Geometry
from src.errors import DataError

IMAGE_SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz", ".nrrd", ".nhdr")
_IMAGE_IO = {".mhd": "MetaImageIO", ".mha": "MetaImageIO", ".nii": "NiftiImageIO", ".nii.gz": "NiftiImageIO",
             ".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO"}

_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
              "MET_UINT": 4, "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_LONG": 8, "MET_ULONG": 8}


def is_image_path(path: Path) -> bool:
    name = path.name.lower()
    return path.is_dir() or any(name.endswith(s) for s in IMAGE_SUFFIXES)


def _check_metaimage(path: Path) -> None:
    """Catch the common .mhd faults with a clear message before ITK's terse one."""
    header: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            header[key.strip()] = value.strip()
    data_file = header.get("ElementDataFile")
    if not data_file:
        raise DataError(f"{path}: MetaImage header has no ElementDataFile")
    if data_file == "LOCAL":
        return
    raw = path.parent / data_file
    if not raw.is_file():
        raise DataError(f"{path}: data file '{data_file}' is missing")
    if header.get("CompressedData", "False").lower() == "true":
        return
    dims = [int(v) for v in header.get("DimSize", "").split()]
    nbytes = _MET_BYTES.get(header.get("ElementType", ""))
    channels = int(header.get("ElementNumberOfChannels", "1"))
    if dims and nbytes:
        expected = int(np.prod(dims)) * nbytes * channels
        actual = raw.stat().st_size
        if actual != expected:
            raise DataError(f"{path}: data file '{data_file}' has {actual} bytes, header "
                            f"DimSize {dims} x {header['ElementType']} needs {expected}")


SLICE_GAP_TOLERANCE = 0.05   # relative spread of slice steps that still counts as even
GANTRY_TILT_TOLERANCE_DEG = 0.5


def _series_volume_files(folder: Path, series: str, files: list[str]) -> list[str]:
    """The files of one DICOM series that make its volume, ordered along the slice normal,
    from their headers alone. Images of another size or orientation than most (a localiser
    saved into the series) are left out with a note; two slices at one position, missing
    slices and a gantry tilt (ITK would read a sheared volume as a straight one) are errors."""
    reader = sitk.ImageFileReader()
    heads = []
    for name in files:
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            raise DataError(f"{name}: unreadable DICOM file in series {series}") from None
        if not reader.HasMetaDataKey("0020|0032"):
            return files   # no positions to check: ITK orders them as it can
        cosines = tuple(np.round([float(v) for v in reader.GetMetaData("0020|0037").split("\\")], 3)) \
            if reader.HasMetaDataKey("0020|0037") else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        position = np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
        heads.append((name, position, (cosines, tuple(reader.GetSize()[:2])), tuple(reader.GetSpacing()[:2])))
    common = Counter(kind for _, _, kind, _ in heads).most_common(1)[0][0]
    kept = [h for h in heads if h[2] == common]
    if len(kept) < len(heads):
        print(f"note: {folder}: series {series}: {len(heads) - len(kept)} image(s) of another size or orientation "
              "left out (a localiser?)", file=sys.stderr)
    cosines = np.asarray(common[0])
    normal = np.cross(cosines[:3], cosines[3:])
    positions = np.array([h[1] for h in kept])
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    steps = np.diff(positions @ normal) if len(kept) > 1 else np.ones(1)
    check_grid(folder, (*common[1], len(kept)), (*kept[0][3], float(np.median(steps))))   # before any pixel
    if len(kept) > 2:
        deltas = np.diff(positions, axis=0)
        steps = deltas @ normal
        if steps.min() <= 1e-3:
            raise DataError(f"{folder}: series {series} has two slices at the same position")
        if (steps.max() - steps.min()) > SLICE_GAP_TOLERANCE * np.median(steps):
            raise DataError(f"{folder}: series {series} has uneven slice spacing ({steps.min():.2f} to "
                            f"{steps.max():.2f} mm): missing slices?")
        across = np.linalg.norm(deltas - steps[:, None] * normal, axis=1)
        tilt = float(np.degrees(np.arctan2(np.median(across), np.median(steps))))
        if tilt > GANTRY_TILT_TOLERANCE_DEG:
            raise DataError(f"{folder}: series {series} was acquired with a gantry tilt of {tilt:.1f} degrees; "
                            "resample it to an orthogonal grid first (e.g. dcm2niix writes a tilt-corrected NIfTI)")
    return [kept[i][0] for i in order]


def dicom_series_files(folder: Path, series_uid: str | None = None, note: bool = True) -> list[str]:
    """The files of the DICOM series that ``read_image`` reads from ``folder``, in the order
    of the volume's slices (z). A folder with several series is never mixed: the one named
    ``series_uid``, else the one with the most slices (the CT, not a scout), and a note says
    which. Its files are checked first (``_series_volume_files``)."""
    reader = sitk.ImageSeriesReader()
    series = list(reader.GetGDCMSeriesIDs(str(folder)))
    if not series:
        raise DataError(f"{folder}: no DICOM series found in this folder")
    files = {s: list(reader.GetGDCMSeriesFileNames(str(folder), s)) for s in series}
    if series_uid is not None:
        if series_uid not in files:
            raise DataError(f"{folder}: no DICOM series {series_uid}; found {', '.join(series)}")
        chosen = series_uid
    else:
        chosen = max(series, key=lambda s: len(files[s]))
        if len(series) > 1 and note:
            print(f"note: {folder}: {len(series)} DICOM series; using {chosen} ({len(files[chosen])} slices), "
                  f"not {', '.join(f'{s} ({len(files[s])})' for s in series if s != chosen)}", file=sys.stderr)
    return _series_volume_files(folder, chosen, files[chosen])


def _read_dicom_series(folder: Path, series_uid: str | None = None) -> sitk.Image:
    """One DICOM series as a volume (``dicom_series_files``)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(dicom_series_files(folder, series_uid))
    try:
        return reader.Execute()
    except RuntimeError as err:   # e.g. a transfer syntax GDCM cannot decode
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
        raise DataError(f"{folder}: cannot read DICOM series ({detail})") from None


# What a CT can be: a voxel edge in this range (mm), at most this many voxels (2 GiB as int16).
SPACING_RANGE_MM = (0.1, 10.0)
MAX_VOXELS = 2**30


def check_grid(path: Path, size, spacing) -> None:
    """Refuse absurd geometry before any voxel is allocated: a 1,000 mm or negative spacing,
    an empty axis, or more voxels than any CT holds (a broken header)."""
    size, spacing = [int(v) for v in size], [float(v) for v in spacing]
    if min(size) < 2:
        raise DataError(f"{path}: image size {size} (x, y, z) is not a volume (a single slice or row)")
    if np.prod(size, dtype=float) > MAX_VOXELS:
        raise DataError(f"{path}: image size {size} is {np.prod(size, dtype=float):.3g} voxels, more than any CT "
                        f"({MAX_VOXELS:.3g}); is the header right?")
    lo, hi = SPACING_RANGE_MM
    if not all(np.isfinite(v) and lo <= v <= hi for v in spacing):
        raise DataError(f"{path}: voxel spacing {spacing} mm is outside {lo:g}-{hi:g} mm; is the header right?")


def _file_reader(path: Path) -> sitk.ImageFileReader:
    """A reader whose header was read and checked (format, 3D, one channel, sane grid)."""
    if not is_image_path(path):
        raise DataError(f"{path}: unsupported image format (expected one of {IMAGE_SUFFIXES} or a DICOM folder)")
    if _suffix(path) == ".mhd":
        _check_metaimage(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO(_IMAGE_IO[_suffix(path)])   # ITK picks by a lower-case suffix only (SCAN.MHD)
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
        raise DataError(f"{path}: cannot read image ({detail})") from None
    if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
        raise DataError(f"{path}: expected a 3D single-channel image, got {reader.GetDimension()}D with "
                        f"{reader.GetNumberOfComponents()} channels")
    check_grid(path, reader.GetSize(), reader.GetSpacing())
    return reader


def _nifti_non_finite(path: Path) -> int:
    """NaN/inf voxels of a float NIfTI file. ITK's NIfTI reader turns NaN into 0, so a scan
    of NaN would read as a scan of water; count them in the file itself."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    for order in "<>":
        if np.frombuffer(raw[:4], f"{order}i4")[0] in (348, 540):
            break
    else:
        return 0
    nifti2 = np.frombuffer(raw[:4], f"{order}i4")[0] == 540
    datatype = int(np.frombuffer(raw[12:14] if nifti2 else raw[70:72], f"{order}i2")[0])
    offset = int(np.frombuffer(raw[168:176], f"{order}i8")[0] if nifti2
                 else np.frombuffer(raw[108:112], f"{order}f4")[0])
    dtype = {16: "f4", 64: "f8"}.get(datatype)
    if dtype is None:   # integer data cannot hold NaN
        return 0
    data = np.frombuffer(raw, f"{order}{dtype}", offset=offset, count=(len(raw) - offset) // np.dtype(dtype).itemsize)
    return int((~np.isfinite(data)).sum())


def read_sitk(path: str | Path) -> sitk.Image:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file or folder does not exist")
    if path.is_dir():
        image = _read_dicom_series(path)
        check_grid(path, image.GetSize(), image.GetSpacing())
        return image
    reader = _file_reader(path)
    try:
        image = reader.Execute()
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
        raise DataError(f"{path}: cannot read image ({detail})") from None
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64) and ".nii" in path.name.lower():
        bad = _nifti_non_finite(path)
        if bad:
            raise DataError(f"{path}: {bad} of {int(np.prod(image.GetSize()))} voxels are NaN or infinite")
    return image


def read_header(path: str | Path) -> Geometry:
    """The geometry of an image file from its header alone (DICOM folders: read whole)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file or folder does not exist")
    if path.is_dir():
        return Geometry.from_sitk(read_sitk(path))
    reader = _file_reader(path)
    return Geometry(tuple(reader.GetOrigin()), tuple(reader.GetSpacing()), tuple(reader.GetDirection()),
                    tuple(int(v) for v in reader.GetSize()))


def read_image(path: str | Path, dtype=None) -> tuple[np.ndarray, Geometry]:
    """-> (array indexed z, y, x; Geometry). 3D scalar images only."""
    image = read_sitk(path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"{path}: expected a 3D single-channel image, got "
                        f"{image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()} channels")
    array = sitk.GetArrayFromImage(image)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return array, Geometry.from_sitk(image)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def write_image(array: np.ndarray, geometry: Geometry, path: str | Path,
                compress: bool = False) -> Path:
    """Write a (z, y, x) array with ``geometry``; atomic, also for the .mhd + .raw pair."""
    path = Path(path)
    if tuple(array.shape) != tuple(geometry.shape_zyx):
        raise ValueError(f"{path}: array shape {array.shape} != geometry {geometry.shape_zyx}")
    image = geometry.apply_to(sitk.GetImageFromArray(array))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write into a private folder beside the target under the final name, so a .mhd header
    # already references its final data file name; then move data first, header last.
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        sitk.WriteImage(image, str(tmpdir / path.name), compress)
        written = sorted(tmpdir.iterdir(), key=lambda p: _suffix(p) in (".mhd", ".nhdr"))
        for item in written:  # data files before the header that points to them
            os.replace(item, path.parent / item.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def write_dicom_series(image_hu: np.ndarray, geometry: Geometry, folder: str | Path, patient_id: str,
                       series_uid: str, study_uid: str | None = None, skip=(), shear_mm: float = 0.0) -> Path:
    """A CT volume (HU, int16) as a scanner writes it: one CT image file per slice, sharing
    one patient, study, series and frame of reference. ``skip``: slices left out (a broken
    transfer); ``shear_mm``: each slice shifted along y by this much more (a gantry tilt).
    Used to turn a built-in scan into a DICOM study."""
    from pydicom.uid import generate_uid   # a dependency of highdicom; only this writer needs it
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    shared = {"0008|0060": "CT", "0010|0020": patient_id, "0010|0010": f"{patient_id}^", "0008|0020": "20260101",
              "0020|000d": study_uid or generate_uid(), "0020|000e": series_uid, "0020|0052": generate_uid(),
              "0020|0011": "1", "0018|0050": f"{geometry.spacing_xyz[2]:.4f}",
              "0020|0037": "\\".join(f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1]))}
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in (z for z in range(image_hu.shape[0]) if z not in skip):
        origin = geometry.voxel_to_world([z, 0, 0]) + [0.0, z * shear_mm, 0.0]
        one = sitk.GetImageFromArray(image_hu[z:z + 1].astype(np.int16))
        one.SetSpacing(geometry.spacing_xyz)
        one.SetOrigin(tuple(float(v) for v in origin))
        one.SetDirection(tuple(direction.ravel()))
        for tag, value in {**shared, "0020|0013": str(z + 1), "0008|0018": generate_uid(),
                           "0020|0032": "\\".join(f"{v:.4f}" for v in origin)}.items():
            one.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid.rsplit('.', 1)[-1]}_{z:04d}.dcm"))   # series may share a folder
        writer.Execute(one)
    return folder


def image_stem(path: str | Path) -> str:
    """File name without image suffix: 'a/b/1.2.3.mhd' -> '1.2.3'; a folder -> its name."""
    name = Path(path).name
    return re.sub(r"(\.nii\.gz|\.nii|\.mhd|\.mha|\.nrrd|\.nhdr)$", "", name, flags=re.IGNORECASE)
