"""The bad-input probe: every top-level script, driven as a new user would drive it, on
bad (and awkward-but-valid) inputs, each outcome classified against the error contract.

Each :class:`Case` names a script, builds its input files in its own folder and returns the
command line; its expectation is either ``error`` (exit 2, stderr's last line ``error: ...``
matching the case's regex, which names the offending file, row, column or key) or ``ok``
(exit 0 and the case's check on the outputs). Every script runs as a subprocess of the
venv's Python from the repository root, under umask 022, with every path it reads or
writes (``--config``, ``--out``, ``--set paths.*``) inside the run's work folder; the
repository's ``input/``, ``outputs/`` (but the work folder) and ``folds/``, and the shared
fixtures, are snapshotted before and after to prove it. Cases run ``workers`` at a time
(threads, each waiting on its subprocess).

Outcomes (the contract every script must meet):

* ``clean error``: exit 2, last stderr line ``error: ...`` (or argparse's ``prog.py: error:
  ...``) matching the regex, no traceback, no half-written output (no new dot-file or temp
  file, no new file at all unless the case allows it, nothing the case forbids);
* ``correct``: exit 0, no traceback, the check passes;
* ``traceback``: a Python traceback anywhere in stdout/stderr;
* ``silent failure``: exit 0 where an error was expected, a failed check, or a wrong exit
  code (1 is wrong: user errors are 2);
* ``unclear error``: exit 2, but the last line is not ``error: ...`` or does not name the
  offending file/row/column/key (the regex is matched with the work folder's paths written
  ``<case>/`` and ``<fx>/``, so a case's own folder name never matches for it);
* ``dirty error``: a clean message, but the failed run left temp files or outputs behind;
* ``refused``: an ``ok`` case (valid input) stopped with a clean error;
* ``hang``: no exit within the case's timeout (the process group is killed); ``crash``:
  killed by a signal;
* ``not run``: the fixture it needs could not be built, or its builder failed; ``skipped``:
  meaningless here (a read-only folder when running as root).

Fixtures (built once per run under ``<work>/fixtures``, only those the selected cases need):
a tiny LUNA16-layout dataset made in code (6 scans of 40 x 112 x 112, 5 patients), its cache
(``prepare.py``) and folds (``make_folds.py``, 2 folds + hold-out), two one-epoch fold
teachers, their OOF threshold (``cv.py``), pseudo-labels and a one-epoch student
(``train.py``, ``pseudo_label.py``), ``infer.py`` outputs in both modes (for
``evaluate.py``), and one scan of the built-in dataset (``make_phantom.py``: a realistic
chest for whole-scan cases). Each case's folder keeps its inputs, outputs and ``_run.txt``
(command, exit code, stdout, stderr, outcome).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from src.data.folds import holdout_uids
from src.layout import ExperimentLayout
from src.errors import UserError
from src.phantom.tiny import TINY_SHAPE, TINY_SPACING_XYZ, make_tiny_luna, tiny_geometry, tiny_scan

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ("make_phantom.py", "prepare.py", "make_folds.py", "train.py", "cv.py", "pseudo_label.py", "infer.py",
           "evaluate.py", "export.py", "verify.py")
GUARDED = ("input", "outputs", "folds")   # the repository's data folders: never written by a case
TRACEBACK = "Traceback (most recent call last)"
ERROR_LINE = re.compile(r"^([\w.\-]+: )?error: ")   # ours, or argparse's "prog.py: error: ..."
OUTCOMES = ("clean error", "correct", "traceback", "silent failure", "unclear error", "dirty error", "refused",
            "hang", "crash", "not run", "skipped")
PASSING = ("clean error", "correct")
NOT_FAILING = (*PASSING, "skipped")
DEFAULT_TIMEOUT_S = 180

TINY_SCANS = 6


# ============================================================================ cases


@dataclass
class Result:
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    new_files: list[str] = field(default_factory=list)     # files the run created in the case folder
    argv: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.stdout + "\n" + self.stderr

    @property
    def last_line(self) -> str:
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def stderr_tail(self, n: int = 3) -> list[str]:
        return [line.rstrip() for line in self.stderr.splitlines() if line.strip()][-n:]


class CheckFailed(Exception):
    """An ``ok`` case's outputs are wrong (the message says how)."""


@dataclass
class Case:
    id: str
    script: str
    desc: str
    build: Callable[["Ctx"], list[str]]     # writes the inputs into ctx.d, returns argv after the script
    expect: str = "error"                   # "error" | "ok"
    pattern: str = ""                       # error: regex the last stderr line must match (case-insensitive)
    check: Callable[["Ctx", Result], str] | None = None   # ok: returns what it saw, raises CheckFailed
    needs: tuple[str, ...] = ()             # fixtures: luna, cache, folds, teachers, student, phantom
    may_write: tuple[str, ...] = ()         # error: globs (relative to the case folder) a failed run may leave
    may_keep: tuple[str, ...] = ()          # error: globs of hidden files kept on purpose (resume state)
    forbid: tuple[str, ...] = ()            # globs that must not exist afterwards, whatever the outcome
    ref: str = ""                           # issue item, e.g. "22.3"
    match_in: str = "last"                  # "output": the regex may match anywhere (a report listing problems)
    or_ok: Callable[["Ctx", Result], str] | None = None   # error: a success is right too if this check passes
    timeout: int = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.script not in SCRIPTS:
            raise ValueError(f"{self.id}: unknown script {self.script}")
        if self.expect == "error":
            # a regex that a vague message would match could never tell a bad message from a good one
            if not self.pattern or re.search(self.pattern, "error: something went wrong (code 1) in a file", re.I):
                raise ValueError(f"{self.id}: error pattern {self.pattern!r} is too loose")
        elif self.expect != "ok" or self.check is None:  # an error case's check: what else must hold
            raise ValueError(f"{self.id}: expect must be 'error' (with a pattern) or 'ok' (with a check)")


@dataclass
class Fixtures:
    work: Path
    errors: dict[str, str] = field(default_factory=dict)   # fixture -> why it is missing

    @property
    def dir(self) -> Path:
        return self.work / "fixtures"

    @property
    def luna(self) -> Path:
        return self.dir / "luna"

    @property
    def config(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def cache(self) -> Path:
        return self.dir / "cache.h5"

    @property
    def folds(self) -> Path:
        return self.dir / "folds.csv"

    @property
    def outputs(self) -> Path:
        return self.dir / "outputs"

    @property
    def experiment(self) -> Path:
        return self.outputs / "tiny"

    def teacher(self, fold: int = 0) -> Path:
        return ExperimentLayout(self.experiment).teacher_checkpoint(fold)

    @property
    def student(self) -> Path:
        return self.experiment / "student" / "checkpoint_best.pt"

    @property
    def phantom(self) -> Path:
        return self.dir / "phantom"

    @property
    def pred_coords(self) -> Path:      # infer.py --coords --model half-max on every scan
        return self.dir / "pred_coords"

    @property
    def pred_scan(self) -> Path:        # infer.py whole-scan (student) on the two hold-out scans
        return self.dir / "pred_scan"

    def phantom_scan(self) -> Path:
        return sorted(self.phantom.glob("subset*/*.mhd"))[0]

    def uids(self) -> list[str]:
        return [f"1.3.6.1.4.1.0.{i:04d}" for i in range(TINY_SCANS)]

    def scan(self, i: int = 0) -> Path:
        return self.luna / f"subset{i % 3}" / f"{self.uids()[i]}.mhd"

    def annotations(self) -> pd.DataFrame:
        return pd.read_csv(self.luna / "annotations.csv", dtype={"seriesuid": str})

    def holdout(self) -> list[str]:
        return sorted(holdout_uids(pd.read_csv(self.folds, dtype={"seriesuid": str, "fold": str})))


class Ctx:
    """What a builder or a check sees: the fixtures and its own folder ``d``."""

    def __init__(self, fx: Fixtures, d: Path):
        self.fx, self.d = fx, d

    def __getattr__(self, name):   # ctx.luna, ctx.cache, ... are the fixtures'
        return getattr(self.fx, name)

    def cfg(self, *overrides: str, config: Path | str | None = None) -> list[str]:
        """``--config`` (the fixtures' unless given) and one ``--set`` with every override."""
        out = ["--config", str(config or self.fx.config)]
        return out + (["--set", *overrides] if overrides else [])

    def own_outputs(self, *overrides: str) -> list[str]:
        """A private copy of the fixture experiment: scripts that write into it write here."""
        dest = self.d / "outputs"
        if not dest.exists():
            shutil.copytree(self.fx.outputs, dest, ignore=shutil.ignore_patterns("checkpoint_final.pt", "*.png"))
        return self.cfg(f"paths.outputs={dest}", *overrides)

    def copy_luna(self, name: str = "luna") -> Path:
        return Path(shutil.copytree(self.fx.luna, self.d / name))

    def mkdir(self, name: str) -> Path:
        path = self.d / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    def csv(self, name: str, rows: list[dict] | pd.DataFrame, **kwargs) -> Path:
        path = self.d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)).to_csv(path, index=False, **kwargs)
        return path

    def yaml(self, name: str, data: dict) -> Path:
        import yaml
        return self.write(name, yaml.safe_dump(data, sort_keys=False))

    def fixture_config(self) -> dict:
        import yaml
        return yaml.safe_load(self.fx.config.read_text())


# ============================================================================ tiny data


def write_scan(path: Path, seed: int = 0, dtype=np.int16, shape=TINY_SHAPE, spacing_xyz=TINY_SPACING_XYZ,
               direction=None, origin=None, n_nodules: int = 1) -> tuple[Path, list[dict]]:
    """One tiny CT at ``path`` (any format SimpleITK writes) -> (path, its nodules as
    annotation rows with seriesuid = the file's stem)."""
    from src.data.geometry import Geometry
    from src.data.io import image_stem, write_image
    image, _, _, nodules, _ = tiny_scan(np.random.default_rng(seed), shape, spacing_xyz, n_nodules)
    geo = tiny_geometry(0, shape, spacing_xyz)
    if direction is not None or origin is not None:
        geo = Geometry(tuple(origin or geo.origin_xyz), geo.spacing_xyz, tuple(direction or geo.direction),
                       geo.size_xyz)
    write_image(image.astype(dtype), geo, path)
    rows = []
    for c, r in nodules:
        x, y, z = geo.voxel_to_world(c)
        rows.append(dict(seriesuid=image_stem(path), coordX=x, coordY=y, coordZ=z, diameter_mm=2 * r))
    return path, rows


def edit_mhd(path: Path, **fields: str) -> Path:
    """Replace (or add) MetaImage header fields, e.g. ``ElementSpacing="1 1 1000"``."""
    lines = path.read_text().splitlines()
    seen = set()
    for i, line in enumerate(lines):
        key = line.split("=", 1)[0].strip()
        if key in fields:
            lines[i] = f"{key} = {fields[key]}"
            seen.add(key)
    extra = [f"{k} = {v}" for k, v in fields.items() if k not in seen]
    # ElementDataFile must stay the last line of a MetaImage header
    data = [line for line in lines if line.startswith("ElementDataFile")]
    rest = [line for line in lines if not line.startswith("ElementDataFile")]
    path.write_text("\n".join(rest + extra + data) + "\n")
    return path


# ============================================================================ running


def _env() -> dict:
    env = dict(os.environ)
    env.update(NO_ALBUMENTATIONS_UPDATE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1", TQDM_DISABLE="1",
               MPLBACKEND="Agg")
    env.pop("PYTHONPATH", None)
    return env


def run_script(script: str, argv: list[str], timeout: int, cwd: Path = ROOT) -> Result:
    """One script as a user runs it; its whole process group is killed on timeout."""
    cmd = [sys.executable, script, *argv]
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, errors="replace", env=_env(), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        timed_out = True
    return Result(None if timed_out else proc.returncode, out, err, time.time() - start, timed_out, argv=cmd[1:])


def _files(folder: Path) -> set[str]:
    if not folder.exists():
        return set()
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def _is_temp(rel: str) -> bool:
    return any(part.startswith(".") for part in Path(rel).parts) or rel.endswith((".tmp", ".part", ".partial"))


@dataclass
class Outcome:
    case: Case
    outcome: str
    message: str
    result: Result | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in PASSING


def shorten(text: str, ctx: Ctx) -> str:
    """Work-folder paths as <case>/ and <fx>/: a regex must match the message itself, never the
    case's folder name (which holds the case id, e.g. 'train-epochs-negative')."""
    return (text.replace(str(ctx.d), "<case>").replace(str(ctx.fx.dir), "<fx>")
            .replace(str(ctx.fx.work), "<work>"))


def classify(case: Case, ctx: Ctx, res: Result) -> tuple[str, str]:
    last = res.last_line
    if res.timed_out:
        return "hang", f"no exit after {case.timeout} s"
    if TRACEBACK in res.text:
        tail = [line for line in res.text.splitlines() if line.strip()]
        return "traceback", (tail[-1].strip() if tail else "")
    if res.rc is not None and res.rc < 0:
        return "crash", f"killed by signal {-res.rc}"
    leftovers = sorted(f for f in res.new_files if _is_temp(f) and not any(_glob_match(f, g) for g in case.may_keep))
    forbidden = sorted(str(p.relative_to(ctx.d)) for g in case.forbid for p in ctx.d.glob(g))
    if case.expect == "error":
        if res.rc == 0 and case.or_ok is not None:   # read correctly (and said how) instead of refused
            try:
                return "correct", f"read, not refused: {case.or_ok(ctx, res)}"
            except CheckFailed as err:
                return "silent failure", f"exit 0 and {err}"
        if res.rc == 0:
            return "silent failure", f"exit 0 (an error was expected); {_tail_text(res)}"
        if res.rc != 2:
            return "silent failure", f"exit {res.rc} (errors exit 2): {last or _tail_text(res)}"
        if not ERROR_LINE.match(last):
            return "unclear error", f"last stderr line is not 'error: ...': {last or '(stderr empty)'}"
        where = shorten(res.text if case.match_in == "output" else last, ctx)
        if not re.search(case.pattern, where, re.I):
            return "unclear error", f"{last}  [expected /{case.pattern}/]"
        written = [f for f in res.new_files if not _is_temp(f) and not any(_glob_match(f, g) for g in case.may_write)]
        if leftovers or forbidden or written:
            what = leftovers or forbidden or written
            return "dirty error", f"{last}  [left behind: {', '.join(what[:3])}{' ...' if len(what) > 3 else ''}]"
        if case.check is not None:
            try:
                seen = case.check(ctx, res)
            except CheckFailed as err:
                return "silent failure", f"{last}  [but: {err}]"
            return "clean error", f"{last}  [{seen}]"
        return "clean error", last
    if res.rc == 2 and ERROR_LINE.match(last):
        return "refused", last
    if res.rc != 0:
        return "silent failure", f"exit {res.rc}: {last or _tail_text(res)}"
    try:
        seen = case.check(ctx, res)
    except CheckFailed as err:
        return "silent failure", f"check failed: {err}"
    except Exception as err:   # a check that cannot even read the outputs: they are wrong
        return "silent failure", f"check failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if leftovers or forbidden:
        return "silent failure", f"{seen}; but left behind: {', '.join((leftovers or forbidden)[:3])}"
    return "correct", seen


def _glob_match(rel: str, pattern: str) -> bool:
    import fnmatch
    return fnmatch.fnmatch(rel, pattern)


def _tail_text(res: Result) -> str:
    lines = [line.strip() for line in res.text.splitlines() if line.strip()]
    return lines[-1][:100] if lines else "no output"


def run_case(case: Case, fx: Fixtures, cases_dir: Path) -> Outcome:
    d = cases_dir / case.id
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    missing = [n for n in case.needs if n in fx.errors]
    if missing:
        return Outcome(case, "not run", f"fixture {missing[0]} failed: {fx.errors[missing[0]]}"[:200])
    ctx = Ctx(fx, d)
    try:
        argv = [str(a) for a in case.build(ctx)]
    except Skip as why:
        return Outcome(case, "skipped", str(why))
    except Exception as err:
        return Outcome(case, "not run", f"builder failed: {type(err).__name__}: {err}"[:200])
    before = _files(d)
    res = run_script(case.script, argv, case.timeout)
    res.new_files = sorted(_files(d) - before)
    outcome, message = classify(case, ctx, res)
    try:   # what the run printed, beside its inputs (after the snapshot: never counted as its output)
        (d / "_run.txt").write_text(f"$ python {case.script} {' '.join(argv)}\nexit {res.rc}\n"
                                    f"--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}\n--- {outcome}: {message}\n")
    except OSError:
        pass
    return Outcome(case, outcome, message, res)


# ============================================================================ checks


def expect(cond: bool, message: str) -> None:
    if not cond:
        raise CheckFailed(message)


