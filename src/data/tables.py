"""Every table a user hands in, checked once before anything uses it.

Coordinates (annotations.csv, nodules.csv, ``infer.py --coords``), excluded findings,
candidates, scans.csv, hospital manifests, folds.csv and infer.py's predictions each have
one pandera schema here; ``read_table`` + ``check_table`` turn the first problem into one
:class:`DataError` naming the file, the row (as a spreadsheet numbers it: the header is
row 1), the column and the value. ``verify.py`` and the scripts read them through it
(the project's own intermediate tables, e.g. candidates.csv, are read directly).
"""
from __future__ import annotations

import csv
import numbers
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa

from src.data.groups import ATTACHMENT_LABELS, UNKNOWN, attachment_class
from src.errors import DataError

# Nodule table columns (world mm, LUNA16 naming). Optional columns may be NaN or empty;
# attachment is text (ATTACHMENT_LABELS), the others numbers.
NODULE_COLUMNS = ["coordX", "coordY", "coordZ", "diameter_mm"]
OPTIONAL_NODULE_COLUMNS = ["texture", "n_readers", "malignancy", "attachment"]
XYZ = NODULE_COLUMNS[:3]
# Lung nodules are <= 30 mm by definition; masses a little larger. A diameter beyond this
# is a unit mix-up (cm, a radius in voxels) and would segment a litre-sized "nodule".
MAX_DIAMETER_MM = 100.0


def _uid(nullable: bool = False) -> pa.Column:
    return pa.Column(str, pa.Check(lambda s: s.str.strip() != "", error="is blank"), nullable=nullable)


def _number(*checks: pa.Check, nullable: bool = False, required: bool = True) -> pa.Column:
    return pa.Column(float, [pa.Check(np.isfinite, ignore_na=True, error="is not a finite number"), *checks],
                     coerce=True, nullable=nullable, required=required)


_DIAMETER = (pa.Check.gt(0, error="must be positive"),
             pa.Check.le(MAX_DIAMETER_MM, error=f"is over {MAX_DIAMETER_MM:.0f} mm: not a nodule diameter "
                                                "(mm expected)"))
_PROBABILITY = pa.Check.in_range(0, 1, error="must be a probability in [0, 1]")
_COORDS = {c: _number() for c in XYZ}

COORDINATES = pa.DataFrameSchema({
    "seriesuid": _uid(), **_COORDS, "diameter_mm": _number(*_DIAMETER),
    "texture": _number(pa.Check.in_range(1, 5, error="must be an LIDC rating 1-5"), nullable=True,
                       required=False),
    "n_readers": _number(pa.Check.ge(0, error="must be >= 0"), nullable=True, required=False),
    "malignancy": _number(pa.Check.in_range(1, 5, error="must be an LIDC rating 1-5"), nullable=True,
                          required=False),
}, name="coordinates")
# annotations_excluded.csv: LUNA16 writes -1 where a finding has no diameter (read as NaN)
EXCLUDED = pa.DataFrameSchema({"seriesuid": _uid(), **_COORDS,
                               "diameter_mm": _number(nullable=True, required=False)}, name="excluded findings")
CANDIDATES = pa.DataFrameSchema({"seriesuid": _uid(), **_COORDS,
                                 "class": pa.Column(int, pa.Check.isin([0, 1], error="must be 0 or 1"), coerce=True)},
                                name="candidates")
SCANS = pa.DataFrameSchema({"seriesuid": _uid(), "patient_id": _uid()}, unique=["seriesuid"], name="scans")
MANIFEST = pa.DataFrameSchema({
    "seriesuid": _uid(), "image": pa.Column(str, nullable=True), "patient_id": _uid(nullable=True),
    **{c: _number(nullable=True) for c in NODULE_COLUMNS}}, name="manifest")
FOLDS = pa.DataFrameSchema({
    "seriesuid": _uid(), "patient_id": _uid(),
    "fold": pa.Column(str, pa.Check.str_matches(r"^(\d+|holdout)$", error="must be a fold number or 'holdout'")),
    "label_kind": pa.Column(str, pa.Check.isin(["fine", "coarse"], error="must be fine or coarse"))}, name="folds")
# infer.py's nodules.csv: a given nodule that came out empty has no centre (NaN)
PREDICTIONS = pa.DataFrameSchema({
    "seriesuid": _uid(), "nodule_id": pa.Column(int, pa.Check.ge(1, error="must be >= 1"), coerce=True),
    **{c: _number(nullable=True) for c in XYZ}, "probability": _number(_PROBABILITY)}, name="predictions")
SUBMISSION = pa.DataFrameSchema({"seriesuid": _uid(), **_COORDS, "probability": _number(_PROBABILITY)},
                                name="submission")

