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


def test_floats_in_exponent_form_are_floats_and_other_types_are_config_errors(tmp_path):
    # YAML 1.1 reads 1e-3 (no dot) as a string; it is the usual way to write a learning rate
    assert load_config(None, ["teacher.lr=1e-3"]).teacher.lr == pytest.approx(1e-3)
    (tmp_path / "c.yaml").write_text("student:\n  lr: 5e-4\n")
    assert load_config(tmp_path / "c.yaml").student.lr == pytest.approx(5e-4)
    for bad, key in (("infer.threshold=null", "infer.threshold"), ("teacher.epochs=true", "teacher.epochs"),
                     ("teacher.lr=fast", "teacher.lr"), ("teacher.lr=.inf", "finite"), ("teacher.lr=1e400", "finite"),
                     ("infer.threshold=nan", "finite")):
        with pytest.raises(ValueError, match=key):
            load_config(None, [bad])
    with pytest.raises(ValueError, match="already given a value"):
        parse_overrides(["teacher.model=x", "teacher.model.encoder=y"])


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


def test_a_key_the_stage_never_reads_is_refused_not_hashed():
    for key in ("student.loss.coarse=sphere", "fpr.loss.dice_weight=2", "fpr.prompt_dropout=0.1",
                "fpr.model.decoder_channels=[8,8,8,8,8]"):
        with pytest.raises(ValueError, match=f"'{key.split('=')[0]}' has no effect"):
            load_config(None, [key])
    # what the stages do read still passes
    load_config(None, ["student.loss.small_nodule_boost=3", "teacher.loss.coarse=sphere", "fpr.model.head_prior=0.1"])


def test_worker_counts_never_change_a_hash():
    """--workers must not refuse a cache, a phantom folder or a resume: results never depend on it."""
    base = load_config(None)
    other = load_config(None, ["cache.workers=7", "phantom.workers=5", "teacher.num_workers=3"])
    for section in ("cache", "phantom", "teacher"):
        assert config_hash(getattr(other, section)) == config_hash(getattr(base, section)), section
    assert config_hash(load_config(None, ["cache.seed=1"]).cache) != config_hash(base.cache)
