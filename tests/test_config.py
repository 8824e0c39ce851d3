from __future__ import annotations

import re

import pytest
from conftest import ROOT

from s2s import config
from s2s.errors import ConfigError


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = config.load(path, ["data.dir=/somewhere"])
    assert cfg.data.dir == "/somewhere"


def test_peer_matched_is_the_peer_model():
    cfg = config.load(ROOT / "configs" / "peer-matched.yaml")
    m, t, d = cfg.model, cfg.train, cfg.data
    assert (m.emb_size, m.hidden_size, m.layers, m.bidirectional) == (256, 512, 1, True)
    assert (m.cell, m.attention, m.input_feeding, m.dropout) == ("lstm", "general", True, 0.3)
    assert (t.lr, t.batch_size, t.batch_type, t.label_smoothing) == (1e-3, 64, "sents", 0.0)
    got = (d.vocab_size, d.spm_model_type, d.joint_vocab, d.max_len)
    assert got == (8000, "unigram", True, 100)


def test_overrides_are_typed():
    cfg = config.load(None, ["train.max_time=900", "model.cell=gru", "train.lr=1e-4",
                             "model.bidirectional=false", "train.max_steps=10"])
    assert cfg.train.max_time == 900.0 and isinstance(cfg.train.max_time, float)
    assert cfg.model.cell == "gru" and cfg.model.bidirectional is False
    assert cfg.train.lr == 1e-4 and cfg.train.max_steps == 10


def test_all_problems_reported_at_once(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  hidden_sise: 3\n  attention: cosine\ntrain:\n  lr: -1\n"
                    "  batch_size: many\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        config.load(path, ["train.nope=1", "data.vocab_size=0"])
    text = str(info.value)
    for needle in ("'model.hidden_sise'", "'model.attention' must be one of",
                   "'train.lr' must be > 0", "'train.batch_size' must be int", "'train.nope'",
                   "'data.vocab_size' must be > 0", str(path)):
        assert needle in text, needle
    assert "6 problem" in text


def test_invalid_yaml_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  cell: lstm\n  emb_size: [1,\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+:\d+: invalid YAML"):
        config.load(path)


def test_missing_file_and_bad_override():
    with pytest.raises(ConfigError, match="cannot read"):
        config.load("/nonexistent/config.yaml")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        config.load(None, ["train.max_steps"])


def test_odd_hidden_size_rejected_for_bidirectional():
    with pytest.raises(ConfigError, match="must be even"):
        config.load(None, ["model.hidden_size=7"])


def test_round_trip(tmp_path):
    cfg = config.load(ROOT / "configs" / "toy.yaml")
    config.dump(cfg, tmp_path / "c.yaml")
    assert config.load(tmp_path / "c.yaml") == cfg


# -- rules and resumability live on the fields -------------------------------------------------
def test_every_rule_sits_on_a_real_numeric_field_with_help():
    import dataclasses
    import typing

    from s2s.config import RESUMABLE, RULES, fields_of

    keys = dict(fields_of())
    assert RESUMABLE and RESUMABLE <= keys.keys()
    for key, f in keys.items():
        assert f.metadata.get("help"), f"{key} has no help text"
        rule = f.metadata.get("rule")
        if rule is not None:
            assert rule in RULES
            hint = typing.get_type_hints(
                {"data": config.DataConfig, "model": config.ModelConfig,
                 "train": config.TrainConfig}[key.split(".")[0]])[f.name]
            assert hint in (int, float), f"{key}: a range rule on a {hint} field"
    assert not [f for f in dataclasses.fields(config.Config) if f.metadata.get("rule")]


@pytest.mark.parametrize("key, bad, rule", [("train.lr", 0, "> 0"), ("model.dropout", 1.0,
                                            "in [0, 1)"), ("train.patience", -1, ">= 0"),
                                            ("train.momentum", 1.5, "in [0, 1)")])
def test_rules_from_the_fields_are_enforced(key, bad, rule):
    with pytest.raises(ConfigError, match=re.escape(f"'{key}' must be {rule}, got {bad!r}")):
        config.from_dict({}, [f"{key}={bad}"])


def test_resumable_keys_are_the_budgets_intervals_and_machine_settings():
    from s2s.config import RESUMABLE

    assert {"train.max_steps", "train.max_time", "train.precision", "train.threads"} <= RESUMABLE
    assert not RESUMABLE & {"train.lr", "model.hidden_size", "data.vocab_size", "train.seed"}


def test_s2s_config_prints_every_key_with_help_and_reads_back(tmp_path):
    from click.testing import CliRunner

    from s2s.cli import main
    from s2s.config import fields_of

    result = CliRunner().invoke(main, ["config", str(ROOT / "configs" / "toy.yaml"), "--set",
                                       "train.lr=0.01", "--set", "model.cell=gru"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    for key, f in fields_of():
        name = key.split(".")[1]
        assert any(line.strip().startswith(f"{name}:") and f.metadata["help"] in line
                   for line in text.splitlines()), key
    assert "lr: 0.01  # " in text and "(default: 0.001)" in text
    path = tmp_path / "resolved.yaml"
    path.write_text(text, encoding="utf-8")
    expected = config.load(ROOT / "configs" / "toy.yaml", ["train.lr=0.01", "model.cell=gru"])
    assert config.load(path) == expected


def test_s2s_config_reports_bad_keys():
    from click.testing import CliRunner

    from s2s.cli import main

    result = CliRunner().invoke(main, ["config", "--set", "train.bogus=1"])
    assert result.exit_code == 1 and "unknown key 'train.bogus'" in result.output


@pytest.mark.parametrize("override, message", [
    ("train.adam_beta1=2", "'train.adam_beta1' must be in [0, 1), got 2"),
    ("train.adam_beta2=-0.1", "'train.adam_beta2' must be in [0, 1), got -0.1"),
    ("data.character_coverage=5", "'data.character_coverage' must be in (0, 1], got 5"),
    ("data.character_coverage=0", "'data.character_coverage' must be in (0, 1], got 0"),
    ("train.lr=.nan", "'train.lr' must be > 0, got nan"),
])
def test_out_of_range_values_name_their_own_key(override, message):
    with pytest.raises(ConfigError) as info:
        config.load(ROOT / "configs" / "toy.yaml", [override])
    assert message in str(info.value)


def test_in_range_betas_and_coverage_load():
    cfg = config.load(ROOT / "configs" / "toy.yaml", ["train.adam_beta2=0.98",
                                                      "data.character_coverage=0.9995"])
    assert cfg.train.adam_beta2 == 0.98 and cfg.data.character_coverage == 0.9995


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  lr: 0.1\n  max_steps: 5\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:4:3: invalid YAML: key 'lr' given twice"):
        config.load(path)
    path.write_text("train:\n  lr: 0.1\nmodel:\n  lr: 0.2\n")  # same name, other sections
    with pytest.raises(ConfigError, match="model.lr"):  # (an unknown key there, not a twin)
        config.load(path)
    path.write_text("? [a, b]\n: 1\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        config.load(path)
