"""The model factory: local encoder weights, and encoders or files it cannot use."""
import pytest
import timm
import torch

from src.config import ModelConfig
from src.errors import ConfigError
from src.models.factory import build_model


def test_local_weights_keep_the_first_conv_response_when_k_slices_replace_rgb(tmp_path):
    path = tmp_path / "lcnet.pth"
    rgb = timm.create_model("lcnet_050").state_dict()
    torch.save(rgb, path)
    model = build_model(ModelConfig(encoder="tu-lcnet_050", encoder_weights=str(path)), 5, 64)
    first = model.encoder.model.conv_stem.weight
    assert first.shape[1] == 5
    # five equal slices must meet the same response as three equal RGB channels
    torch.testing.assert_close(first.detach().sum(1), rgb["conv_stem.weight"].sum(1))
    torch.testing.assert_close(model.encoder.model.blocks[1][0].conv_dw.weight.detach(),
                               rgb["blocks.1.0.conv_dw.weight"])


@pytest.mark.parametrize("content", [b"not a weights file", "tensor"])
def test_unreadable_weights_are_one_config_error(tmp_path, content):
    path = tmp_path / "weights.pth"
    if content == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match="weights.pth"):
        build_model(ModelConfig(encoder="tu-lcnet_050", encoder_weights=str(path)), 5, 64)


def test_weights_for_a_model_without_encoder_are_a_config_error(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(ConfigError, match="no 2D encoder"):
        build_model(ModelConfig(arch="Cube3D", encoder_weights=str(path)), 1, 31)


def test_an_encoder_without_a_feature_pyramid_is_a_config_error():
    with pytest.raises(ConfigError, match="tu-vit_tiny_patch16_224"):
        build_model(ModelConfig(encoder="tu-vit_tiny_patch16_224"), 5, 64)
