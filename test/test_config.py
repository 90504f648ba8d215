"""The one configuration schema: defaults valid, errors name parameter/value/allowed."""

import json

import jsonschema
import pytest
import yaml

from sspu_ros.config import (
    CONFIG_NAMES,
    default_parameters,
    find_config_dir,
    flatten,
    load_config,
    parameter_specs,
    read_parameter_file,
    unflatten,
    validate_parameter,
)
from sspu_ros.errors import ConfigError


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_shipped_yaml_validates_against_the_whole_file_schema(name):
    d = find_config_dir()
    schema = json.loads((d / f"{name}.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    doc = yaml.safe_load((d / f"{name}.yaml").read_text())
    jsonschema.validate(doc, schema)
    load_config(name=name)  # and through the loader (cross-parameter checks)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_schema_parameter_has_exactly_one_default_and_a_description(name):
    specs = parameter_specs(name)
    defaults = default_parameters(name)
    assert set(specs) == set(defaults)
    for spec in specs.values():
        assert spec.description, spec.name
        assert "default" not in spec.schema, f"{spec.name}: defaults live in the YAML only"


def test_flatten_unflatten_round_trip():
    nested = {"a": 1, "crop": {"x": 2.0, "q": {"d": "s"}}}
    assert flatten(nested) == {"a": 1, "crop.x": 2.0, "crop.q.d": "s"}
    assert unflatten(flatten(nested)) == nested


@pytest.mark.parametrize(
    "override, words",
    [
        ({"ratio": 1}, ["'ratio'", "= 1", ">= 2"]),
        ({"ratio": "4"}, ["'ratio'", "'4'", "integer"]),
        ({"ratio": True}, ["'ratio'", "True", "integer"]),
        ({"crop.max_range": -5.0}, ["'crop.max_range'", "-5.0", "> 0.0"]),
        ({"qos.input.reliability": "lossy"}, ["'qos.input.reliability'", "'lossy'",
                                              "'best_effort', 'reliable'"]),
        ({"crop.min_z": 9.0}, ["'crop.min_z'", "9.0", "'crop.max_z'"]),
        ({"expected_rate_hz": float("nan")}, ["'expected_rate_hz'", "nan", "finite"]),
        ({"crop.max_rang": 3.0}, ["unknown parameter 'crop.max_rang'", "'crop.max_range'"]),
        ({"model": ""}, ["'model'", "not empty"]),
    ],
)
def test_bad_values_name_parameter_value_and_what_is_allowed(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=override)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_integer_accepted_where_a_number_is_wanted():
    cfg = load_config(overrides={"crop.max_range": 40})
    assert cfg["crop.max_range"] == 40.0 and isinstance(cfg["crop.max_range"], float)


def test_ros_parameter_file_forms(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("/**:\n  ros__parameters:\n    ratio: 2\n    crop: {max_range: 30.0}\n"
                 "upsample_node:\n  ros__parameters:\n    crop: {min_z: -1.0}\n")
    cfg = load_config(f)
    assert (cfg["ratio"], cfg["crop.max_range"], cfg["crop.min_z"]) == (2, 30.0, -1.0)
    assert cfg["model"] == default_parameters()["model"]
    plain = tmp_path / "plain.yaml"
    plain.write_text("ratio: 3\n")
    assert read_parameter_file(plain) == {"ratio": 3}


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("/**:\n  ros__parameters:\n    ratio: 0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'ratio' = 0"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("ratio: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_runtime_validation_refuses_read_only_and_checks_cross_constraints():
    current = dict(load_config())
    with pytest.raises(ConfigError, match="read-only"):
        validate_parameter("model", "other", current)
    assert validate_parameter("model", "other", current, runtime=False) == "other"
    assert validate_parameter("crop.max_range", 20, current) == 20.0
    with pytest.raises(ConfigError, match="smaller than 'crop.max_range'"):
        validate_parameter("crop.min_range", 70.0, current)


def test_config_yaml_dump_round_trips(tmp_path):
    cfg = load_config(overrides={"ratio": 2})
    f = tmp_path / "dump.yaml"
    f.write_text(cfg.to_yaml())
    assert dict(load_config(f)) == dict(cfg)


def test_training_config_checks():
    with pytest.raises(ConfigError, match="'data.augment.scale_min' = 2.0 must be at most"):
        load_config(overrides={"data.augment.scale_min": 2.0}, name="train")
    with pytest.raises(ConfigError, match="'model.attention'.*'global', 'local', 'none'"):
        load_config(overrides={"model.attention": "full"}, name="train")
    with pytest.raises(ConfigError, match="unknown configuration"):
        load_config(name="nope")


def test_every_shipped_training_config_is_valid():
    files = sorted(find_config_dir().glob("train*.yaml"))
    assert files
    for f in files:
        load_config(f, name="train")
