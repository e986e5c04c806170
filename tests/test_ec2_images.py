"""The VM files render from one set of parameters and line up."""

from __future__ import annotations

import base64
import re

import pytest
import yaml

from ec2_images.render import (
    ImageParams,
    render_fetch_unit,
    render_packer_vars,
    render_unit,
    render_user_data,
    write_packer_dir,
)

P = ImageParams(deployment="demo", artifact_uri="s3://my-bucket/models/distilbert-int8/", port=8123)


def test_server_unit_runs_the_model_server_on_the_port():
    unit = render_unit(P)
    assert "${" not in unit
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "model-server --artifact /opt/hybridserve/artifact" in exec_start
    assert "--port 8123" in exec_start and "--max-batch 8" in exec_start
    assert (
        f"Requires={P.fetch_unit}" in unit and f"After=network-online.target {P.fetch_unit}" in unit
    )


def test_fetch_unit_downloads_the_uri_and_verifies_into_the_server_artifact_dir():
    unit = render_fetch_unit(P)
    assert "${" not in unit
    assert "s3://my-bucket/models/distilbert-int8/" in unit
    assert (
        "load_artifact('/opt/hybridserve/artifact', extract_dir='/opt/hybridserve/cache')" in unit
    )
    assert "Type=oneshot" in unit


def test_user_data_is_cloud_config_carrying_both_units_and_starting_them():
    text = render_user_data(P)
    assert text.startswith("#cloud-config")
    doc = yaml.safe_load(text)
    files = {f["path"]: base64.b64decode(f["content"]).decode() for f in doc["write_files"]}
    assert files[f"/etc/systemd/system/{P.server_unit}"] == render_unit(P)
    assert files[f"/etc/systemd/system/{P.fetch_unit}"] == render_fetch_unit(P)
    start = [c for c in doc["runcmd"] if c[:3] == ["systemctl", "enable", "--now"]]
    assert start and start[0][3:] == [P.fetch_unit, P.server_unit]
    assert any(P.package_spec in c for c in doc["runcmd"])


def test_packer_template_and_variables_line_up(tmp_path):
    out = write_packer_dir(P, tmp_path / "img")
    hcl = (out / "hybridserve.pkr.hcl").read_text()
    declared = set(re.findall(r'variable "([a-z_]+)"', hcl))
    used = set(re.findall(r"var\.([a-z_]+)", hcl))
    given = set(re.findall(r"^([a-z_]+) =", render_packer_vars(P), re.M))
    assert used <= declared and given == declared
    assert "server_port = 8123" in (out / "hybridserve.auto.pkrvars.hcl").read_text()
    assert (out / "rendered" / P.server_unit).read_text() == render_unit(P)
    assert '"hybridserve:deployment" = var.deployment' in hcl


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("artifact_uri", "https://bucket/x", "artifact_uri"),
        ("port", 70000, "port"),
        ("deployment", "bad name!", "deployment"),
        ("server_unit", "model", "unit"),
    ],
)
def test_bad_parameters_are_named(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        ImageParams(**{"deployment": "demo", "artifact_uri": "s3://b-ucket/p/", field: value})