def read_rows(path: Path) -> pd.DataFrame:
    expect(path.is_file(), f"{path.name} missing")
    return pd.read_csv(path, dtype={"seriesuid": str})


def check_nodules(out: str, n: int | None = None, at_least: int | None = None, scans: int | None = None,
                  finite: bool = True) -> Callable[[Ctx, Result], str]:
    """nodules.csv in ``ctx.d/out``: ``n`` rows (or at least), over ``scans`` scans, with
    finite coordinates; and a mask per scan."""
    def check(ctx: Ctx, res: Result) -> str:
        table = read_rows(ctx.d / out / "nodules.csv")
        if n is not None:
            expect(len(table) == n, f"{len(table)} rows in nodules.csv, expected {n}")
        if at_least is not None:
            expect(len(table) >= at_least, f"{len(table)} rows in nodules.csv, expected >= {at_least}")
        if scans is not None:
            masks = [p for p in (ctx.d / out).iterdir() if p.name.endswith((".nii.gz", ".mhd", ".nrrd"))]
            expect(len(masks) == scans, f"{len(masks)} mask file(s), expected {scans}")
        if finite and len(table):
            expect(np.isfinite(table[["coordX", "coordY", "coordZ"]].to_numpy(float)).all(),
                   "non-finite coordinates in nodules.csv")
        return f"{len(table)} row(s) in nodules.csv"
    return check


def check_mask_geometry(out: str, scan: Callable[[Ctx], Path], mask_name: str | None = None,
                        min_rows: int = 1) -> Callable[[Ctx, Result], str]:
    """The written mask overlays its input scan (same size, spacing, origin, direction)."""
    def check(ctx: Ctx, res: Result) -> str:
        from src.data.io import image_stem, read_header
        src_path = scan(ctx)
        name = mask_name or f"{image_stem(src_path)}.nii.gz"
        mask_path = ctx.d / out / name
        expect(mask_path.is_file(), f"{name} not written")
        want, got = read_header(src_path), read_header(mask_path)
        expect(got.same_grid(want, tol=1e-3) and np.allclose(got.direction, want.direction, atol=1e-4),
               f"mask grid {got.size_xyz} {np.round(got.spacing_xyz, 3)} {np.round(got.direction, 2)} != scan's "
               f"{want.size_xyz} {np.round(want.spacing_xyz, 3)} {np.round(want.direction, 2)}")
        table = read_rows(ctx.d / out / "nodules.csv")
        expect(len(table) >= min_rows, f"{len(table)} rows in nodules.csv")
        return f"mask has the scan's geometry; {len(table)} row(s)"
    return check


def check_files(*globs: str, mode: bool = False) -> Callable[[Ctx, Result], str]:
    """Each glob (relative to the case folder) matches a file; ``mode``: every file found is
    readable by group and others (umask 022)."""
    def check(ctx: Ctx, res: Result) -> str:
        found = []
        for g in globs:
            hits = [p for p in ctx.d.glob(g) if p.is_file()]
            expect(bool(hits), f"no {g}")
            found += hits
        if mode:
            bad = [p for p in found if p.stat().st_mode & 0o044 != 0o044]
            expect(not bad, f"{bad[0].relative_to(ctx.d)} has mode {stat.filemode(bad[0].stat().st_mode)} "
                            "(not readable by group/others under umask 022)" if bad else "")
        return f"{len(found)} file(s) present" + (", all readable by group/others" if mode else "")
    return check


def check_stdout(regex: str, absent: str | None = None) -> Callable[[Ctx, Result], str]:
    def check(ctx: Ctx, res: Result) -> str:
        expect(re.search(regex, res.stdout, re.I | re.M) is not None, f"stdout lacks /{regex}/")
        if absent:
            expect(re.search(absent, res.stdout, re.I | re.M) is None, f"stdout has /{absent}/")
        return f"stdout has /{regex}/" + (f", not /{absent}/" if absent else "")
    return check


def all_of(*checks: Callable[[Ctx, Result], str]) -> Callable[[Ctx, Result], str]:
    def check(ctx: Ctx, res: Result) -> str:
        return "; ".join(c(ctx, res) for c in checks)
    return check


# ============================================================================ fixtures


def fixture_config(fx: Fixtures) -> dict:
    lcnet = dict(encoder="tu-lcnet_050", decoder_channels=[16, 16, 8, 8, 8])
    stage = dict(epochs=1, steps_per_epoch=2, batch_size=4, num_workers=0, warmup_epochs=0.0, channels_last=False)
    return dict(
        paths=dict(data=str(fx.luna), manifest="", cache=str(fx.cache), folds=str(fx.folds),
                   outputs=str(fx.outputs), experiment="tiny"),
        phantom=dict(n_scans=1, max_slices=24, workers=1),
        cache=dict(spacing_zyx=[1.25, 1.0, 1.0], k_slices=3, patch_size=32, jitter_px=4, workers=1),
        folds=dict(n_folds=2, holdout_fraction=0.25, fine_fraction=0.5),
        teacher=dict(model=lcnet, loss=dict(mt_rampup_epochs=0.5), **stage),
        student=dict(model=dict(lcnet, head_prior=0.02), **stage),
        pseudo=dict(tta=False, batch_size=32),
        infer=dict(batch_size=16),
        detect=dict(candidate_source="listed", view_size=15, view_spacing_mm=2.0),
        fpr=dict(model=dict(encoder="lcnet_050"), epochs=1, steps_per_epoch=2, batch_size=8),
        device="cpu")


def _fixture_steps(fx: Fixtures) -> list[tuple[str, str, list[str], Path]]:
    """name, script, argv (the fixture config is added), the file it must leave."""
    ann = str(fx.luna / "annotations.csv")
    holdout = [str(fx.scan(i)) for i in (3, 5)]          # the hold-out scans of the fixture folds
    return [
        ("cache", "prepare.py", [], fx.cache),
        ("folds", "make_folds.py", [], fx.folds),
        ("teacher0", "train.py", ["--fold", "0"], fx.teacher(0)),
        ("teacher1", "train.py", ["--fold", "1"], fx.teacher(1)),
        ("cv", "cv.py", [], fx.experiment / "postprocessing.json"),
        ("pseudo", "pseudo_label.py", [], fx.experiment / "pseudo.h5"),
        ("student", "train.py", ["--stage", "student"], fx.student),
        ("pred_coords", "infer.py", ["--input", str(fx.luna), "--coords", ann, "--model", "half-max",
                                     "--out", str(fx.pred_coords)], fx.pred_coords / "nodules.csv"),
        ("pred_scan", "infer.py", ["--input", *holdout, "--out", str(fx.pred_scan), "--checkpoint", str(fx.student)],
         fx.pred_scan / "submission.csv"),
    ]


# what each case-level fixture name requires
_TRAINED = ("luna", "cache", "folds", "teacher0", "teacher1", "cv")
FIXTURE_NEEDS = dict(luna=("luna",), cache=("luna", "cache"), folds=("luna", "cache", "folds"),
                     teachers=_TRAINED, student=(*_TRAINED, "pseudo", "student"),
                     pred_coords=("luna", "pred_coords"), pred_scan=(*_TRAINED, "pseudo", "student", "pred_scan"),
                     phantom=("phantom",))


def build_fixtures(work: Path, log: Callable[[str], None], needed: set[str]) -> Fixtures:
    """The shared inputs, in order; a failed step marks everything that needs it missing."""
    import yaml
    fx = Fixtures(work)
    steps = set().union(*(FIXTURE_NEEDS[n] for n in needed)) if needed else set()
    if fx.dir.exists():
        shutil.rmtree(fx.dir)
    fx.dir.mkdir(parents=True)
    fx.config.write_text(yaml.safe_dump(fixture_config(fx), sort_keys=False))
    failed: dict[str, str] = {}
    if "phantom" in steps:
        res = run_script("make_phantom.py", ["--out", str(fx.phantom), "--n-scans", "1", "--seed", "3",
                                             "--config", str(fx.config)], 300)
        if res.rc != 0 or not any(fx.phantom.glob("subset*/*.mhd")):
            failed["phantom"] = f"make_phantom.py exit {res.rc}: {res.last_line[:120]}"
        log(f"fixture phantom (make_phantom.py): {res.seconds:.0f} s, exit {res.rc}")
    if "luna" in steps:
        try:
            make_tiny_luna(fx.luna, n_scans=TINY_SCANS)
        except Exception as err:
            failed["luna"] = f"{type(err).__name__}: {err}"
    for name, script, argv, product in _fixture_steps(fx):
        if name not in steps:
            continue
        blocked = [n for n in ("luna", *STEP_DEPS[name]) if n in failed]
        if blocked:
            failed[name] = f"needs {blocked[0]}, which failed"
            continue
        res = run_script(script, [*argv, "--config", str(fx.config)], 600)
        log(f"fixture {name} ({script} {' '.join(argv[:2])}): {res.seconds:.0f} s, exit {res.rc}")
        if res.rc != 0 or not product.is_file():
            failed[name] = f"{script} exit {res.rc}: {res.last_line[:120]}"
    for case_name, parts in FIXTURE_NEEDS.items():
        why = next((f"{p}: {failed[p]}" for p in parts if p in failed), None)
        if why:
            fx.errors[case_name] = why
    return fx


STEP_DEPS = dict(cache=(), folds=("cache",), teacher0=("folds",), teacher1=("folds",), cv=("teacher0", "teacher1"),
                 pseudo=("cv",), student=("pseudo",), pred_coords=(), pred_scan=("student",))


# ============================================================================ whole run


def snapshot(folders: list[Path], exclude: Path | None = None) -> dict[str, tuple[float, int]]:
    state = {}
    for folder in folders:
        if not folder.exists():
            continue
        for p in folder.rglob("*"):
            if exclude is not None and (p == exclude or exclude in p.parents or p in exclude.parents):
                continue   # the work folder, and its parents (whose mtime changes when it is made)
            try:
                st = p.lstat()
            except OSError:
                continue
            state[str(p)] = (st.st_mtime, st.st_size)
    return state


def diff_snapshots(before: dict, after: dict) -> list[str]:
    changed = [f"new: {p}" for p in sorted(set(after) - set(before))]
    changed += [f"removed: {p}" for p in sorted(set(before) - set(after))]
    changed += [f"changed: {p}" for p in sorted(set(before) & set(after)) if before[p] != after[p]]
    return changed


@dataclass
class RunReport:
    work: Path
    outcomes: list[Outcome]
    seconds: float
    fixture_seconds: float
    repo_changes: list[str]
    fixture_changes: list[str]
    fixture_errors: dict[str, str]
    command: str
    started: datetime

    def short(self, text: str, case: Case | None = None) -> str:
        """Paths of the work folder written short: <case>/ for the case's own folder, <fx>/
        for the fixtures, <work>/ for the rest."""
        if case is not None:
            text = text.replace(str(self.work / "cases" / case.id), "<case>")
        return text.replace(str(self.work / "fixtures"), "<fx>").replace(str(self.work), "<work>")

    def totals(self) -> dict[str, int]:
        counts = {k: 0 for k in OUTCOMES}
        for o in self.outcomes:
            counts[o.outcome] += 1
        return {k: v for k, v in counts.items() if v}

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.outcome not in NOT_FAILING]


def select(pattern: str | None) -> list[Case]:
    cases = all_cases()
    if pattern:
        try:
            rx = re.compile(pattern)
        except re.error as err:
            raise UserError(f"--only {pattern!r}: not a regular expression ({err})") from None
        cases = [c for c in cases if rx.search(c.id) or rx.search(c.script)]
    if not cases:
        raise UserError(f"--only {pattern!r}: no case matches (--list shows them)")
    return cases


def run_bad_inputs(work: Path, pattern: str | None = None, workers: int = 2, command: str = "",
                   log: Callable[[str], None] = print) -> RunReport:
    started, t0 = datetime.now(), time.time()
    cases = select(pattern)
    work = work.resolve()
    old_umask = os.umask(0o022)   # every script runs under umask 022 (outputs must be group/other-readable)
    guarded = [ROOT / g for g in GUARDED]
    repo_before = snapshot(guarded, exclude=work)
    try:
        fx = build_fixtures(work, log, {n for c in cases for n in c.needs})
        fixture_seconds = time.time() - t0
        log(f"fixtures: {fixture_seconds:.0f} s" + (f"; missing: {fx.errors}" if fx.errors else ""))
        fx_before = snapshot([fx.dir])
        cases_dir = work / "cases"
        if cases_dir.exists():
            shutil.rmtree(cases_dir)
        outcomes: list[Outcome] = []
        lock = threading.Lock()
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = {pool.submit(run_case, c, fx, cases_dir): c for c in cases}
            for future in as_completed(futures):
                o = future.result()
                with lock:
                    outcomes.append(o)
                    secs = f"{o.result.seconds:5.1f} s" if o.result else "    - s"
                    log(f"[{len(outcomes):3d}/{len(cases)}] {secs} {o.outcome:14s} {o.case.id}: {o.message[:110]}")
        fx_changes = diff_snapshots(fx_before, snapshot([fx.dir]))
    finally:
        os.umask(old_umask)
    order = {c.id: i for i, c in enumerate(cases)}
    outcomes.sort(key=lambda o: order[o.case.id])
    repo_changes = diff_snapshots(repo_before, snapshot(guarded, exclude=work))
    return RunReport(work, outcomes, time.time() - t0, fixture_seconds, repo_changes, fx_changes, fx.errors,
                     command, started)


# ============================================================================ report


def _cell(text: str, n: int = 120) -> str:
    text = " ".join(str(text).split())[:n]
    return text.replace("|", "\\|")


def render_table(report: RunReport) -> str:
    totals = report.totals()
    n_ok = sum(1 for o in report.outcomes if o.ok)
    n_skipped = totals.get("skipped", 0)
    lines = [
        "# Bad-input probe",
        "",
        f"`{report.command}` on {report.started:%Y-%m-%d %H:%M}: **{len(report.outcomes)} cases** over "
        f"{len({o.case.script for o in report.outcomes})} scripts in {report.seconds / 60:.1f} min on "
        f"{os.cpu_count()} CPU cores (fixtures {report.fixture_seconds:.0f} s); **{n_ok} pass** (clean error or "
        f"correct), **{len(report.failed)} fail**" + (f", {n_skipped} skipped" if n_skipped else "") + ".",
        "",
        "Totals: " + ", ".join(f"{k} **{v}**" for k, v in totals.items()) + ".",
        "",
        "Each case runs one top-level script as a subprocess (the venv's Python, repository root as working "
        "folder, umask 022) on inputs built in its own temporary folder; every path it reads or writes is "
        "there (`--config`, `--out`, `--set paths.*`). `expected` is `error /regex/` (exit 2, the last stderr "
        "line `error: ...` matching the regex, which names the offending file, row, column or key; no traceback; "
        "no temp file or output left behind) or `ok` (exit 0 and the check on the outputs). Outcomes: "
        "`clean error`, `correct` (both pass); `traceback`; `silent failure` (exit 0 where an error was expected, "
        "a failed check, or a wrong exit code: errors exit 2); `unclear error` (exit 2 but the message does not "
        "match); `dirty error` (right message, but temp files or outputs left behind); `refused` (valid input "
        "stopped with an error); `hang` (timeout); `not run` (its fixture failed); `skipped` (meaningless here, e.g. a "
        "read-only folder as root). `(or ok, read correctly)`: reading the input correctly, and saying so, "
        "passes too. The regex is matched with the work folder's paths written `<case>`/`<fx>`. Cases tagged #22.N are the "
        "items of issue 22. Definitions: `src/bench/bad_inputs.py`; rerun: `python bench/bad_inputs.py "
        "[--only REGEX]`.",
        "",
    ]
    if report.repo_changes:
        lines += [f"**Written outside the work folder** (repository's {', '.join(GUARDED)}): "
                  + "; ".join(report.repo_changes[:10]) + ("; ..." if len(report.repo_changes) > 10 else ""), ""]
    else:
        lines += [f"Nothing changed in the repository's {', '.join(f'`{g}/`' for g in GUARDED)} during the run "
                  "(mtimes and sizes compared before and after).", ""]
    if report.fixture_changes:
        lines += ["**Shared fixtures changed by a case**: " + "; ".join(report.fixture_changes[:10]), ""]
    if report.fixture_errors:
        lines += ["**Fixtures that failed**: " + "; ".join(f"{k}: {v}" for k, v in report.fixture_errors.items()),
                  ""]
    lines += ["| # | script | case | expected | outcome | exit | message |", "|---|---|---|---|---|---|---|"]
    for i, o in enumerate(report.outcomes, 1):
        c = o.case
        expected = f"error `/{_cell(c.pattern, 60)}/`" if c.expect == "error" else "ok"
        expected += " (or ok, read correctly)" if c.or_ok else ""
        outcome = o.outcome if o.ok else f"**{o.outcome}**"
        rc = "" if o.result is None else ("timeout" if o.result.timed_out else str(o.result.rc))
        ref = f" (#{c.ref})" if c.ref else ""
        lines.append(f"| {i} | {c.script} | `{c.id}`: {_cell(c.desc, 140)}{ref} | {expected} | {outcome} | {rc} | "
                     f"{_cell(report.short(o.message, c))} |")
    lines += ["", f"Paths: `<case>` is the case's own folder, `<fx>` the shared fixtures (both under the work "
                  f"folder, `{_relative(report.work)}`)."]
    return "\n".join(lines) + "\n"


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def render_failures(report: RunReport) -> str:
    """Every case that is not a clean error or correct: its command and what it printed last."""
    import shlex
    lines = [f"# {len(report.failed)} failing case(s) of `{report.command}` ({report.started:%Y-%m-%d %H:%M}); "
             f"T={report.work}", ""]
    for o in report.failed:
        lines.append(f"## {o.case.id} ({o.case.script}): {o.outcome}" + (f" [#{o.case.ref}]" if o.case.ref else ""))
        lines.append(f"   {o.case.desc}")
        if o.result is not None:
            cmd = " ".join(shlex.quote(a) for a in o.result.argv).replace(str(report.work), "$T")
            lines.append(f"   $ python {cmd}")
            lines.append(f"   exit {o.result.rc if not o.result.timed_out else 'timeout'}; "
                         f"expected {'error /' + o.case.pattern + '/' if o.case.expect == 'error' else 'ok'}")
            tail = o.result.stderr_tail(3) or [f"(stdout) {line}" for line in
                                              [x for x in o.result.stdout.splitlines() if x.strip()][-2:]]
            lines += [f"   | {line[:220].replace(str(report.work), '$T')}" for line in tail]
        lines.append(f"   -> {report.short(o.message, o.case)[:300]}")
        lines.append("")
    return "\n".join(lines)


