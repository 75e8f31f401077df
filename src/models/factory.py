"""Teacher and student networks: segmentation-models-pytorch over timm encoders.

Nothing else in the project builds a network. A checkpoint stores the ModelConfig, the
number of input slices and the patch size next to the weights, so ``model_from_checkpoint``
rebuilds exactly the trained model with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import math
from pathlib import Path

import segmentation_models_pytorch as smp
from segmentation_models_pytorch.base.modules import Conv2dReLU
import torch
from torch import nn

from src.config import ModelConfig
from src.errors import ConfigError
from src.models.classifier import CLASSIFIERS, CubeClassifier, MultiViewClassifier

# Encoders whose attention windows / relative-position tables are fixed when built: timm
# must know the input size, and inference must tile at exactly that size.
FIXED_SIZE_ENCODERS = ("maxvit", "maxxvit", "coatnet", "coatnext")
STRIDE = 32   # smp encoders downsample 5 times: a fully convolutional model takes multiples of it


def needs_fixed_size(encoder: str) -> bool:
    return any(key in encoder for key in FIXED_SIZE_ENCODERS)


def check_encoder(cfg: ModelConfig) -> None:
    """An encoder smp can build: timm's by ``tu-<name>`` (the classifier: plain timm names),
    smp's own by name; else one ConfigError naming it, before anything is built."""
    import timm

    if cfg.arch == "Cube3D":
        return   # MONAI's 3D CNN: no encoder to name
    if cfg.arch == "MultiView" or cfg.encoder.startswith("tu-"):
        known = timm.is_model(cfg.encoder.removeprefix("tu-"))
    else:
        known = cfg.encoder in smp.encoders.get_encoder_names()
    if not known:
        raise ConfigError(f"unknown encoder '{cfg.encoder}' (timm encoders are 'tu-<timm model name>')")


def build_model(cfg: ModelConfig, in_channels: int, patch_size: int) -> nn.Module:
    """A 1-class smp segmentation model; ``model.fixed_input_size`` is the only (H, W) it
    accepts, or None if it is fully convolutional over any multiple of its stride.
    ``arch: MultiView | Cube3D`` builds a candidate classifier instead (``in_channels``
    slices per view, ``patch_size`` the views' or the cube's side). ``in_channels`` counts the
    2.5D slices; a prompted model (``cfg.prompt``) takes the prompt channel after them and
    says so in ``model.prompted``."""
    check_encoder(cfg)
    if cfg.arch in CLASSIFIERS:
        model = MultiViewClassifier(cfg.encoder, in_channels, patch_size, cfg.head_prior) \
            if cfg.arch == "MultiView" else CubeClassifier(patch_size, cfg.head_prior)
        if cfg.encoder_weights:
            load_encoder_weights(model, Path(cfg.encoder_weights))
        model.fixed_input_size = (patch_size, patch_size)
        return model
    kwargs = dict(encoder_name=cfg.encoder, encoder_weights=None, in_channels=in_channels + int(cfg.prompt), classes=1,
                  encoder_depth=cfg.encoder_depth)
    if cfg.arch in ("Unet", "UnetPlusPlus"):
        kwargs["decoder_channels"] = tuple(cfg.decoder_channels)[: cfg.encoder_depth]
    fixed = needs_fixed_size(cfg.encoder)
    if fixed:
        kwargs["img_size"] = patch_size
    if not hasattr(smp, cfg.arch):
        raise ConfigError(f"unknown smp architecture '{cfg.arch}'")
    try:
        model = getattr(smp, cfg.arch)(**kwargs)
    except (ValueError, RuntimeError, AssertionError) as err:   # e.g. a plain ViT: no feature pyramid
        raise ConfigError(f"encoder '{cfg.encoder}' cannot serve a {cfg.arch} at patch {patch_size} "
                          f"({str(err).splitlines()[0][:120]})") from None
    if cfg.stride1_skip:
        if cfg.arch != "Unet":
            raise ConfigError(f"model.stride1_skip needs arch Unet (got '{cfg.arch}')")
        model = StrideOneUnet(model, in_channels + int(cfg.prompt), cfg.stride1_skip)
    if cfg.head_prior > 0:
        # Start every pixel at a small nodule probability (RetinaNet's prior init). With a zero
        # bias, slim decoders can settle on "background = active features, nodule = none",
        # which caps the nodule probability near sigmoid(bias) (seen with 8-channel decoders).
        nn.init.constant_(model.segmentation_head[0].bias, math.log(cfg.head_prior / (1 - cfg.head_prior)))
    if cfg.encoder_weights:
        load_encoder_weights(model, Path(cfg.encoder_weights))
    model.fixed_input_size = (patch_size, patch_size) if fixed else None
    model.prompted = cfg.prompt
    return model


