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
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from src.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "configs/default.yaml"   # every script's config unless --config says otherwise


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
    n_scans: int = 30
    seed: int = 0
    max_slices: int = 96                  # z crop around the nodules, keeps files small
    max_slice_thickness_mm: float = 2.5   # LUNA16's inclusion rule
    min_slice_thickness_mm: float = 0.0   # > 0: only scans at least this thick (a shifted condition)
    min_readers: int = 3                  # annotations.csv: nodules >= 3 mm marked by >= 3 readers
    min_diameter_mm: float = 3.0
    n_subsets: int = 10
    workers: int = 2
    # What real chest CT holds, at published frequencies (../shared/reference/domain.md).
    empty_scan_fraction: float = 0.33     # scans with no annotated nodule (LUNA16: ~1/3)
    nonsolid_fraction: float = 0.15       # scans are taken so that about this share of annotated nodules is
                                          # part-solid or ground glass (published: 12-20 %; LIDC's consensus
                                          # nodules alone: ~8 %); 0 = LIDC's own draw
    juxta_pleural_fraction: float = 0.25  # of nodules, touching the costal or mediastinal pleura
    juxta_vascular_fraction: float = 0.175  # of nodules, touching a 0.8-2.5 mm vessel; the rest isolated
    calcified_reader_share: float = 0.3   # a solid nodule is calcified when this share of its readers says so
    cavitary_fraction: float = 0.02       # of solid, non-calcified nodules >= 8 mm: an air cavity
    shape_noise_mm: float = 0.4           # sd of the smooth change of each nodule's rendered surface
    emphysema_probability: float = 0.25   # per scan
    dependent_density_probability: float = 0.3   # per scan: subpleural posterior density
    plaque_probability: float = 0.3       # per scan: 1-4 pleural plaques or thickenings
    scar_probability: float = 0.4         # per scan: 1-3 linear scars (parenchymal bands)
    micronodules_per_scan: float = 1.5    # mean number of sub-3 mm nodules (listed as excluded findings)
    # Shifts of the renderer, for robustness conditions (defaults: the built-in dataset).
    profiles: tuple[str, ...] = ()        # reconstruction kernels drawn per scan; () = the four built-in ones
    noise_scale: float = 1.0              # x every kernel's noise sd
    edge_mm: float = 0.4                  # gaussian blur of the nodules' partial-volume edge (x 1-2.5 by margin)


@dataclass
class CacheConfig:
    spacing_zyx: tuple[float, float, float] = (1.25, 0.75, 0.75)  # mm, model space
    hu_clip: tuple[float, float] = (-1200.0, 600.0)   # stored HU range (int16)
    window: tuple[float, float] = (-1000.0, 400.0)    # HU -> [0, 1] for the network
    k_slices: int = 5                     # 2.5D: adjacent axial slices as channels (odd)
    patch_size: int = 64                  # in-plane pixels at `spacing_zyx`
    jitter_px: int = 12                   # random offset of positive patches from the centre
    negatives_per_positive: float = 1.0
    hard_negative_fraction: float = 0.5   # share of negatives at vessel-like candidates
    negative_margin_mm: float = 5.0       # negatives keep this far from any nodule surface
    roi_margin_mm: float = 5.0            # 3D validation ROI around each nodule
    prior_margin_mm: float = 2.0          # coarse prior (half-max pseudo-mask) reaches this beyond the sphere
    workers: int = 2
    seed: int = 0


@dataclass
class FoldsConfig:
    n_folds: int = 5
    holdout_fraction: float = 0.2
    fine_fraction: float = 0.2            # share of training scans that keep their fine masks
    seed: int = 0


@dataclass
class ModelConfig:
    arch: str = "Unet"                    # smp: Unet | UnetPlusPlus | FPN; MultiView: candidate classifier
    encoder: str = "tu-coatnet_0_rw_224"
    encoder_weights: str = ""             # "" = random init; or a local .pth/.safetensors file
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    head_prior: float = 0.0               # > 0: initial nodule probability of every pixel (output bias)


@dataclass
class LossConfig:
    dice_weight: float = 1.0
    bce_weight: float = 1.0
    coarse: str = "mt"                    # ignore | sphere | mt (coarse-constrained mean teacher) | prior (half-max pseudo-masks + mt)
    coarse_weight: float = 1.0
    coarse_background_margin_mm: float = 2.0   # beyond sphere + margin = certain background
    coarse_core_fraction: float = 0.4     # within this x radius of a given centre = certain nodule (0 = off)
    mt_confidence: float = 0.8            # keep teacher pixels with p>c or p<1-c
    mt_rampup_epochs: float = 3.0         # sigmoid ramp-up of the consistency weight
    small_nodule_boost: float = 2.0       # sampling weight for nodules < 6 mm


@dataclass
class DistillConfig:
    supervised_weight: float = 1.0        # Dice+BCE on fine masks
    kd_weight: float = 1.0                # logit distillation against ensemble soft targets
    temperature: float = 2.0
    region_weight: float = 4.0            # extra KD weight inside the nodule region (0 = off)
    region_margin_mm: float = 3.0
    feature_weight: float = 0.0           # attention transfer to teacher encoder stages (0 = off)
    feature_teacher_fold: int = 0         # which fold teacher provides the online features
    coarse_pseudo: bool = True            # KD on coarse scans' patches too (False: on fine scans only, an ablation)