def summary(report: RunReport) -> str:
    lines = [f"{len(report.outcomes)} cases in {report.seconds / 60:.1f} min: "
             + ", ".join(f"{k} {v}" for k, v in report.totals().items())]
    if report.repo_changes:
        lines.append(f"WRITTEN OUTSIDE THE WORK FOLDER: {len(report.repo_changes)} change(s), e.g. "
                     f"{report.repo_changes[0]}")
    if report.fixture_changes:
        lines.append(f"shared fixtures changed: {report.fixture_changes[0]}")
    for o in report.failed:
        lines.append(f"  {o.outcome:14s} {o.case.id} ({o.case.script}): {report.short(o.message, o.case)[:160]}")
    return "\n".join(lines)


def all_cases() -> list[Case]:
    cases = [*_infer_cases(), *_evaluate_cases(), *_export_cases(), *_verify_cases(), *_prepare_cases(),
             *_make_folds_cases(), *_train_cases(), *_cv_cases(), *_pseudo_cases(), *_make_phantom_cases()]
    ids = [c.id for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"duplicate case ids: {dupes}")
    return cases


# ============================================================================ case helpers


class Skip(Exception):
    """The case cannot be meaningful here (e.g. a read-only folder when running as root)."""


def help_of(text: str, option: str) -> str:
    """The help text argparse prints for ``option`` ('' when it has none)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(option) and (len(stripped) == len(option) or stripped[len(option)] in " ,{="):
            parts = re.split(r"\s{2,}", stripped, maxsplit=1)
            out = [parts[1]] if len(parts) > 1 else []
            for more in lines[i + 1:]:
                if not more.startswith(" " * 8) or more.strip().startswith("-"):
                    break
                out.append(more.strip())
            return " ".join(out)
    return ""


def check_help(option: str, mentions: str | None = None, absent: str | None = None) -> Callable[[Ctx, Result], str]:
    def check(ctx: Ctx, res: Result) -> str:
        if absent:
            expect(absent not in res.stdout, f"--help mentions {absent}")
            return f"--help does not mention {absent}"
        text = help_of(res.stdout, option)
        expect(bool(text), f"{option} has no help text")
        if mentions:
            expect(re.search(mentions, text, re.I) is not None, f"{option}'s help '{text}' lacks /{mentions}/")
        return f"{option}: {text[:80]}"
    return check


def coords_rows(ctx: Ctx, i: int = 0) -> pd.DataFrame:
    ann = ctx.annotations()
    return ann[ann["seriesuid"] == ctx.fx.uids()[i]].reset_index(drop=True)


def half_max(ctx: Ctx, coords: Path | str, inputs: list | None = None, out: str = "out", *overrides: str,
             extra: tuple = ()) -> list[str]:
    """infer.py in coordinates mode with the training-free segmenter (no network)."""
    return ["--input", *[str(p) for p in (inputs or [ctx.fx.scan(0)])], "--coords", str(coords),
            "--model", "half-max", "--out", str(ctx.d / out), *extra, *ctx.cfg(*overrides)]


def whole_scan(ctx: Ctx, inputs: list, out: str = "out", *overrides: str, extra: tuple = ()) -> list[str]:
    """infer.py in whole-scan mode with the fixture student (explicit checkpoint: no FPR)."""
    return ["--input", *[str(p) for p in inputs], "--out", str(ctx.d / out), "--checkpoint", str(ctx.fx.student),
            *extra, *ctx.cfg(*overrides)]


def tiny_input(ctx: Ctx, name: str, seed: int = 0, **kwargs) -> tuple[Path, Path]:
    """A tiny scan ``name`` in ctx.d and a coordinate CSV of its nodule -> (scan, coords)."""
    path, rows = write_scan(ctx.d / name, seed=seed, **kwargs)
    coords = ctx.csv(f"coords_{re.sub(r'[^A-Za-z0-9]+', '_', name)}.csv", rows)
    return path, coords


def save_torch(path: Path, obj) -> Path:
    import torch
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def edited_checkpoint(ctx: Ctx, name: str, edit: Callable[[dict], None], source: Path | None = None) -> Path:
    import torch
    ckpt = torch.load(source or ctx.fx.student, map_location="cpu", weights_only=True)
    edit(ckpt)
    return save_torch(ctx.d / name, ckpt)


class _Pwn:
    """Unpickling this runs a shell command (what a hostile checkpoint does)."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch '{self.target}'",))


def pwned_checkpoint(ctx: Ctx, name: str = "pwned_ckpt.pt") -> Path:
    import torch
    ckpt = torch.load(ctx.fx.student, map_location="cpu", weights_only=True)
    ckpt["payload"] = _Pwn(ctx.d / "pwned")
    return save_torch(ctx.d / name, ckpt)


def truncated_copy(src: Path, dest: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data[: int(len(data) * fraction)])
    return dest


def luna_with(ctx: Ctx, edit: Callable[[Path], None], name: str = "luna") -> Path:
    """A private copy of the fixture dataset, edited."""
    luna = ctx.copy_luna(name)
    edit(luna)
    return luna


def edit_table(path: Path, edit: Callable[[pd.DataFrame], pd.DataFrame | None]) -> None:
    df = pd.read_csv(path, dtype={"seriesuid": str, "patient_id": str, "fold": str})
    out = edit(df)
    (df if out is None else out).to_csv(path, index=False)


def first_scan(luna: Path) -> Path:
    return sorted(luna.glob("subset0/*.mhd"))[0]


def check_file_mode(*globs: str) -> Callable[[Ctx, Result], str]:
    return check_files(*globs, mode=True)


def check_warning(regex: str) -> Callable[[Ctx, Result], str]:
    def check(ctx: Ctx, res: Result) -> str:
        expect(re.search(regex, res.text, re.I) is not None, f"no /{regex}/ in the output")
        return f"says /{regex}/"
    return check


