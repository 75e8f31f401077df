import numpy as np
import pytest
import SimpleITK as sitk

from src.data.geometry import Geometry
from src.data.io import DataError, read_image, write_image


def _oblique_geometry():
    angle = np.deg2rad(10)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return Geometry((-120.5, 33.0, -250.0), (0.7, 0.8, 2.5), tuple(direction.ravel()), (20, 30, 10))


def test_world_voxel_conversion_matches_itk():
    geo = _oblique_geometry()
    image = geo.apply_to(sitk.Image(list(geo.size_xyz), sitk.sitkInt16))
    voxel_zyx = np.array([3.5, 12.25, 7.0])
    expected = image.TransformContinuousIndexToPhysicalPoint(voxel_zyx[::-1].tolist())
    np.testing.assert_allclose(geo.voxel_to_world(voxel_zyx), expected, atol=1e-6)
    np.testing.assert_allclose(geo.world_to_voxel(expected), voxel_zyx, atol=1e-6)
    # arrays of points, and the crop helper keeps world positions
    pts = np.array([[0, 0, 0], [9, 29, 19]], float)
    np.testing.assert_allclose(geo.world_to_voxel(geo.voxel_to_world(pts)), pts, atol=1e-9)
    sub = geo.crop((2, 5, 4), (3, 4, 5))
    np.testing.assert_allclose(sub.voxel_to_world([0, 0, 0]), geo.voxel_to_world([2, 5, 4]), atol=1e-9)


@pytest.mark.parametrize("suffix", [".mhd", ".nii.gz", ".nrrd"])
def test_write_read_round_trip(tmp_path, suffix):
    geo = _oblique_geometry()
    array = np.random.default_rng(0).integers(-1000, 500, geo.shape_zyx).astype(np.int16)
    path = write_image(array, geo, tmp_path / f"scan{suffix}")
    back, geo2 = read_image(path)
    np.testing.assert_array_equal(back, array)
    assert geo2.same_grid(geo)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_bad_metaimages_name_file_and_problem(tmp_path):
    geo = Geometry.axis_aligned((0, 0, 0), (1, 1, 1), (4, 5, 6))
    path = write_image(np.zeros(geo.shape_zyx, np.int16), geo, tmp_path / "a.mhd")
    raw = tmp_path / "a.raw"
    raw.write_bytes(raw.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"a\.mhd: data file 'a\.raw' has 230 bytes.*needs 240"):
        read_image(path)
    raw.unlink()
    with pytest.raises(DataError, match=r"a\.mhd: data file 'a\.raw' is missing"):
        read_image(path)
    (tmp_path / "b.nii.gz").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"b\.nii\.gz: cannot read image"):
        read_image(tmp_path / "b.nii.gz")
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "missing.mhd")
