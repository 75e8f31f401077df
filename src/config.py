"""One typed config for every stage: dataclasses, YAML load/merge/dump, CLI overrides.

A run's config is built in three layers, later ones winning:
  1. the dataclass defaults below,
  2. a YAML file: ``configs/default.yaml`` (GPU-sized) unless ``--config`` names another,
     e.g. ``configs/cpu.yaml``; both ``inherit: base.yaml``, which holds what they share,
  3. dotted CLI overrides (``--set teacher.epochs=3 cache.patch_size=96``).
The merged result is dumped as ``args.yaml`` beside every output, and its hash is
stamped into every file a stage writes so that stages refuse to mix.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from src.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "configs/default.yaml"   # every script's config unless --config says otherwise


def ranged(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, choices: tuple | None = None, length: int | None = None, odd: bool = False,
           increasing: bool = False) -> Any:
    """A config field and the values it may take: bounds on the number (on every element of
    a tuple), a tuple's length, odd, increasing. ``check_config`` enforces them at load time."""
    rule = dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices, length=length, odd=odd, increasing=increasing)
    return field(default=default, metadata={"rule": rule})


@dataclass
class PathsConfig:
    data: str = "input/luna16"            # LUNA16-layout folder (built-in phantom by default)
    manifest: str = ""                    # hospital CSV manifest; replaces `data` when set
    cache: str = "input/cache/cache.h5"   # 2.5D patch cache written by prepare.py
    folds: str = "folds/folds.csv"        # single source of truth for splits
    outputs: str = "outputs"
    experiment: str = "default"           # outputs/<experiment>/...
    allow_partial: bool = False           # LUNA16: ignore table rows of scans not on disk
    # Labels of a fine mask with no coordinate row: LUNA16 scores only annotations.csv nodules,
    # so by default they are findings to ignore (never scored, never negatives). True: each
    # becomes a nodule of its own (hospital masks that come without any coordinates).
    mask_only_nodules: bool = False


@dataclass
class PhantomConfig:
    n_scans: int = ranged(30, ge=1)
    seed: int = ranged(0, ge=0)
    max_slices: int = ranged(96, ge=8)  # z crop around the nodules, keeps files small
    max_slice_thickness_mm: float = ranged(2.5, gt=0)  # LUNA16's inclusion rule
    min_slice_thickness_mm: float = ranged(0.0, ge=0)  # > 0: only scans at least this thick (a shifted condition)
    min_readers: int = ranged(3, ge=1, le=4)  # annotations.csv: nodules >= 3 mm marked by >= 3 readers
    min_diameter_mm: float = ranged(3.0, ge=0)
    n_subsets: int = ranged(10, ge=1)
    workers: int = ranged(2, ge=1)
    # What real chest CT holds, at published frequencies (../shared/reference/domain.md).
    empty_scan_fraction: float = ranged(0.33, ge=0, lt=1)  # scans with no annotated nodule (LUNA16: ~1/3)
    # scans are taken so that about this share of annotated nodules is part-solid or ground
    # glass (published: 12-20 %; LIDC's consensus nodules alone: ~8 %); 0 = LIDC's own draw
    nonsolid_fraction: float = ranged(0.15, ge=0, le=1)
    juxta_pleural_fraction: float = ranged(0.25, ge=0, le=1)  # of nodules, touching the costal or mediastinal pleura
    # of nodules, touching a 0.8-2.5 mm vessel; the rest isolated
    juxta_vascular_fraction: float = ranged(0.175, ge=0, le=1)
    # a solid nodule is calcified when this share of its readers says so
    calcified_reader_share: float = ranged(0.3, ge=0, le=1)
    # share of annotated nodules drawn with an air cavity: those most readers mark "air", topped
    # up from solid, non-calcified nodules >= 8 mm
    cavitary_fraction: float = ranged(0.02, ge=0, le=1)
    shape_noise_mm: float = ranged(0.4, ge=0)  # sd of the smooth change of each nodule's rendered surface
    emphysema_probability: float = ranged(0.25, ge=0, le=1)  # per scan
    dependent_density_probability: float = ranged(0.3, ge=0, le=1)  # per scan: subpleural posterior density
    plaque_probability: float = ranged(0.3, ge=0, le=1)  # per scan: 1-4 pleural plaques or thickenings
    scar_probability: float = ranged(0.4, ge=0, le=1)  # per scan: 1-3 linear scars (parenchymal bands)
    micronodules_per_scan: float = ranged(1.5, ge=0)  # mean number of sub-3 mm nodules (listed as excluded findings)
    # Shifts of the renderer, for robustness conditions (defaults: the built-in dataset).
    profiles: tuple[str, ...] = ()        # reconstruction kernels drawn per scan; () = the four built-in ones
    noise_scale: float = ranged(1.0, ge=0)  # x every kernel's noise sd
    edge_mm: float = ranged(0.4, ge=0)  # gaussian blur of the nodules' partial-volume edge (x 1-2.5 by margin)