def dicom_series(folder: Path, image: np.ndarray, spacing_xyz=(0.8, 0.8, 1.25), origin=(-44.5, -40.0, -100.0),
                 series_uid: str | None = None, positions_z: list[float] | None = None, tilt_deg: float = 0.0,
                 transfer_syntax: str | None = None, rle: bool = False, names: Callable[[int], str] | None = None,
                 reverse_files: bool = False, intercept: float = 0.0, deflate: bool = False) -> dict:
    """Write ``image`` (z, y, x, HU) as a CT DICOM series, one file per slice -> its
    Geometry's fields (origin, spacing, direction, size) as written."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    frame_uid = generate_uid()
    nz, ny, nx = image.shape
    positions_z = positions_z if positions_z is not None else [origin[2] + k * spacing_xyz[2] for k in range(nz)]
    t = np.deg2rad(tilt_deg)
    orientation = [1.0, 0.0, 0.0, 0.0, float(np.cos(t)), float(np.sin(t))]
    order = list(range(nz))[::-1] if reverse_files else list(range(nz))
    for n, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = "CT", "BADINPUT01", "Probe^Bad"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageOrientationPatient = orientation
        ds.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(positions_z[k])]
        ds.PixelSpacing = [float(spacing_xyz[1]), float(spacing_xyz[0])]
        ds.SliceThickness = float(spacing_xyz[2])
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = intercept, 1.0
        pixels = np.ascontiguousarray(np.rint(image[k] - intercept).astype(np.int16))
        ds.PixelData = pixels.tobytes()
        if rle:
            ds.compress(RLELossless, pixels)
        if deflate:           # the whole dataset zlib-compressed after the file meta
            from pydicom.uid import DeflatedExplicitVRLittleEndian
            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        if transfer_syntax:   # the raw pixels, encapsulated as that syntax requires: decoders must refuse them
            from pydicom.encaps import encapsulate
            ds.file_meta.TransferSyntaxUID = transfer_syntax
            ds.PixelData = encapsulate([pixels.tobytes()])
            ds["PixelData"].VR = "OB"
        name = names(n) if names else f"IM{n + 1:04d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
    return dict(origin=(origin[0], origin[1], min(positions_z)), spacing=spacing_xyz,
                size=(nx, ny, nz))


def dicom_input(ctx: Ctx, name: str, seed: int = 0, shape=(24, 64, 64), **kwargs) -> tuple[Path, Path, dict]:
    """A DICOM series folder of a tiny scan and the coordinate CSV of its nodule."""
    image, _, _, nodules, _ = tiny_scan(np.random.default_rng(seed), shape, TINY_SPACING_XYZ, 1)
    folder = ctx.d / name
    geo = dicom_series(folder, image.astype(np.float32), **kwargs)
    from src.data.geometry import Geometry
    g = Geometry.axis_aligned(geo["origin"], geo["spacing"], geo["size"][::-1])
    rows = []
    for c, r in nodules:
        x, y, z = g.voxel_to_world(c)
        rows.append(dict(seriesuid=folder.name, coordX=x, coordY=y, coordZ=z, diameter_mm=2 * r))
    return folder, ctx.csv(f"coords_{name}.csv", rows), geo


def check_dicom_mask(out: str, name: str, geo: dict | None = None) -> Callable[[Ctx, Result], str]:
    """The mask of DICOM folder ``name`` has the geometry the series was written with."""
    def check(ctx: Ctx, res: Result) -> str:
        from src.data.io import read_header
        g = geo or json.loads((ctx.d / f"{name}.geometry.json").read_text())
        mask = ctx.d / out / f"{name}.nii.gz"
        expect(mask.is_file(), f"{mask.name} not written")
        got = read_header(mask)
        expect(got.size_xyz == tuple(g["size"]), f"mask size {got.size_xyz} != series {tuple(g['size'])}")
        expect(np.allclose(got.spacing_xyz, g["spacing"], atol=1e-3), f"mask spacing {got.spacing_xyz} != {g['spacing']}")
        expect(np.allclose(got.origin_xyz, g["origin"], atol=1e-3), f"mask origin {got.origin_xyz} != {g['origin']}")
        expect(np.allclose(got.direction, np.eye(3).ravel(), atol=1e-4), f"mask direction {got.direction}")
        return f"mask has the series' geometry {got.size_xyz}"
    return check


def save_geometry(ctx: Ctx, name: str, geo: dict) -> None:
    ctx.write(f"{name}.geometry.json", json.dumps({k: list(v) for k, v in geo.items()}))


# ============================================================================ cases: infer.py

U0 = r"1\.3\.6\.1\.4\.1\.0\.0000"          # the first fixture scan's seriesuid, as a regex


def E(id: str, script: str, desc: str, build, pattern: str, **kw) -> Case:
    return Case(id, script, desc, build, "error", pattern, **kw)


def OK(id: str, script: str, desc: str, build, check, **kw) -> Case:
    return Case(id, script, desc, build, "ok", check=check, **kw)


def check_segmented(out: str, n: int) -> Callable[[Ctx, Result], str]:
    """``n`` rows in nodules.csv, each with a non-empty mask (the given nodule was found)."""
    def check(ctx: Ctx, res: Result) -> str:
        table = read_rows(ctx.d / out / "nodules.csv")
        expect(len(table) == n, f"{len(table)} rows in nodules.csv, expected {n}")
        empty = table[~(table["volume_mm3"] > 0)]
        expect(empty.empty, f"{len(empty)} of {n} given nodule(s) got an empty mask (geometry lost?)")
        return f"{n} row(s), every given nodule segmented"
    return check


def _coords_with(ctx: Ctx, name: str, edit: Callable[[pd.DataFrame], pd.DataFrame | None], **kw) -> Path:
    rows = coords_rows(ctx)
    rows = rows.astype(object)
    out = edit(rows)
    return ctx.csv(name, rows if out is None else out, **kw)


def _set(df: pd.DataFrame, row: int, col: str, value) -> None:
    df.loc[row, col] = value


def _image(ctx: Ctx, name: str, array: np.ndarray, spacing=(1.0, 1.0, 1.0), vector: bool = False) -> Path:
    import SimpleITK as sitk
    image = sitk.GetImageFromArray(array, isVector=vector)
    image.SetSpacing((tuple(spacing) + (1.0,) * 4)[: image.GetDimension()])
    path = ctx.d / name
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _nifti_codes(path: Path, qform: int, sform: int) -> Path:
    """Set the qform_code / sform_code of an uncompressed NIfTI-1 file (bytes 252, 254)."""
    data = bytearray(path.read_bytes())
    data[252:254] = int(qform).to_bytes(2, "little", signed=True)
    data[254:256] = int(sform).to_bytes(2, "little", signed=True)
    path.write_bytes(bytes(data))
    return path


def _float_scan(ctx: Ctx, name: str, fill: Callable[[np.ndarray], None]) -> tuple[Path, Path]:
    path, coords = tiny_input(ctx, name, dtype=np.float32)
    from src.data.io import read_image, write_image
    image, geo = read_image(path)
    image = image.astype(np.float32)
    fill(image)
    write_image(image, geo, path)
    return path, coords


# A one-epoch student's map is weak: at this candidate threshold any lung region yields
# candidates, so none at all means no lung region was found (not a weak model).
LOW_CANDIDATE_THRESHOLD = ("detect.candidate_threshold=0.01",)


def _candidates_or_warning(ctx: Ctx, res: Result) -> str:
    warning = re.search(r"warning.*", res.text, re.I)
    if warning:
        return warning.group(0)[:100]
    return check_nodules("out", at_least=1)(ctx, res)


def _border_lungs(ctx: Ctx) -> Path:
    """The phantom scan cropped in x to inside its lungs: they touch both sides."""
    from src.data.io import read_image, write_image
    src = ctx.fx.phantom_scan()
    image, geo = read_image(src)
    lung, _ = read_image(src.parent.parent / "seg-lungs-LUNA16" / src.name)
    xs = np.flatnonzero((lung > 0).any(axis=(0, 1)))
    x0, x1 = int(xs[0]) + 12, int(xs[-1]) - 12
    crop = np.ascontiguousarray(image[:, :, x0:x1])
    out = ctx.d / "border" / "border_lungs.mhd"
    write_image(crop, geo.crop((0, 0, x0), crop.shape), out)
    return out


def _dicom_case(name: str, **kwargs) -> Callable[[Ctx], list[str]]:
    def build(ctx: Ctx) -> list[str]:
        folder, coords, geo = dicom_input(ctx, name, **kwargs)
        save_geometry(ctx, name, geo)
        return half_max(ctx, coords, [folder])
    return build


def _dicom_two_series(ctx: Ctx) -> list[str]:
    folder, coords, geo = dicom_input(ctx, "dicom_two", shape=(24, 64, 64))
    other, _, _, _, _ = tiny_scan(np.random.default_rng(9), (8, 48, 48), TINY_SPACING_XYZ, 1)
    dicom_series(folder, other.astype(np.float32), names=lambda n: f"other_{n:03d}.dcm")
    save_geometry(ctx, "dicom_two", geo)
    return half_max(ctx, coords, [folder])


def _dicom_scout(ctx: Ctx) -> list[str]:
    """A CT series plus a localiser (one 2D image, another size and orientation) with the
    same SeriesInstanceUID, as some scanners export it."""
    import pydicom
    folder, coords, geo = dicom_input(ctx, "dicom_scout")
    first = pydicom.dcmread(sorted(folder.glob("*.dcm"))[0])
    scout = np.zeros((1, 96, 80), np.float32) - 500
    dicom_series(folder / "_tmp", scout, names=lambda n: "scout.dcm")
    ds = pydicom.dcmread(folder / "_tmp" / "scout.dcm")
    ds.SeriesInstanceUID, ds.StudyInstanceUID = first.SeriesInstanceUID, first.StudyInstanceUID
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]    # coronal
    ds.ImagePositionPatient = [-60.0, 0.0, -50.0]
    ds.InstanceNumber = 0
    ds.save_as(folder / "IM0000_scout.dcm", enforce_file_format=True)
    shutil.rmtree(folder / "_tmp")
    save_geometry(ctx, "dicom_scout", geo)
    return half_max(ctx, coords, [folder])


def _dicom_junk(ctx: Ctx) -> list[str]:
    folder = ctx.d / "dicom_junk"
    for k in range(5):
        ctx.write(f"dicom_junk/IM{k:04d}.dcm", f"not a dicom file {k}\n")
    return ["--input", str(folder), "--out", str(ctx.d / "out"), "--checkpoint", str(ctx.fx.student), *ctx.cfg()]


def _dicom_patients(ctx: Ctx) -> list[str]:
    rows = []
    for k, name in enumerate(("patient_a", "patient_b")):
        folder, coords, geo = dicom_input(ctx, f"export/{name}", seed=k)
        rows += pd.read_csv(coords, dtype={"seriesuid": str}).assign(seriesuid=name).to_dict("records")
    return half_max(ctx, ctx.csv("coords_export.csv", rows), [ctx.d / "export"])


def _good_and_bad(ctx: Ctx, network: bool) -> list[str]:
    bad, _ = tiny_input(ctx, "bad_raw.mhd", seed=3)
    raw = bad.with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:1000])
    inputs = [ctx.fx.scan(0), bad]
    if network:
        return whole_scan(ctx, inputs, "out", *LOW_CANDIDATE_THRESHOLD)
    coords = ctx.csv("coords.csv", pd.concat([coords_rows(ctx), pd.read_csv(ctx.d / "coords_bad_raw_mhd.csv")]))
    return half_max(ctx, coords, inputs)


def _all_fail(ctx: Ctx) -> list[str]:
    bad_a, _ = tiny_input(ctx, "bad_a.mhd", seed=3)
    bad_a.with_suffix(".raw").unlink()
    ctx.write("bad_b.nii.gz", b"\x00" * 64)
    return whole_scan(ctx, [bad_a, ctx.d / "bad_b.nii.gz"])


def _check_good_finished(out: str) -> Callable[[Ctx, Result], str]:
    def check(ctx: Ctx, res: Result) -> str:
        expect(re.search(r"nan s/scan", res.text) is None, "prints 'nan s/scan'")
        expect((ctx.d / out / f"{ctx.fx.uids()[0]}.nii.gz").is_file(), "the good scan's mask is missing")
        table = read_rows(ctx.d / out / "nodules.csv")
        expect(set(table["seriesuid"]) == {ctx.fx.uids()[0]}, f"nodules.csv holds {sorted(set(table['seriesuid']))}")
        expect("bad_raw" in res.stderr, "the failed scan is not listed on stderr")
        run_json = ctx.d / out / "run.json"
        expect(not run_json.is_file() or "bad_raw" in run_json.read_text(), "run.json does not record the failure")
        return "good scan finished, failure listed on stderr and in run.json"
    return check


def _ckpt(kind: str) -> Callable[[Ctx], Path]:
    """The six bad checkpoints of issue 22 item 7 (and two more), by name."""
    def make(ctx: Ctx) -> Path:
        if kind == "no_config":
            return edited_checkpoint(ctx, "no_config.pt", lambda c: c.pop("config"))
        if kind == "bad_encoder":
            return edited_checkpoint(ctx, "bad_encoder.pt", lambda c: c["model_config"].update(encoder="tu-nosuchnet_xl"))
        if kind == "extra_key":
            return edited_checkpoint(ctx, "extra_key.pt", lambda c: c["model_config"].update(dropout_magic=0.3))
        if kind == "pwned":
            return pwned_checkpoint(ctx)
        if kind == "truncated":
            return truncated_copy(ctx.fx.student, ctx.d / "truncated.pt")
        if kind == "text":
            return ctx.write("text.pt", "this is not a checkpoint\n")
        if kind == "missing_weights":
            def drop(c):
                for key in ("model", "ema"):
                    c[key].pop(next(iter(c[key])))
            return edited_checkpoint(ctx, "missing_weights.pt", drop)
        if kind == "list":
            return save_torch(ctx.d / "a_list.pt", [1, 2, 3])
        raise ValueError(kind)
    return make


CKPT_CASES = (  # kind, description, pattern
    ("no_config", "checkpoint without its 'config' key", r"no_config\.pt"),
    ("bad_encoder", "checkpoint whose model_config names an unknown encoder", r"bad_encoder\.pt"),
    ("extra_key", "checkpoint whose model_config has an extra key", r"extra_key\.pt"),
    ("pwned", "checkpoint holding a pickle that runs a shell command (must not run)", r"pwned_ckpt\.pt"),
    ("truncated", "checkpoint cut in half", r"truncated\.pt"),
    ("text", "a text file named .pt", r"text\.pt"),
)


def _named_input(ctx: Ctx, path: Path) -> list[str]:
    """infer.py (half-max) on one input, with a coordinate row naming that input: whatever
    goes wrong is about the input itself, not about coordinates of other scans."""
    from src.data.io import image_stem
    rows = coords_rows(ctx).iloc[:1].assign(seriesuid=image_stem(path))
    return half_max(ctx, ctx.csv("coords_named.csv", rows), [path])


def _symlink_loop(ctx: Ctx, name: str) -> Path:
    os.symlink(name, ctx.d / name)        # points to itself
    return ctx.d / name


def _after(_done, value):
    """``value``, once the side effect that built ``_done`` has happened (for one-line builders)."""
    return value


def _with_checkpoint(ctx: Ctx, checkpoint: Path) -> list[str]:
    return ["--input", ctx.fx.scan(0), "--out", ctx.d / "out", "--checkpoint", checkpoint, *ctx.cfg()]


OBLIQUE_10_DEG = tuple(float(v) for v in np.array([[np.cos(np.deg2rad(10)), -np.sin(np.deg2rad(10)), 0],
                                                   [np.sin(np.deg2rad(10)), np.cos(np.deg2rad(10)), 0],
                                                   [0, 0, 1]]).ravel())


def _scan_case(name: str, edit: Callable[[Path], object] | None = None, rename: str | None = None,
               whole: bool = False, out: str = "out", **scan_kw) -> Callable[[Ctx], list[str]]:
    """A tiny scan ``name`` and the coordinate CSV of its nodule in the case folder, changed by
    ``edit(path)`` or renamed to ``rename`` (its coordinates follow), run through half-max or,
    ``whole``, the student on the whole scan."""
    def build(ctx: Ctx) -> list[str]:
        from src.data.io import image_stem
        path, coords = tiny_input(ctx, name, **scan_kw)
        if edit:
            edit(path)
        if rename:
            path = path.rename(ctx.d / rename)
            coords = ctx.csv(f"coords_{image_stem(rename)}.csv", pd.read_csv(coords).assign(
                seriesuid=image_stem(rename)))
        return whole_scan(ctx, [path], out) if whole else half_max(ctx, coords, [path], out)
    return build


def _float_case(name: str, fill: Callable[[np.ndarray], object], whole: bool = False) -> Callable[[Ctx], list[str]]:
    """A float32 tiny scan whose voxels ``fill`` changes in place (NaN, inf, x 1e6, ...)."""
    def build(ctx: Ctx) -> list[str]:
        path, coords = _float_scan(ctx, name, fill)
        return whole_scan(ctx, [path]) if whole else half_max(ctx, coords, [path])
    return build


def _manifest_relative(ctx: Ctx) -> list[str]:
    coords = pd.read_csv(tiny_input(ctx, "hosp/scans/case 1.nii.gz")[1])
    manifest = ctx.csv("hosp/manifest.csv", coords.assign(image="scans/case 1.nii.gz", patient_id="P1"))
    return half_max(ctx, manifest, [manifest])


def _manifest_dup(ctx: Ctx) -> list[str]:
    coords = tiny_input(ctx, "x1.nii.gz")[1]
    tiny_input(ctx, "x2.nii.gz", seed=1)
    manifest = ctx.csv("manifest_dup.csv", [dict(seriesuid="dupe", image="x1.nii.gz"),
                                            dict(seriesuid="dupe", image="x2.nii.gz")])
    return half_max(ctx, coords, [manifest])


def _infer_cases() -> list[Case]:
    S, L = ("student",), ("luna",)
    cases = [
        # ---- issue 22 item 2-4: coordinate tables
        E("infer-coords-empty", "infer.py", "--coords is an empty file",
          lambda c: half_max(c, c.write("coords_empty.csv", "")), r"coords_empty\.csv", needs=L, ref="22.2"),
        E("infer-coords-semicolon", "infer.py", "--coords separated by ';' (European Excel export): refused, or read "
          "correctly with a note", lambda c: half_max(c, c.csv("coords_semicolon.csv", coords_rows(c), sep=";")),
          r"coords_semicolon\.csv", or_ok=all_of(check_segmented("out", 2), check_warning(r"coords_semicolon\.csv.*;")),
          needs=L, ref="22.2"),
        E("infer-coords-no-coordX", "infer.py", "--coords without a coordX column",
          lambda c: half_max(c, c.csv("coords_nox.csv", coords_rows(c).drop(columns="coordX"))),
          r"coords_nox\.csv.*coordX", needs=L, ref="22.2"),
        E("infer-coords-blank-uid", "infer.py", "--coords with a blank seriesuid on line 3 beside valid rows",
          lambda c: half_max(c, _coords_with(c, "coords_blank_uid.csv", lambda d: _set(d, 1, "seriesuid", ""))),
          r"coords_blank_uid\.csv.*(row|line) 3\b", needs=L, ref="22.2"),
        E("infer-coords-nan-x", "infer.py", "--coords row (line 3) with an empty coordX: an error, not a silent drop",
          lambda c: half_max(c, _coords_with(c, "coords_nan_x.csv", lambda d: _set(d, 1, "coordX", None))),
          r"coords_nan_x\.csv.*(row|line) 3\b", needs=L, ref="22.3"),
        E("infer-coords-nan-diameter", "infer.py", "--coords row (line 3) with an empty diameter_mm",
          lambda c: half_max(c, _coords_with(c, "coords_nan_d.csv", lambda d: _set(d, 1, "diameter_mm", None))),
          r"coords_nan_d\.csv.*(row|line) 3\b", needs=L, ref="22.4"),
        E("infer-coords-500mm", "infer.py", "--coords row with a 500 mm diameter",
          lambda c: half_max(c, _coords_with(c, "coords_d500.csv", lambda d: _set(d, 0, "diameter_mm", 500.0))),
          r"coords_d500\.csv.*(row|line) 2\b", needs=L, ref="22.4"),
        E("infer-coords-inf-x", "infer.py", "--coords row with coordX=inf",
          lambda c: half_max(c, _coords_with(c, "coords_inf.csv", lambda d: _set(d, 0, "coordX", "inf"))),
          r"coords_inf\.csv.*(row|line) 2\b", needs=L),
        E("infer-coords-missing", "infer.py", "--coords names a file that does not exist",
          lambda c: half_max(c, c.d / "coords_missing.csv"), r"coords_missing\.csv", needs=L),
        E("infer-coords-is-folder", "infer.py", "--coords names a folder",
          lambda c: half_max(c, c.mkdir("coords_dir")), r"coords_dir", needs=L),
        E("infer-coords-outside", "infer.py", "--coords row 5 m outside the scan",
          lambda c: half_max(c, _coords_with(c, "coords_outside.csv", lambda d: _set(d, 0, "coordX", 5000.0))),
          r"(coords_outside\.csv|0\.0000).*outside|outside.*(coords_outside\.csv|0\.0000)", needs=L),
        E("infer-coords-no-match", "infer.py", "--coords whose rows all name other scans (wrong table)",
          lambda c: half_max(c, _coords_with(c, "coords_other.csv", lambda d: d.assign(seriesuid="9.9.9.9"))),
          r"coords_other\.csv", needs=L),
        OK("infer-coords-partial-match", "infer.py", "--coords for the whole dataset, one scan as input (rows of "
           "other scans ignored)",
           lambda c: half_max(c, c.luna / "annotations.csv"), check_segmented("out", 2), needs=L),
        OK("infer-coords-extra-columns", "infer.py", "--coords with extra columns (quoted comment with commas, "
           "class, reader)",
           lambda c: half_max(c, _coords_with(c, "coords_extra.csv", lambda d: d.assign(
               comment="solid, 2 readers", reader="R1", **{"class": 1}))), check_segmented("out", 2), needs=L),
        OK("infer-coords-candidates", "infer.py", "--coords in candidates_V2.csv form (no diameter column)",
           lambda c: half_max(c, c.luna / "candidates_V2.csv"), check_nodules("out", n=4), needs=L),
        OK("infer-coords-bom-crlf", "infer.py", "--coords saved by Excel: UTF-8 BOM and CRLF line ends",
           lambda c: half_max(c, c.write("coords_excel.csv", "\ufeff".encode() + coords_rows(c).to_csv(
               index=False, lineterminator="\r\n").encode())), check_segmented("out", 2), needs=L),
        # ---- inputs that are not scans
        E("infer-input-missing", "infer.py", "--input names a file that does not exist",
          lambda c: _named_input(c, c.d / "no_such_scan.mhd"), r"no_such_scan\.mhd",
          needs=L),
        E("infer-input-empty-folder", "infer.py", "--input is an empty folder",
          lambda c: _named_input(c, c.mkdir("empty_dir")),
          r"empty_dir", needs=L),
        E("infer-input-no-images", "infer.py", "--input is a folder holding only a README.txt",
          lambda c: _named_input(c, c.write("no_images/README.txt", "hi\n").parent),
          r"no_images", needs=L),
        E("infer-input-txt", "infer.py", "--input is a .txt file",
          lambda c: _named_input(c, c.write("notes.txt", "x\n")), r"notes\.txt", needs=L),
        E("infer-input-symlink-loop", "infer.py", "--input is a symlink pointing to itself",
          lambda c: _named_input(c, _symlink_loop(c, "loop.mhd")), r"loop\.mhd", needs=L),
        E("infer-input-empty-mhd", "infer.py", "--input is an empty (0-byte) .mhd",
          lambda c: _named_input(c, c.write("empty.mhd", "")), r"empty\.mhd", needs=L),
        E("infer-input-not-gzip", "infer.py", "--input .nii.gz that is not gzip (text)",
          lambda c: _named_input(c, c.write("notgzip.nii.gz", "hello, world\n" * 50)),
          r"notgzip\.nii\.gz", needs=L),
        OK("infer-input-nii-named-gz", "infer.py", "--input .nii.gz holding an uncompressed NIfTI (valid content)",
           _scan_case("plain.nii", rename="plain.nii.gz"), check_segmented("out", 1)),
        E("infer-input-raw-missing", "infer.py", ".mhd whose .raw is missing",
          _scan_case("no_raw.mhd", lambda p: p.with_suffix(".raw").unlink()), r"no_raw\.(mhd|raw)"),
        E("infer-input-raw-truncated", "infer.py", ".mhd whose .raw is truncated",
          _scan_case("short_raw.mhd", lambda p: truncated_copy(p.with_suffix(".raw"), p.with_suffix(".raw"), 0.3)),
          r"short_raw\.(mhd|raw)"),
        E("infer-input-huge-header", "infer.py", ".mhd claiming DimSize 100000^3 with a tiny .raw (refuse before "
          "allocating)",
          _scan_case("huge.mhd", lambda p: edit_mhd(p, DimSize="100000 100000 100000")), r"huge\.mhd", timeout=120),
        E("infer-input-huge-compressed", "infer.py", "compressed .mhd claiming DimSize 100000^3 (refuse before "
          "allocating)",
          _scan_case("huge_z.mhd", lambda p: edit_mhd(p, DimSize="100000 100000 100000", CompressedData="True",
                                                      CompressedDataSize="1000")), r"huge_z\.mhd", timeout=120),
        E("infer-input-element-type", "infer.py", ".mhd with ElementType = MET_FOO",
          _scan_case("wrong_type.mhd", lambda p: edit_mhd(p, ElementType="MET_FOO")), r"wrong_type\.mhd"),
        E("infer-input-2d", "infer.py", "--input is a 2D image",
          lambda c: _named_input(c, _image(c, "flat.nii.gz", np.zeros((64, 64), np.int16))),
          r"flat\.nii\.gz", needs=L),
        E("infer-input-4d", "infer.py", "--input is a 4D NIfTI (a time series)",
          lambda c: _named_input(c, _image(c, "four_d.nii.gz", np.zeros((2, 8, 32, 32),
                                                                                                   np.int16))),
          r"four_d\.nii\.gz", needs=L),
        E("infer-input-all-nan", "infer.py", "whole scan: an all-NaN float .mhd",
          _float_case("all_nan.mhd", lambda a: a.fill(np.nan), whole=True), r"all_nan\.mhd", needs=S, ref="22.5"),
        E("infer-input-some-inf", "infer.py", "whole scan: a float .mhd with a few inf voxels",
          _float_case("some_inf.mhd", lambda a: a.__setitem__((slice(3, 5), 10, slice(10, 20)), np.inf), whole=True),
          r"some_inf\.mhd", needs=S, ref="22.5"),
        E("infer-input-hu-x1e6", "infer.py", "float .mhd in HU x 1e6 (not Hounsfield units)",
          _float_case("hu_e6.mhd", lambda a: a.__imul__(1e6)), r"hu_e6\.mhd"),
        OK("infer-input-8bit", "infer.py", "an 8-bit (0..255) export: read, with a warning",
           _float_case("eight_bit.mhd", lambda a: a.__setitem__(slice(None), np.clip((a + 1000) / 8, 0, 255).round())),
           all_of(check_warning(r"8-bit"), check_nodules("out", n=1))),
        # ---- issue 22 item 6: spacing
        E("infer-spacing-1000", "infer.py", ".mhd with ElementSpacing 0.8 0.8 1000 (1 m slices)",
          _scan_case("tall.mhd", lambda p: edit_mhd(p, ElementSpacing="0.8 0.8 1000"), shape=(10, 64, 64)),
          r"tall\.mhd.*(spacing|1000)", ref="22.6", timeout=120),
        E("infer-spacing-negative", "infer.py", ".mhd with ElementSpacing 0.8 0.8 -1.25",
          _scan_case("negsp.mhd", lambda p: edit_mhd(p, ElementSpacing="0.8 0.8 -1.25")), r"negsp\.mhd.*spacing",
          ref="22.6"),
        E("infer-spacing-zero", "infer.py", ".mhd with ElementSpacing 0.8 0 1.25",
          _scan_case("zerosp.mhd", lambda p: edit_mhd(p, ElementSpacing="0.8 0 1.25")), r"zerosp\.mhd.*spacing"),
        E("infer-spacing-1000-wholescan", "infer.py", "whole scan: .mhd with 1000 mm slices (refuse before "
          "resampling to 6400 slices)",
          _scan_case("tall_ws.mhd", lambda p: edit_mhd(p, ElementSpacing="0.8 0.8 1000"), whole=True, shape=(8, 64, 64)),
          r"tall_ws\.mhd.*(spacing|1000)", needs=S, ref="22.6", timeout=120),
        # ---- issue 22 item 12: partial failure
        E("infer-good-and-bad", "infer.py", "coordinates mode, one good scan and one with a truncated .raw: the good "
          "one finishes, the bad one is listed, exit 2",
          lambda c: _good_and_bad(c, False), r"bad_raw\.(mhd|raw)", check=_check_good_finished("out"),
          may_write=("out/*",), may_keep=("out/.infer.parts-*",), needs=L, ref="22.12"),
        E("infer-good-and-bad-wholescan", "infer.py", "whole scan, one good scan and one truncated: the good one "
          "finishes, exit 2, no 'nan s/scan'",
          lambda c: _good_and_bad(c, True), r"bad_raw\.(mhd|raw)", check=_check_good_finished("out"),
          may_write=("out/*",), may_keep=("out/.infer.parts-*",), needs=S, ref="22.12"),
        E("infer-all-fail", "infer.py", "whole scan, every input fails: exit 2 and no nodules.csv/run.json claiming "
          "success", _all_fail, r"bad_a\.(mhd|raw)|bad_b\.nii\.gz", forbid=("out/nodules.csv", "out/run.json"),
          needs=S, ref="22.12"),
        E("infer-same-uid-twice", "infer.py", "two inputs with the same file name (their outputs would collide)",
          lambda c: half_max(c, tiny_input(c, "one/scan_c.mhd")[1], [c.d / "one/scan_c.mhd",
                                                                    tiny_input(c, "two/scan_c.mhd", seed=1)[0]]),
          r"scan_c"),
        # ---- issue 22 item 1: --out
        E("infer-out-is-file", "infer.py", "--out is an existing file",
          lambda c: _after(c.write("existing.txt", "keep\n"), half_max(c, c.luna / "annotations.csv", None,
                                                                        "existing.txt")),
          r"existing\.txt", needs=L, ref="22.1"),
        E("infer-out-under-file", "infer.py", "--out is a folder below an existing file",
          lambda c: _after(c.write("afile.txt", "keep\n"), half_max(c, c.luna / "annotations.csv", None,
                                                                     "afile.txt/out")),
          r"afile\.txt", needs=L),
        OK("infer-out-nested", "infer.py", "--out inside folders that do not exist yet",
           lambda c: half_max(c, c.luna / "annotations.csv", None, "a/b/c/out"), check_segmented("a/b/c/out", 2),
           needs=L),
        E("infer-format-xyz", "infer.py", "--format .xyz",
          lambda c: half_max(c, c.luna / "annotations.csv", extra=("--format", ".xyz")), r"\.xyz", needs=L),
        OK("infer-format-mhd", "infer.py", "--format .mhd: the masks as MetaImage",
           lambda c: half_max(c, c.luna / "annotations.csv", extra=("--format", ".mhd")),
           check_mask_geometry("out", lambda c: c.fx.scan(0), "1.3.6.1.4.1.0.0000.mhd"), needs=L),
        E("infer-split-holdout-no-folds", "infer.py", "--split holdout without a folds.csv",
          lambda c: half_max(c, c.luna / "annotations.csv", None, "out", f"paths.folds={c.d / 'no_folds.csv'}",
                             extra=("--split", "holdout")), r"no_folds\.csv", needs=L),
        E("infer-half-max-no-coords", "infer.py", "--model half-max without --coords",
          lambda c: ["--input", c.fx.scan(0), "--model", "half-max", "--out", c.d / "out", *c.cfg()], r"--coords",
          needs=L),
        E("infer-threshold-1.5", "infer.py", "--set infer.threshold=1.5 (a probability above 1)",
          lambda c: whole_scan(c, [c.fx.scan(0)], "out", "infer.threshold=1.5"), r"threshold", needs=S, ref="22.8"),
        E("infer-batch-size-negative", "infer.py", "--batch-size -4",
          lambda c: whole_scan(c, [c.fx.scan(0)], extra=("--batch-size", "-4")), r"batch.size", needs=S),
        E("infer-roi-margin-negative", "infer.py", "--set infer.roi_margin_mm=-5",
          lambda c: half_max(c, c.luna / "annotations.csv", None, "out", "infer.roi_margin_mm=-5"), r"roi_margin_mm",
          needs=L),
        E("infer-unknown-set-key", "infer.py", "--set infer.threshhold=0.4 (misspelt key)",
          lambda c: half_max(c, c.luna / "annotations.csv", None, "out", "infer.threshhold=0.4"), r"threshhold",
          needs=L),
        E("infer-experiment-missing", "infer.py", "default model with an outputs folder that holds no experiment",
          lambda c: ["--input", c.fx.scan(0), "--out", c.d / "out", *c.cfg(f"paths.outputs={c.d / 'empty_outputs'}")],
          r"empty_outputs", needs=L),
        # ---- valid but awkward inputs
        OK("infer-nonascii-path", "infer.py", "scan at 'Tëst dir/scan 1.mhd' (non-ASCII, spaces)",
           _scan_case("Tëst dir/scan 1.mhd", out="out dir"),
           check_mask_geometry("out dir", lambda c: c.d / "Tëst dir" / "scan 1.mhd")),
        OK("infer-uppercase-mhd", "infer.py", "scan named SCAN2.MHD (upper-case extension)",
           _scan_case("SCAN2.mhd", rename="SCAN2.MHD"),
           check_mask_geometry("out", lambda c: c.d / "SCAN2.MHD", "SCAN2.nii.gz")),
        OK("infer-uppercase-niigz", "infer.py", "scan named CT.NII.GZ",
           _scan_case("CT.nii.gz", rename="CT.NII.GZ"), check_segmented("out", 1)),
        OK("infer-float32-mhd", "infer.py", "float32 .mhd (not int16)",
           _scan_case("float.mhd", dtype=np.float32),
           check_segmented("out", 1)),
        OK("infer-flipped-direction", "infer.py", "LPS-flipped direction matrix (-1,-1,1): geometry kept, nodules found",
           _scan_case("flipped.mhd", direction=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)),
           all_of(check_mask_geometry("out", lambda c: c.d / "flipped.mhd"), check_segmented("out", 1))),
        OK("infer-oblique-direction", "infer.py", "oblique direction matrix (10 deg about z): geometry kept",
           _scan_case("oblique.nii.gz", direction=OBLIQUE_10_DEG),
           all_of(check_mask_geometry("out", lambda c: c.d / "oblique.nii.gz"), check_segmented("out", 1))),
        OK("infer-nifti-sform-only", "infer.py", "NIfTI with sform only (qform_code 0)",
           _scan_case("sform.nii", lambda p: _nifti_codes(p, 0, 1)),
           check_segmented("out", 1)),
        OK("infer-flat-folder", "infer.py", "--input a flat folder of .mhd, .nii.gz and .nrrd scans",
           lambda c: half_max(c, c.csv("coords_flat.csv", pd.concat([pd.read_csv(tiny_input(
               c, f"flat/{n}", seed=k)[1]) for k, n in enumerate(("a.mhd", "b.nii.gz", "c.nrrd"))])), [c.d / "flat"]),
           check_nodules("out", n=3, scans=3)),
        OK("infer-manifest-relative", "infer.py", "hospital manifest with paths relative to its own folder, run from "
           "the repository root",
           _manifest_relative,
           check_segmented("out", 1)),
        E("infer-manifest-dup-uid", "infer.py", "manifest listing seriesuid 'dupe' twice with different images",
          _manifest_dup, r"manifest_dup\.csv"),
        E("infer-manifest-missing-image", "infer.py", "manifest naming an image that does not exist",
          lambda c: half_max(c, c.luna / "annotations.csv", [c.csv("manifest_gone.csv", [
              dict(seriesuid="g1", image="gone.nii.gz")])]), r"gone\.nii\.gz", needs=L),
        E("infer-manifest-uid-slash", "infer.py", "manifest seriesuid '../x' (would write outside --out)",
          lambda c: half_max(c, tiny_input(c, "s.nii.gz")[1], [c.csv("manifest_slash.csv", [
              dict(seriesuid="../x", image="s.nii.gz")])]), r"manifest_slash\.csv"),
        # ---- DICOM
        OK("infer-dicom-plain", "infer.py", "DICOM series folder (explicit VR little endian)",
           _dicom_case("dicom_plain"), check_dicom_mask("out", "dicom_plain")),
        OK("infer-dicom-rle", "infer.py", "DICOM series, RLE Lossless compressed transfer syntax",
           _dicom_case("dicom_rle", rle=True), check_dicom_mask("out", "dicom_rle")),
        OK("infer-dicom-deflated", "infer.py", "DICOM series, Deflated Explicit VR Little Endian transfer syntax",
           _dicom_case("dicom_deflated", deflate=True), check_dicom_mask("out", "dicom_deflated")),
        OK("infer-dicom-no-extension", "infer.py", "DICOM files without an extension (IM0001, ...)",
           _dicom_case("dicom_noext", names=lambda n: f"IM{n + 1:04d}"), check_dicom_mask("out", "dicom_noext")),
        OK("infer-dicom-reverse-order", "infer.py", "DICOM files numbered head-to-feet (reverse z order)",
           _dicom_case("dicom_reverse", reverse_files=True), check_dicom_mask("out", "dicom_reverse")),
        OK("infer-dicom-intercept", "infer.py", "DICOM with RescaleIntercept -1024 (stored values shifted)",
           _dicom_case("dicom_intercept", intercept=-1024.0),
           all_of(check_dicom_mask("out", "dicom_intercept"), check_segmented("out", 1))),
        OK("infer-dicom-with-readme", "infer.py", "DICOM folder that also holds a README.txt and a .DS_Store",
           lambda c: (lambda argv: (c.write("dicom_readme/README.txt", "export notes\n"),
                                    c.write("dicom_readme/.DS_Store", b"\x00\x01"), argv)[2])(
               _dicom_case("dicom_readme")(c)), check_dicom_mask("out", "dicom_readme")),
        OK("infer-dicom-two-series", "infer.py", "two DICOM series mixed in one folder: the CT (most slices) is used, "
           "and a note says so", _dicom_two_series,
           all_of(check_dicom_mask("out", "dicom_two"), check_warning(r"2 DICOM series|two .*series"))),
        OK("infer-dicom-scout", "infer.py", "DICOM series with a localiser (one coronal 96x80 image) in the same "
           "series: the scout is left out", _dicom_scout, check_dicom_mask("out", "dicom_scout")),
        OK("infer-dicom-patients", "infer.py", "--input a folder of two DICOM series folders",
           _dicom_patients, check_nodules("out", n=2, scans=2)),
        E("infer-dicom-unsupported-ts", "infer.py", "DICOM series with an unsupported transfer syntax UID (MPEG2)",
          _dicom_case("dicom_mpeg", transfer_syntax="1.2.840.10008.1.2.4.100"), r"dicom_mpeg"),
        E("infer-dicom-tilt", "infer.py", "DICOM series with 20 deg gantry tilt (sheared volume)",
          _dicom_case("dicom_tilt", tilt_deg=20.0), r"dicom_tilt.*(tilt|shear|oblique|gantry)"),
        E("infer-dicom-gap", "infer.py", "DICOM series with two slices missing (a gap in z)",
          _dicom_case("dicom_gap", positions_z=[-100.0 + 1.25 * k + (2.5 if k >= 12 else 0.0) for k in range(24)]),
          r"dicom_gap.*(gap|missing|uneven|spacing)"),
        E("infer-dicom-duplicate", "infer.py", "DICOM series with two slices at the same position",
          _dicom_case("dicom_dup", positions_z=[-100.0 + 1.25 * min(k, 22) for k in range(24)]),
          r"dicom_dup.*(same position|duplicate)"),
        E("infer-dicom-single-slice", "infer.py", "DICOM folder holding a single slice (2D)",
          _dicom_case("dicom_one", shape=(1, 64, 64)), r"dicom_one.*(2D|3D|slice)"),
        E("infer-dicom-junk", "infer.py", "folder of .dcm files that are not DICOM", _dicom_junk, r"dicom_junk",
          needs=S),
        # ---- issue 22 item 7: checkpoints
        *[E(f"infer-ckpt-{kind}", "infer.py", f"--checkpoint: {desc}",
            (lambda k: lambda c: _with_checkpoint(c, _ckpt(k)(c)))(kind),
            pattern, forbid=("pwned",), needs=S, ref="22.7") for kind, desc, pattern in CKPT_CASES],
        E("infer-ckpt-missing-weights", "infer.py", "--checkpoint whose weights lack a tensor",
          lambda c: _with_checkpoint(c, _ckpt("missing_weights")(c)), r"missing_weights\.pt", needs=S),
        OK("infer-lungs-touch-border", "infer.py", "whole scan whose lungs touch both x borders (phantom cropped): "
           "at least one candidate, or a warning",
           lambda c: ["--input", _border_lungs(c), "--out", c.d / "out", *c.cfg(*LOW_CANDIDATE_THRESHOLD)],
           _candidates_or_warning, needs=("student", "phantom"), ref="22.11", timeout=300),
        OK("infer-phantom-wholescan", "infer.py", "control for the case above: the same phantom scan, uncropped, "
           "gives candidates", lambda c: ["--input", c.fx.phantom_scan(), "--out", c.d / "out",
                                          *c.cfg(*LOW_CANDIDATE_THRESHOLD)],
           check_nodules("out", at_least=1), needs=("student", "phantom"), timeout=300),
        OK("infer-wholescan-perms", "infer.py", "whole scan (experiment's student): outputs readable by group/others",
           lambda c: ["--input", c.fx.scan(0), "--out", c.d / "out", "--save-prob", *c.cfg()],
           all_of(check_file_mode("out/nodules.csv", "out/submission.csv", "out/candidates.csv", "out/run.json",
                                  "out/*0000.nii.gz", "out/*_prob.nii.gz")), needs=S, ref="22.13"),
        OK("infer-coords-perms", "infer.py", "coordinates mode with --qa: outputs readable by group/others",
           lambda c: half_max(c, c.luna / "annotations.csv", extra=("--qa",)),
           check_file_mode("out/nodules.csv", "out/run.json", "out/*.nii.gz", "out/qa/*.png"), needs=L, ref="22.13"),
        OK("infer-ensemble", "infer.py", "--model ensemble in coordinates mode",
           lambda c: ["--input", c.fx.scan(0), "--coords", c.luna / "annotations.csv", "--model", "ensemble",
                      "--out", c.d / "out", *c.cfg()], check_nodules("out", n=2), needs=S),
    ]
    import torch  # a GPU request on a machine without one
    if not torch.cuda.is_available():
        cases.append(E("infer-device-cuda", "infer.py", "--device cuda on a machine without a GPU",
                       lambda c: whole_scan(c, [c.fx.scan(0)], extra=("--device", "cuda")), r"cuda", needs=S))
    return cases


# ============================================================================ cases: evaluate.py


def _pred(ctx: Ctx, which: str = "coords", edit: Callable[[Path], None] | None = None) -> Path:
    """A private copy of a fixture prediction folder (evaluate.py writes into it), edited."""
    pred = Path(shutil.copytree(ctx.fx.pred_coords if which == "coords" else ctx.fx.pred_scan, ctx.d / "pred"))
    if edit:
        edit(pred)
    return pred


def evaluate(ctx: Ctx, pred: Path, *overrides: str, data: Path | None = None, extra: tuple = ()) -> list[str]:
    return ["--pred", pred, "--data", data or ctx.fx.luna, *extra, *ctx.cfg(*overrides)]


def _truncate_mid_row(path: Path) -> None:
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    cut = sum(len(line) for line in lines[:3]) + len(lines[3]) // 2     # header, 2 rows, half a row
    path.write_text(text[:cut])


def _other_grid_mask(path: Path) -> None:
    """Replace a label mask with one on a grid of half the resolution."""
    from src.data.geometry import Geometry
    from src.data.io import read_image, write_image
    labels, geo = read_image(path)
    small = np.ascontiguousarray(labels[::2, ::2, ::2])
    write_image(small, Geometry(geo.origin_xyz, tuple(2 * s for s in geo.spacing_xyz), geo.direction,
                                small.shape[::-1]), path, compress=True)


def _evaluate_cases() -> list[Case]:
    P, PS = ("pred_coords", "luna"), ("pred_scan",)
    u0 = "1.3.6.1.4.1.0.0000"
    return [
        E("evaluate-truncated-nodules", "evaluate.py", "nodules.csv cut in the middle of a row",
          lambda c: evaluate(c, _pred(c, edit=lambda p: _truncate_mid_row(p / "nodules.csv"))), r"nodules\.csv",
          needs=P, ref="22.14"),
        E("evaluate-unknown-uids", "evaluate.py", "nodules.csv whose seriesuids are not in --data",
          lambda c: evaluate(c, _pred(c, edit=lambda p: edit_table(p / "nodules.csv", lambda d: d.assign(
              seriesuid="9.9.9." + d["seriesuid"].str[-4:])))), r"9\.9\.9", needs=P, ref="22.14"),
        E("evaluate-one-unknown-uid", "evaluate.py", "nodules.csv with one extra row of a scan not in --data",
          lambda c: evaluate(c, _pred(c, edit=lambda p: edit_table(p / "nodules.csv", lambda d: pd.concat(
              [d, d.iloc[:1].assign(seriesuid="7.7.7.7")])))), r"7\.7\.7\.7", needs=P, ref="22.14"),
        E("evaluate-no-tables", "evaluate.py", "--pred folder with neither nodules.csv nor submission.csv",
          lambda c: evaluate(c, c.mkdir("empty_pred")), r"empty_pred", needs=("luna",)),
        E("evaluate-pred-missing", "evaluate.py", "--pred folder does not exist",
          lambda c: evaluate(c, c.d / "no_pred"), r"no_pred", needs=("luna",)),
        E("evaluate-pred-is-file", "evaluate.py", "--pred is a file",
          lambda c: evaluate(c, c.write("pred.txt", "x\n")), r"pred\.txt", needs=("luna",)),
        E("evaluate-holdout-no-folds", "evaluate.py", "--split holdout without a folds.csv",
          lambda c: evaluate(c, _pred(c), f"paths.folds={c.d / 'no_folds.csv'}", extra=("--split", "holdout")),
          r"no_folds\.csv", needs=P),
        E("evaluate-data-missing", "evaluate.py", "--data folder does not exist",
          lambda c: evaluate(c, _pred(c), data=c.d / "no_data"), r"no_data", needs=P),
        E("evaluate-empty-nodules", "evaluate.py", "nodules.csv is an empty (0-byte) file",
          lambda c: evaluate(c, _pred(c, edit=lambda p: (p / "nodules.csv").write_text(""))), r"nodules\.csv",
          needs=P),
        E("evaluate-mask-missing", "evaluate.py", "a scan's mask file is missing from --pred",
          lambda c: evaluate(c, _pred(c, edit=lambda p: (p / f"{u0}.nii.gz").unlink())), U0, needs=P),
        E("evaluate-mask-other-grid", "evaluate.py", "a predicted mask on another grid than its CT",
          lambda c: evaluate(c, _pred(c, edit=lambda p: _other_grid_mask(p / f"{u0}.nii.gz"))), U0 + r"\.nii\.gz",
          needs=P),
        OK("evaluate-mode1-perms", "evaluate.py", "mode 1: scores.csv readable by group/others",
           lambda c: evaluate(c, _pred(c)), check_file_mode("pred/scores.csv"), needs=P, ref="22.13"),
        OK("evaluate-mode2-perms", "evaluate.py", "mode 2 on the hold-out: FROC files readable by group/others",
           lambda c: evaluate(c, _submission(c), extra=("--split", "holdout")),
           check_file_mode("pred/froc.csv", "pred/froc.png", "pred/froc_summary.csv"), needs=PS, ref="22.13"),
        OK("evaluate-empty-submission", "evaluate.py", "mode 2 with no detections at all (header-only tables): CPM 0",
           lambda c: evaluate(c, _submission(c, lambda d: d.iloc[0:0]), extra=("--split", "holdout")),
           check_files("pred/froc_summary.csv"), needs=PS),
        E("evaluate-submission-nan-prob", "evaluate.py", "submission.csv row (line 2) with an empty probability",
          lambda c: evaluate(c, _submission(c, lambda d: d.assign(probability=[np.nan, *d["probability"].iloc[1:]])),
                             extra=("--split", "holdout")), r"submission\.csv.*(row|line) 2\b", needs=PS),
        E("evaluate-submission-no-prob", "evaluate.py", "submission.csv without a probability column",
          lambda c: evaluate(c, _submission(c, lambda d: d.drop(columns="probability")),
                             extra=("--split", "holdout")), r"submission\.csv.*probability", needs=PS),
        E("evaluate-submission-text-coord", "evaluate.py", "submission.csv row (line 2) with coordZ='n/a'",
          lambda c: evaluate(c, _submission(c, lambda d: d.astype({"coordZ": object}).assign(
              coordZ=["n/a", *d["coordZ"].iloc[1:]])), extra=("--split", "holdout")),
          r"submission\.csv.*(row|line) 2\b", needs=PS),
    ]


def _submission(ctx: Ctx, edit: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> Path:
    """A copy of the whole-scan prediction folder whose submission.csv lists the hold-out
    nodules themselves (p = 0.9) and a false positive per scan (p = 0.3), edited: the
    tables do not depend on what the one-epoch student happens to find."""
    pred = _pred(ctx, "scan")
    ann = ctx.annotations()
    holdout = ann[ann["seriesuid"].isin(ctx.fx.holdout())]
    rows = holdout[["seriesuid", "coordX", "coordY", "coordZ"]].assign(probability=0.9)
    false = holdout.drop_duplicates("seriesuid")[["seriesuid", "coordX", "coordY", "coordZ"]].assign(
        coordX=lambda d: d["coordX"] + 20.0, probability=0.3)
    table = pd.concat([rows, false], ignore_index=True)
    (edit(table) if edit else table).to_csv(pred / "submission.csv", index=False)
    return pred


# ============================================================================ cases: export.py


def export(ctx: Ctx, checkpoint: Path | None, out: Path | str | None, *overrides: str, extra: tuple = ()) -> list[str]:
    argv = ["--checkpoint", checkpoint] if checkpoint else []
    argv += ["--out", out if isinstance(out, Path) else ctx.d / out] if out else []
    return [*argv, *extra, *ctx.cfg(*overrides)]


def _check_onnx_runs(name: str) -> Callable[[Ctx, Result], str]:
    """The ONNX model runs at two batch sizes and two image sizes (dynamic axes)."""
    def check(ctx: Ctx, res: Result) -> str:
        import onnxruntime as ort
        path = ctx.d / name
        expect(path.is_file(), f"{name} not written")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        k = inp.shape[1] if isinstance(inp.shape[1], int) else 3
        shapes = []
        for shape in ((1, k, 64, 64), (2, k, 96, 96)):
            out = session.run(None, {inp.name: np.zeros(shape, np.float32)})[0]
            expect(out.shape[0] == shape[0] and out.shape[-2:] == shape[-2:], f"output {out.shape} for input {shape}")
            expect(np.isfinite(out).all(), "non-finite output")
            shapes.append(out.shape)
        return f"runs at {shapes[0]} and {shapes[1]}"
    return check


def _export_cases() -> list[Case]:
    S = ("student",)
    return [
        E("export-out-is-dir", "export.py", "--out is an existing folder",
          lambda c: export(c, c.fx.student, c.mkdir("onnx_dir")), r"onnx_dir", needs=S,
          ref="22.1"),
        OK("export-perms", "export.py", "student -> model.onnx: readable by group/others and runs at any size",
           lambda c: export(c, c.fx.student, "model.onnx"),
           all_of(check_file_mode("model.onnx"), _check_onnx_runs("model.onnx")), needs=S, ref="22.13"),
        OK("export-default-out", "export.py", "no --checkpoint/--out: the experiment's student -> student.onnx",
           lambda c: c.own_outputs(),
           check_files("outputs/tiny/student/student.onnx"), needs=S),
        OK("export-teacher-nested-out", "export.py", "a fold teacher to an --out in folders that do not exist yet",
           lambda c: export(c, c.fx.teacher(0), "a/b/teacher0.onnx"), _check_onnx_runs("a/b/teacher0.onnx"),
           needs=S),
        E("export-unsupported-format", "export.py", "--out model.xyz (only ONNX is written)",
          lambda c: export(c, c.fx.student, "model.xyz"), r"model\.xyz", needs=S),
        E("export-out-under-file", "export.py", "--out below an existing file",
          lambda c: _after(c.write("afile.txt", "keep\n"), export(c, c.fx.student, "afile.txt/model.onnx")),
          r"afile\.txt", needs=S),
        *[E(f"export-ckpt-{kind}", "export.py", f"--checkpoint: {desc}",
            (lambda k: lambda c: export(c, _ckpt(k)(c), "model.onnx"))(kind), pattern, forbid=("pwned",), needs=S,
            ref="22.7") for kind, desc, pattern in CKPT_CASES if kind not in ("bad_encoder", "extra_key")],
        E("export-ckpt-missing", "export.py", "--checkpoint names a file that does not exist",
          lambda c: export(c, c.d / "nowhere.pt", "model.onnx"), r"nowhere\.pt", needs=S),
        E("export-fpr-none", "export.py", "--fpr when no FPR classifier was trained",
          lambda c: ["--fpr", *c.own_outputs()], r"tiny/fpr", needs=S),
        E("export-no-student", "export.py", "default checkpoint when the experiment has no student",
          lambda c: export(c, None, None, f"paths.outputs={c.d / 'empty_outputs'}"), r"empty_outputs", needs=S),
    ]


# ============================================================================ cases: verify.py


def verify(ctx: Ctx, *overrides: str, extra: tuple = ()) -> list[str]:
    return [*extra, *ctx.cfg(*overrides)]


def _folds_with(ctx: Ctx, name: str, edit: Callable[[pd.DataFrame], pd.DataFrame | None]) -> Path:
    path = ctx.d / name
    shutil.copy(ctx.fx.folds, path)
    edit_table(path, edit)
    return path


def _move(df: pd.DataFrame, uid_suffix: str, fold: str) -> None:
    df.loc[df["seriesuid"].str.endswith(uid_suffix), "fold"] = fold


FOLD_EDITS = (  # name, description, edit of folds.csv
    ("folds_p2.csv", "folds.csv edited by hand: patient P001 in two folds", lambda d: _move(d, "0001", "1")),
    ("folds_missing.csv", "folds.csv edited by hand: one scan's row deleted", lambda d: d.iloc[1:]),
    ("folds_badfold.csv", "folds.csv edited by hand: fold 'x' (neither a number nor holdout)",
     lambda d: _move(d, "0004", "x")),
    ("folds_dup.csv", "folds.csv edited by hand: one row duplicated", lambda d: pd.concat([d, d.iloc[:1]])),
    ("folds_kind.csv", "folds.csv edited by hand: label_kind 'medium'",
     lambda d: d.assign(label_kind=["medium", *d["label_kind"].iloc[1:]])),
)


def _luna_nan_scan(luna: Path) -> None:
    from src.data.io import read_image, write_image
    path = first_scan(luna)
    image, geo = read_image(path)
    image = image.astype(np.float32)
    image[5:7, 50:60, 50:60] = np.nan
    write_image(image, geo, path)


def _luna_truncate_raw(luna: Path) -> None:
    raw = first_scan(luna).with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:5000])


def _luna_annotation(row: int, col: str, value) -> Callable[[Path], None]:
    """annotations.csv with one cell changed (None: emptied)."""
    def edit(df: pd.DataFrame) -> pd.DataFrame:
        df = df.astype({col: object}) if isinstance(value, str) else df
        df.loc[row, col] = np.nan if value is None else value
        return df
    return lambda luna: edit_table(luna / "annotations.csv", edit)


def _luna_annotations_edit(edit: Callable[[pd.DataFrame], pd.DataFrame | None]) -> Callable[[Path], None]:
    return lambda luna: edit_table(luna / "annotations.csv", edit)


def _luna_mask_other_grid(luna: Path) -> None:
    _other_grid_mask(luna / "masks" / f"{first_scan(luna).stem}.mhd")


def _luna_manifest(luna: Path, name: str = "manifest.csv", mask: str | None = None) -> Path:
    """A hospital manifest inside the dataset folder, paths relative to it."""
    ann = pd.read_csv(luna / "annotations.csv", dtype={"seriesuid": str})
    rows = []
    for path in sorted(luna.glob("subset*/*.mhd")):
        uid = path.stem
        nods = ann[ann["seriesuid"] == uid]
        base = dict(seriesuid=uid, patient_id=f"H{uid[-2:]}", image=str(path.relative_to(luna)),
                    mask=mask or f"masks/{uid}.mhd")
        rows += [dict(base, **n[["coordX", "coordY", "coordZ", "diameter_mm"]].to_dict()) for _, n in nods.iterrows()]
    pd.DataFrame(rows).to_csv(luna / name, index=False)
    return luna / name


def _verify_cases() -> list[Case]:
    L, F, T = ("luna",), ("folds",), ("teachers",)
    cases = [
        OK("verify-help", "verify.py", "--help does not advertise an --input option it lacks",
           lambda c: ["--help"], check_help("--data", absent="--input"), ref="22.15"),
        OK("verify-ok", "verify.py", "the fixture dataset, cache, folds and checkpoints: no error",
           lambda c: verify(c), check_stdout(r"\b6 scans"), needs=T),
        *[E(f"verify-{name[:-4].replace('_', '-')}", "verify.py", desc,
            (lambda n, e: lambda c: verify(c, extra=("--folds", _folds_with(c, n, e))))(name, edit),
            re.escape(name), match_in="output", needs=F) for name, desc, edit in FOLD_EDITS[:3]],
        E("verify-folds-explicit-missing", "verify.py", "--folds names a file that does not exist",
          lambda c: verify(c, extra=("--folds", c.d / "nofolds.csv")), r"nofolds\.csv", needs=F),
        E("verify-cache-truncated", "verify.py", "--cache cut in half",
          lambda c: verify(c, extra=("--cache", truncated_copy(c.fx.cache, c.d / "cache_half.h5"))),
          r"cache_half\.h5", match_in="output", needs=F),
        E("verify-cache-text", "verify.py", "--cache is a text file",
          lambda c: verify(c, extra=("--cache", c.write("cache_text.h5", "not hdf5\n"))), r"cache_text\.h5",
          match_in="output", needs=F),
        E("verify-coords-outside", "verify.py", "annotations.csv row 2 lies outside its scan",
          lambda c: verify(c, f"paths.data={luna_with(c, _luna_annotation(0, 'coordX', 5000.0))}",
                           f"paths.folds={c.d / 'none.csv'}", f"paths.cache={c.d / 'none.h5'}", extra=("--quick",)),
          U0 + r".*outside|outside.*" + U0 + r"|annotations\.csv.*(row|line) 2\b", match_in="output", needs=L),
        E("verify-mask-other-grid", "verify.py", "a fine mask on another grid than its CT",
          lambda c: verify(c, f"paths.data={luna_with(c, _luna_mask_other_grid)}", f"paths.folds={c.d / 'none.csv'}",
                           f"paths.cache={c.d / 'none.h5'}", extra=("--quick",)),
          r"masks/" + U0, match_in="output", needs=L),
        E("verify-nan-scan", "verify.py", "full check: a float scan with NaN voxels",
          lambda c: verify(c, f"paths.data={luna_with(c, _luna_nan_scan)}", f"paths.folds={c.d / 'none.csv'}",
                           f"paths.cache={c.d / 'none.h5'}"),
          U0 + r"\.mhd", match_in="output", needs=L),
        E("verify-spacing-1000", "verify.py", "--quick: a scan header with 1000 mm slices",
          lambda c: verify(c, f"paths.data={luna_with(c, lambda l: edit_mhd(first_scan(l), ElementSpacing='0.8 0.8 1000'))}",
                           f"paths.folds={c.d / 'none.csv'}", f"paths.cache={c.d / 'none.h5'}", extra=("--quick",)),
          U0 + r"\.mhd.*(spacing|1000)", match_in="output", needs=L, ref="22.6"),
        E("verify-data-missing", "verify.py", "--data folder does not exist",
          lambda c: verify(c, extra=("--data", c.d / "no_data")), r"no_data", needs=L),
        E("verify-dup-uid", "verify.py", "the same seriesuid in subset0 and subset1",
          lambda c: verify(c, f"paths.data={luna_with(c, lambda l: [shutil.copy(p, l / 'subset1' / p.name) for p in first_scan(l).parent.glob(first_scan(l).stem + '.*')])}",
                           f"paths.folds={c.d / 'none.csv'}", f"paths.cache={c.d / 'none.h5'}", extra=("--quick",)),
          U0, match_in="output", needs=L),
        E("verify-scans-csv-no-patient", "verify.py", "scans.csv without its patient_id column",
          lambda c: verify(c, f"paths.data={luna_with(c, lambda l: edit_table(l / 'scans.csv', lambda d: d.drop(columns='patient_id')))}",
                           f"paths.folds={c.d / 'none.csv'}", f"paths.cache={c.d / 'none.h5'}", extra=("--quick",)),
          r"scans\.csv", match_in="output", needs=L),
        E("verify-annotations-nan-diameter", "verify.py", "annotations.csv line 3 with an empty diameter_mm",
          lambda c: verify(c, f"paths.data={luna_with(c, _luna_annotation(1, 'diameter_mm', None))}",
                           f"paths.folds={c.d / 'none.csv'}", f"paths.cache={c.d / 'none.h5'}", extra=("--quick",)),
          r"annotations\.csv.*(row|line) 3\b", match_in="output", needs=L, ref="22.4"),
        OK("verify-manifest-relative", "verify.py", "hospital manifest with paths relative to its folder",
           lambda c: verify(c, f"paths.folds={c.d / 'none.csv'}", f"paths.cache={c.d / 'none.h5'}",
                            extra=("--manifest", _luna_manifest(c.copy_luna()), "--quick")),
           check_stdout(r"\b6 scans"), needs=L),
        E("verify-manifest-missing-mask", "verify.py", "manifest naming a mask that does not exist",
          lambda c: verify(c, f"paths.folds={c.d / 'none.csv'}", f"paths.cache={c.d / 'none.h5'}",
                           extra=("--manifest", _luna_manifest(c.copy_luna(), mask="masks/nomask.mhd"), "--quick")),
          r"nomask\.mhd", match_in="output", needs=L),
        E("verify-holdout-leak", "verify.py", "folds.csv edited after training: a trained-on scan is now hold-out",
          lambda c: verify(c, f"paths.folds={_folds_with(c, 'folds_leak.csv', lambda d: _move(d, '0004', 'holdout'))}",
                           extra=("--quick",)),
          r"fold_\d/checkpoint_\w+\.pt", match_in="output", needs=T),
    ]
    return cases


# ============================================================================ cases: prepare.py


def prepare(ctx: Ctx, *overrides: str, out: str | Path | None = "cache.h5", extra: tuple = ()) -> list[str]:
    """prepare.py writing into the case folder (never the fixture cache)."""
    argv = ["--out", out if isinstance(out, Path) else ctx.d / out] if out else []
    return [*argv, *extra, *ctx.cfg(*overrides)]


def _prepare_on(edit: Callable[[Path], None]) -> Callable[[Ctx], list[str]]:
    return lambda c: prepare(c, extra=("--data", luna_with(c, edit)))


def _readonly_out(ctx: Ctx) -> list[str]:
    if os.geteuid() == 0:
        raise Skip("running as root: a chmod 555 folder stays writable")
    folder = ctx.d / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return prepare(ctx, out=folder / "cache.h5")


def _range_cases(script: str, build: Callable[[Ctx, str], list[str]], items, needs, ref: str = "22.8") -> list[Case]:
    """One error case per out-of-range config value: the message must name the key."""
    return [E(f"{script[:-3]}-{key.split('.')[-1].replace('_', '-')}-{tag}", script, f"--set {key}={value}",
              (lambda kv: lambda c: build(c, kv))(f"{key}={value}"),
              rf"(?<![A-Za-z_]){re.escape(key.split('.')[-1])}(?![A-Za-z_])", needs=needs, ref=ref)
            for key, value, tag in items]


def _prepare_cases() -> list[Case]:
    L, C = ("luna",), ("cache",)
    ranges = (("cache.patch_size", -64, "negative"), ("cache.spacing_zyx", "[1,1]", "two-values"),
              ("cache.k_slices", 4, "even"), ("cache.k_slices", 0, "zero"),
              ("cache.spacing_zyx", "[0,1,1]", "zero"), ("cache.hu_clip", "[600,-1200]", "reversed"),
              ("cache.negatives_per_positive", -1, "negative"), ("cache.hard_negative_fraction", 1.5, "above-1"))
    return [
        E("prepare-out-is-dir", "prepare.py", "--out is an existing folder",
          lambda c: prepare(c, out=c.mkdir("cachedir")), r"cachedir", needs=L, ref="22.1"),
        E("prepare-cache-path-is-dir", "prepare.py", "paths.cache (no --out) is an existing folder",
          lambda c: prepare(c, f"paths.cache={c.mkdir('cachedir2')}", out=None),
          r"cachedir2", needs=L, ref="22.1"),
        *_range_cases("prepare.py", lambda c, kv: prepare(c, kv), ranges, L),
        E("prepare-workers-negative", "prepare.py", "--workers -1",
          lambda c: prepare(c, extra=("--workers", "-1")), r"workers", needs=L),
        OK("prepare-perms-nested", "prepare.py", "--out in folders that do not exist yet: cache readable by "
           "group/others", lambda c: prepare(c, out="a/b/cache.h5"), check_file_mode("a/b/cache.h5"), needs=L,
           ref="22.13"),
        E("prepare-other-config-cache", "prepare.py", "--out holds a cache built with another config",
          lambda c: prepare(c, "cache.jitter_px=6", out=Path(shutil.copy(c.fx.cache, c.d / "old_cache.h5"))),
          r"old_cache\.h5", needs=C),
        E("prepare-half-written-cache", "prepare.py", "--out holds a half-written (truncated) cache",
          lambda c: prepare(c, out=truncated_copy(c.fx.cache, c.d / "cache_half.h5")), r"cache_half\.h5", needs=C),
        E("prepare-data-missing", "prepare.py", "--data folder does not exist",
          lambda c: prepare(c, extra=("--data", c.d / "no_data")), r"no_data", needs=L),
        E("prepare-data-empty", "prepare.py", "--data is an empty folder",
          lambda c: prepare(c, extra=("--data", c.mkdir("empty_luna"))), r"empty_luna",
          needs=L),
        E("prepare-data-is-file", "prepare.py", "--data is a file",
          lambda c: prepare(c, extra=("--data", c.write("luna.txt", "x\n"))), r"luna\.txt", needs=L),
        E("prepare-no-annotations", "prepare.py", "dataset without annotations.csv",
          _prepare_on(lambda l: (l / "annotations.csv").unlink()), r"annotations\.csv", needs=L),
        E("prepare-annotations-nan-x", "prepare.py", "annotations.csv line 3 with an empty coordX",
          _prepare_on(_luna_annotation(1, "coordX", None)), r"annotations\.csv.*(row|line) 3\b", needs=L, ref="22.3"),
        E("prepare-annotations-nan-diameter", "prepare.py", "annotations.csv line 3 with an empty diameter_mm",
          _prepare_on(_luna_annotation(1, "diameter_mm", None)), r"annotations\.csv.*(row|line) 3\b", needs=L,
          ref="22.4"),
        E("prepare-annotations-500mm", "prepare.py", "annotations.csv line 2 with a 500 mm diameter",
          _prepare_on(_luna_annotation(0, "diameter_mm", 500.0)), r"annotations\.csv.*(row|line) 2\b", needs=L,
          ref="22.4"),
        E("prepare-annotations-unknown-uid", "prepare.py", "annotations.csv row of a scan that is not on disk",
          _prepare_on(_luna_annotations_edit(lambda d: pd.concat([d, d.iloc[:1].assign(seriesuid="9.9.9.9")]))),
          r"9\.9\.9\.9", needs=L),
        E("prepare-raw-truncated", "prepare.py", "one scan's .raw truncated (reported before any work)",
          _prepare_on(_luna_truncate_raw), U0 + r"\.(mhd|raw)", match_in="output", needs=L),
        E("prepare-spacing-1000", "prepare.py", "a scan header with ElementSpacing 0.8 0.8 1000",
          _prepare_on(lambda l: edit_mhd(first_scan(l), ElementSpacing="0.8 0.8 1000")),
          U0 + r"\.mhd.*(spacing|1000)", match_in="output", needs=L, ref="22.6", timeout=150),
        E("prepare-spacing-negative", "prepare.py", "a scan header with ElementSpacing 0.8 0.8 -1.25",
          _prepare_on(lambda l: edit_mhd(first_scan(l), ElementSpacing="0.8 0.8 -1.25")),
          U0 + r"\.mhd.*spacing", match_in="output", needs=L, ref="22.6"),
        E("prepare-mask-other-grid", "prepare.py", "a fine mask on another grid than its CT",
          _prepare_on(_luna_mask_other_grid), r"masks/" + U0, match_in="output", needs=L),
        E("prepare-dup-uid", "prepare.py", "the same seriesuid in subset0 and subset2",
          _prepare_on(lambda l: [shutil.copy(p, l / "subset2" / p.name) for p in
                                 first_scan(l).parent.glob(first_scan(l).stem + ".*")]), U0, needs=L),
        E("prepare-manifest-missing", "prepare.py", "--manifest names a file that does not exist",
          lambda c: prepare(c, extra=("--manifest", c.d / "no_manifest.csv")), r"no_manifest\.csv", needs=L),
        E("prepare-manifest-empty", "prepare.py", "--manifest is an empty file",
          lambda c: prepare(c, extra=("--manifest", c.write("manifest_empty.csv", ""))), r"manifest_empty\.csv",
          needs=L),
        E("prepare-manifest-no-image", "prepare.py", "--manifest without an image column",
          lambda c: prepare(c, extra=("--manifest", c.csv("manifest_noimage.csv", [dict(seriesuid="a", path="x")]))),
          r"manifest_noimage\.csv.*image", needs=L),
        E("prepare-manifest-dup-uid", "prepare.py", "--manifest listing one seriesuid with two images",
          lambda c: prepare(c, extra=("--manifest", c.csv("manifest_dup.csv", [
              dict(seriesuid="dupe", image=str(c.fx.scan(0))), dict(seriesuid="dupe", image=str(c.fx.scan(1)))]))),
          r"manifest_dup\.csv.*dupe|dupe.*manifest_dup\.csv", needs=L),
        OK("prepare-manifest-relative", "prepare.py", "hospital manifest with paths relative to its folder",
           lambda c: prepare(c, extra=("--manifest", _luna_manifest(c.copy_luna()))), check_files("cache.h5"),
           needs=L),
        OK("prepare-nonascii-path", "prepare.py", "dataset under 'Tëst dir/lu na 16' (non-ASCII, spaces)",
           lambda c: prepare(c, extra=("--data", c.copy_luna("Tëst dir/lu na 16"))), check_files("cache.h5"),
           needs=L),
        E("prepare-unknown-set-key", "prepare.py", "--set cache.patchsize=64 (misspelt key)",
          lambda c: prepare(c, "cache.patchsize=64"), r"patchsize", needs=L),
        E("prepare-set-no-equals", "prepare.py", "--set cache.patch_size (no value)",
          lambda c: prepare(c, "cache.patch_size"), r"cache\.patch_size", needs=L),
        E("prepare-set-bad-yaml", "prepare.py", "--set cache.spacing_zyx=[1, (malformed value)",
          lambda c: prepare(c, "cache.spacing_zyx=[1,"), r"spacing_zyx", needs=L),
        E("prepare-config-missing", "prepare.py", "--config names a file that does not exist",
          lambda c: ["--out", c.d / "cache.h5", "--config", c.d / "nope.yaml"], r"nope\.yaml"),
        E("prepare-config-bad-yaml", "prepare.py", "--config is not valid YAML",
          lambda c: ["--out", c.d / "cache.h5", "--config", c.write("bad.yaml", "cache:\n  patch_size: [64\n")],
          r"bad\.yaml"),
        E("prepare-config-inherit-missing", "prepare.py", "--config inherits a file that does not exist",
          lambda c: ["--out", c.d / "cache.h5", "--config", c.write("child.yaml", "inherit: nothere.yaml\n")],
          r"nothere\.yaml"),
        E("prepare-config-unknown-section", "prepare.py", "--config with a misspelt section 'cahce:'",
          lambda c: ["--out", c.d / "cache.h5", "--config", c.write("typo.yaml", "cahce:\n  patch_size: 32\n")],
          r"cahce"),
        E("prepare-readonly-out", "prepare.py", "--out in a read-only folder (chmod 555)", _readonly_out,
          r"ro/cache\.h5|/ro\b", needs=L),
    ]


# ============================================================================ cases: make_folds.py


def make_folds(ctx: Ctx, *overrides: str, out: str | Path = "folds.csv", extra: tuple = ()) -> list[str]:
    """make_folds.py writing into the case folder (never the fixture folds)."""
    return ["--out", out if isinstance(out, Path) else ctx.d / out, *extra, *ctx.cfg(*overrides)]


def _check_folds(name: str) -> Callable[[Ctx, Result], str]:
    def check(ctx: Ctx, res: Result) -> str:
        folds = read_rows(ctx.d / name)
        expect(len(folds) == TINY_SCANS, f"{len(folds)} rows, expected {TINY_SCANS}")
        spans = folds.groupby("patient_id")["fold"].nunique()
        expect((spans == 1).all(), "a patient spans two folds")
        return f"{len(folds)} scans, {folds['fold'].nunique()} groups, patients kept together"
    return check


def _make_folds_cases() -> list[Case]:
    C = ("cache",)
    return [
        E("make_folds-holdout-negative", "make_folds.py", "--holdout-fraction -0.2",
          lambda c: make_folds(c, extra=("--holdout-fraction", "-0.2")), r"holdout.fraction", needs=C, ref="22.9"),
        E("make_folds-fine-1.5", "make_folds.py", "--fine-fraction 1.5",
          lambda c: make_folds(c, extra=("--fine-fraction", "1.5")), r"fine.fraction", needs=C, ref="22.9"),
        E("make_folds-holdout-1", "make_folds.py", "--holdout-fraction 1.0 (everything held out)",
          lambda c: make_folds(c, extra=("--holdout-fraction", "1.0")), r"holdout.fraction", needs=C, ref="22.9"),
        E("make_folds-out-is-dir", "make_folds.py", "--out is an existing folder",
          lambda c: make_folds(c, out=c.mkdir("folds_dir")), r"folds_dir", needs=C,
          ref="22.1"),
        E("make_folds-out-under-file", "make_folds.py", "--out below an existing file",
          lambda c: _after(c.write("afile.txt", "keep\n"), make_folds(c, out="afile.txt/folds.csv")), r"afile\.txt",
          needs=C),
        E("make_folds-cache-missing", "make_folds.py", "--cache names a file that does not exist",
          lambda c: make_folds(c, extra=("--cache", c.d / "no_cache.h5")), r"no_cache\.h5", needs=C),
        E("make_folds-cache-truncated", "make_folds.py", "--cache cut in half",
          lambda c: make_folds(c, extra=("--cache", truncated_copy(c.fx.cache, c.d / "cache_half.h5"))),
          r"cache_half\.h5", needs=C),
        E("make_folds-cache-text", "make_folds.py", "--cache is a text file",
          lambda c: make_folds(c, extra=("--cache", c.write("cache_text.h5", "not hdf5\n"))), r"cache_text\.h5",
          needs=C),
        E("make_folds-cache-is-dir", "make_folds.py", "--cache is a folder",
          lambda c: make_folds(c, extra=("--cache", c.mkdir("cache_dir"))),
          r"cache_dir", needs=C),
        E("make_folds-n-folds-1", "make_folds.py", "--set folds.n_folds=1",
          lambda c: make_folds(c, "folds.n_folds=1"), r"n_folds", needs=C, ref="22.8"),
        E("make_folds-n-folds-50", "make_folds.py", "--set folds.n_folds=50 (more folds than patients)",
          lambda c: make_folds(c, "folds.n_folds=50"), r"n_folds|50 folds", needs=C),
        E("make_folds-seed-negative", "make_folds.py", "--seed -1",
          lambda c: make_folds(c, extra=("--seed", "-1")), r"seed", needs=C),
        OK("make_folds-perms-nested", "make_folds.py", "--out in folders that do not exist yet: folds.csv readable "
           "by group/others", lambda c: make_folds(c, out="a/b/folds.csv"),
           all_of(check_file_mode("a/b/folds.csv"), _check_folds("a/b/folds.csv")), needs=C, ref="22.13"),
        OK("make_folds-no-holdout", "make_folds.py", "--holdout-fraction 0 (no hold-out set)",
           lambda c: make_folds(c, extra=("--holdout-fraction", "0")),
           lambda c, r: (_check_folds("folds.csv")(c, r), expect("holdout" not in set(read_rows(
               c.d / "folds.csv")["fold"]), "a hold-out group was made"))[0], needs=C),
        OK("make_folds-help-seed", "make_folds.py", "--help documents --seed",
           lambda c: ["--help"], check_help("--seed"), ref="22.15"),
    ]


# ============================================================================ cases: train.py


def train(ctx: Ctx, *overrides: str, extra: tuple = ("--fold", "0"), copy: bool = False) -> list[str]:
    """train.py writing into the case folder: a copy of the fixture experiment (``copy``)
    or an empty outputs folder."""
    if copy:
        return [*extra, *ctx.own_outputs(*overrides)]
    return [*extra, *ctx.cfg(f"paths.outputs={ctx.d / 'outputs'}", *overrides)]


def _corrupt(rel: str, how: str) -> Callable[[Ctx], None]:
    """Damage a file of the case's copy of the fixture experiment."""
    def edit(ctx: Ctx) -> None:
        path = ctx.d / "outputs" / "tiny" / rel
        if how == "truncate":
            truncated_copy(path, path)
        elif how == "text":
            path.write_text("not what it should be\n")
        elif how == "pwned":
            shutil.copy(pwned_checkpoint(ctx, "pwned_tmp.pt"), path)
            (ctx.d / "pwned_tmp.pt").unlink()
        elif how == "delete":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return edit


