"""Bad input: each case a clear message naming the file or row and the problem."""
import numpy as np
import pandas as pd
import pytest

from src.data.geometry import Geometry
from src.data.io import read_image, write_image
from src.data.manifest import read_manifest
from src.data.scan import ScanRecord
from src.errors import DataError

GEO = Geometry.axis_aligned((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (8, 16, 16))


def _record(tmp_path, array, name="scan.nii.gz"):
    write_image(array, GEO, tmp_path / name)
    return ScanRecord("s1", "s1", tmp_path / name, source=str(tmp_path / name))


def test_nan_and_inf_voxels_are_refused(tmp_path):
    image = np.full(GEO.shape_zyx, -800.0, np.float32)
    image[2, 3, 4], image[5, 5, 5] = np.nan, np.inf
    # MetaImage keeps NaN (SimpleITK's NIfTI reader already turns it into 0)
    with pytest.raises(DataError, match=r"scan\.mhd: 2 of 2048 voxels are NaN or infinite"):
        _record(tmp_path, image, "scan.mhd").load()
    with pytest.raises(DataError, match="2048 of 2048 voxels are NaN"):
        _record(tmp_path, np.full(GEO.shape_zyx, np.nan, np.float32), "nan.mhd").load()


def test_values_beyond_hounsfield_units_are_refused(tmp_path):
    image = np.full(GEO.shape_zyx, -800.0e6, np.float32)   # HU x 1e6
    with pytest.raises(DataError, match=r"intensities -8e\+08\.\.-8e\+08 are not Hounsfield units"):
        _record(tmp_path, image).load()


def test_an_8_bit_image_reads_with_a_warning(tmp_path, capsys):
    image = np.random.default_rng(0).integers(0, 256, GEO.shape_zyx).astype(np.uint8)
    scan = _record(tmp_path, image).load()
    assert scan.image.dtype == np.int16
    assert "look like an 8-bit image, not CT in HU" in capsys.readouterr().err


def test_a_2d_image_is_refused(tmp_path):
    import SimpleITK as sitk
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16), np.int16)), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(DataError, match=r"flat\.nii\.gz: expected a 3D single-channel image, got 2D"):
        read_image(tmp_path / "flat.nii.gz")


@pytest.mark.parametrize("uid", ["../../x", "/abs/path", "a/b", ".hidden", "c:\\\\x"])
def test_a_seriesuid_that_would_write_outside_the_output_is_refused(tmp_path, uid):
    write_image(np.zeros(GEO.shape_zyx, np.int16), GEO, tmp_path / "scan.nii.gz")
    pd.DataFrame([dict(seriesuid=uid, image="scan.nii.gz")]).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match=r"m\.csv: seriesuid .* is not a plain file name"):
        read_manifest(tmp_path / "m.csv")


def test_manifest_missing_columns_and_bad_diameters(tmp_path):
    write_image(np.zeros(GEO.shape_zyx, np.int16), GEO, tmp_path / "scan.nii.gz")
    pd.DataFrame([dict(uid="a", image="scan.nii.gz")]).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match=r"m\.csv: missing column\(s\) \['seriesuid'\]"):
        read_manifest(tmp_path / "m.csv")
    for diameter, message in ((0.0, "0 must be positive"), (-3, "-3 must be positive"),
                              ("big", "'big' is not a number"), (500, "500 is over 100 mm: not a nodule diameter")):
        pd.DataFrame([dict(seriesuid="a", image="scan.nii.gz", coordX=1.0, coordY=1.0, coordZ=1.0,
                           diameter_mm=diameter)]).to_csv(tmp_path / "m.csv", index=False)
        with pytest.raises(DataError, match=rf"m\.csv: row 2, column diameter_mm: {message}"):
            read_manifest(tmp_path / "m.csv")


def test_verify_reports_every_bad_scan_and_prepare_stops_before_any_work(tiny_luna, tmp_path, monkeypatch, capsys):
    import runpy
    import shutil
    import sys

    luna = shutil.copytree(tiny_luna, tmp_path / "luna")
    ann = pd.read_csv(luna / "annotations.csv")
    ann.loc[0, "coordX"] = 5000.0                                  # outside its volume
    ann.to_csv(luna / "annotations.csv", index=False)
    victim = sorted((luna / "subset1").glob("*.raw"))[0]
    victim.write_bytes(victim.read_bytes()[:100])                  # truncated .raw
    out = tmp_path / "cache.h5"

    def script(name, *argv):
        monkeypatch.setattr(sys, "argv", [name, *argv])
        with pytest.raises(SystemExit) as done:
            runpy.run_path(name, run_name="__main__")
        return done.value.code, capsys.readouterr()

    common = ["--set", f"paths.data={luna}", f"paths.cache={out}", f"paths.folds={tmp_path}/folds.csv"]
    code, printed = script("verify.py", "--quick", *common)
    assert code == 2
    errors = [line for line in printed.out.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 2 and any("outside the volume" in e for e in errors)
    assert any(f"{victim.stem}.mhd: data file" in e and "has 100 bytes" in e for e in errors)
    assert "checked 10 scans" in printed.out
    code, printed = script("prepare.py", *common)
    assert code == 2 and "2 error(s) in the dataset" in printed.err and not out.exists()
    assert not list(tmp_path.glob(".cache.h5*")), "no shard was cut"


def test_flat_folders_of_images_and_of_dicom_series_are_inputs(tmp_path):
    from src.predict.run import collect_inputs
    flat = tmp_path / "flat"
    for name in ("a.mhd", "b.nii.gz", "c.nrrd"):
        write_image(np.zeros(GEO.shape_zyx, np.int16), GEO, flat / name)
    records, failures = collect_inputs([str(flat)])
    assert not failures and sorted(r.seriesuid for r in records) == ["a", "b", "c"]
    assert {r.image_path.name for r in records} == {"a.mhd", "b.nii.gz", "c.nrrd"}, "never the .raw"
    series = tmp_path / "dicoms"
    for name in ("case1", "case2"):
        (series / name).mkdir(parents=True)
        (series / name / "0001.dcm").write_bytes(b"x")
    records, failures = collect_inputs([str(series)])
    assert not failures and [(r.seriesuid, r.image_path.name) for r in records] == [("case1", "case1"),
                                                                                     ("case2", "case2")]


def test_a_folder_of_non_images_fails_alone(tmp_path):
    from src.predict.run import collect_inputs
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    write_image(np.zeros(GEO.shape_zyx, np.int16), GEO, tmp_path / "good.mhd")
    records, failures = collect_inputs([str(tmp_path / "notes"), str(tmp_path / "good.mhd")])
    assert [r.seriesuid for r in records] == ["notes", "good"] and not failures
    with pytest.raises(DataError, match=r"notes: no DICOM series found in this folder"):
        records[0].load()


def test_a_truncated_cache_is_one_clear_error(tiny_cache, tmp_path):
    from src.data.cache import PatchCache
    broken = tmp_path / "cache.h5"
    broken.write_bytes(tiny_cache.path.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"cache\.h5: not a readable patch cache .*rebuild it with prepare\.py"):
        PatchCache(broken)


def test_a_checkpoint_of_another_architecture_is_one_clear_error(tiny_trained, tmp_path):
    import torch

    from src.models.checkpoint import model_from_checkpoint
    ckpt = torch.load(tiny_trained.layout.student_checkpoint(), weights_only=True)
    ckpt["model_config"]["decoder_channels"] = [64, 32, 16, 8, 8]
    torch.save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(DataError, match=r"edited\.pt: weights do not fit the architecture it names \(.*size mismatch"):
        model_from_checkpoint(tmp_path / "edited.pt")