@dataclass
class CacheConfig:
    spacing_zyx: tuple[float, float, float] = ranged((1.25, 0.75, 0.75), gt=0, le=10, length=3)  # mm, model space
    hu_clip: tuple[float, float] = ranged((-1200.0, 600.0), length=2, increasing=True)  # stored HU range (int16)
    window: tuple[float, float] = ranged((-1000.0, 400.0), length=2, increasing=True)  # HU -> [0, 1] for the network
    k_slices: int = ranged(5, ge=1, le=31, odd=True)  # 2.5D: adjacent axial slices as channels (odd)
    patch_size: int = ranged(64, ge=16, le=1024)  # in-plane pixels at `spacing_zyx`
    jitter_px: int = ranged(12, ge=0)  # random offset of positive patches from the centre
    negatives_per_positive: float = ranged(1.0, ge=0)
    hard_negative_fraction: float = ranged(0.5, ge=0, le=1)  # share of negatives at vessel-like candidates
    negative_margin_mm: float = ranged(5.0, ge=0)  # negatives keep this far from any nodule surface
    # unused since validation segments through the scan (infer.roi_margin_mm); kept because the
    # cache's hash covers it, and dropping it would rebuild every cache and retrain on it
    roi_margin_mm: float = ranged(5.0, ge=0)
    prior_margin_mm: float = ranged(2.0, ge=0)  # coarse prior (half-max pseudo-mask) reaches this beyond the sphere
    workers: int = ranged(2, ge=1)
    seed: int = ranged(0, ge=0)


@dataclass
class FoldsConfig:
    n_folds: int = ranged(5, ge=2)
    holdout_fraction: float = ranged(0.2, ge=0, lt=1)
    fine_fraction: float = ranged(0.2, gt=0, le=1)  # share of training scans that keep their fine masks
    seed: int = ranged(0, ge=0)


@dataclass
class ModelConfig:
    # smp: Unet | UnetPlusPlus | FPN; candidate classifiers: MultiView (2.5D views) | Cube3D (3D CNN)
    arch: str = ranged("Unet", choices=("Unet", "UnetPlusPlus", "FPN", "MultiView", "Cube3D"))
    encoder: str = "tu-coatnet_0_rw_224"
    encoder_weights: str = ""             # "" = random init; or a local .pth/.safetensors file
    encoder_depth: int = ranged(5, ge=3, le=5)
    decoder_channels: tuple[int, ...] = ranged((256, 128, 64, 32, 16), ge=1)
    head_prior: float = ranged(0.0, ge=0, lt=1)  # > 0: initial nodule probability of every pixel (output bias)
    # Segmentation nets: one more input channel, the coordinates' sphere as a signed distance
    # (src.data.preprocess.prompt_channel); 0 where no coordinates are given (whole-scan mode).
    prompt: bool = False
    # Unet only: > 0 adds a skip at stride 1 (two 3x3 convs of this width over the input,
    # joined to the decoder's last output); smp's finest skip is at stride 2 (1.5 mm here).
    stride1_skip: int = ranged(0, ge=0)


COARSE_MODES = ("ignore", "sphere", "mt", "prior")   # loss.coarse: what coarse (coordinate-only) patches learn from


