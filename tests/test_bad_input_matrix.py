"""The second bad-input probe (issue 22), one test per failure it found, run as a user runs
the scripts: each case gives one clean line on stderr (exit 2, the file and the problem
named, nothing half-written) or a correct result. The full probe, 160+ cases through real
subprocesses, is ``bench/bad_inputs.py`` (docs/bad_inputs.md)."""
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from conftest import one_clean_line

ROOT = Path(__file__).resolve().parents[1]
INFER, PREPARE, FOLDS, EXPORT = (ROOT / s for s in ("infer.py", "prepare.py", "make_folds.py", "export.py"))
HEADER = "seriesuid,coordX,coordY,coordZ,diameter_mm\n"


@pytest.fixture(scope="module")
def scan(tiny_luna):
    """One tiny scan's image and its first annotated nodule's row (text)."""
    ann = pd.read_csv(tiny_luna / "annotations.csv", dtype={"seriesuid": str})
    row = ann.iloc[0]
    image = next(tiny_luna.glob(f"subset*/{row.seriesuid}.mhd"))
    return image, f"{row.seriesuid},{row.coordX},{row.coordY},{row.coordZ},{row.diameter_mm}"


def _half_max(run_script, image, coords_text, tmp_path, out="out"):
    (tmp_path / "coords.csv").write_text(coords_text)
    return run_script(INFER, "--input", image, "--coords", tmp_path / "coords.csv", "--model", "half-max",
                      "--out", tmp_path / out, "--set", "device=cpu")


def _nothing_written(folder: Path) -> bool:
    return not folder.exists() or not any(folder.rglob("*"))


# 1. OS errors: a file where a folder is expected, and the other way round


def test_out_that_is_a_file_or_a_folder_where_the_other_is_needed(scan, tmp_path, run_script):
    image, row = scan
    (tmp_path / "taken").write_text("a file")
    (tmp_path / "coords.csv").write_text(HEADER + row + "\n")
    result = run_script(INFER, "--input", image, "--coords", tmp_path / "coords.csv", "--model", "half-max",
                        "--out", tmp_path / "taken")
    one_clean_line(result, "taken: is a file; the output must be a folder")
    (tmp_path / "dir.csv").mkdir()
    one_clean_line(run_script(FOLDS, "--out", tmp_path / "dir.csv"), "dir.csv: is a folder; the output must be a file")
    one_clean_line(run_script(PREPARE, "--out", tmp_path / "dir.csv"), "dir.csv: is a folder")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    one_clean_line(run_script(EXPORT, "--checkpoint", junk, "--out", tmp_path / "dir.csv"), "dir.csv: is a folder")


def test_other_os_errors_are_one_line_naming_the_path(tiny_cache, tmp_path, run_script):
    (tmp_path / "file").write_text("x")   # an output path *through* a file: met deep inside the stage
    result = run_script(FOLDS, "--cache", tiny_cache.path, "--out", tmp_path / "file" / "folds.csv")
    one_clean_line(result, "file/folds.csv: ")


# 2-4. The coordinate table is checked before use: file, row, column, problem


@pytest.mark.parametrize("text, message", [
    ("", "coords.csv: coordinate table is empty (no header row)"),
    (HEADER.replace("coordX,", ""), "coords.csv: missing column(s) ['coordX']"),
    (HEADER + "{row}\n ,1,2,3,5\n", "coords.csv: row 3, column seriesuid: ' ' is blank"),
    (HEADER + "{row}\n{uid},,2,3,5\n", "coords.csv: row 3, column coordX: is empty"),
    (HEADER + "{uid},1,2,3,\n", "coords.csv: row 2, column diameter_mm: is empty"),
    (HEADER + "{uid},1,2,3,500\n", "coords.csv: row 2, column diameter_mm: 500 is over 100 mm"),
    (HEADER + "{uid},1,2,3,abc\n", "coords.csv: row 2, column diameter_mm: 'abc' is not a number"),
    (HEADER, "coords.csv: no coordinate rows"),
    (HEADER + "not-an-input,1,2,3,5\n", "coords.csv: none of its 1 seriesuid(s) is among the inputs"),
], ids=["empty", "no-coordX", "blank-uid", "nan-coordX", "nan-diameter", "500mm", "text-diameter", "header-only",
        "unknown-uids"])