_SEPARATORS = (";", "\t", "|")
_TEXT_COLUMNS = ("seriesuid", "patient_id", "image", "mask", "lung", "fold", "label_kind")
_NA_STRINGS = ["", "nan", "NaN", "NA", "N/A", "n/a", "null", "NULL", "None"]


def read_table(path: str | Path, what: str = "table") -> pd.DataFrame:
    """A CSV as strings-or-numbers (seriesuid always text), or one clear error. A table a
    spreadsheet saved with ';' or tabs is read as such, with a note."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found" if not path.exists() else f"{path}: {what} is not a file")
    try:
        with path.open(encoding="utf-8-sig") as f:
            header = f.readline()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text CSV file (binary or not UTF-8)") from None
    if not header.strip():
        raise DataError(f"{path}: {what} is empty (no header row)")
    sep = ","
    if "," not in header:
        sep = next((s for s in _SEPARATORS if s in header), ",")
        if sep != ",":
            print(f"note: {path}: columns separated by {sep!r}, not ','; read as such", file=sys.stderr)
    columns = [c.strip().strip('"') for c in header.rstrip("\r\n").split(sep)]
    _refuse_cut_short(path, sep, len(columns))
    # "nan", "NA" or "null" are names to an id column (a seriesuid "nan" is not missing)
    na_values = {c: [""] if c in _TEXT_COLUMNS else _NA_STRINGS for c in columns}
    try:
        return pd.read_csv(path, sep=sep, encoding="utf-8-sig", dtype={c: str for c in _TEXT_COLUMNS},
                           keep_default_na=False, na_values=na_values)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        detail = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: cannot read CSV ({detail})") from None


def _refuse_cut_short(path: Path, sep: str, n_columns: int) -> None:
    """A file that ends inside a row (an interrupted copy or download): its last line has no
    line end and fewer fields than the header. pandas would fill the rest with blanks."""
    size = path.stat().st_size
    with path.open("rb") as f:
        f.seek(max(0, size - 65536))
        tail = f.read()
    if not tail or tail.endswith((b"\n", b"\r")) or b"\n" not in tail:
        return
    last = tail.rsplit(b"\n", 1)[1].decode("utf-8", errors="replace")
    fields = next(csv.reader([last], delimiter=sep), [])
    if len(fields) < n_columns:
        raise DataError(f"{path}: its last row ends after {len(fields)} of {n_columns} columns: the file looks "
                        "cut short (an interrupted copy or download?)")


def _problem(check: str) -> str:
    if check.startswith(("coerce_dtype", "dtype(")):
        return "is not a number" if "float" in check or "int" in check else f"has the wrong type ({check})"
    return {"not_nullable": "is empty", "field_uniqueness": "is repeated",
            "multiple_fields_uniqueness": "is repeated"}.get(check, check)


def check_table(df: pd.DataFrame, schema: pa.DataFrameSchema, where: str | Path) -> pd.DataFrame:
    """``df`` coerced to ``schema``'s types, or a DataError on its first problem (by row):
    "where: row 5, column coordX: 'abc' is not a number (problems in 3 rows)"."""
    missing = [name for name, col in schema.columns.items() if col.required and name not in df.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; has {list(df.columns)}")
    try:
        return schema.validate(df, lazy=True)
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases
        located = cases[cases["index"].notna()]
        cases = located if len(located) else cases
        order = np.argsort(pd.to_numeric(cases["index"], errors="coerce").fillna(-1).to_numpy(), kind="stable")
        first = cases.iloc[int(order[0])]
        rows = cases["index"].dropna().nunique()
        at = f"row {int(first['index']) + 2}, " if pd.notna(first["index"]) else ""
        value, problem = first["failure_case"], _problem(str(first["check"]))
        shown = "" if problem == "is empty" else f"{value:g} " if isinstance(value, numbers.Real) else f"{value!r} "
        more = f" (problems in {rows} rows)" if rows > 1 else ""
        raise DataError(f"{where}: {at}column {first['column']}: {shown}{problem}{more}") from None


def check_coordinates(df: pd.DataFrame, where: str | Path) -> pd.DataFrame:
    """A nodule coordinate table (LUNA16 annotations.csv columns, optional LIDC ratings)."""
    df = check_table(df, COORDINATES, where)
    if "attachment" in df.columns:   # a misspelt class would otherwise vanish into "unknown"
        odd = sorted({str(v) for v in df["attachment"].dropna()
                      if attachment_class(v) == UNKNOWN and str(v).strip().lower() not in ("", UNKNOWN)})
        if odd:
            print(f"note: {where}: attachment {', '.join(map(repr, odd[:3]))} is not one of "
                  f"{', '.join(ATTACHMENT_LABELS)}; read as {UNKNOWN}", file=sys.stderr)
    return df
