import pytest

from hypermeta.config import ConfigError, RunConfig, apply_overrides


def test_every_problem_is_reported_once_naming_fields_and_allowed_values(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("method: mamll\ntrain: {lr: -1, steps: 10}\nencoder: {kind: words}\n"
                    "typo_field: 3\n")
    with pytest.raises(ConfigError) as info:
        RunConfig.from_file(path)
    text = str(info.value)
    assert "4 problems" in text
    assert "method: Input should be 'hypernet', 'maml', 'fomaml', 'protonet' or 'scratch'" in text
    assert "train.lr: Input should be greater than 0" in text
    assert "encoder.kind" in text and "typo_field" in text


def test_overrides_parse_values_as_yaml_and_cross_checks_run():
    data = apply_overrides({"train": {"lr": 0.1}}, ["train.lr=3e-4", "tasks.shots=5",
                                                   "hypernet.hidden=[64, 64]"])
    config = RunConfig.from_dict(data)
    assert config.train.lr == 3e-4 and config.tasks.shots == 5
    assert config.hypernet.hidden == [64, 64]
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["no_equals_sign"])
    with pytest.raises(ConfigError, match="encoder.num_tasks: required"):
        RunConfig.from_dict({"encoder": {"kind": "task_id"}})


def test_missing_or_broken_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.from_file(tmp_path / "none.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunConfig.from_file(tmp_path / "broken.yaml")


def test_shipped_configs_are_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        RunConfig.from_file(path)
