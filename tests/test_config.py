import pytest
import yaml

from src.config import Config, config_hash, dump_config, load_config, parse_overrides


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["teacher.epochs=3", "cache.spacing_zyx=[1,1,1]", "student.model.encoder=resnet18"])
    assert cfg.teacher.epochs == 3
    assert cfg.cache.spacing_zyx == (1.0, 1.0, 1.0)
    # a partial override keeps the rest of the student's own defaults
    assert cfg.student.model.encoder == "resnet18"
    assert cfg.student.model.decoder_channels == Config().student.model.decoder_channels


def test_unknown_key_and_wrong_type_are_refused():
    with pytest.raises(ValueError, match="unknown config key 'teacher.epoch'"):
        load_config(None, ["teacher.epoch=3"])
    with pytest.raises(ValueError, match="teacher.epochs"):
        load_config(None, ["teacher.epochs=many"])
    with pytest.raises(ValueError, match="key.sub=value"):
        parse_overrides(["teacher.epochs"])


def test_yaml_inherit_and_dump_round_trip(tmp_path):
    (tmp_path / "base.yaml").write_text("teacher:\n  epochs: 7\ncache:\n  patch_size: 96\n")
    (tmp_path / "child.yaml").write_text("inherit: base.yaml\nteacher:\n  lr: 0.01\n")
    cfg = load_config(tmp_path / "child.yaml", ["cache.patch_size=128"])
    assert (cfg.teacher.epochs, cfg.teacher.lr, cfg.cache.patch_size) == (7, 0.01, 128)
    dump_config(cfg, tmp_path / "args.yaml")
    again = load_config(tmp_path / "args.yaml")
    assert config_hash(again) == config_hash(cfg)
    assert yaml.safe_load((tmp_path / "args.yaml").read_text())["teacher"]["epochs"] == 7


def test_shipped_configs_load():
    for name in ("configs/default.yaml", "configs/cpu.yaml"):
        cfg = load_config(name)
        assert cfg.cache.k_slices % 2 == 1