@dataclass
class LossConfig:
    dice_weight: float = ranged(1.0, ge=0)
    bce_weight: float = ranged(1.0, ge=0)
    # ignore | sphere | mt (coarse-constrained mean teacher) | prior (half-max pseudo-masks + mt)
    coarse: str = ranged("mt", choices=COARSE_MODES)
    coarse_weight: float = ranged(1.0, ge=0)
    coarse_background_margin_mm: float = ranged(2.0, ge=0)  # beyond sphere + margin = certain background
    # within this x radius of a given centre = certain nodule (0 = off)
    coarse_core_fraction: float = ranged(0.4, ge=0, le=1)
    mt_confidence: float = ranged(0.8, ge=0.5, le=1)  # keep teacher pixels with p>c or p<1-c
    mt_rampup_epochs: float = ranged(3.0, ge=0)  # sigmoid ramp-up of the consistency weight
    small_nodule_boost: float = ranged(2.0, gt=0)  # sampling weight for nodules < 6 mm
    nonsolid_boost: float = ranged(2.0, gt=0)  # sampling weight for part-solid and ground-glass nodules


@dataclass
class DistillConfig:
    supervised_weight: float = ranged(1.0, ge=0)  # Dice+BCE on fine masks
    kd_weight: float = ranged(1.0, ge=0)  # logit distillation against ensemble soft targets
    temperature: float = ranged(2.0, gt=0)
    region_weight: float = ranged(4.0, ge=0)  # extra KD weight inside the nodule region (0 = off)
    region_margin_mm: float = ranged(3.0, ge=0)
    feature_weight: float = ranged(0.0, ge=0)  # attention transfer to teacher encoder stages (0 = off)
    feature_teacher_fold: int = ranged(0, ge=0)  # which fold teacher provides the online features
    coarse_pseudo: bool = True            # KD on coarse scans' patches too (False: on fine scans only, an ablation)


@dataclass
class StageConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    epochs: int = ranged(30, ge=1)
    steps_per_epoch: int = ranged(200, ge=1)
    batch_size: int = ranged(32, ge=1)
    lr: float = ranged(1e-3, gt=0)
    weight_decay: float = ranged(1e-4, ge=0)
    warmup_epochs: float = ranged(1.0, ge=0)
    ema_decay: float = ranged(0.99, ge=0, lt=1)
    positive_fraction: float = ranged(0.5, ge=0, le=1)  # share of nodule patches per batch
    fine_share: float = ranged(0.5, ge=0, le=1)  # of those, share drawn from fine-mask patches
    # prompted models: share of patches trained without their prompt, so that one network
    # serves both modes (coordinates given, and whole-scan search)
    prompt_dropout: float = ranged(0.5, ge=0, le=1)
    num_workers: int = ranged(2, ge=0)
    compile: bool = False
    channels_last: bool = True   # 2D nets in NHWC memory, on CPU too (faster there: docs/benchmarks.md)
    grad_clip: float = ranged(1.0, ge=0)
    val_every: int = ranged(1, ge=1)  # validate every N epochs (and after the last); best among those
    seed: int = ranged(0, ge=0)


@dataclass
class AugmentConfig:
    flip: bool = True
    rot90: bool = True
    affine_p: float = ranged(0.5, ge=0, le=1)
    shift: float = ranged(0.0625, ge=0, le=0.5)
    scale: float = ranged(0.15, ge=0, lt=1)
    rotate_deg: float = ranged(15.0, ge=0, le=180)
    intensity_p: float = ranged(0.5, ge=0, le=1)  # brightness/contrast in the normalised window
    noise_p: float = ranged(0.3, ge=0, le=1)
    blur_p: float = ranged(0.2, ge=0, le=1)


@dataclass
class PseudoConfig:
    tta: bool = True                      # flip TTA over the ensemble
    prior_margin_mm: float = ranged(2.0, ge=0)  # zero outside coarse sphere + margin
    temperature: float = ranged(1.0, gt=0)  # >1 softens, <1 sharpens the ensemble logits
    batch_size: int = ranged(64, ge=1)


