"""LUNA16-layout and hospital-manifest readers: round trip, coordinates, bad input."""
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from src.data.groups import attachment_class
from src.data.io import DataError, read_image, write_dicom_series
from src.data.luna16 import read_luna16
from src.data.manifest import read_manifest
from src.phantom.tiny import TINY_ATTACHMENTS, make_tiny_luna


@pytest.fixture()
def luna_copy(tiny_luna, tmp_path):
    return shutil.copytree(tiny_luna, tmp_path / "luna")


def test_round_trip_and_coordinates_inside_their_masks(tiny_luna):
    records = read_luna16(tiny_luna)
    assert len(records) == 10
    assert {r.patient_id for r in records[:2]} == {"P001"}, "scans.csv patient ids are used"
    ann = pd.read_csv(tiny_luna / "annotations.csv")
    attachments = []
    for record in records:
        scan = record.load()
        assert scan.image.dtype == np.int16 and scan.image.shape == (40, 112, 112)
        assert scan.lung_mask is not None and scan.lung_mask.any()
        assert len(scan.candidates_xyz) == 4
        for nodule in scan.nodules:
            attachments.append(nodule.attachment)
            assert nodule.fine_label > 0
            z, y, x = np.rint(scan.geometry.world_to_voxel(nodule.center_xyz)).astype(int)
            assert scan.fine_mask[z, y, x] == nodule.fine_label, "world centre must fall in its own mask"
    assert len(attachments) == len(ann)
    # nodules.csv's attachment column, row by row; its empty cells are "unknown"
    assert attachments == [TINY_ATTACHMENTS[k % len(TINY_ATTACHMENTS)] or "unknown" for k in range(len(ann))]
    # finding nodules reads the image and lungs only (no truth masks), the same nodule table
    bare = records[0].load(with_masks=False)
    assert bare.fine_mask is None and bare.reader_bits is None and bare.lung_mask.any()
    assert [n.center_xyz.tolist() for n in bare.nodules] == [n.center_xyz.tolist() for n in records[0].load().nodules]


def test_mask_labels_without_coordinates_are_ignored_unless_asked_for(luna_copy):
    ann = pd.read_csv(luna_copy / "annotations.csv")
    first = ann["seriesuid"].iloc[0]
    ann[ann["seriesuid"] != first].to_csv(luna_copy / "annotations.csv", index=False)
    labels, geo = read_image(luna_copy / "masks" / f"{first}.mhd")
    # LUNA16 rule: only annotations.csv rows are nodules; the labels become ignored findings
    scan = next(r for r in read_luna16(luna_copy) if r.seriesuid == first).load()
    assert scan.nodules == [] and len(scan.excluded_xyzd) == labels.max()
    # hospital masks without any coordinates: each label is a nodule of its own
    scan = next(r for r in read_luna16(luna_copy, mask_only_nodules=True) if r.seriesuid == first).load()
    assert len(scan.nodules) == labels.max() and all(n.from_mask for n in scan.nodules)
    for nod in scan.nodules:
        volume = (labels == nod.fine_label).sum() * np.prod(geo.spacing_zyx)
        assert nod.diameter_mm == pytest.approx((6 * volume / np.pi) ** (1 / 3), rel=1e-6)
    np.testing.assert_allclose(np.array([n.center_xyz for n in scan.nodules]), scan_excluded(luna_copy, first)[:, :3])
    # scored, such a nodule's prompt comes from its own truth: every table says so
    from src.config import load_config
    from src.evaluation.baselines import SphereSegmenter
    from src.evaluation.cases import cases_from_scan
    from src.evaluation.holdout import score_cases
    from src.evaluation.leaderboard import overall_table
    cfg = load_config(None)
    rows = score_cases(cases_from_scan(scan, cfg.cache, cfg.infer), {"sphere": (SphereSegmenter(), 0.5)}, cfg.infer)
    assert rows["coords_from_mask"].all()
    assert overall_table(rows)["coordinates from masks"].item() == labels.max()


def scan_excluded(folder, uid):
    return next(r for r in read_luna16(folder) if r.seriesuid == uid).load().excluded_xyzd


def test_annotations_csv_wins_over_nodules_csv(luna_copy, capsys):
    ann = pd.read_csv(luna_copy / "annotations.csv")
    rich = ann.assign(texture=[3.0] + [np.nan] * (len(ann) - 1), n_readers=4)   # no attachment: LUNA16
    rich.to_csv(luna_copy / "nodules.csv", index=False)
    records = read_luna16(luna_copy)
    first = records[0]
    assert first.nodules["texture"].iloc[0] == 3.0 and (first.nodules["n_readers"] == 4).all(), \
        "nodules.csv adds its columns to matching rows"
    assert "match no annotations.csv row" not in capsys.readouterr().err, "rows with empty values still match"
    assert {n.attachment for r in records for n in r.load(with_image=False).nodules} == {"unknown"}
    ann.loc[0, "coordX"] = 5000.0   # an edit of annotations.csv alone must be seen
    ann.to_csv(luna_copy / "annotations.csv", index=False)
    record = next(r for r in read_luna16(luna_copy) if r.seriesuid == ann["seriesuid"].iloc[0])
    assert "1 row(s) match no annotations.csv row" in capsys.readouterr().err
    assert record.nodules["coordX"].iloc[0] == 5000.0 and np.isnan(record.nodules["texture"].iloc[0])
    with pytest.raises(DataError, match="outside the volume"):
        record.load()