def _on_copy(run: Callable[..., list[str]], edit: Callable[[Ctx], None], *overrides: str, **kw) -> Callable[[Ctx], list[str]]:
    def build(ctx: Ctx) -> list[str]:
        argv = run(ctx, *overrides, copy=True, **kw)
        edit(ctx)
        return argv
    return build


def _train_cases() -> list[Case]:
    F, T = ("folds",), ("teachers",)
    ranges = (("teacher.epochs", -1, "negative"), ("teacher.batch_size", 0, "zero"), ("teacher.lr", -0.001, "negative"),
              ("teacher.steps_per_epoch", 0, "zero"), ("teacher.ema_decay", 2.0, "above-1"),
              ("teacher.positive_fraction", 1.5, "above-1"))
    return [
        E("train-stage-unknown", "train.py", "--stage unknown",
          lambda c: train(c, extra=("--stage", "unknown")), r"--stage.*unknown|unknown.*--stage", needs=F),
        E("train-fold-7", "train.py", "--fold 7 with 2 folds",
          lambda c: train(c, extra=("--fold", "7")), r"fold.*\b7\b", needs=F),
        E("train-fold-minus-1", "train.py", "--fold -1",
          lambda c: train(c, extra=("--fold", "-1")), r"fold.*-1\b", needs=F),
        E("train-no-fold", "train.py", "teacher without --fold",
          lambda c: train(c, extra=()), r"--fold", needs=F),
        *_range_cases("train.py", lambda c, kv: train(c, kv), ranges, F),
        E("train-encoder-unknown", "train.py", "--set teacher.model.encoder=resnet_nonexistent",
          lambda c: train(c, "teacher.model.encoder=resnet_nonexistent"), r"resnet_nonexistent", needs=F),
        E("train-coarse-unknown", "train.py", "--set teacher.loss.coarse=bogus_mode",
          lambda c: train(c, "teacher.loss.coarse=bogus_mode"), r"bogus_mode", needs=F),
        E("train-resume-truncated", "train.py", "--resume from a truncated checkpoint_last.pt",
          _on_copy(train, _corrupt("teacher/fold_0/checkpoint_last.pt", "truncate"), extra=("--fold", "0", "--resume")),
          r"fold_0/checkpoint_last\.pt", needs=T),
        E("train-resume-pickle", "train.py", "--resume from a checkpoint_last.pt that runs code when unpickled",
          _on_copy(train, _corrupt("teacher/fold_0/checkpoint_last.pt", "pwned"), extra=("--fold", "0", "--resume")),
          r"fold_0/checkpoint_last\.pt", forbid=("pwned",), needs=T),
        E("train-resume-other-config", "train.py", "--resume with another learning rate than the checkpoint's",
          _on_copy(train, lambda c: None, "teacher.lr=0.01", extra=("--fold", "0", "--resume")),
          r"fold_0/checkpoint_last\.pt", needs=T),
        *[E(f"train-{name[:-4].replace('_', '-')}", "train.py", desc,
            (lambda n, e: lambda c: train(c, f"paths.folds={_folds_with(c, n, e)}"))(name, edit), re.escape(name),
            needs=F) for name, desc, edit in FOLD_EDITS[:4]],
        E("train-folds-empty", "train.py", "folds.csv is an empty file",
          lambda c: train(c, f"paths.folds={c.write('folds_empty.csv', '')}"), r"folds_empty\.csv", needs=F),
        E("train-folds-file-missing", "train.py", "paths.folds names a file that does not exist",
          lambda c: train(c, f"paths.folds={c.d / 'no_folds.csv'}"), r"no_folds\.csv", needs=F),
        E("train-cache-other-config", "train.py", "--set cache.patch_size=48: the cache was built with 32",
          lambda c: train(c, "cache.patch_size=48"), r"cache\.h5", needs=F),
        E("train-cache-truncated", "train.py", "paths.cache is a half-written (truncated) cache",
          lambda c: train(c, f"paths.cache={truncated_copy(c.fx.cache, c.d / 'cache_half.h5')}"), r"cache_half\.h5",
          needs=F),
        E("train-student-no-teachers", "train.py", "--stage student before any teacher was trained",
          lambda c: train(c, extra=("--stage", "student")), r"pseudo\.h5|fold_0", needs=F),
        E("train-fpr-no-teachers", "train.py", "--stage fpr with OOF candidates before any teacher was trained",
          lambda c: train(c, "detect.candidate_source=oof", extra=("--stage", "fpr")), r"fold_0|teacher/", needs=F),
        E("train-fpr-fold-9", "train.py", "--stage fpr --fold 9 with 2 folds",
          lambda c: train(c, extra=("--stage", "fpr", "--fold", "9"), copy=True), r"fold.*\b9\b", needs=T),
        OK("train-perms", "train.py", "teacher of fold 0: checkpoint, args.yaml, CSVs readable by group/others",
           lambda c: train(c),
           check_file_mode("outputs/tiny/teacher/fold_0/checkpoint_best.pt", "outputs/tiny/teacher/fold_0/args.yaml",
                           "outputs/tiny/teacher/fold_0/*.csv", "outputs/tiny/teacher/fold_0/val_predictions.h5"),
           needs=F, ref="22.13"),
        OK("train-help-stage", "train.py", "--help documents --stage",
           lambda c: ["--help"], check_help("--stage", mentions=r"teacher|student|fpr"), ref="22.15"),
    ]