class StrideOneUnet(nn.Module):
    """smp's Unet with one more skip, at stride 1: a small conv branch over the input joins
    the decoder's last output before the head, so edges are drawn from full-resolution pixels
    (a 4 mm nodule is 5 pixels wide; smp's finest skip is at stride 2). Keeps smp's attribute
    names (encoder, decoder, segmentation_head) for weight loading and feature hooks."""

    def __init__(self, unet: nn.Module, in_channels: int, width: int):
        super().__init__()
        self.encoder, self.decoder = unet.encoder, unet.decoder
        self.stem = nn.Sequential(Conv2dReLU(in_channels, width, 3, padding=1), Conv2dReLU(width, width, 3, padding=1))
        head = unet.segmentation_head[0]
        self.segmentation_head = nn.Sequential(nn.Conv2d(head.in_channels + width, head.out_channels,
                                                         head.kernel_size, padding=head.padding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        decoded = self.decoder(self.encoder(x))
        return self.segmentation_head(torch.cat([decoded, self.stem(x)], dim=1))


def load_encoder_weights(model: nn.Module, path: Path) -> None:
    """Local pretrained encoder weights (.pth/.pt or .safetensors); nothing is downloaded.

    Keys may carry a ``model.``/``encoder.`` prefix. A first conv trained on 3 (RGB)
    channels is adapted to k slices by repeating its mean, scaled by 3/k so that the layer's
    response to equal slices is kept (smp's ``patch_first_conv`` scales alike)."""
    if not hasattr(model, "encoder"):
        raise ConfigError(f"{path}: a {type(model).__name__} has no 2D encoder to load weights into")
    if not path.is_file():
        raise ConfigError(f"{path}: encoder weights not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    except Exception as err:   # torch, pickle and safetensors each raise their own kind
        raise ConfigError(f"{path}: not a readable weights file ({str(err).splitlines()[0][:120]})") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: holds a {type(state).__name__}, not a state dict of named tensors")
    target = model.encoder.state_dict()
    adapted = {}
    for key, value in state.items():
        for prefix in ("module.", "encoder."):
            key = key[len(prefix):] if key.startswith(prefix) else key
        # smp wraps timm models as encoder.model: plain timm keys need the prefix.
        name = key if key in target else f"model.{key}" if f"model.{key}" in target else None
        if name is None or not torch.is_tensor(value):
            continue
        want = target[name]
        if value.ndim == 4 and value.shape[0] == want.shape[0] and value.shape[1] != want.shape[1]:
            value = value.mean(1, keepdim=True).repeat(1, want.shape[1], 1, 1) * (value.shape[1] / want.shape[1])
        if value.shape == want.shape:
            adapted[name] = value
    if not adapted:
        raise ConfigError(f"{path}: no tensor matches the encoder {type(model.encoder).__name__}")
    model.encoder.load_state_dict(adapted, strict=False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_with_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Forward pass that also returns the encoder's feature pyramid (feature distillation),
    without smp's first entry, which is the input itself. A hook, rather than calling encoder
    and decoder by hand, keeps DDP's gradient sync."""
    net = getattr(model, "_orig_mod", model)   # torch.compile wrapper
    net = getattr(net, "module", net)          # DDP wrapper
    captured: list = []
    handle = net.encoder.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, captured[0][1:]