def _edit_annotations(folder, **changes):
    ann = pd.read_csv(folder / "annotations.csv")
    for column, value in changes.items():
        ann.loc[0, column] = value
    ann.to_csv(folder / "annotations.csv", index=False)


def test_bad_input_errors_name_file_and_problem(luna_copy):
    uid = pd.read_csv(luna_copy / "annotations.csv")["seriesuid"].iloc[0]
    _edit_annotations(luna_copy, diameter_mm=0)
    with pytest.raises(DataError, match=r"annotations\.csv: row 2, column diameter_mm: 0 must be positive"):
        read_luna16(luna_copy)

    _edit_annotations(luna_copy, diameter_mm=5.0, seriesuid="9.9.9")
    with pytest.raises(DataError, match=r"annotations\.csv: 1 seriesuid\(s\) have no image.*9\.9\.9"):
        read_luna16(luna_copy)
    assert len(read_luna16(luna_copy, allow_partial=True)) == 10

    _edit_annotations(luna_copy, seriesuid=uid, coordX=5000.0)
    record = next(r for r in read_luna16(luna_copy) if r.seriesuid == uid)
    with pytest.raises(DataError, match=rf"nodule 0 of {uid} at world \(5000\.0.*outside the volume"):
        record.load()

    raw = next(luna_copy.glob(f"subset*/{uid}.raw"))
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(DataError, match=rf"{uid}\.mhd: data file .* has 100 bytes"):
        record.load()
    raw.unlink()
    with pytest.raises(DataError, match=rf"{uid}\.mhd: data file .* is missing"):
        record.load()


def test_mask_with_other_geometry_is_refused(luna_copy):
    uid = read_luna16(luna_copy)[3].seriesuid
    labels, geo = read_image(luna_copy / "masks" / f"{uid}.mhd")
    from src.data.io import write_image
    write_image(labels[:-1], type(geo).axis_aligned(geo.origin_xyz, geo.spacing_xyz, labels[:-1].shape),
                luna_copy / "masks" / f"{uid}.mhd", compress=True)
    record = next(r for r in read_luna16(luna_copy) if r.seriesuid == uid)
    with pytest.raises(DataError, match=rf"{uid}\.mhd: mask geometry .* differs from its image"):
        record.load()


def _write_dicom_series(image: np.ndarray, geo, folder, series="1.2.826.0.1.3680043.2.1125.1", skip=(),
                        shear_mm=0.0):
    return write_dicom_series(image, geo, folder, "H2", series, skip=skip, shear_mm=shear_mm)


def test_hospital_manifest_with_nifti_and_dicom(tiny_luna, tmp_path):
    from src.data.io import write_image
    base = read_luna16(tiny_luna)[2].load()
    write_image(base.image, base.geometry, tmp_path / "scans" / "case1.nii.gz", compress=True)
    write_image(base.fine_mask.astype(np.uint8), base.geometry, tmp_path / "masks" / "case1.nii.gz", compress=True)
    _write_dicom_series(base.image, base.geometry, tmp_path / "dicom" / "case2")
    rows = [dict(seriesuid="case1", patient_id="H1", image="scans/case1.nii.gz", mask="masks/case1.nii.gz"),
            dict(seriesuid="case2", patient_id="H2", image="dicom/case2")]
    for n in base.nodules:  # case2 has coordinates only: coarse labels
        rows.append(dict(seriesuid="case2", patient_id="H2", image="dicom/case2", coordX=n.center_xyz[0],
                         coordY=n.center_xyz[1], coordZ=n.center_xyz[2], diameter_mm=n.diameter_mm,
                         attachment="Juxta_Pleural"))
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)

    case1, case2 = (r.load() for r in read_manifest(tmp_path / "manifest.csv", mask_only_nodules=True))
    assert [n.attachment for n in case2.nodules] == ["juxta-pleural"] * len(base.nodules), "an optional column"
    assert {n.attachment for n in case1.nodules} == {"unknown"}, "mask-only nodules have no attachment"
    np.testing.assert_array_equal(case2.image, base.image)
    assert case2.geometry.same_grid(base.geometry, tol=1e-3)
    assert case2.fine_mask is None and len(case2.nodules) == len(base.nodules)
    assert all(n.fine_label == 0 for n in case2.nodules), "coordinates only -> coarse"
    assert len(case1.nodules) == len(base.nodules) and all(n.from_mask for n in case1.nodules)


def test_dicom_folder_with_two_series_uses_the_larger_and_says_so(tiny_luna, tmp_path, capsys):
    base = read_luna16(tiny_luna)[2].load()
    _write_dicom_series(base.image[:15], base.geometry, tmp_path / "mixed", series="1.2.3.100")
    _write_dicom_series(base.image, base.geometry, tmp_path / "mixed", series="1.2.3.200")
    image, geo = read_image(tmp_path / "mixed")
    assert image.shape == base.image.shape, "the 40-slice series, never a mix"
    assert "2 DICOM series; using 1.2.3.200 (40 slices), not 1.2.3.100 (15)" in capsys.readouterr().err