def test_bad_coordinate_tables(scan, tmp_path, run_script, text, message):
    image, row = scan
    result = _half_max(run_script, image, text.format(row=row, uid=row.split(",")[0]), tmp_path)
    one_clean_line(result, message)
    assert _nothing_written(tmp_path / "out")


def test_a_semicolon_separated_table_is_read_with_a_note(scan, tmp_path, run_script):
    image, row = scan
    result = _half_max(run_script, image, (HEADER + row + "\n").replace(",", ";"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "separated by ';'" in result.stderr
    assert len(pd.read_csv(tmp_path / "out" / "nodules.csv")) == 1


# 5-6. Scans: NaN voxels, absurd geometry, checked before any allocation


def _image(tmp_path, name, array, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(tmp_path / name))
    return tmp_path / name


@pytest.mark.parametrize("name, array, spacing, message", [
    ("nan.nii.gz", np.full((8, 16, 16), np.nan, np.float32), (1.0, 1.0, 1.0),
     "nan.nii.gz: 2048 of 2048 voxels are NaN or infinite"),
    ("inf.nii", np.where(np.eye(16, dtype=bool)[None], np.inf, -800).astype(np.float32) * np.ones((8, 1, 1)),
     (1.0, 1.0, 1.0), "inf.nii: 128 of 2048 voxels are NaN or infinite"),
    ("wide.nii.gz", np.full((8, 16, 16), -800, np.int16), (1000.0, 1.0, 1.0),
     "wide.nii.gz: voxel spacing [1000.0, 1.0, 1.0] mm is outside 0.1-10 mm"),
], ids=["all-nan-nifti", "inf-nifti", "1000mm-spacing"])
def test_scans_with_bad_voxels_or_geometry(tmp_path, run_script, name, array, spacing, message):
    path = _image(tmp_path, name, array, spacing)
    (tmp_path / "coords.csv").write_text(HEADER + f"{path.name.split('.')[0]},4,4,4,5\n")
    one_clean_line(run_script(INFER, "--input", path, "--coords", tmp_path / "coords.csv", "--model", "half-max",
                              "--out", tmp_path / "out"), message)
    assert _nothing_written(tmp_path / "out")


def test_negative_spacing_and_a_huge_header_are_refused_before_reading(tmp_path):
    from src.data.io import read_image
    from src.errors import DataError
    (tmp_path / "neg.raw").write_bytes(bytes(16))
    (tmp_path / "neg.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementSpacing = -1 1 1\n"
                                      "ElementType = MET_SHORT\nElementDataFile = neg.raw\n")
    with pytest.raises(DataError, match=r"neg\.mhd: voxel spacing \[-1\.0, 1\.0, 1\.0\] mm is outside"):
        read_image(tmp_path / "neg.mhd")
    (tmp_path / "huge.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 100000\n"
                                       "ElementSpacing = 1 1 1\nElementType = MET_SHORT\nCompressedData = True\n"
                                       "ElementDataFile = neg.raw\n")
    with pytest.raises(DataError, match=r"huge\.mhd: image size .* more than any CT"):
        read_image(tmp_path / "huge.mhd")


# 7. Checkpoints: every fault one line; a pickle that runs code is refused, never run


def _edited_checkpoint(trained, tmp_path, edit) -> Path:
    ckpt = torch.load(trained.layout.student_checkpoint(), weights_only=True)
    edit(ckpt)
    torch.save(ckpt, tmp_path / "edited.pt")
    return tmp_path / "edited.pt"


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("config"), "edited.pt: not a nodule-kd checkpoint (needs model_config, in_channels, patch_size, "
                                "model, config)"),
    (lambda c: c["model_config"].update(encoder="tu-no_such_net"), "edited.pt: cannot rebuild its network (unknown "
                                                                   "encoder 'tu-no_such_net'"),
    (lambda c: c["model_config"].update(bogus=1), "edited.pt: not a usable checkpoint (unknown config key 'bogus'"),
    (lambda c: c["config"]["cache"].update(k_slices="five"), "edited.pt: not a usable checkpoint (config key "
                                                             "'k_slices' must be int"),
], ids=["no-config", "unknown-encoder", "extra-model-key", "bad-cache-value"])
def test_broken_checkpoints(tiny_trained, tmp_path, run_script, edit, message):
    path = _edited_checkpoint(tiny_trained, tmp_path, edit)
    one_clean_line(run_script(EXPORT, "--checkpoint", path, "--out", tmp_path / "x.onnx"), message)
    assert not (tmp_path / "x.onnx").exists()


