"""What the instances install, and from where: a wheelhouse the deployment owns, in its bucket.

Design. At boot an instance must not reach a public package index (whoever controls a name
there would get root and the instance role), so `deploy` ships everything it installs:

  <prefix>/wheelhouse/<sha256>/hybridserve-<version>-py3-none-any.whl   the project (wheel.py)
  <prefix>/wheelhouse/<sha256>/dependencies.tar    every dependency wheel, for the instances'
                                                   platform (manylinux, Python 3.11, their arch)
  <prefix>/wheelhouse/<sha256>/requirements.txt    each wheel `name==version --hash=sha256:...`
  <prefix>/wheelhouse/current.json                 the three keys and sha256 (for aws/user_data.py)

Every key holds its content's sha256, so objects never change: a launch template made before a
redeploy still finds the bytes it pinned. The user data pins the three sha256; the boot fetch
(ec2_images/fetch.py) checks them, and pip installs with `--no-index --require-hashes`, which
checks every wheel against requirements.txt. The instance role may read exactly these keys.

The dependencies are resolved at deploy time, not baked into an AMI: `ec2.image: auto` (the
stock AL2023 image) stays a working default, and a dependency change needs no image build.
`pip download --only-binary=:all: --platform ... --python-version 3.11` resolves them from
pip's configured index, or only from `ec2.find_links` (a local directory of wheels, offline),
and the result is cached locally by the hash of its inputs (the wheel's Requires-Dist, the
platform, the source), so a redeploy re-downloads nothing. One bundle rather than one object
per wheel keeps the instance policy to three exact keys (IAM caps inline policies at 10 KB).
The same wheelhouse bakes an AMI (ec2_images/hybridserve.pkr.hcl, via `Supply.export`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridserve.aws import tags as T
from hybridserve.aws.bucket import file_sha256, upload_artifact
from hybridserve.aws.shared import ROLE_ARTIFACT, read_object
from hybridserve.aws.wheel import PROJECT, cache_dir, project_wheel, wheel_metadata
from hybridserve.config_base import ConfigError
from hybridserve.deployment import DeploymentConfig

INSTANCE_PYTHON = "3.11"  # AL2023's python3.11 package, as the Lambda runtime
EXTRAS = ("aws", "predictors", "serve")
_GLIBC_MINOR = 34  # Amazon Linux 2023's glibc 2.34: the newest manylinux tag it runs
_MACHINE = {"x86_64": "x86_64", "arm64": "aarch64"}
FORMAT = 1  # of the cached lock and of current.json


def platform_tags(arch: str) -> list[str]:
    """The wheel platform tags an AL2023 instance of `arch` (x86_64 | arm64) runs."""
    m = _MACHINE[arch]
    oldest = 5 if m == "x86_64" else 17
    tags = [f"manylinux_2_{v}_{m}" for v in range(_GLIBC_MINOR, oldest - 1, -1)]
    legacy = (
        ["manylinux2014", "manylinux2010", "manylinux1"] if m == "x86_64" else ["manylinux2014"]
    )
    return tags + [f"{t}_{m}" for t in legacy]


def wheel_name_version(filename: str) -> tuple[str, str]:
    """(normalised name, version) from a wheel's file name."""
    name, version = filename[: -len(".whl")].split("-")[:2]
    return name.lower().replace("_", "-").replace(".", "-"), version