def test_dicom_series_with_a_missing_slice_is_refused(tiny_luna, tmp_path):
    base = read_luna16(tiny_luna)[2].load()
    _write_dicom_series(base.image, base.geometry, tmp_path / "gap", skip=(17,))
    with pytest.raises(DataError, match=r"gap: series .* uneven slice spacing \(1\.25 to 2\.50 mm\): missing slices"):
        read_image(tmp_path / "gap")


def test_dicom_series_with_a_gantry_tilt_is_refused(tiny_luna, tmp_path):
    base = read_luna16(tiny_luna)[2].load()
    _write_dicom_series(base.image[:10], base.geometry, tmp_path / "tilt", shear_mm=0.3)   # atan(0.3 / 1.25)
    with pytest.raises(DataError, match=r"tilt: series .* gantry tilt of 13\.5 degrees; resample it"):
        read_image(tmp_path / "tilt")


def test_a_localiser_in_the_series_is_left_out_with_a_note(tiny_luna, tmp_path, capsys):
    base = read_luna16(tiny_luna)[2].load()
    series = "1.2.3.300"
    _write_dicom_series(base.image, base.geometry, tmp_path / "scout", series=series)
    scout = sitk.GetImageFromArray(np.zeros((1, 30, 50), np.int16))
    for tag, value in {"0008|0060": "CT", "0020|000e": series, "0020|0013": "0", "0008|0018": f"{series}.0",
                       "0020|0032": "-100\\0\\-50", "0020|0037": "1\\0\\0\\0\\0\\-1"}.items():
        scout.SetMetaData(tag, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(tmp_path / "scout" / "000_localiser.dcm"))
    writer.Execute(scout)
    image, geo = read_image(tmp_path / "scout")
    np.testing.assert_array_equal(image, base.image)
    assert geo.same_grid(base.geometry, tol=1e-3)
    assert "1 image(s) of another size or orientation left out (a localiser?)" in capsys.readouterr().err


def test_manifest_errors(tmp_path):
    pd.DataFrame([dict(seriesuid="a", image="nope.mhd")]).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match=r"m\.csv: image of a not found: .*nope\.mhd"):
        read_manifest(tmp_path / "m.csv")
    pd.DataFrame([dict(seriesuid="a", image="x.mhd", coordX=1.0, coordY=None, coordZ=2.0, diameter_mm=4)]) \
        .to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match=r"m\.csv: row 2 has only some of"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "empty").mkdir()
    pd.DataFrame([dict(seriesuid="a", image="empty")]).to_csv(tmp_path / "m.csv", index=False)
    record = read_manifest(tmp_path / "m.csv")[0]
    with pytest.raises(DataError, match=r"empty: no DICOM series found"):
        record.load()


def test_generated_fixture_is_deterministic(tmp_path):
    a = make_tiny_luna(tmp_path / "a", n_scans=2, seed=3)
    b = make_tiny_luna(tmp_path / "b", n_scans=2, seed=3)
    for f in a.rglob("*.raw"):
        assert f.read_bytes() == (b / f.relative_to(a)).read_bytes()


def test_a_seriesuid_in_two_subsets_is_refused(luna_copy):
    first = sorted((luna_copy / "subset0").glob("*.mhd"))[0]
    for suffix in (".mhd", ".raw"):
        shutil.copy(first.with_suffix(suffix), luna_copy / "subset1" / first.with_suffix(suffix).name)
    with pytest.raises(DataError, match=rf"{first.stem}\.mhd: seriesuid {first.stem} also found at"):
        read_luna16(luna_copy)


def test_a_scan_without_annotation_rows_is_a_scan_without_nodules(luna_copy):
    ann = pd.read_csv(luna_copy / "annotations.csv")
    first = ann["seriesuid"].iloc[0]
    ann[ann["seriesuid"] != first].to_csv(luna_copy / "annotations.csv", index=False)
    record = next(r for r in read_luna16(luna_copy) if r.seriesuid == first)
    assert record.nodules.empty


def test_attachment_classes_and_a_misspelt_one_is_named(tmp_path, capsys):
    assert [attachment_class(v) for v in ("isolated", " Juxta Vascular", "perifissural", "unknown")] == \
        ["isolated", "juxta-vascular", "perifissural", "unknown"]
    assert {attachment_class(v) for v in (np.nan, None, "", "pleural", 3.0)} == {"unknown"}
    from src.data.tables import check_coordinates
    table = pd.DataFrame(dict(seriesuid="s", coordX=[0.0, 1.0], coordY=0.0, coordZ=0.0, diameter_mm=5.0,
                              attachment=["juxta-pleura", None]))
    check_coordinates(table, "n.csv")
    assert "note: n.csv: attachment 'juxta-pleura' is not one of" in capsys.readouterr().err