@dataclass
class InferConfig:
    threshold: float = ranged(0.5, gt=0, lt=1)
    threshold_from_oof: bool = True       # use outputs/<exp>/postprocessing.json when cv.py wrote one
    # the student validates (best epoch, its own threshold) on the fine training scans'
    # nodules when they are at least this many; else its latest epoch at the teachers' threshold
    min_validation_nodules: int = ranged(10, ge=1)
    batch_size: int = ranged(32, ge=1)
    tta: bool = False
    roi_margin_mm: float = ranged(10.0, ge=0)  # coords mode: region around the given centre
    coarse_prior: bool = True             # coords mode: nothing beyond the given sphere + margin
    prior_margin_mm: float = ranged(2.0, ge=0)


@dataclass
class DetectConfig:
    """Whole-scan detection: candidates from a probability map, then the false-positive
    reduction (FPR) classifier on multi-view patches through each candidate."""
    # local maxima of the map at this probability: recall, not precision
    candidate_threshold: float = ranged(0.2, gt=0, lt=1)
    peak_separation_mm: float = ranged(6.0, gt=0)  # maxima closer than ~this are one
    # per scan, to the classifier: every blob-only candidate, then the map's peaks by probability
    # (recall 0.95 within 150 per scan is the target; bench/detection.py)
    max_candidates: int = ranged(150, ge=1)
    # the strongest classical blobs (src.data.blobs) merged with the map's peaks; 0: map only
    blob_candidates: int = ranged(50, ge=0)
    blob_min_response: float = ranged(50.0, ge=0)  # HU-scaled -sigma^2 LoG; ground glass stands ~150+
    max_detections: int = ranged(50, ge=1)  # per scan, by the final probability, are written
    min_component_mm3: float = ranged(3.0, ge=0)  # of a candidate's core (>= half its peak)
    # Nodules lie in the lungs. The prediction region is the lungs grown by a few mm (for
    # pleural nodules), so components mostly outside them are chest wall or mediastinum; a
    # pleural nodule that a lung mask cut off still keeps part of itself inside.
    min_lung_fraction: float = ranged(0.25, ge=0, le=1)
    # Where the classifier's training candidates come from. oof: each fold teacher's
    # whole-scan map on its own validation scans (the test-time distribution); listed: no
    # network pass, only the annotated nodules and candidates_V2.csv (fast, CPU demo).
    candidate_source: str = ranged("oof", choices=("oof", "listed"))
    listed_negatives: bool = True         # add candidates_V2.csv negatives where the dataset has them
    # detected false positives per scan whose cubes train (a random draw; >= max_candidates: all)
    train_negatives_per_scan: int = ranged(150, ge=0)
    # hard-negative mining: rounds of half the schedule from the best classifier so far, in
    # which the negatives it scores highest (this share of them) get half the negatives' draws
    mining_rounds: int = ranged(1, ge=0)
    mined_fraction: float = ranged(0.1, gt=0, le=1)
    view_size: int = ranged(31, ge=7, odd=True)  # pixels per view, odd (centred on the candidate)
    view_spacing_mm: float = ranged(1.0, gt=0)  # isotropic
    view_slices: int = ranged(3, ge=1, odd=True)  # adjacent slices per view (axial, coronal, sagittal), odd
    # a classifier whose pooled OOF AUC is below this has learned nothing: it is not used
    # (weight 0, the map alone) and the stage says so loudly
    min_classifier_auc: float = ranged(0.6, ge=0, le=1)
    classifier_weight: float = ranged(-1.0, le=1)  # final logit = w * classifier + (1 - w) * map; < 0: chosen on OOF
    default_classifier_weight: float = ranged(0.8, ge=0, le=1)  # when no OOF map candidates exist to choose on


