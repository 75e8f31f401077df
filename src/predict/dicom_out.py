"""DICOM out, for a scan that came in as a DICOM series (highdicom): what PACS and viewers
read, beside the NIfTI masks and CSVs.

* ``<seriesuid>_seg.dcm``: a DICOM Segmentation, one binary segment per finding with a
  mask, frames aligned with (and referencing) the source slices;
* ``<seriesuid>_sr.dcm``: a Comprehensive 3D SR measurement report (TID 1500), one group
  per finding: its segment (or, for a finding without a mask, no region), long-axis
  diameter, volume, mean HU, the model's probability, its centre (patient coordinates,
  as nodules.csv: LPS mm) and its texture estimate.
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


def is_dicom_series(image_path: Path) -> bool:
    return Path(image_path).is_dir()


def _algorithm() -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(name=MODEL_NAME, version=code_version(),
                                              family=codes.cid7162.ArtificialIntelligence)


def write_dicom_outputs(series_folder: Path, labels: np.ndarray, table: pd.DataFrame, out_dir: Path,
                        stem: str) -> list[Path]:
    """The SEG (when any finding has a mask) and the SR of one scan's findings (``table``:
    nodules.csv's rows with the measurements of ``src.predict.measure``); ``labels`` on the
    series' own grid, slice z = the series' z-th image (``dicom_series_files``)."""
    # headers only: the pixels were read with the scan, and SEG/SR need only the references
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in dicom_series_files(series_folder, note=False)]
    if len(sources) != labels.shape[0]:
        raise ValueError(f"{series_folder}: {len(sources)} DICOM images for {labels.shape[0]} mask slices")
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
                segment_number=k, segment_label=f"nodule {int(r['nodule_id'])}",
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=codes.SCT.Nodule, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=_algorithm(), tracking_uid=hd.UID(), tracking_id=f"nodule {int(r['nodule_id'])}")
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
    evaluations = [QualitativeEvaluation(TEXTURE, TEXTURES[row["texture_estimate"]])] \
        if row.get("texture_estimate") in TEXTURES else None
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    dataset.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)
    return path
