"""DICOM out, for a scan that came in as a DICOM series (highdicom): what PACS and viewers
read, beside the NIfTI masks and CSVs.

* ``<seriesuid>_seg.dcm``: a DICOM Segmentation, one binary segment per finding with a
  mask, frames aligned with (and referencing) the source slices;
* ``<seriesuid>_sr.dcm``: a Comprehensive 3D SR measurement report (TID 1500), one group
  per finding: its segment (or, for a finding without a mask, no region), long-axis
  diameter, volume, mean HU, the model's probability, its centre (patient coordinates,
  as nodules.csv: LPS mm) and its texture estimate.

A finding at given coordinates (``infer.py --coords``) is marked as such: its segment is
semi-automatic (the user's click prompted it). Where the model found nothing there and the
given sphere stands in (nodules.csv ``source``), the segment's label ("nodule k (given
sphere)"), its algorithm parameters and the SR's "Mask source" say so: a viewer shows the
sphere under its own name, not as the model's contour.
"""
from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
from highdicom.sr import (
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    ReferencedSegment,
    SourceSeriesForSegmentation,
    TrackingIdentifier,
    VolumetricROIMeasurementsAndQualitativeEvaluations,
)
from pydicom.sr.codedict import codes

from src.config import code_version
from src.data.io import dicom_series_files
from src.data.tables import XYZ
from src.errors import DataError
from src.utils import atomic_path

MANUFACTURER, MODEL_NAME = "nodule-kd", "SSLKD-UNet"
SEG_SERIES_NUMBER, SR_SERIES_NUMBER = 9001, 9002
HU_UNIT = CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit")
ATTENUATION = CodedConcept("112031", "DCM", "Attenuation Coefficient")
NO_UNITS = CodedConcept("1", "UCUM", "no units")
# No standard code names a detector's score: a private coding scheme, as DICOM allows.
PROBABILITY = CodedConcept("NKD0001", "99NODULEKD", "Nodule probability (model)")
CENTRE = tuple(CodedConcept(f"NKD000{3 + i}", "99NODULEKD", f"Centre {axis} (patient coordinates)")
               for i, axis in enumerate("xyz"))
LONG_AXIS = CodedConcept("103339001", "SCT", "Long axis")
TEXTURE = CodedConcept("NKD0002", "99NODULEKD", "Nodule texture estimate")
TEXTURES = {"solid": CodedConcept("NKD0010", "99NODULEKD", "Solid"),
            "part-solid": CodedConcept("NKD0011", "99NODULEKD", "Part-solid"),
            "ground-glass": CodedConcept("NKD0012", "99NODULEKD", "Ground-glass")}
PATIENT_STUDY_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                       "StudyDate", "StudyTime", "ReferringPhysicianName")
# nodules.csv's ``source`` of a finding at given coordinates
MASK_SOURCE = CodedConcept("NKD0020", "99NODULEKD", "Mask source")
MASK_SOURCES = {"segmented": CodedConcept("NKD0021", "99NODULEKD", "Model segmentation at the given coordinates"),
                "given sphere": CodedConcept("NKD0022", "99NODULEKD",
                                             "Given sphere: nothing found above threshold")}


def is_dicom_series(image_path: Path) -> bool:
    return Path(image_path).is_dir()


def _algorithm(source: str | None = None) -> hd.AlgorithmIdentificationSequence:
    parameters = {"mask": MASK_SOURCES[source].meaning} if source in MASK_SOURCES else None
    return hd.AlgorithmIdentificationSequence(name=MODEL_NAME, version=code_version(),
                                              family=codes.cid7162.ArtificialIntelligence, parameters=parameters)


def _segment_label(row: dict) -> str:
    return f"nodule {int(row['nodule_id'])}" + (" (given sphere)" if row.get("source") == "given sphere" else "")


def _algorithm_type(source: str | None) -> hd.seg.SegmentAlgorithmTypeValues:
    """Semi-automatic where the user's coordinates prompted the mask, else automatic."""
    return hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC if source in MASK_SOURCES \
        else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC


