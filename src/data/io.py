"""Image I/O through SimpleITK: MetaImage (.mhd/.mha), NIfTI, NRRD and DICOM series folders.

Every failure raises :class:`DataError` naming the file and the problem; every write is
atomic (temporary file(s) beside the target, renamed only when complete).
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from src.data.geometry import Geometry
from src.errors import DataError

IMAGE_SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz", ".nrrd", ".nhdr")

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


def _slice_positions(files: list[str]) -> np.ndarray:
    """Each file's position along the slice normal (mm), from its header alone."""
    reader = sitk.ImageFileReader()
    positions = []
    for name in files:
        reader.SetFileName(name)
        reader.ReadImageInformation()
        if not reader.HasMetaDataKey("0020|0032"):
            return np.zeros(0)
        cosines = np.array([float(v) for v in reader.GetMetaData("0020|0037").split("\\")]) \
            if reader.HasMetaDataKey("0020|0037") else np.array([1.0, 0, 0, 0, 1, 0])
        normal = np.cross(cosines[:3], cosines[3:])
        positions.append(float(np.dot([float(v) for v in reader.GetMetaData("0020|0032").split("\\")], normal)))
    return np.sort(np.asarray(positions))


def _read_dicom_series(folder: Path, series_uid: str | None = None) -> sitk.Image:
    """One DICOM series as a volume. A folder with several series is never mixed: the one
    named ``series_uid``, else the one with the most slices (the CT, not a scout), and a
    note says which. Missing slices or uneven spacing are an error."""
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
        if len(series) > 1:
            print(f"note: {folder}: {len(series)} DICOM series; using {chosen} ({len(files[chosen])} slices), "
                  f"not {', '.join(f'{s} ({len(files[s])})' for s in series if s != chosen)}")
    positions = _slice_positions(files[chosen])
    if len(positions) > 2:
        steps = np.diff(positions)
        if steps.min() <= 0:
            raise DataError(f"{folder}: series {chosen} has two slices at the same position")
        if (steps.max() - steps.min()) > SLICE_GAP_TOLERANCE * np.median(steps):
            raise DataError(f"{folder}: series {chosen} has uneven slice spacing ({steps.min():.2f} to "
                            f"{steps.max():.2f} mm): missing slices?")
    reader.SetFileNames(files[chosen])
    return reader.Execute()


def read_sitk(path: str | Path) -> sitk.Image:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file or folder does not exist")
    if path.is_dir():
        return _read_dicom_series(path)
    if not is_image_path(path):
        raise DataError(f"{path}: unsupported image format (expected one of {IMAGE_SUFFIXES} "
                        "or a DICOM folder)")
    if path.suffix.lower() == ".mhd":
        _check_metaimage(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
        raise DataError(f"{path}: cannot read image ({detail})") from None


def read_header(path: str | Path) -> Geometry:
    """The geometry of an image file from its header alone (DICOM folders: read whole)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file or folder does not exist")
    if path.is_dir():
        return Geometry.from_sitk(_read_dicom_series(path))
    if not is_image_path(path):
        raise DataError(f"{path}: unsupported image format (expected one of {IMAGE_SUFFIXES} or a DICOM folder)")
    if path.suffix.lower() == ".mhd":
        _check_metaimage(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
        raise DataError(f"{path}: cannot read image ({detail})") from None
    if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
        raise DataError(f"{path}: expected a 3D single-channel image, got {reader.GetDimension()}D with "
                        f"{reader.GetNumberOfComponents()} channels")
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


def image_stem(path: str | Path) -> str:
    """File name without image suffix: 'a/b/1.2.3.mhd' -> '1.2.3'; a folder -> its name."""
    name = Path(path).name
    return re.sub(r"(\.nii\.gz|\.nii|\.mhd|\.mha|\.nrrd|\.nhdr)$", "", name, flags=re.IGNORECASE)
