"""`hybridserve serve`: which config means AWS mode and which means local, and the options
that belong to each mode."""

from __future__ import annotations

import pytest

from hybridserve.config_base import ConfigError
from hybridserve.serve import DEPLOYMENT_KEYS, ServeConfig, config_kind, load_serve_config


def test_the_two_configs_share_only_the_keys_that_cannot_tell_them_apart():
    from hybridserve.deployment import DeploymentConfig
    from hybridserve.serve import SHARED_KEYS

    def keys(model):
        return {f.alias or n for n, f in model.model_fields.items()}

    # a key both models had would make config_kind guess; the shared ones are declared
    assert keys(DeploymentConfig) & keys(ServeConfig) == SHARED_KEYS
    assert keys(DeploymentConfig) - keys(ServeConfig) == DEPLOYMENT_KEYS


def test_config_kind_tells_deployment_from_serve_configs(tmp_path):
    import yaml

    with open("examples/hybridserve.yaml") as f:
        example = yaml.safe_load(f)
    assert config_kind(example) == "aws"
    assert config_kind({"bucket": "b"}) == "aws"
    assert config_kind({}) == config_kind({"artifact": "a", "lambda": {}}) == "local"
    assert config_kind({"deployment": "hybrid", "router": {"port": 1}}) == "local"
    with pytest.raises(
        ConfigError, match=r"x.yaml: mixes deployment settings \['ec2'\] with serve"
    ):
        config_kind({"ec2": {}, "instances": {}}, "x.yaml")
    with pytest.raises(ConfigError, match="a deployment config"):
        load_serve_config("examples/hybridserve.yaml")


@pytest.mark.parametrize(
    ("config", "args", "needle"),
    [
        ("deployment: hybrid\n", ["--region", "eu-west-1"], "--region: only for a deployment"),
        ("deployment: hybrid\n", ["--endpoint-url", "http://x"], "--endpoint-url: only for"),
        ("name: d\nartifact: a\nbucket: bkt\n", ["--deployment", "vm-only"], "--deployment: only"),
        ("name: d\nbucket: bkt\nmodel: m\n", [], "mixes deployment settings"),
    ],
)
def test_serve_options_belong_to_their_mode(tmp_path, config, args, needle):
    from click.testing import CliRunner

    from hybridserve.cli import main

    p = tmp_path / "c.yaml"
    p.write_text(config)
    r = CliRunner().invoke(main, ["serve", "--config", str(p), *args])
    assert r.exit_code == 2 and needle in r.output, r.output