def write_dicom_outputs(series_folder: Path, labels: np.ndarray, table: pd.DataFrame, out_dir: Path,
                        stem: str) -> list[Path]:
    """The SEG (when any finding has a mask) and the SR of one scan's findings (``table``:
    nodules.csv's rows with the measurements of ``src.predict.measure``); ``labels`` on the
    series' own grid, slice z = the series' z-th image (``dicom_series_files``)."""
    # headers only: the pixels were read with the scan, and SEG/SR need only the references
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in dicom_series_files(series_folder, note=False)]
    for source in sources:
        # type 2 (required, may be empty) patient and study attributes highdicom copies into
        # SEG and SR: anonymised exports often drop them, so they are added empty
        for keyword in PATIENT_STUDY_TYPE2:
            if keyword not in source:
                setattr(source, keyword, "")
    if len(sources) != labels.shape[0]:
        raise DataError(f"{series_folder}: {len(sources)} DICOM images for {labels.shape[0]} mask slices")
    rows = table.sort_values("nodule_id").to_dict("records")
    masked = [r for r in rows if (labels == r["nodule_id"]).any()]
    written, seg = [], None
    if masked:
        segment_of = {int(r["nodule_id"]): k for k, r in enumerate(masked, start=1)}
        remap = np.zeros(int(labels.max()) + 1, dtype=np.uint8 if len(masked) < 256 else np.uint16)
        for nid, k in segment_of.items():
            remap[nid] = k
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=remap[labels], segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[hd.seg.SegmentDescription(
                segment_number=k, segment_label=_segment_label(r),
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=codes.SCT.Nodule, algorithm_type=_algorithm_type(r.get("source")),
                algorithm_identification=_algorithm(r.get("source")), tracking_uid=hd.UID(),
                tracking_id=f"nodule {int(r['nodule_id'])}")
                for k, r in enumerate(masked, start=1)],
            series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER, sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name=MODEL_NAME,
            software_versions=code_version(), device_serial_number="none", series_description="nodule-kd nodules")
        written.append(_save(seg, out_dir / f"{stem}_seg.dcm"))
    groups = [_finding_group(r, sources[0], seg, segment_of.get(int(r["nodule_id"])) if seg else None) for r in rows]
    observer = ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=(
        DeviceObserverIdentifyingAttributes(uid=hd.UID(), name=MANUFACTURER, model_name=MODEL_NAME)))
    report = MeasurementReport(observation_context=ObservationContext(observer_device_context=observer),
                               procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups)
    sr = Comprehensive3DSR(evidence=sources + ([seg] if seg is not None else []), content=report,
                           series_instance_uid=hd.UID(), series_number=SR_SERIES_NUMBER, sop_instance_uid=hd.UID(),
                           instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
                           series_description="nodule-kd measurements")
    written.append(_save(sr, out_dir / f"{stem}_sr.dcm"))
    return written


def _finding_group(row: dict, source: pydicom.Dataset, seg, segment_number: int | None):
    """One TID 1500 measurement group: a volumetric ROI when the finding has a segment, else
    measurements without a region. (TID 1411 allows no coordinates beside a segment, so
    the centre is given as three numbers in patient coordinates.)"""
    values = [(codes.SCT.Diameter, row["long_axis_mm"], codes.UCUM.Millimeter, dict(qualifier=LONG_AXIS)),
              (codes.SCT.Volume, row["volume_mm3"], codes.UCUM.CubicMillimeter, {}),
              (ATTENUATION, row["mean_hu"], HU_UNIT, dict(derivation=codes.SCT.Mean)),
              (PROBABILITY, row["probability"], NO_UNITS, {}),
              *((code, row[column], codes.UCUM.Millimeter, {}) for code, column in zip(CENTRE, XYZ))]
    measurements = [Measurement(name=name, value=float(value), unit=unit, **extra)
                    for name, value, unit, extra in values if np.isfinite(value)]
    evaluations = [QualitativeEvaluation(concept, values[row[column]])
                   for concept, values, column in ((TEXTURE, TEXTURES, "texture_estimate"),
                                                   (MASK_SOURCE, MASK_SOURCES, "source"))
                   if row.get(column) in values] or None
    tracking = TrackingIdentifier(uid=hd.UID(), identifier=f"nodule {int(row['nodule_id'])}")
    if segment_number is None:
        return MeasurementsAndQualitativeEvaluations(tracking_identifier=tracking, finding_type=codes.SCT.Nodule,
                                                     measurements=measurements, qualitative_evaluations=evaluations)
    segment = ReferencedSegment(sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
                                segment_number=segment_number,
                                source_series=SourceSeriesForSegmentation(source.SeriesInstanceUID))
    return VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_segment=segment, finding_type=codes.SCT.Nodule,
        measurements=measurements, qualitative_evaluations=evaluations)


def _save(dataset: pydicom.Dataset, path: Path) -> Path:
    with atomic_path(path, suffix=".dcm") as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return path