@dataclass(frozen=True)
class Pin:
    """One object the instances fetch: its key, sha256 and local copy."""

    key: str
    sha256: str
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Supply:
    """The three pinned objects of a deployment's wheelhouse."""

    wheel: Pin
    dependencies: Pin
    requirements: Pin

    @property
    def pins(self) -> tuple[Pin, Pin, Pin]:
        return (self.wheel, self.dependencies, self.requirements)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(p.key for p in self.pins)

    def to_json(self) -> str:
        doc = {
            k: {"key": p.key, "sha256": p.sha256} for k, p in zip(_PARTS, self.pins, strict=True)
        }
        return json.dumps({"format": FORMAT, **doc}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Supply:
        doc = json.loads(text)
        return cls(*(Pin(doc[k]["key"], doc[k]["sha256"]) for k in _PARTS))

    def export(self, dest: str | Path) -> Path:
        """The wheelhouse as a plain directory (wheels + requirements.txt), for Packer."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for p in (self.wheel, self.requirements):
            assert p.path is not None, "export needs the local files of a staged supply"
            (dest / p.name).write_bytes(p.path.read_bytes())
        assert self.dependencies.path is not None
        with tarfile.open(self.dependencies.path) as tar:
            for m in tar.getmembers():
                src = tar.extractfile(m)
                assert src is not None
                (dest / Path(m.name).name).write_bytes(src.read())
        return dest


_PARTS = ("wheel", "dependencies", "requirements")


def wheelhouse_prefix(cfg: DeploymentConfig) -> str:
    return cfg.key("wheelhouse")


def pointer_key(cfg: DeploymentConfig) -> str:
    return cfg.key("wheelhouse/current.json")


def _pip_download(
    wheel: Path, arch: str, find_links: str | None, dest: Path
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
           "--only-binary=:all:", "--python-version", INSTANCE_PYTHON, "--implementation", "cp",
           "--abi", "cp" + INSTANCE_PYTHON.replace(".", ""), "--dest", str(dest)]  # fmt: skip
    for tag in platform_tags(arch):
        cmd += ["--platform", tag]
    if find_links:
        cmd += ["--no-index", "--find-links", str(find_links)]
    cmd.append(f"{wheel}[{','.join(EXTRAS)}]")
    return subprocess.run(cmd, capture_output=True, text=True)


def _deterministic_tar(files: list[Path], out: Path) -> None:
    """A tar of `files` (flat) whose bytes depend on their names and contents alone."""
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
        for f in sorted(files, key=lambda p: p.name):
            info = tarfile.TarInfo(f.name)
            info.size, info.mode, info.mtime = f.stat().st_size, 0o644, 0
            with f.open("rb") as body:
                tar.addfile(info, body)


def resolve_dependencies(
    wheel: Path, arch: str, find_links: str | None, cache: Path, log: Callable[[str], Any]
) -> tuple[Path, list[str]]:
    """(dependencies.tar, its requirement lines with hashes) for the instances, cached under
    cache/wheelhouse/<hash of the inputs>/."""
    if find_links and not Path(find_links).is_dir():
        raise ConfigError(f"ec2.find_links: {find_links} is not a directory of wheels")
    requires = sorted(wheel_metadata(wheel).get_all("Requires-Dist") or [])
    links = (
        sorted((f.name, f.stat().st_size) for f in Path(find_links).iterdir())
        if find_links
        else None
    )
    inputs = {"format": FORMAT, "requires": requires, "extras": EXTRAS, "arch": arch,
              "python": INSTANCE_PYTHON, "platforms": platform_tags(arch), "find_links": links}  # fmt: skip
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]
    done = cache / "wheelhouse" / key
    tar, lock = done / "dependencies.tar", done / "lock.json"
    if lock.is_file() and tar.is_file():
        doc = json.loads(lock.read_text())
        if file_sha256(tar) == doc["sha256"]:
            return tar, doc["requirements"]
    _warn_markers(arch, log)
    done.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hybridserve-wheelhouse-", dir=done.parent) as tmp:
        got = Path(tmp) / "wheels"
        p = _pip_download(wheel, arch, find_links, got)
        if p.returncode != 0:
            source = f"ec2.find_links ({find_links})" if find_links else "pip's configured index"
            raise ConfigError(
                f"ec2.find_links: pip could not resolve the instances' dependencies (Python "
                f"{INSTANCE_PYTHON}, {platform_tags(arch)[0]}) from {source}: "
                f"{(p.stderr or p.stdout).strip()[-1500:]}\nexpected a wheel of every "
                f"dependency of {PROJECT}[{','.join(EXTRAS)}] for that platform"
            )
        deps = [f for f in got.glob("*.whl") if wheel_name_version(f.name)[0] != PROJECT]
        lines = sorted(
            "{}=={} --hash=sha256:{}".format(*wheel_name_version(f.name), file_sha256(f))
            for f in deps
        )
        staged = Path(tmp) / "done"
        staged.mkdir()
        _deterministic_tar(deps, staged / tar.name)
        doc = {"sha256": file_sha256(staged / tar.name), "requirements": lines, **inputs}
        (staged / lock.name).write_text(json.dumps(doc, indent=1))
        if done.exists():
            for old in done.iterdir():
                old.unlink()
            done.rmdir()
        os.replace(staged, done)
    log(f"wheelhouse: {len(lines)} dependency wheels resolved for {arch}, cached in {done}")
    return tar, lines


def _warn_markers(arch: str, log: Callable[[str], Any]) -> None:
    """pip evaluates environment markers on this machine, not for the target: say so when the
    two differ (a dependency missed this way fails the boot install closed, never open)."""
    here = (sys.platform, platform.machine(), f"{sys.version_info[0]}.{sys.version_info[1]}")
    if here != ("linux", _MACHINE[arch], INSTANCE_PYTHON):
        log(
            f"wheelhouse: resolving on {here[0]} {here[1]} Python {here[2]} for linux "
            f"{_MACHINE[arch]} Python {INSTANCE_PYTHON}: pip evaluates environment markers "
            "for this machine; deploy from the target platform, or give ec2.find_links"
        )


def requirements_text(wheel: Path, wheel_sha: str, deps: list[str]) -> str:
    _, version = wheel_name_version(wheel.name)
    head = [
        "# hybridserve instance requirements, written by `hybridserve deploy`: install with",
        "# pip install --no-index --require-hashes --find-links DIR -r requirements.txt",
        f"{PROJECT}[{','.join(EXTRAS)}]=={version} --hash=sha256:{wheel_sha}",
    ]
    return "\n".join(head + deps) + "\n"


def stage(
    cfg: DeploymentConfig, arch: str, log: Callable[[str], Any], cache: Path | None = None
) -> tuple[Supply, Path]:
    """The deployment's supply and a directory laid out as its S3 keys under the wheelhouse
    prefix (hard links into the cache where possible)."""
    cache = cache or cache_dir()
    wheel = project_wheel(cfg.ec2.wheel, cache)
    tar, deps = resolve_dependencies(wheel, arch, cfg.ec2.find_links, cache, log)
    wheel_sha = file_sha256(wheel)
    out = Path(tempfile.mkdtemp(prefix="hybridserve-supply-"))
    req = out / "requirements.txt"
    req.write_text(requirements_text(wheel, wheel_sha, deps))
    pins = []
    for src in (wheel, tar, req):
        sha = file_sha256(src)
        (out / sha).mkdir()
        dst = out / sha / src.name
        try:
            os.link(src, dst)
        except OSError:
            dst.write_bytes(src.read_bytes())
        pins.append(Pin(f"{wheelhouse_prefix(cfg)}/{sha}/{src.name}", sha, dst))
    req.unlink()
    return Supply(*pins), out


def ensure_supply(cfg: DeploymentConfig, s3: Any, arch: str, log: Callable[[str], Any]) -> Supply:
    """Stage and upload the wheelhouse (objects already there are skipped), then point
    current.json at it; returns the pins the user data carries."""
    supply, staged = stage(cfg, arch, log)
    try:
        uploaded = upload_artifact(s3, cfg.bucket, wheelhouse_prefix(cfg), staged, cfg.name)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    supply = Supply(*(Pin(p.key, p.sha256) for p in supply.pins))
    s3.put_object(
        Bucket=cfg.bucket,
        Key=pointer_key(cfg),
        Body=supply.to_json().encode(),
        ContentType="application/json",
        Tagging=T.object_tagging(cfg.name, ROLE_ARTIFACT),
    )
    log(
        f"wheelhouse: {supply.wheel.name} sha256 {supply.wheel.sha256[:12]}…, "
        f"{len(uploaded)} of {len(supply.pins)} objects uploaded"
    )
    return supply


def load_supply(s3: Any, cfg: DeploymentConfig) -> Supply | None:
    """The pins `deploy` last uploaded, or None when there are none yet."""
    body = read_object(s3, cfg.bucket, pointer_key(cfg))
    return None if body is None else Supply.from_json(body)