# ============================================================================ cases: cv.py, pseudo_label.py


def cv(ctx: Ctx, *overrides: str, extra: tuple = (), copy: bool = True) -> list[str]:
    if copy:
        return [*extra, *ctx.own_outputs(*overrides)]
    return [*extra, *ctx.cfg(f"paths.outputs={ctx.d / 'empty_out'}", *overrides)]


def _cv_cases() -> list[Case]:
    T, S = ("teachers",), ("student",)
    return [
        E("cv-no-oof", "cv.py", "no fold teacher trained yet (empty outputs folder)",
          lambda c: cv(c, copy=False), r"empty_out", needs=T),
        E("cv-oof-truncated", "cv.py", "a fold's val_predictions.h5 truncated",
          _on_copy(cv, _corrupt("teacher/fold_0/val_predictions.h5", "truncate")), r"fold_0/val_predictions\.h5",
          needs=T),
        E("cv-oof-text", "cv.py", "a fold's val_predictions.h5 is a text file",
          _on_copy(cv, _corrupt("teacher/fold_1/val_predictions.h5", "text")), r"fold_1/val_predictions\.h5",
          needs=T),
        E("cv-holdout-no-student", "cv.py", "--holdout when no student was trained",
          _on_copy(cv, _corrupt("student", "delete"), extra=("--holdout",)),
          r"student/checkpoint_best\.pt|--stage student", needs=S),
        E("cv-holdout-bad-postprocessing", "cv.py", "--holdout with a corrupt postprocessing.json",
          _on_copy(cv, _corrupt("postprocessing.json", "text"), extra=("--holdout",)), r"postprocessing\.json",
          needs=S),
        E("cv-folds-missing", "cv.py", "paths.folds names a file that does not exist",
          lambda c: cv(c, f"paths.folds={c.d / 'no_folds.csv'}"), r"no_folds\.csv", needs=T),
        E("cv-folds-changed", "cv.py", "folds.csv edited after training (a scan moved to another fold): the OOF "
          "predictions no longer match",
          lambda c: cv(c, f"paths.folds={_folds_with(c, 'folds_moved.csv', lambda d: _move(d, '0004', '1'))}"),
          r"folds_moved\.csv|fold_\d", needs=T),
        OK("cv-perms", "cv.py", "cross-validation leaderboard: files readable by group/others",
           lambda c: cv(c), check_file_mode("outputs/tiny/leaderboard.md", "outputs/tiny/leaderboard.csv",
                                            "outputs/tiny/postprocessing.json", "outputs/tiny/oof_nodules.csv"),
           needs=T, ref="22.13"),
    ]