def test_a_checkpoint_that_would_run_code_is_refused_as_such(tmp_path, run_script):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    one_clean_line(run_script(EXPORT, "--checkpoint", tmp_path / "evil.pt", "--out", tmp_path / "x.onnx"),
                   "evil.pt: refused: not a plain checkpoint")
    assert not marker.exists()


# 8-10. Config values are range-checked at load time, before any work


@pytest.mark.parametrize("script, argv, message", [
    (PREPARE, ["--set", "cache.patch_size=-64"], "config key 'cache.patch_size' must be >= 16, got -64"),
    (PREPARE, ["--set", "cache.spacing_zyx=[1,1]"], "config key 'cache.spacing_zyx' must have 3 values"),
    (PREPARE, ["--set", "cache.k_slices=4"], "config key 'cache.k_slices' must be odd"),
    (FOLDS, ["--holdout-fraction", "-0.2"], "config key 'folds.holdout_fraction' must be >= 0, got -0.2"),
    (FOLDS, ["--fine-fraction", "1.5"], "config key 'folds.fine_fraction' must be <= 1, got 1.5"),
    (ROOT / "make_phantom.py", ["--n-scans", "0"], "config key 'phantom.n_scans' must be >= 1, got 0"),
    (ROOT / "make_phantom.py", ["--n-scans", "-2"], "config key 'phantom.n_scans' must be >= 1, got -2"),
    (ROOT / "train.py", ["--fold", "0", "--set", "teacher.lr=-1"], "config key 'teacher.lr' must be > 0"),
    (INFER, ["--input", "x", "--out", "y", "--set", "infer.threshold=1.5"], "config key 'infer.threshold' must be < 1"),
], ids=["patch", "spacing", "k", "holdout", "fine", "n-scans-0", "n-scans-neg", "lr", "threshold"])
def test_out_of_range_config_values(tmp_path, run_script, script, argv, message):
    paths = [f"paths.data={tmp_path}/none", f"paths.cache={tmp_path}/c.h5", f"paths.folds={tmp_path}/f.csv"]
    argv = argv + paths if "--set" in argv else [*argv, "--set", *paths]   # one --set list: a second replaces it
    one_clean_line(run_script(script, *argv), message)
    assert _nothing_written(tmp_path)


# 11. Whole-scan mode on a scan without lungs says so


def test_whole_scan_mode_without_lungs_fails_loudly(tiny_trained, tmp_path, run_script):
    abdomen = np.full((24, 64, 64), -1000, np.int16)   # soft tissue in air: a body without lungs
    abdomen[:, 8:56, 8:56] = 40
    body = _image(tmp_path, "abdomen.nii.gz", abdomen, (0.8, 0.8, 1.25))
    p = tiny_trained.cfg.paths
    result = run_script(INFER, "--input", body, "--out", tmp_path / "out", "--set", f"paths.outputs={p.outputs}",
                        f"paths.experiment={p.experiment}", "device=cpu")
    one_clean_line(result, "abdomen.nii.gz: no lungs found", "no outputs written")
    assert not (tmp_path / "out" / "nodules.csv").exists()


# 13. Outputs are readable by the group, as plain writes under the umask are


def test_atomic_outputs_respect_the_umask(tmp_path):
    from src.models.checkpoint import save_checkpoint
    from src.utils import atomic_to_csv, atomic_write_text
    old = os.umask(0o022)
    try:
        atomic_to_csv(pd.DataFrame(dict(a=[1])), tmp_path / "t.csv")
        atomic_write_text(tmp_path / "run.json", "{}")
        save_checkpoint({"model": {}}, tmp_path / "c.pt")
    finally:
        os.umask(old)
    for name in ("t.csv", "run.json", "c.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


# 14. evaluate.py never scores nothing with exit 0


@pytest.mark.parametrize("text, message", [
    ("seriesuid,nodule_id,coordX,coordY,coordZ,probability\n{uid},1,1.0,2.0,3.0,0.9\n{uid},2,1.",
     "nodules.csv: its last row ends after 3 of 6 columns: the file looks cut short"),
    ("seriesuid,nodule_id,coordX,coordY,coordZ,probability\nelsewhere,1,1.0,2.0,3.0,0.9\n",
     "nodules.csv: 1 of its 1 seriesuid(s) are not in the truth data"),
    ("seriesuid,nodule_id,coordX,coordY,coordZ,probability\n", "nodules.csv: no predictions (no rows) to score"),
], ids=["truncated", "other-scans", "no-rows"])
def test_evaluate_refuses_predictions_it_cannot_score(scan, tiny_luna, tmp_path, run_script, text, message):
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "nodules.csv").write_text(text.format(uid=scan[1].split(",")[0]))
    one_clean_line(run_script(ROOT / "evaluate.py", "--pred", tmp_path / "pred", "--data", tiny_luna), message)
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["nodules.csv"]


