"""What infer.py gives a clinic: DICOM-SEG + SR for a DICOM study (read back with highdicom),
report.html, and the measurements behind both."""
import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.sr.codedict import codes

from src.data.geometry import Geometry
from src.data.io import read_image, write_dicom_series
from src.data.luna16 import read_luna16
from src.predict.dicom_out import CENTRE, MASK_SOURCE, MASK_SOURCES, PROBABILITY
from src.predict.measure import lung_rads_size_category, measure_findings, texture_estimate
from test_infer import _overrides, _run

import infer


def test_a_dicom_study_round_trips_to_seg_and_sr(tiny_cfg, tmp_path, monkeypatch):
    """Built-in scan -> DICOM series -> infer.py (half-max: masks without training) -> DICOM-SEG
    and SR: the SEG's frames lie on the source slices and equal the NIfTI mask there; the
    SR's values are nodules.csv's. A click where nothing stands out (air beside the body)
    gets the given sphere, and SEG and SR both say so."""
    scan = read_luna16(tiny_cfg.paths.data)[0].load()
    uid = "1.2.826.0.1.3680043.2.1125.4242"
    folder = write_dicom_series(scan.image, scan.geometry, tmp_path / "study" / uid, "P42", uid)
    for path in folder.glob("*.dcm"):   # an anonymised export: type 2 patient / study attributes dropped
        ds = pydicom.dcmread(path)
        for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                        "ReferringPhysicianName"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(path, enforce_file_format=True)
    in_air = scan.geometry.voxel_to_world(np.array([scan.geometry.shape_zyx[0] // 2, 8, 8], float))
    assert scan.image[scan.geometry.shape_zyx[0] // 2, :16, :16].max() < -900
    clicks = [(n.center_xyz, n.diameter_mm) for n in scan.nodules] + [(in_air, 6.0)]
    pd.DataFrame([dict(seriesuid=uid, coordX=c[0], coordY=c[1], coordZ=c[2], diameter_mm=d)
                  for c, d in clicks]).to_csv(tmp_path / "coords.csv", index=False)
    out = tmp_path / "out"
    assert _run(infer, ["--input", str(folder), "--coords", str(tmp_path / "coords.csv"), "--out", str(out),
                        "--model", "half-max", "--set", "device=cpu"], monkeypatch) == 0
    table = pd.read_csv(out / "nodules.csv", dtype={"seriesuid": str}).set_index("nodule_id")
    sphere = len(clicks)   # the click in air: its row's nodule_id
    assert table["source"].to_dict() == {nid: "given sphere" if nid == sphere else "segmented" for nid in table.index}
    labels, geometry = read_image(out / f"{uid}.nii.gz")
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in folder.glob("*.dcm")]
    sources = {s.SOPInstanceUID: s for s in sources}
    slice_of = {s.SOPInstanceUID: int(s.InstanceNumber) - 1 for s in sources.values()}   # written in z order

    seg = hd.seg.segread(out / f"{uid}_seg.dcm")
    assert seg.PatientID == "P42" and seg.PatientBirthDate == ""   # kept, and empty where the export had none
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    assert {u[2] for u in seg.get_source_image_uids()} == set(sources)
    masked = [nid for nid in table.index if (labels == nid).any()]
    assert len(masked) > 0 and len(seg.SegmentSequence) == len(masked)
    segment_of = {int(s.SegmentLabel.split()[1]): int(s.SegmentNumber) for s in seg.SegmentSequence}
    assert sorted(segment_of) == masked
    pixels = seg.pixel_array
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
                                   [float(v) for v in sources[source].ImagePositionPatient], atol=1e-3)
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        nid = next(n for n, s in segment_of.items() if s == number)
        np.testing.assert_array_equal(frame > 0, labels[slice_of[source]] == nid)
    for item in seg.SegmentSequence:   # prompted by the user's click; the sphere named as such
        nid = int(item.SegmentLabel.split()[1])
        assert item.SegmentLabel.endswith("(given sphere)") == (nid == sphere)
        assert item.SegmentAlgorithmType == "SEMIAUTOMATIC"
        parameters = item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters
        assert (MASK_SOURCES["given sphere"].meaning in parameters) == (nid == sphere)

    sr = hd.sr.srread(out / f"{uid}_sr.dcm")
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(masked)
    assert len(sr.content.get_image_measurement_groups()) == len(table) - len(masked), "a finding without a mask"
    for group in groups:
        nid = int(group.tracking_identifier.split()[-1])
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert group.referenced_segment.referenced_segment_numbers == [segment_of[nid]]
        row = table.loc[nid]
        value = {m.name.meaning: m.value for m in group.get_measurements()}
        assert value[codes.SCT.Volume.meaning] == pytest.approx(row["volume_mm3"], abs=1e-3)
        assert value[codes.SCT.Diameter.meaning] == pytest.approx(row["long_axis_mm"], abs=1e-3)
        assert value["Attenuation Coefficient"] == pytest.approx(row["mean_hu"], abs=1e-3)
        assert value[PROBABILITY.meaning] == pytest.approx(row["probability"], abs=1e-3)
        assert [value[c.meaning] for c in CENTRE] == pytest.approx(row[["coordX", "coordY", "coordZ"]].tolist(),
                                                                   abs=1e-3)
        evaluation = {e.name.meaning: e.value.meaning for e in group.get_qualitative_evaluations()}
        assert evaluation[MASK_SOURCE.meaning] == MASK_SOURCES[row["source"]].meaning

    html = (out / "report.html").read_text(encoding="utf-8")
    assert uid in html and html.count("data:image/png;base64,") == len(table)


def test_whole_scan_report_and_no_dicom_for_other_inputs(tiny_trained, tmp_path, monkeypatch):
    ctx = tiny_trained
    out = tmp_path / "scan"
    assert _run(infer, ["--input", ctx.cfg.paths.data, "--split", "holdout", "--out", str(out),
                        *_overrides(ctx)], monkeypatch) == 0
    table = pd.read_csv(out / "nodules.csv", dtype={"seriesuid": str})
    html = (out / "report.html").read_text(encoding="utf-8")
    assert not list(out.glob("*.dcm")), "DICOM out only for DICOM inputs"
    holdout = set(ctx.folds.loc[ctx.folds["fold"] == "holdout", "seriesuid"])
    assert all(f"id='{uid}'" in html for uid in holdout), "a section per scan, with findings or not"
    shown = table.groupby("seriesuid").head(10)
    assert html.count("data:image/png;base64,") == len(shown)
    assert set(table["lung_rads"].dropna()) <= {"2", "3", "4A", "4B"}
    # a finding is sized on the mask written for it, as its Lung-RADS category is
    for uid, rows in table.groupby("seriesuid"):
        labels, geometry = read_image(out / f"{uid}.nii.gz")
        voxel_mm3 = float(np.prod(geometry.spacing_zyx))
        for row in rows.itertuples():
            count = int((labels == row.nodule_id).sum())
            if count:
                assert row.volume_mm3 == pytest.approx(count * voxel_mm3, rel=1e-4)
            else:
                assert row.lung_rads != row.lung_rads and np.isnan(row.long_axis_mm)   # no mask, no category


def test_measurements_of_a_ball():
    geometry = Geometry.axis_aligned((0.0, 0.0, 0.0), (0.7, 0.7, 1.25), (40, 40, 24))
    zyx = np.indices(geometry.shape_zyx).reshape(3, -1).T
    d = np.linalg.norm(geometry.voxel_to_world(zyx) - [14.0, 14.0, 15.0], axis=1).reshape(geometry.shape_zyx)
    labels = (d <= 5.0).astype(np.uint16)            # a 10 mm ball
    image = np.where(labels > 0, 30, -850).astype(np.int16)
    found = measure_findings(image, labels, geometry, [1, 2])
    assert found[1]["long_axis_mm"] == pytest.approx(10.0, abs=1.5)
    assert found[1]["volume_mm3"] == pytest.approx(labels.sum() * 0.7 * 0.7 * 1.25)
    assert found[1]["diameter_mm"] == pytest.approx((6 / np.pi * found[1]["volume_mm3"]) ** (1 / 3))
    assert found[1]["diameter_mm"] == pytest.approx(10.0, abs=1.0) and found[1]["mean_hu"] == 30.0
    assert "volume_mm3" not in found[2]
    assert found[1]["texture_estimate"] == "solid" and found[1]["lung_rads"] == "4A"   # ~524 mm3
    assert found[2]["texture_estimate"] == "unknown" and np.isnan(found[2]["long_axis_mm"])
    assert texture_estimate(np.array([-600.0] * 99 + [0.0])) == "ground-glass"
    assert texture_estimate(np.array([-600.0] * 50 + [0.0] * 50)) == "part-solid"
    assert [lung_rads_size_category(v, "solid") for v in (100, 200, 1000, 2000)] == ["2", "3", "4A", "4B"]
    assert lung_rads_size_category(5000, "ground-glass") == "2"
