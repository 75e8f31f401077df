"""User errors reach the user as one line on stderr with exit code 2, never a traceback;
every script defaults to the same config."""
from pathlib import Path

import pytest
from conftest import one_clean_line

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("make_phantom.py", "prepare.py", "make_folds.py", "train.py", "cv.py", "pseudo_label.py",
           "infer.py", "evaluate.py", "export.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_names_the_default_config(script, run_script):
    result = run_script(str(ROOT / script), "--help")
    assert result.returncode == 0 and "default: configs/default.yaml" in result.stdout


def test_missing_cache_is_one_line(tmp_path, run_script):
    result = run_script(str(ROOT / "train.py"), "--fold", "0", "--set", f"paths.cache={tmp_path}/nope.h5", "device=cpu")
    one_clean_line(result, "nope.h5: cache not found; run prepare.py first")


def test_unknown_config_key_lists_the_valid_ones(tmp_path, run_script):
    result = run_script(str(ROOT / "make_folds.py"), "--set", "folds.n_fold=3")
    one_clean_line(result, "unknown config key 'folds.n_fold'", "valid keys of folds: fine_fraction, "
                    "holdout_fraction, n_folds, seed")
    bad = tmp_path / "bad.yaml"
    bad.write_text("inherit: " + str(ROOT / "configs" / "base.yaml") + "\nteacher:\n  epochz: 3\n")
    one_clean_line(run_script(str(ROOT / "prepare.py"), "--config", str(bad)),
                   f"{bad}: unknown config key 'teacher.epochz'")
    one_clean_line(run_script(str(ROOT / "prepare.py"), "--set", "teacher.epochs=many"), "must be int")


def test_bad_checkpoints_are_refused_in_one_line(tmp_path, run_script):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    result = run_script(str(ROOT / "export.py"), "--checkpoint", str(junk), "--out", str(tmp_path / "x.onnx"))
    one_clean_line(result, "junk.pt: not a readable checkpoint")
    assert "weights_only=False" not in result.stderr + result.stdout
    assert not (tmp_path / "x.onnx").exists()


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path, run_script):
    import pickle
    import zipfile

    import torch

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}}, evil)  # a real torch file, with its pickle swapped for one that runs code
    with zipfile.ZipFile(evil) as z:
        data = {name: z.read(name) for name in z.namelist()}
    data[next(n for n in data if n.endswith("data.pkl"))] = pickle.dumps({"model": Evil()}, protocol=2)
    with zipfile.ZipFile(evil, "w") as z:
        for name, payload in data.items():
            z.writestr(name, payload)
    result = run_script(str(ROOT / "export.py"), "--checkpoint", str(evil), "--out", str(tmp_path / "x.onnx"))
    one_clean_line(result, "evil.pt: refused")
    assert not marker.exists(), "nothing in the pickle was executed"


def test_a_named_experiment_without_models_is_an_error_not_a_switch(tmp_path, capsys):
    from src.config import PathsConfig
    from src.errors import DataError
    from src.layout import ExperimentLayout, find_experiment
    paths = PathsConfig(outputs=str(tmp_path), experiment="cpu")
    trained = ExperimentLayout(tmp_path / "other").student_checkpoint()
    trained.parent.mkdir(parents=True)
    trained.touch()
    with pytest.raises(DataError, match="no trained student in experiment 'typo'; experiments with one: other"):
        find_experiment(paths, "typo", "student")
    assert find_experiment(paths, None, "student").root == tmp_path / "other", "the config's default falls back"
    assert "note: using the models of" in capsys.readouterr().err
    assert find_experiment(paths, "other", "student").root == tmp_path / "other"
