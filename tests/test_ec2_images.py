"""The VM files render from one set of parameters and line up."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
import yaml

from ec2_images import fetch, replica
from ec2_images.render import (
    ImageParams,
    RouterParams,
    render_fetch_unit,
    render_packer_vars,
    render_router_unit,
    render_router_user_data,
    render_unit,
    render_user_data,
    write_packer_dir,
)
from tests.imds_double import imds_server

WH = "s3://my-bucket/demo/wheelhouse"
PINS = {
    "wheel_uri": f"{WH}/{'a' * 64}/hybridserve-0.1.0-py3-none-any.whl",
    "wheel_sha256": "a" * 64,
    "dependencies_uri": f"{WH}/{'b' * 64}/dependencies.tar",
    "dependencies_sha256": "b" * 64,
    "requirements_uri": f"{WH}/{'c' * 64}/requirements.txt",
    "requirements_sha256": "c" * 64,
}
P = ImageParams(
    deployment="demo", artifact_uri="s3://my-bucket/models/distilbert-int8/", port=8123, **PINS
)


def _files(text: str) -> dict[str, str]:
    doc = yaml.safe_load(text)
    return {f["path"]: base64.b64decode(f["content"]).decode() for f in doc["write_files"]}


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
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start.endswith(
        "/opt/hybridserve/fetch.py --region us-east-1 artifact --dest /opt/hybridserve/artifact "
        "--cache /opt/hybridserve/cache s3://my-bucket/models/distilbert-int8/"
    )
    assert "Type=oneshot" in unit


def test_user_data_is_cloud_config_carrying_both_units_and_starting_them():
    text = render_user_data(P)
    assert text.startswith("#cloud-config")
    doc = yaml.safe_load(text)
    files = _files(text)
    assert files[f"/etc/systemd/system/{P.server_unit}"] == render_unit(P)
    assert files[f"/etc/systemd/system/{P.fetch_unit}"] == render_fetch_unit(P)
    assert files[P.fetch_script] == (Path(fetch.__file__)).read_text()
    start = [c for c in doc["runcmd"] if c[:3] == ["systemctl", "enable", "--now"]]
    assert start and start[0][3:] == [P.fetch_unit, P.server_unit]
    assert len(text.encode()) <= 16384  # EC2's limit on user data


def test_user_data_fetches_the_pinned_wheelhouse_and_never_reaches_an_index():
    text = render_user_data(P)
    doc = yaml.safe_load(text)
    fetch_cmd = next(c for c in doc["runcmd"] if P.fetch_script in c)
    pins = fetch_cmd[fetch_cmd.index("--dest") + 2 :]
    assert pins == [PINS[f"{k}_{x}"] for k in ("wheel", "dependencies", "requirements")
                    for x in ("uri", "sha256")]  # fmt: skip
    installs = [c for c in doc["runcmd"] if "install" in c and any("pip" in w for w in c)]
    assert len(installs) == 1
    (pip,) = installs
    assert all(isinstance(w, str) for c in doc["runcmd"] for w in c)  # no word read as YAML
    assert "--only-binary=:all:" in pip
    for flag in ("--no-index", "--require-hashes", "--disable-pip-version-check"):
        assert flag in pip
    assert pip[pip.index("-r") + 1] == f"{P.wheel_dir}/requirements.txt"
    everything = "\n".join([text, *_files(text).values()]).lower()
    for needle in ("pypi", "pythonhosted", "index-url", "extra-index", "hybridserve[predictors"):
        assert needle not in everything, needle
    # no pip install anywhere without hashes (units and the fetch script included)
    for line in everything.splitlines():
        if "pip" in line and "install" in line and not line.lstrip().startswith("#"):
            assert "--require-hashes" in line and "--no-index" in line, line


def test_packer_template_and_variables_line_up(tmp_path):
    house = tmp_path / "wheelhouse"
    house.mkdir()
    (house / "requirements.txt").write_text(f"x==1 --hash=sha256:{'d' * 64}\n")
    (house / "x-1-py3-none-any.whl").write_bytes(b"wheel")
    out = write_packer_dir(P, tmp_path / "img", house)
    hcl = (out / "hybridserve.pkr.hcl").read_text()
    declared = set(re.findall(r'variable "([a-z_]+)"', hcl))
    used = set(re.findall(r"var\.([a-z_]+)", hcl))
    given = set(re.findall(r"^([a-z_]+) =", render_packer_vars(P), re.M))
    assert used <= declared and given == declared
    assert "server_port = 8123" in (out / "hybridserve.auto.pkrvars.hcl").read_text()
    assert (out / "rendered" / P.server_unit).read_text() == render_unit(P)
    assert (out / "wheelhouse" / "x-1-py3-none-any.whl").read_bytes() == b"wheel"
    assert '"hybridserve:deployment" = var.deployment' in hcl
    pips = [line for line in hcl.splitlines() if "pip install" in line]
    assert pips and all("--no-index --require-hashes" in line for line in pips)
    assert "/tmp/wheelhouse/requirements.txt" in pips[0]
    with pytest.raises(FileNotFoundError, match="requirements.txt"):
        write_packer_dir(P, tmp_path / "img2", tmp_path)


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("artifact_uri", "https://bucket/x", "artifact_uri"),
        ("port", 70000, "port"),
        ("deployment", "bad name!", "deployment"),
        ("server_unit", "model", "unit"),
        ("wheel_sha256", "abc", "wheel_sha256"),
        ("requirements_uri", "https://pypi.org/simple/x", "requirements_uri"),
        ("dependencies_uri", "s3://my-bucket/prefix/", "dependencies_uri"),
        ("python", "python3; rm -rf /", "python"),
    ],
)
def test_bad_parameters_are_named(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        ImageParams(
            **{"deployment": "demo", "artifact_uri": "s3://b-ucket/p/", **PINS, field: value}
        )


# --- a router replica (hybridserve/aws/routers.py) ------------------------------------------

CONFIG_PIN = ("s3://my-bucket/demo/router/deployment.yaml", "e" * 64)
SCENARIO_PIN = ("s3://my-bucket/demo/router/scenario.yaml", "f" * 64)
RP = RouterParams(pins=(CONFIG_PIN, SCENARIO_PIN), port=8080)


def test_router_user_data_installs_exactly_as_the_model_servers_do():
    router, fleet = (
        yaml.safe_load(render_router_user_data(P, RP)),
        yaml.safe_load(render_user_data(P)),
    )
    # the same users, the same fetch script, the same install steps, word for word
    assert router["users"] == fleet["users"]
    assert (
        _files(render_router_user_data(P, RP))[P.fetch_script] == Path(fetch.__file__).read_text()
    )
    steps = [c for c in fleet["runcmd"] if c[0] not in ("systemctl", "mkdir", "chown")]
    assert [c for c in router["runcmd"] if c[0] != "systemctl"] == steps
    assert router["runcmd"][-2:] == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", RP.unit],
    ]
    assert all(isinstance(w, str) for c in router["runcmd"] for w in c)
    assert len(render_router_user_data(P, RP).encode()) <= 16384


def test_router_unit_fetches_its_config_by_sha256_and_serves_it():
    unit = render_router_unit(P, RP)
    assert "${" not in unit
    assert _files(render_router_user_data(P, RP))[f"/etc/systemd/system/{RP.unit}"] == unit
    pre = [
        ln.split("=", 1)[1].split() for ln in unit.splitlines() if ln.startswith("ExecStartPre=")
    ]
    fetch_cmd, replica = pre
    assert fetch_cmd[:2] == ["/opt/hybridserve/venv/bin/python", P.fetch_script]
    assert fetch_cmd[fetch_cmd.index("files") :] == [
        "files", "--dest", RP.state_dir, *CONFIG_PIN, *SCENARIO_PIN
    ]  # fmt: skip
    assert replica == ["/opt/hybridserve/venv/bin/python", "-m", "ec2_images.replica", "--out",
                       f"/run/{RP.state}/replica.env"]  # fmt: skip
    assert f"EnvironmentFile=-/run/{RP.state}/replica.env" in unit
    assert f"StateDirectory={RP.state}" in unit and f"RuntimeDirectory={RP.state}" in unit
    (start,) = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    assert start == (
        "ExecStart=/opt/hybridserve/venv/bin/hybridserve serve --config "
        f"{RP.state_dir}/deployment.yaml --host 0.0.0.0 --port 8080"
    )
    assert "User=hybridserve" in unit and "Restart=always" in unit


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"pins": ()}, "deployment config"),
        ({"pins": (SCENARIO_PIN, CONFIG_PIN)}, "deployment config"),
        ({"pins": (CONFIG_PIN, CONFIG_PIN)}, "collide"),
        ({"pins": ((CONFIG_PIN[0], "abc"),)}, "sha256"),
        ({"pins": (("https://pypi.org/deployment.yaml", "e" * 64),)}, "s3://"),
        ({"pins": (CONFIG_PIN,), "port": 0}, "port"),
        ({"pins": (CONFIG_PIN,), "unit": "router"}, "unit"),
        ({"pins": (CONFIG_PIN,), "state": "../etc"}, "state"),
    ],
)
def test_bad_router_parameters_are_named(kw, needle):
    with pytest.raises(ValueError, match=needle):
        RouterParams(**kw)


INSTANCE_ID_PATH = "/latest/meta-data/instance-id"


@pytest.fixture
def imds():
    with imds_server({INSTANCE_ID_PATH: "i-0123456789abcdef0"}) as srv:
        yield srv


def test_the_replica_id_is_the_instance_id_from_imdsv2(imds, tmp_path):
    out = tmp_path / "run" / "replica.env"
    replica.main(["--out", str(out), "--imds-url", imds.url])
    assert out.read_text() == "HYBRIDSERVE_REPLICA_ID=i-0123456789abcdef0\n"
    # anything but an instance id is refused (after the bounded retries), the file untouched
    imds.paths[INSTANCE_ID_PATH] = "i-0123\nEVIL=1"
    with pytest.raises(SystemExit, match="not an instance id"):
        replica.main(["--out", str(out), "--imds-url", imds.url, "--attempts", "1"])
    assert out.read_text() == "HYBRIDSERVE_REPLICA_ID=i-0123456789abcdef0\n"
    with pytest.raises(ValueError, match="environment variable"):
        replica.write_env(out, "bad name", "i-0123456789abcdef0")