@dataclass
class StageConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    epochs: int = 30
    steps_per_epoch: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    ema_decay: float = 0.99
    positive_fraction: float = 0.5        # share of nodule patches per batch
    fine_share: float = 0.5               # of those, share drawn from fine-mask patches
    num_workers: int = 2
    compile: bool = False
    channels_last: bool = True
    grad_clip: float = 1.0
    val_every: int = 1                    # validate every N epochs (and after the last); best among those
    seed: int = 0


@dataclass
class AugmentConfig:
    flip: bool = True
    rot90: bool = True
    affine_p: float = 0.5
    shift: float = 0.0625
    scale: float = 0.15
    rotate_deg: float = 15.0
    intensity_p: float = 0.5              # brightness/contrast in the normalised window
    noise_p: float = 0.3
    blur_p: float = 0.2


@dataclass
class PseudoConfig:
    tta: bool = True                      # flip TTA over the ensemble
    prior_margin_mm: float = 2.0          # zero outside coarse sphere + margin
    temperature: float = 1.0              # >1 softens, <1 sharpens the ensemble logits
    batch_size: int = 64


@dataclass
class InferConfig:
    threshold: float = 0.5
    threshold_from_oof: bool = True       # use outputs/<exp>/postprocessing.json when cv.py wrote one
    batch_size: int = 32
    tta: bool = False
    roi_margin_mm: float = 10.0           # coords mode: region around the given centre
    coarse_prior: bool = True             # coords mode: nothing beyond the given sphere + margin
    prior_margin_mm: float = 2.0


@dataclass
class DetectConfig:
    """Whole-scan detection: candidates from a probability map, then the false-positive
    reduction (FPR) classifier on multi-view patches through each candidate."""
    candidate_threshold: float = 0.2      # local maxima of the map at this probability: recall, not precision
    peak_separation_mm: float = 6.0       # maxima closer than ~this are one
    max_candidates: int = 1000            # per scan, by the map's peak probability, go to the classifier
    max_detections: int = 50              # per scan, by the final probability, are written
    min_component_mm3: float = 3.0        # of a candidate's core (>= half its peak)
    # Nodules lie in the lungs. The prediction region is the lungs grown by a few mm (for
    # pleural nodules), so components mostly outside them are chest wall or mediastinum; a
    # pleural nodule that a lung mask cut off still keeps part of itself inside.
    min_lung_fraction: float = 0.25
    # Where the classifier's training candidates come from. oof: each fold teacher's
    # whole-scan map on its own validation scans (the test-time distribution); listed: no
    # network pass, only the annotated nodules and candidates_V2.csv (fast, CPU demo).
    candidate_source: str = "oof"
    listed_negatives: bool = True         # add candidates_V2.csv negatives where the dataset has them
    train_negatives_per_scan: int = 100   # map false positives per scan whose cubes train (a random draw)
    view_size: int = 31                   # pixels per view, odd (centred on the candidate)
    view_spacing_mm: float = 1.0          # isotropic
    view_slices: int = 3                  # adjacent slices per view (axial, coronal, sagittal), odd
    classifier_weight: float = -1.0       # final logit = w * classifier + (1 - w) * map; < 0: chosen on OOF
    default_classifier_weight: float = 0.8   # when no OOF map candidates exist to choose on


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
        model=ModelConfig(arch="MultiView", encoder="resnet10t", head_prior=0.05),
        epochs=10, steps_per_epoch=60, batch_size=64, lr=2e-3, warmup_epochs=0.5, ema_decay=0.98,
        positive_fraction=0.3, num_workers=0))
    device: str = "auto"                  # auto | cpu | cuda
    amp: str = "auto"                     # auto | bf16 | fp16 | off (CUDA only; CPU runs fp32)


# ----------------------------------------------------------------------------- build


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the dataclass field's type, or fail naming the key."""
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}' must be a mapping, got {value!r}")
        return _from_dict(hint, value, where)
    origin = get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{where}' must be a list, got {value!r}")
        args = get_args(hint)
        item = args[0] if args else Any
        return tuple(_coerce(v, item, where) for v in value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"config key '{where}' must be {hint.__name__}, got {value!r}")
    return value


def _from_dict(cls: type, data: dict, where: str = "") -> Any:
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
            _from_dict(Config, data)
        except ConfigError as err:
            raise ConfigError(f"{p}: {err}") from None
    try:
        return _from_dict(Config, _deep_merge(data, parse_overrides(overrides)))
    except ConfigError as err:
        raise ConfigError(f"--set: {err}") from None


def to_dict(cfg: Any) -> dict:
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg)


def config_hash(section: Any) -> str:
    """Short, stable hash of a config (section): stamps files so stages refuse to mix."""
    blob = json.dumps(to_dict(section), sort_keys=True).encode()
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
