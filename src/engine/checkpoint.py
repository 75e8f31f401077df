"""Checkpoints: plain dicts of tensors and primitives, loadable with ``weights_only=True``.

Every checkpoint carries what is needed to rebuild its network (model config, number of
slices, patch size) next to the raw and EMA weights, plus the optimizer/scaler/scheduler
state, epoch, step and history needed to resume.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from src.config import ModelConfig
from src.models.factory import build_model
from src.utils import atomic_path


def save_checkpoint(payload: dict, path: str | Path) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def model_from_checkpoint(path: str | Path, weights: str = "ema") -> nn.Module:
    """Rebuild the network a checkpoint was trained as and load its ``ema`` or ``model`` weights."""
    ckpt = load_checkpoint(path)
    cfg = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["model_config"].items()})
    model = build_model(cfg, ckpt["in_channels"], ckpt["patch_size"])
    model.load_state_dict(ckpt[weights] if ckpt.get(weights) is not None else ckpt["model"])
    model.checkpoint_meta = {k: ckpt[k] for k in ("stage", "fold", "epoch", "config_hash", "cache_hash") if k in ckpt}
    return model.eval()