def test_a_table_cut_short_in_any_column_is_refused_and_a_last_line_without_its_end_is_not(tmp_path):
    from src.data.tables import read_table
    from src.errors import DataError
    header = "seriesuid,coordX,coordY,coordZ,diameter_mm,comment\n"
    (tmp_path / "cut.csv").write_text(header + "1.2.3,1,2,3,6,fine\n1.2.3,4,5")   # pandas would fill in blanks
    (tmp_path / "whole.csv").write_text(header + "1.2.3,1,2,3,6,fine\n1.2.3,4,5,6,7,")
    with pytest.raises(DataError, match=r"cut\.csv: its last row ends after 3 of 6 columns"):
        read_table(tmp_path / "cut.csv")
    assert len(read_table(tmp_path / "whole.csv")) == 2


def _whole_scan_outputs(folder: Path, uid: str, candidates: str, run_json: str) -> None:
    folder.mkdir()
    row = f"{uid},1.0,2.0,3.0,0.9\n"
    (folder / "nodules.csv").write_text("seriesuid,coordX,coordY,coordZ,probability,nodule_id\n" + row[:-1] + ",1\n")
    (folder / "submission.csv").write_text("seriesuid,coordX,coordY,coordZ,probability\n" + row)
    (folder / "candidates.csv").write_text(candidates.format(uid=uid))
    (folder / "run.json").write_text(run_json)


def test_evaluate_names_a_candidate_table_it_cannot_read(scan, tiny_luna, tmp_path, run_script):
    _whole_scan_outputs(tmp_path / "pred", scan[1].split(",")[0], "seriesuid,coordX\n{uid},1.0\n", "{}")
    one_clean_line(run_script(ROOT / "evaluate.py", "--pred", tmp_path / "pred", "--data", tiny_luna),
                   "candidates.csv: missing column(s) ['fpr_probability', 'seg_probability']")


def test_evaluate_reads_past_an_edited_run_json(scan, tiny_luna, tmp_path, run_script):
    """run.json only adds to what the tables say: edited into another shape, it is left out."""
    table = "seriesuid,coordX,coordY,coordZ,seg_probability,fpr_probability\n{uid},1.0,2.0,3.0,0.5,0.9\n"
    _whole_scan_outputs(tmp_path / "pred", scan[1].split(",")[0], table, '["not", "a", "record"]')
    result = run_script(ROOT / "evaluate.py", "--pred", tmp_path / "pred", "--data", tiny_luna)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "without FPR" in result.stdout


@pytest.mark.parametrize("flags, message", [
    (["--model", "half-max", "--tta"], "--model half-max uses no network"),
    (["--model", "half-max", "--checkpoint", "x.pt"], "--model half-max uses no network"),
    (["--checkpoint", "x.pt", "--experiment", "default"], "--checkpoint names the networks itself"),
], ids=["half-max-tta", "half-max-checkpoint", "checkpoint-experiment"])
def test_infer_refuses_flags_that_would_be_ignored(scan, tmp_path, run_script, flags, message):
    (tmp_path / "coords.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n" + scan[1] + "\n")
    result = run_script(INFER, "--input", scan[0], "--coords", tmp_path / "coords.csv", "--out", tmp_path / "out",
                        *flags)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "out").exists()


# 15. Help text says what exists


def test_help_texts(run_script):
    assert "--input" not in run_script(ROOT / "verify.py", "--help").stdout
    assert "teacher: one fold's UNet" in run_script(ROOT / "train.py", "--help").stdout
    assert "seed of the split" in run_script(FOLDS, "--help").stdout
