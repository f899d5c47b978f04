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
    assert ("method: unknown method 'mamll'; known: ['fomaml', 'hypernet', 'maml', "
            "'protonet', 'scratch']") in text
    assert "train.lr: Input should be greater than 0" in text
    assert "encoder.kind: unknown encoder 'words'; known: ['features', 'hashed', 'set', " in text
    assert "typo_field" in text


def test_overrides_parse_values_as_yaml_and_cross_checks_run():
    data = apply_overrides({"train": {"lr": 0.1}}, ["train.lr=3e-4", "tasks.shots=5",
                                                   "hypernet.hidden=[64, 64]"])
    config = RunConfig.from_dict(data)
    assert config.train.lr == 3e-4 and config.tasks.shots == 5
    assert config.hypernet.hidden == [64, 64]
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["no_equals_sign"])
    with pytest.raises(ConfigError, match="encoder.num_tasks: Field required"):
        RunConfig.from_dict({"encoder": {"kind": "task_id"}})


def test_missing_or_broken_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.from_file(tmp_path / "none.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunConfig.from_file(tmp_path / "broken.yaml")


def test_shipped_configs_are_valid():
    from pathlib import Path

    from hypermeta.continual.run import ContinualConfig, is_continual_config
    from hypermeta.rl.run import RLConfig

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:  # rl-*.yaml are `hypermeta rl train` configs
        if path.name.startswith("continual_"):
            assert is_continual_config(path)
            ContinualConfig.from_file(path)
        else:
            (RLConfig if path.name.startswith("rl-") else RunConfig).from_file(path)


def test_sections_are_typed_by_the_builder_they_name():
    # a field the chosen kind does not take is an error, naming the field
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"encoder": {"kind": "set", "num_tasks": 5},
                             "hypernet": {"kind": "delta", "chunk_size": 8},
                             "target": {"name": "mlp", "in_dim": 1, "out_dim": 1, "widht": 3},
                             "tasks": {"name": "sinusoid", "ways": 5}})
    text = str(info.value)
    assert "4 problems" in text
    for field in ("encoder.num_tasks", "hypernet.chunk_size", "target.widht", "tasks.ways"):
        assert f"{field}: Extra inputs are not permitted" in text
    # values are checked against the builder's annotations; defaults are filled in
    with pytest.raises(ConfigError, match="encoder.pooling: Input should be 'mean' or "):
        RunConfig.from_dict({"encoder": {"kind": "set", "pooling": "max"}})
    config = RunConfig.from_dict({"encoder": {"kind": "task_id", "num_tasks": 4}})
    assert config.encoder.kwargs() == {"num_tasks": 4, "dim": 64}
    with pytest.raises(ConfigError, match="target.name: unknown target 'resnet'"):
        RunConfig.from_dict({"target": {"name": "resnet"}})


def test_empty_or_non_mapping_yaml_is_an_error(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        RunConfig.from_file(tmp_path / "empty.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        RunConfig.from_file(tmp_path / "list.yaml")


def test_version_1_configs_migrate_and_later_versions_are_refused():
    import json
    from pathlib import Path

    saved = json.loads((Path(__file__).parent / "data" / "v1-sinusoid" / "config.json")
                       .read_text())
    assert "version" not in saved and saved["encoder"]["buckets"] == 4096  # every kind's field
    with pytest.raises(ConfigError, match="encoder.buckets: Extra inputs"):
        RunConfig.from_dict(saved)
    config = RunConfig.from_saved(saved)
    assert config.version == 2 and "buckets" not in config.encoder.kwargs()
    assert config.encoder.kwargs()["hidden"] == saved["encoder"]["hidden"]
    with pytest.raises(ConfigError, match="config version 3 is not 2"):
        RunConfig.from_saved({**saved, "version": 3})
