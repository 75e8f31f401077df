"""Crash safety: a stage killed with SIGKILL at a random point and then rerun (with --resume
for training) ends with exactly what an uninterrupted run writes."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(20261202)   # the "random point" is seeded, so a failure can be replayed


def _command(script, paths, *extra):
    sets = [f"paths.{k}={v}" for k, v in paths.items()]
    return [sys.executable, str(ROOT / script), "--config", "", *extra, "--set", *TINY_OVERRIDES, *sets, "device=cpu"]


def _env():
    return {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(ROOT)}


def _kill_when(cmd, ready, timeout=240):
    """Start ``cmd``; once ``ready()`` holds, wait a random moment and SIGKILL it."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    start = time.time()
    while not ready() and proc.poll() is None and time.time() - start < timeout:
        time.sleep(0.05)
    time.sleep(float(RNG.uniform(0.0, 0.5)))
    finished = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not finished, "the stage ended before it could be killed: " + proc.stderr.read().decode()[-2000:]


def _complete(cmd):
    result = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _paths(cfg, **changes):
    p = cfg.paths
    return {"data": p.data, "cache": p.cache, "folds": p.folds, "outputs": p.outputs, "experiment": p.experiment,
            **changes}


def test_killed_prepare_resumes_to_the_same_cache(tiny_cfg, tiny_cache, tmp_path):
    out = tmp_path / "cache.h5"
    paths = _paths(tiny_cfg, cache=out)
    cmd = _command("prepare.py", paths, "--workers", "1")
    _kill_when(cmd, lambda: any(tmp_path.glob(".cache.h5.parts-*/*.h5")))
    assert not out.exists(), "no half-written cache"
    _complete(cmd)
    with h5py.File(out, "r") as a, h5py.File(tiny_cache.path, "r") as b:
        names = []
        b.visit(lambda n: names.append(n) if isinstance(b[n], h5py.Dataset) else None)
        assert names and set(names) == {n for n in names if n in a}
        for name in names:
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)


def test_killed_teacher_resumes_to_the_same_weights(tiny_trained, tmp_path):
    ctx = tiny_trained
    paths = _paths(ctx.cfg, outputs=tmp_path)
    last = tmp_path / ctx.cfg.paths.experiment / "teacher" / "fold_1" / "checkpoint_last.pt"
    _kill_when(_command("train.py", paths, "--fold", "1"), last.is_file)
    _complete(_command("train.py", paths, "--fold", "1", "--resume"))
    resumed = torch.load(last.with_name("checkpoint_final.pt"), weights_only=True)
    reference = torch.load(ctx.layout.teacher_checkpoint(1, "final"), weights_only=True)
    for key, value in reference["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0, msg=key)
    # the training record reads as if nothing had happened (only the timings differ)
    a = pd.read_csv(last.parent / "summary.csv").drop(columns="seconds")
    b = pd.read_csv(ctx.layout.teacher_dir(1) / "summary.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b, rtol=1e-6)


def test_killed_pseudo_labelling_resumes_to_the_same_labels(tiny_trained, tmp_path):
    ctx = tiny_trained
    experiment = tmp_path / ctx.cfg.paths.experiment
    for fold_dir in sorted(ctx.layout.root.glob("teacher/fold_*")):
        (experiment / "teacher" / fold_dir.name).mkdir(parents=True)
        shutil.copy(fold_dir / "checkpoint_best.pt", experiment / "teacher" / fold_dir.name)
    shutil.copy(ctx.layout.postprocessing, experiment)
    cmd = _command("pseudo_label.py", _paths(ctx.cfg, outputs=tmp_path))
    _kill_when(cmd, lambda: any(experiment.glob(".pseudo.h5.parts-*/rows_*.npy")))
    assert not (experiment / "pseudo.h5").exists(), "no half-written pseudo-labels"
    done = len(list(experiment.glob(".pseudo.h5.parts-*/rows_*.npy")))
    assert f"resumed the pseudo-labels: {done} of" in _complete(cmd).stdout
    assert not any(experiment.glob(".pseudo.h5.parts-*")), "finished batches are cleared once merged"
    with h5py.File(experiment / "pseudo.h5", "r") as a, h5py.File(ctx.layout.pseudo_labels, "r") as b:
        for name in ("rows", "soft", "constrained"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)


@pytest.mark.parametrize("code,text", [(28, "No space left on device"), (30, "Read-only file system")])
def test_a_full_disk_or_read_only_folder_is_one_line_and_keeps_the_previous_output(
        tiny_cfg, tiny_cache, tiny_folds, tmp_path, monkeypatch, capsys, code, text):
    # simulated: the tests run as root, for whom chmod does not make a folder read-only
    import runpy

    out = tmp_path / "folds.csv"
    out.write_text("the previous folds\n")
    real = os.replace

    def full_disk(src, dst):
        if Path(dst) == out:
            raise OSError(code, text, str(dst))
        return real(src, dst)
    monkeypatch.setattr(os, "replace", full_disk)
    monkeypatch.setattr(sys, "argv", ["make_folds.py", "--config", "", "--out", str(out), "--set", *TINY_OVERRIDES,
                                      f"paths.cache={tiny_cfg.paths.cache}"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / "make_folds.py"), run_name="__main__")
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(err) == 1 and f"folds.csv: {text}" in err[0]
    assert out.read_text() == "the previous folds\n" and [p.name for p in tmp_path.iterdir()] == ["folds.csv"]
