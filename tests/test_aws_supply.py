"""The supply chain of the instances: `deploy` builds the project's real wheel, resolves its
dependencies into a hashed wheelhouse (offline here, from stub wheels by real pip), uploads both
to the deployment's bucket, pins their sha256 in the user data and lets the instance role read
exactly those keys; the boot fetch checks every hash and retries, and the boot install works
with --no-index --require-hashes."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
import yaml

moto = pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

from ec2_images import fetch  # noqa: E402
from hybridserve.aws import iam as I  # noqa: E402
from hybridserve.aws import resources as R  # noqa: E402
from hybridserve.aws import wheelhouse as W  # noqa: E402
from hybridserve.config import ConfigError  # noqa: E402
from hybridserve.deployment import DeploymentConfig  # noqa: E402
from tests.aws_lambda_helpers import BUCKET, DEP, URI  # noqa: E402
from tests.wheel_helpers import offline_wheelhouse, write_wheel  # noqa: E402


@pytest.fixture(scope="module")
def house():
    """The project's wheel, built from this tree into the module's cache, and stub wheels of
    its dependencies (a --find-links directory)."""
    cache, wheel, links = offline_wheelhouse()
    return {"cache": cache, "wheel": wheel, "links": links}


@pytest.fixture
def cfg(aws, house, tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDSERVE_CACHE_DIR", str(house["cache"]))
    art = tmp_path / "artifact"
    art.mkdir()
    (art / "manifest.json").write_text("{}")
    return DeploymentConfig.model_validate(
        {
            "name": DEP,
            "artifact": str(art),
            "bucket": BUCKET,
            "lambda": {"image_uri": URI},
            "ec2": {"find_links": str(house["links"])},
        }  # fmt: skip
    )


def _deploy(cfg, c):
    from hybridserve.aws.deploy import deploy

    return deploy(cfg, c, log=lambda *_: None)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _get(c, key: str) -> bytes:
    return c.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _template_user_data(c) -> str:
    v = c.ec2.describe_launch_template_versions(
        LaunchTemplateName=R.template_name(DEP), Versions=["$Default"]
    )["LaunchTemplateVersions"][0]
    return base64.b64decode(v["LaunchTemplateData"]["UserData"]).decode()


def test_deploy_ships_the_built_wheel_pinned_by_sha256(aws, cfg, house):
    from hybridserve.aws.deploy import deploy

    c = aws
    plan = deploy(cfg, aws, dry_run=True, log=lambda *_: None)["plan"]
    (line,) = [p for p in plan if p.startswith("wheelhouse ")]
    assert f"s3://{BUCKET}/{DEP}/wheelhouse/" in line and str(cfg.ec2.find_links) in line
    assert "Python 3.11 x86_64" in line
    assert c.s3.list_buckets()["Buckets"] == []  # a dry run builds and uploads nothing
    _deploy(cfg, c)
    supply = W.load_supply(c.s3, cfg)
    assert supply is not None
    built = house["wheel"].read_bytes()
    body = _get(c, supply.wheel.key)
    assert body == built and supply.wheel.sha256 == _sha(built)
    assert supply.wheel.key == f"{DEP}/wheelhouse/{_sha(built)}/{house['wheel'].name}"
    for pin in supply.pins:  # every key is its content's hash, under the deployment's prefix
        assert pin.key.startswith(f"{DEP}/wheelhouse/{pin.sha256}/")
        assert _sha(_get(c, pin.key)) == pin.sha256
    # the requirements pin every wheel, the project's with the wheel's own hash
    req = _get(c, supply.requirements.key).decode().splitlines()
    lines = [ln for ln in req if ln and not ln.startswith("#")]
    assert lines[0] == f"hybridserve[aws,predictors,serve]==0.1.0 --hash=sha256:{_sha(built)}"
    assert len(lines) == 1 + len(list(house["links"].glob("*.whl")))
    assert all(" --hash=sha256:" in ln for ln in lines)
    with tarfile.open(fileobj=io.BytesIO(_get(c, supply.dependencies.key))) as tar:
        bundled = {m.name: _sha(tar.extractfile(m).read()) for m in tar.getmembers()}
    assert bundled == {f.name: _sha(f.read_bytes()) for f in house["links"].glob("*.whl")}
    # the launch template's user data fetches exactly these, by these hashes
    text = _template_user_data(c)
    cmd = next(c for c in yaml.safe_load(text)["runcmd"] if "files" in c)
    assert cmd[cmd.index("--dest") + 2 :] == [
        x for p in supply.pins for x in (f"s3://{BUCKET}/{p.key}", p.sha256)
    ]
    assert supply.wheel.sha256 in text and "--no-index" in text and "pypi" not in text.lower()
    # the instance role reads exactly those three keys, and nothing wider than before
    doc = R.policy_doc(
        c.iam.get_role_policy(RoleName=R.instance_role_name(DEP), PolicyName=R.INLINE_POLICY)[
            "PolicyDocument"
        ]
    )
    (read,) = [s for s in doc["Statement"] if s["Sid"] == "ReadWheelhouse"]
    assert read["Action"] == ["s3:GetObject"]
    assert read["Resource"] == [f"arn:aws:s3:::{BUCKET}/{k}" for k in supply.keys]
    assert I.least_privilege_problems(doc) == []
    # the router's network defaulted to the default VPC's block, not a fixed 10.0.0.0/8
    name = [{"Name": "group-name", "Values": [R.security_group_name(DEP)]}]
    (sg,) = c.ec2.describe_security_groups(Filters=name)["SecurityGroups"]
    rules = [(p["FromPort"], r["CidrIp"]) for p in sg["IpPermissions"] for r in p["IpRanges"]]
    assert rules == [(8000, "172.31.0.0/16")]
    # a redeploy of the same tree: reproducible wheel, cached wheelhouse, the same pins
    _deploy(cfg, c)
    assert (W.load_supply(c.s3, cfg), _template_user_data(c)) == (supply, text)


def test_a_prebuilt_wheel_is_shipped_as_given(aws, cfg, house, tmp_path):
    c = aws
    given = tmp_path / house["wheel"].name
    given.write_bytes(house["wheel"].read_bytes())
    _deploy(cfg.model_copy(update={"ec2": cfg.ec2.model_copy(update={"wheel": str(given)})}), c)
    assert W.load_supply(c.s3, cfg).wheel.sha256 == _sha(given.read_bytes())


@pytest.mark.parametrize(
    ("wheel", "words"),
    [("missing", "does not exist"), ("other", "is the wheel of 'other'"), ("zip", "not a wheel")],
)
def test_a_bad_prebuilt_wheel_names_ec2_wheel(tmp_path, wheel, words):
    from hybridserve.aws.wheel import project_wheel

    path = tmp_path / "hybridserve-0.1.0-py3-none-any.whl"
    if wheel == "other":
        path = write_wheel(tmp_path, "other", "1.0")
        path = path.rename(tmp_path / "hybridserve-9-py3-none-any.whl")
    elif wheel == "zip":
        path.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=f"^ec2.wheel: .*{words}"):
        project_wheel(str(path), tmp_path / "cache")


def test_a_wheelhouse_missing_a_dependency_names_ec2_find_links(house, tmp_path):
    links = tmp_path / "links"
    links.mkdir()
    for f in house["links"].glob("*.whl"):
        if not f.name.startswith("numpy-"):
            (links / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ConfigError, match=r"(?s)^ec2.find_links: pip could not resolve.*numpy"):
        W.resolve_dependencies(house["wheel"], "x86_64", str(links), tmp_path, lambda *_: None)
    with pytest.raises(ConfigError, match="^ec2.find_links: .* is not a directory"):
        W.resolve_dependencies(house["wheel"], "x86_64", str(tmp_path / "no"), tmp_path, print)


def _fetch_args(supply, dest, *extra):
    pins = [x for p in supply.pins for x in (f"s3://{BUCKET}/{p.key}", p.sha256)]
    return ["--attempts", "2", "--backoff-s", "0", *extra, "files", "--dest", str(dest), *pins]


def test_boot_fetch_then_offline_install_with_hashes(aws, cfg, tmp_path):
    c = aws
    _deploy(cfg, c)
    supply = W.load_supply(c.s3, cfg)
    wheels = tmp_path / "wheels"
    fetch.main(_fetch_args(supply, wheels))
    names = sorted(p.name for p in wheels.iterdir())
    assert "requirements.txt" in names and supply.wheel.name in names
    assert not any(n.endswith(".tar") or n.endswith(".part") for n in names)
    # the user data's own pip command, into a target directory instead of the venv
    text = _template_user_data(c)
    pip = next(c for c in yaml.safe_load(text)["runcmd"] if "--require-hashes" in c)
    assert all(isinstance(a, str) for a in pip)  # YAML read every word as a word
    args = [a.replace("/opt/hybridserve/wheels", str(wheels)) for a in pip[1:]]
    site = tmp_path / "site"
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}  # as on an instance: no pip config
    p = subprocess.run([sys.executable, "-m", "pip", *args, "--target", str(site)],
                       capture_output=True, text=True, env=env)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert (site / "hybridserve" / "aws" / "wheelhouse.py").is_file()
    # installed like that, without its source tree, deploy cannot build it: ec2.wheel is named
    code = "from hybridserve.aws.wheel import project_wheel; project_wheel(None, '.')"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=tmp_path, env={**env, "PYTHONPATH": str(site)})  # fmt: skip
    assert (
        p.returncode != 0 and "ConfigError: ec2.wheel: hybridserve is installed without" in p.stderr
    )
    # a requirements file whose hashes do not match its wheels is refused by pip
    req = wheels / "requirements.txt"
    req.write_text(req.read_text().replace(supply.wheel.sha256, "0" * 64))
    p = subprocess.run([sys.executable, "-m", "pip", *args, "--target", str(tmp_path / "s2")],
                       capture_output=True, text=True, env=env)  # fmt: skip
    assert p.returncode != 0 and "hash" in p.stderr.lower()
    # an object changed in the bucket since deploy is refused by the boot fetch itself
    c.s3.put_object(Bucket=BUCKET, Key=supply.requirements.key, Body=b"evil==1\n")
    dest = tmp_path / "again"
    with pytest.raises(SystemExit, match=r"failed 2 times, last: .*sha256 .*expected"):
        fetch.main(_fetch_args(supply, dest))
    assert not (dest / "requirements.txt").exists() and not list(dest.glob(".*.part"))


def test_retry_is_bounded_and_returns_once_it_succeeds():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not yet")
        return "ok"

    assert fetch.retry(flaky, "x", attempts=3, backoff_s=0) == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(SystemExit, match="x: failed 2 times, last: not yet"):
        fetch.retry(flaky, "x", attempts=2, backoff_s=0)
    assert len(calls) == 2


def test_the_bundle_unpacks_wheels_only(tmp_path):
    for name in ("../x-1-py3-none-any.whl", "run.sh"):
        bundle = tmp_path / "dependencies.tar"
        with tarfile.open(bundle, "w") as tar:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        with pytest.raises(ValueError, match="wheels only"):
            fetch.unpack_wheels(bundle, tmp_path)


def test_supply_export_is_an_offline_wheelhouse(house, tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDSERVE_CACHE_DIR", str(house["cache"]))
    cfg = DeploymentConfig(name=DEP, artifact="a", bucket=BUCKET)
    cfg = cfg.model_copy(
        update={"ec2": cfg.ec2.model_copy(update={"find_links": str(house["links"])})}
    )
    supply, staged = W.stage(cfg, "x86_64", log=lambda *_: None)
    out = supply.export(tmp_path / "wheelhouse")
    shutil.rmtree(staged)
    assert json.loads(supply.to_json())["wheel"]["sha256"] == supply.wheel.sha256
    assert W.Supply.from_json(supply.to_json()).keys == supply.keys
    assert (out / "requirements.txt").read_text().count("--hash=sha256:") == len(
        list(out.glob("*.whl"))
    )
