"""Shared fixtures: the tiny LUNA16-layout dataset (src/phantom/tiny.py), the cache/folds
built from it with the project's own stages, and a script runner. Small enough that the
whole suite stays fast."""
from __future__ import annotations

import os
import runpy
import subprocess
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from src.config import load_config  # noqa: E402
from src.phantom.tiny import make_tiny_luna  # noqa: E402

torch.set_num_threads(2)


TINY_OVERRIDES = [
    "cache.patch_size=32", "cache.k_slices=3", "cache.jitter_px=4", "cache.workers=1",
    "cache.spacing_zyx=[1.25,1.0,1.0]", "folds.n_folds=3", "folds.holdout_fraction=0.25",
    "folds.fine_fraction=0.4",
    "teacher.model.encoder=tu-lcnet_050", "teacher.model.decoder_channels=[32,16,16,8,8]", "teacher.model.prompt=true",
    "teacher.epochs=2", "teacher.steps_per_epoch=4", "teacher.batch_size=8", "teacher.num_workers=0",
    "teacher.lr=0.003", "teacher.loss.mt_rampup_epochs=0.5",
    "student.model.encoder=tu-lcnet_050", "student.model.decoder_channels=[16,16,8,8,8]", "student.model.prompt=true",
    "student.epochs=1", "student.steps_per_epoch=3", "student.batch_size=8", "student.num_workers=0",
    "pseudo.batch_size=32", "infer.batch_size=16", "infer.min_validation_nodules=1",
    "detect.view_size=15", "detect.view_spacing_mm=2.0", "fpr.model.encoder=lcnet_050", "fpr.epochs=1",
    "fpr.steps_per_epoch=4", "fpr.batch_size=8",
]


@pytest.fixture(scope="session")
def tiny_luna(tmp_path_factory) -> Path:
    return make_tiny_luna(tmp_path_factory.mktemp("luna16"))


@pytest.fixture(scope="session")
def tiny_cfg(tmp_path_factory, tiny_luna):
    work = tmp_path_factory.mktemp("work")
    return load_config(None, TINY_OVERRIDES + [
        f"paths.data={tiny_luna}", f"paths.cache={work / 'cache.h5'}", f"paths.folds={work / 'folds.csv'}",
        f"paths.outputs={work / 'outputs'}", "paths.experiment=tiny", "device=cpu"])


@pytest.fixture(scope="session")
def tiny_cache(tiny_cfg):
    from src.data.cache import PatchCache, build_cache
    from src.data.luna16 import read_luna16
    build_cache(read_luna16(tiny_cfg.paths.data), tiny_cfg.cache, Path(tiny_cfg.paths.cache), "tiny")
    return PatchCache(tiny_cfg.paths.cache)


@pytest.fixture(scope="session")
def tiny_folds(tiny_cfg, tiny_cache):
    from src.data.folds import make_folds
    from src.utils import atomic_to_csv
    folds = make_folds(tiny_cache.scans, tiny_cache.nodules, tiny_cfg.folds)
    atomic_to_csv(folds, tiny_cfg.paths.folds)
    return folds


@pytest.fixture(scope="session")
def tiny_ctx(tiny_cfg, tiny_cache, tiny_folds):
    from src.data.context import load_context
    return load_context(tiny_cfg)


@pytest.fixture(scope="session")
def cpu_runtime():
    from src.runtime import setup_runtime
    return setup_runtime("cpu", "auto")


@pytest.fixture(scope="session")
def tiny_trained(tiny_ctx, cpu_runtime):
    """All fold teachers, the OOF threshold (as cv.py), pseudo-labels and the student of the
    tiny dataset (a minute)."""
    from src.data.folds import fold_ids
    from src.evaluation.oof import choose_threshold, read_oof
    from src.train.pseudo import write_pseudo_labels
    from src.train.student import train_student
    from src.train.teacher import train_teacher
    for fold in fold_ids(tiny_ctx.folds):
        train_teacher(tiny_ctx, fold, cpu_runtime)
    tiny_ctx.layout.write_postprocessing(choose_threshold(read_oof(tiny_ctx.layout.all_oof_predictions())))
    write_pseudo_labels(tiny_ctx, cpu_runtime)
    train_student(tiny_ctx, cpu_runtime)
    return tiny_ctx


@pytest.fixture()
def run_script(monkeypatch, capsys):
    """Run a top-level script as `python script ...` would, in this process (imports are
    paid once): -> CompletedProcess with its exit code, stdout and stderr."""
    def run(script, *argv):
        monkeypatch.setattr(sys, "argv", [str(script), *map(str, argv)])
        capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(script), run_name="__main__")
        out = capsys.readouterr()
        return subprocess.CompletedProcess(argv, done.value.code, out.out, out.err)
    return run


def one_clean_line(result, *fragments) -> str:
    """The error contract: exit 2, one line on stderr starting 'error: ' holding every
    fragment, no traceback. -> that line."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