def _pseudo_cases() -> list[Case]:
    T = ("teachers",)
    return [
        E("pseudo-no-teachers", "pseudo_label.py", "no fold teacher trained yet",
          lambda c: cv(c, copy=False), r"empty_out|fold_0", needs=T),
        E("pseudo-teacher-truncated", "pseudo_label.py", "a fold teacher's checkpoint_best.pt truncated",
          _on_copy(cv, _corrupt("teacher/fold_1/checkpoint_best.pt", "truncate")), r"fold_1/checkpoint_best\.pt",
          needs=T),
        E("pseudo-teacher-pickle", "pseudo_label.py", "a fold teacher's checkpoint runs code when unpickled",
          _on_copy(cv, _corrupt("teacher/fold_0/checkpoint_best.pt", "pwned")), r"fold_0/checkpoint_best\.pt",
          forbid=("pwned",), needs=T),
        E("pseudo-temperature-0", "pseudo_label.py", "--set pseudo.temperature=0",
          lambda c: cv(c, "pseudo.temperature=0"), r"temperature", needs=T, ref="22.8"),
        E("pseudo-batch-size-0", "pseudo_label.py", "--set pseudo.batch_size=0",
          lambda c: cv(c, "pseudo.batch_size=0"), r"batch_size", needs=T, ref="22.8"),
        E("pseudo-cache-truncated", "pseudo_label.py", "paths.cache is a half-written (truncated) cache",
          lambda c: cv(c, f"paths.cache={truncated_copy(c.fx.cache, c.d / 'cache_half.h5')}"), r"cache_half\.h5",
          needs=T),
        OK("pseudo-perms", "pseudo_label.py", "pseudo.h5 and pseudo_quality.csv readable by group/others",
           _on_copy(cv, lambda c: [(c.d / "outputs/tiny" / n).unlink(missing_ok=True)
                                   for n in ("pseudo.h5", "pseudo_quality.csv")]),
           check_file_mode("outputs/tiny/pseudo.h5", "outputs/tiny/pseudo_quality.csv"), needs=T, ref="22.13"),
    ]