@dataclass
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    phantom: PhantomConfig = field(default_factory=PhantomConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    teacher: StageConfig = field(default_factory=StageConfig)
    student: StageConfig = field(default_factory=lambda: StageConfig(
        model=ModelConfig(encoder="tu-mobilenetv3_large_100", decoder_channels=(64, 32, 24, 16, 8),
                          head_prior=0.02)))
    distill: DistillConfig = field(default_factory=DistillConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    fpr: StageConfig = field(default_factory=lambda: StageConfig(
        # the 3D CNN: hold-out CPM 0.751 against the multi-view net's 0.536 (bench/detection.py)
        model=ModelConfig(arch="Cube3D", encoder="", head_prior=0.05),
        epochs=10, steps_per_epoch=60, batch_size=64, lr=2e-3, warmup_epochs=0.5, ema_decay=0.98,
        positive_fraction=0.3, num_workers=0))
    device: str = ranged("auto", choices=("auto", "cpu", "cuda"))
    # auto: bf16/fp16 autocast on CUDA, fp32 on CPU; bf16/fp16 force it anywhere (slow on CPU)
    amp: str = ranged("auto", choices=("auto", "bf16", "fp16", "off"))


# ----------------------------------------------------------------------------- build


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the dataclass field's type, or fail naming the key."""
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}' must be a mapping, got {value!r}")
        return from_dict(hint, value, where)
    origin = get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{where}' must be a list, got {value!r}")
        args = get_args(hint)
        item = args[0] if args else Any
        return tuple(_coerce(v, item, where) for v in value)
    if hint is float:
        if isinstance(value, str):   # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):   # .inf, nan, 1e400: no setting means that
                raise ConfigError(f"config key '{where}' must be a finite number, got {value!r}")
            return float(value)
    # bool is an int to Python: "epochs=true" must not read as 1
    if hint in (int, str, bool, float) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise ConfigError(f"config key '{where}' must be {hint.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """A config dataclass from a (partial) mapping: defaults for what is missing, every key
    known and of the right type, else a ConfigError naming it."""
    if not isinstance(data, dict):
        raise ConfigError(f"config {where or cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    obj = cls()
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        if key not in hints:
            raise ConfigError(f"unknown config key '{name}'; valid keys{' of ' + where if where else ''}: "
                              f"{', '.join(sorted(hints))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            value = _deep_merge(dataclasses.asdict(current), value)
        setattr(obj, key, _coerce(value, hints[key], name))
    return obj


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections")
    parent = data.pop("inherit", None)
    if parent:
        data = _deep_merge(_read_yaml(path.parent / parent), data)
    return data


def parse_overrides(items: list[str] | None) -> dict:
    """``["teacher.epochs=3", "cache.spacing_zyx=[1,1,1]"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' was already given a value, not sub-keys")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"override '{item}': the value is not valid YAML") from None
    return out


def load_config(path: str | Path | None = DEFAULT_CONFIG, overrides: list[str] | None = None) -> Config:
    """``path=None``: the dataclass defaults alone (tests); scripts pass ``--config``."""
    data: dict = {}
    if path:
        p = Path(path)
        p = p if p.is_absolute() or p.exists() else ROOT / p
        data = _read_yaml(p)
        try:
            from_dict(Config, data)
        except ConfigError as err:
            raise ConfigError(f"{p}: {err}") from None
    try:
        cfg = from_dict(Config, _deep_merge(data, parse_overrides(overrides)))
    except ConfigError as err:
        raise ConfigError(f"--set: {err}") from None
    return check_config(cfg)


def _rule_problem(value: Any, rule: dict) -> str | None:
    items = value if isinstance(value, tuple) else (value,)
    if rule["length"] is not None and len(items) != rule["length"]:
        return f"must have {rule['length']} values"
    if rule["choices"] is not None and value not in rule["choices"]:
        return f"must be one of {', '.join(map(str, rule['choices']))}"
    for bound, ok, text in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                            ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
        if rule[bound] is not None and not all(ok(v, rule[bound]) for v in items):
            return f"must be {text} {rule[bound]:g}" + (" (every value)" if isinstance(value, tuple) else "")
    if rule["odd"] and not all(v % 2 == 1 for v in items):
        return "must be odd"
    if rule["increasing"] and not all(a < b for a, b in zip(items, items[1:])):
        return "must be increasing (low, high)"
    return None


# Rules that tie two keys together: (keys, holds, what it must be).
_JOINT_RULES = (
    (("phantom.juxta_pleural_fraction", "phantom.juxta_vascular_fraction"), lambda a, b: a + b <= 1,
     "must add up to <= 1"),
    (("phantom.min_slice_thickness_mm", "phantom.max_slice_thickness_mm"), lambda a, b: a <= b, "must be min <= max"),
    (("teacher.model.encoder_depth", "teacher.model.decoder_channels"), lambda d, c: len(c) >= d,
     "need one decoder channel count per encoder stage"),
    (("student.model.encoder_depth", "student.model.decoder_channels"), lambda d, c: len(c) >= d,
     "need one decoder channel count per encoder stage"),
)


def _walk(obj: Any, where: str = ""):
    """(dotted key, value, rule) of every ranged field."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{where}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _walk(value, key + ".")
        elif "rule" in f.metadata:
            yield key, value, f.metadata["rule"]


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


# Keys a stage shares with the others (StageConfig) but reads nothing from: set, they would
# change the run's hash and nothing else.
_NO_EFFECT = (
    ("student.loss", ("coarse", "coarse_weight", "coarse_background_margin_mm", "coarse_core_fraction",
                      "mt_confidence", "mt_rampup_epochs"), "the student learns from distill.*"),
    ("fpr.loss", ("dice_weight", "bce_weight", "coarse", "coarse_weight", "coarse_background_margin_mm",
                  "coarse_core_fraction", "mt_confidence", "mt_rampup_epochs", "small_nodule_boost", "nonsolid_boost"),
     "the candidate classifier's loss is fixed (src.train.fpr)"),
    ("fpr", ("fine_share", "prompt_dropout"), "candidates have neither masks nor prompts"),
    ("fpr.model", ("prompt", "decoder_channels", "encoder_depth", "stride1_skip"), "the classifier has no decoder"),
)


def check_config(cfg: Any, where: str = "") -> Any:
    """Every value of a config (or of one section, named ``where``: "phantom.") within its
    range (``ranged``), and the joint rules; one ConfigError naming the key otherwise. Types
    were checked when the config was built."""
    for key, value, rule in _walk(cfg, where):
        problem = _rule_problem(value, rule)
        if problem:
            shown = list(value) if isinstance(value, tuple) else repr(value)
            raise ConfigError(f"config key '{key}' {problem}, got {shown}")
    for keys, holds, text in _JOINT_RULES:
        if not all(k.startswith(where) for k in keys):
            continue
        values = [_get(cfg, k[len(where):]) for k in keys]
        if not holds(*values):
            raise ConfigError(f"config keys {' and '.join(repr(k) for k in keys)} {text}, got "
                              f"{', '.join(repr(list(v) if isinstance(v, tuple) else v) for v in values)}")
    if isinstance(cfg, Config):
        defaults = Config()
        for section, keys, why in _NO_EFFECT:
            for key in keys:
                if _get(cfg, f"{section}.{key}") != _get(defaults, f"{section}.{key}"):
                    raise ConfigError(f"config key '{section}.{key}' has no effect ({why}); leave it out")
    return cfg


def to_dict(cfg: Any) -> dict:
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg)


# Worker counts change how fast a stage runs, never what it writes (each sample is seeded by
# itself, and results come back in order): hashes see them at fixed values (the demo's, so
# that existing stamps stand), and --workers never refuses a cache or a resume, nor redoes one.
_HASHED_AS = {"workers": 2, "num_workers": 0}


def _pin_workers(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _HASHED_AS[k] if k in _HASHED_AS else _pin_workers(v) for k, v in value.items()}
    return [_pin_workers(v) for v in value] if isinstance(value, list) else value


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def config_changes(before: dict, after: dict) -> list[str]:
    """``"key: old -> new"`` for each value two config dicts (``to_dict``) disagree on; worker
    counts, which change no result, left out."""
    a, b = _flatten(before), _flatten(after)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k.rsplit(".", 1)[-1] not in _HASHED_AS and a.get(k) != b.get(k)]


def config_hash(section: Any) -> str:
    """Short, stable hash of a config (section): stamps files so stages refuse to mix."""
    blob = json.dumps(_pin_workers(to_dict(section)), sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def dump_config(cfg: Config, path: str | Path) -> None:
    from src.utils import atomic_write_text
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


def code_version() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
