"""Checkpoints: plain dicts of tensors and primitives, loadable with ``weights_only=True``.

Every checkpoint carries what is needed to rebuild its network (model config, number of
slices, patch size, the cache config of its model space) next to the raw and EMA weights,
plus the optimizer/scaler/scheduler state, epoch, step and history needed to resume. A
student checkpoint also carries the probability threshold chosen on OOF.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from src.config import CacheConfig, ModelConfig, from_dict, to_dict
from src.data.cache import MODEL_SPACE_KEYS
from src.errors import ConfigError, DataError
from src.models.classifier import CLASSIFIERS
from src.models.factory import STRIDE, build_model
from src.models.fusion import fold_batch_norms
from src.utils import atomic_path

REQUIRED_KEYS = ("model_config", "in_channels", "patch_size", "model", "config")


def save_checkpoint(payload: dict, path: str | Path) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint's dict, or one clear error: never a pickle that runs code."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err).upper():   # torch's wording changes between releases
            raise DataError(f"{path}: refused: not a plain checkpoint (it holds objects other than tensors and "
                            "primitive values, which are never loaded)") from None
        raise DataError(f"{path}: not a readable checkpoint (not a torch checkpoint file)") from None
    except Exception as err:  # noqa: BLE001 - a corrupt file fails in many ways (KeyError on text, EOF, zip errors)
        detail = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: not a readable checkpoint ({detail})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        raise DataError(f"{path}: not a nodule-kd checkpoint (needs {', '.join(REQUIRED_KEYS)})")
    try:  # what rebuilds the network, checked like a config file
        ckpt["model_config"] = to_dict(from_dict(ModelConfig, ckpt["model_config"]))
        ckpt["config"]["cache"] = to_dict(from_dict(CacheConfig, ckpt["config"]["cache"]))
    except (ConfigError, TypeError, AttributeError, KeyError) as err:
        raise DataError(f"{path}: not a usable checkpoint ({err})") from None
    return ckpt


def _model_config(ckpt: dict) -> ModelConfig:
    return from_dict(ModelConfig, ckpt["model_config"])


def cache_config(ckpt: dict) -> CacheConfig:
    """The model space (spacing, window, k, patch) the checkpoint's network was trained in."""
    return from_dict(CacheConfig, ckpt["config"]["cache"])


def model_from_checkpoint(path: str | Path, weights: str = "ema", fold_norms: bool = False,
                          ckpt: dict | None = None) -> nn.Module:
    """Rebuild the network a checkpoint was trained as and load its ``ema`` or ``model`` weights;
    ``fold_norms``: for inference only, batch norm folded into the convs (``src.models.fusion``);
    ``ckpt``: the file's content, when the caller has read it already."""
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    try:
        model = build_model(_model_config(ckpt), ckpt["in_channels"], ckpt["patch_size"])
    except ConfigError as err:
        raise DataError(f"{path}: cannot rebuild its network ({err})") from None
    try:
        model.load_state_dict(ckpt[weights] if ckpt.get(weights) is not None else ckpt["model"])
    except RuntimeError as err:
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line or "Missing" in line),
                     str(err).splitlines()[0])
        raise DataError(f"{path}: weights do not fit the architecture it names ({first[:160]})") from None
    model.checkpoint_meta = {k: ckpt[k] for k in ("stage", "fold", "epoch", "config_hash", "cache_hash", "threshold")
                             if k in ckpt}
    model.eval()
    if fold_norms:
        channels = ckpt["in_channels"] + int(getattr(model, "prompted", False))
        side = ckpt["patch_size"] if model.fixed_input_size else -(-ckpt["patch_size"] // STRIDE) * STRIDE
        probe = torch.rand(2, channels, side, side, generator=torch.Generator().manual_seed(0))
        model = fold_batch_norms(model, probe)
    return model


def refuse_classifier(path: str | Path, ckpt: dict) -> None:
    """Segmentation tools take segmentation networks: an FPR classifier is named, not run."""
    if ckpt["model_config"].get("arch") in CLASSIFIERS:
        raise DataError(f"{path}: a false-positive-reduction classifier ({ckpt['model_config']['arch']}), "
                        "not a segmentation network")


def load_models(paths: list[Path]) -> tuple[list[nn.Module], CacheConfig]:
    """The networks of several checkpoints (an ensemble), which must share one model space,
    ready for inference (batch norm folded)."""
    if not paths:
        raise DataError("no checkpoints to load")
    ckpts = {str(p): load_checkpoint(p) for p in paths}
    for path, ckpt in ckpts.items():
        refuse_classifier(path, ckpt)
    spaces = {path: cache_config(ckpt) for path, ckpt in ckpts.items()}
    first = next(iter(spaces.values()))
    for path, space in spaces.items():   # what the networks see; how the caches were cut may differ
        if [getattr(space, k) for k in MODEL_SPACE_KEYS] != [getattr(first, k) for k in MODEL_SPACE_KEYS]:
            raise DataError(f"{path}: trained in another model space ({', '.join(MODEL_SPACE_KEYS)}) than {paths[0]}")
    return [model_from_checkpoint(p, fold_norms=True, ckpt=ckpts[str(p)]) for p in paths], first


def holdout_leaks(outputs: str | Path, holdout: set[str]) -> list[str]:
    """Checkpoints under ``outputs`` whose training or validation scans include a hold-out scan."""
    leaks = []
    for path in sorted(Path(outputs).glob("**/checkpoint_*.pt")):
        ckpt = load_checkpoint(path)
        seen = set(ckpt.get("train_uids", [])) | set(ckpt.get("val_uids", []))
        if seen & holdout:
            leaks.append(f"{path}: trained or validated on hold-out scan(s), e.g. {sorted(seen & holdout)[0]}")
    return leaks