# ============================================================================ cases: make_phantom.py


def phantom(ctx: Ctx, *extra: str, out: str | Path = "ph", overrides: tuple = ()) -> list[str]:
    return ["--out", out if isinstance(out, Path) else ctx.d / out, "--max-slices", "16", *extra,
            *ctx.cfg(*overrides)]


def _phantom_twice(ctx: Ctx) -> list[str]:
    argv = phantom(ctx, "--n-scans", "1")
    res = run_script("make_phantom.py", [str(a) for a in argv], 200)
    if res.rc != 0:
        raise RuntimeError(f"first make_phantom.py run failed: {res.last_line}")
    return argv


def _make_phantom_cases() -> list[Case]:
    return [
        E("make_phantom-n-scans-0", "make_phantom.py", "--n-scans 0", lambda c: phantom(c, "--n-scans", "0"),
          r"n.scans", ref="22.10", timeout=120),
        E("make_phantom-n-scans-negative", "make_phantom.py", "--n-scans -2", lambda c: phantom(c, "--n-scans", "-2"),
          r"n.scans", ref="22.10", timeout=120),
        E("make_phantom-max-slices-0", "make_phantom.py", "--max-slices 0",
          lambda c: phantom(c, "--n-scans", "1", "--max-slices", "0"), r"max.slices", timeout=120),
        E("make_phantom-noise-negative", "make_phantom.py", "--set phantom.noise_scale=-1",
          lambda c: phantom(c, "--n-scans", "1", overrides=("phantom.noise_scale=-1",)), r"noise_scale", timeout=120),
        E("make_phantom-seed-negative", "make_phantom.py", "--seed -1",
          lambda c: phantom(c, "--n-scans", "1", "--seed", "-1"), r"seed", timeout=120),
        E("make_phantom-fraction-1.5", "make_phantom.py", "--set phantom.empty_scan_fraction=1.5",
          lambda c: phantom(c, "--n-scans", "1", overrides=("phantom.empty_scan_fraction=1.5",)),
          r"empty_scan_fraction", timeout=120),
        E("make_phantom-out-is-file", "make_phantom.py", "--out is an existing file",
          lambda c: phantom(c, "--n-scans", "1", out=c.write("phantom.txt", "keep\n")), r"phantom\.txt",
          timeout=120, ref="22.1"),
        E("make_phantom-out-not-empty", "make_phantom.py", "--out is a folder of the user's own files (must not "
          "be emptied)", lambda c: phantom(c, "--n-scans", "1", out=c.write("mine/my_notes.txt", "keep\n").parent),
          r"mine", check=lambda c, r: (expect((c.d / "mine/my_notes.txt").is_file(), "my_notes.txt was deleted"),
                                       "my_notes.txt kept")[1], timeout=120),
        OK("make_phantom-perms-nested", "make_phantom.py", "one scan into folders that do not exist yet: every file "
           "readable by group/others", lambda c: phantom(c, "--n-scans", "1", out="a/b/ph"),
           check_file_mode("a/b/ph/subset*/*.mhd", "a/b/ph/subset*/*.raw", "a/b/ph/annotations.csv",
                           "a/b/ph/phantom.json", "a/b/ph/preview.png"), ref="22.13", timeout=200),
        OK("make_phantom-rerun", "make_phantom.py", "the same command twice: the second run does nothing",
           _phantom_twice, check_stdout(r"up to date"), timeout=120),
    ]
