"""ONNX export of a trained network (the student, typically) for deployment.

A segmentation graph takes the *normalised* 2.5D stack (N, k, H, W) - HU clipped to the
cache window and scaled to [0, 1], see ``src.data.preprocess.normalise`` - and returns
logits (N, 1, H, W); batch, height and width are dynamic (H and W multiples of 32), except
for encoders built for one input size (CoAtNet, MaxViT: H = W = the patch size, tiled by the
consumer). The FPR classifier takes the normalised views (N, 3, k, S, S) or cube
(N, 1, S, S, S) of ``src.models.classifier`` and returns logits (N, 1); the batch is dynamic.
The window, spacing and k are stored in the model's metadata so a consumer can reproduce the input.
"""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import torch
from timm.utils.model import reparameterize_model
from torch import nn

from src.config import CacheConfig, DetectConfig, code_version
from src.data.preprocess import PROMPT_SCALE_MM
from src.utils import atomic_path

OPSET = 17


PROMPT_INPUT = ("; then channel k: the prompt, clip(-d / prompt_scale_mm, -1, 1) with d the signed distance (mm) "
                "to the given nodule's sphere (centre, diameter), negative inside; 0 everywhere when no coordinates "
                "are given")


def onnx_metadata(cache: CacheConfig, threshold: float, threshold_source: str, checkpoint: Path,
                  prompted: bool = False, fixed_size: bool = False) -> dict:
    """What a consumer needs to reproduce the input and read the output."""
    channels = "k + 1" if prompted else "k"
    size = (f"H = W = {cache.patch_size} (tile larger inputs)" if fixed_size else "H and W multiples of 32")
    return {"window_hu": list(cache.window), "spacing_zyx_mm": list(cache.spacing_zyx), "k_slices": cache.k_slices,
            "input": f"HU clipped to window_hu, scaled to [0,1]; (N, {channels}, H, W), {size}"
                     + (PROMPT_INPUT if prompted else ""),
            "prompted": prompted, **({"prompt_scale_mm": PROMPT_SCALE_MM} if prompted else {}),
            "output": f"logits (N, 1, H, W); sigmoid >= {threshold:g} = nodule", "threshold": threshold,
            "threshold_source": threshold_source, "source": str(checkpoint), "code_version": code_version()}


def fpr_metadata(detect: DetectConfig, window, weight: float, checkpoint: Path, arch: str) -> dict:
    seen = ("the cube of side view_size around the candidate; (N, 1, S, S, S)" if arch == "Cube3D" else
            "axial, coronal, sagittal stacks of view_slices slices through the candidate, view_size px; "
            "(N, 3, k, S, S)")
    return {"window_hu": list(window), "view_size": detect.view_size, "view_spacing_mm": detect.view_spacing_mm,
            "view_slices": detect.view_slices, "arch": arch,
            "input": f"{seen}; at view_spacing_mm, axes along world z, y, x, HU clipped to window_hu, scaled to [0,1]",
            "output": "logits (N, 1); final = sigmoid(w * logit + (1 - w) * logit(segmentation peak))",
            "classifier_weight": weight, "source": str(checkpoint), "code_version": code_version()}


def export_onnx(model: nn.Module, k: int, patch_size: int, path: str | Path, metadata: dict) -> Path:
    model = reparameterize_model(model.eval().cpu())  # fuses re-parameterisable branches (FastViT/MobileOne)
    if hasattr(model, "offsets"):   # a candidate classifier: its input points say its shape
        example = torch.zeros(1, *model.offsets.shape[:-1])
        axes = {"image": {0: "batch"}, "logits": {0: "batch"}}
    else:
        example = torch.zeros(1, k + int(getattr(model, "prompted", False)), patch_size, patch_size)
        dynamic = {0: "batch"} if getattr(model, "fixed_input_size", None) else {0: "batch", 2: "height", 3: "width"}
        axes = {"image": dynamic, "logits": dynamic}
    with atomic_path(path, suffix=".onnx") as tmp:
        torch.onnx.export(model, example, str(tmp), input_names=["image"], output_names=["logits"],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        proto = onnx.load(str(tmp))
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return Path(path)
