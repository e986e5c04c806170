"""Render the VM files of one deployment from one set of parameters.

The systemd units, the cloud-init user data and the Packer variables all come from the same
`ImageParams`, so the artifact URI, the port and the unit names cannot drift apart.

What the instance installs is pinned here too: the S3 URIs and sha256 of the project's wheel,
of the dependency bundle and of the hashed requirements (hybridserve.aws.wheelhouse makes
them), fetched by fetch.py and installed with `pip --no-index --require-hashes`.

A router replica (hybridserve.aws.routers) installs the same, from the same `ImageParams`, and
runs `hybridserve serve` instead of the model server: `RouterParams` adds the config it runs
with, pinned by sha256 as well (cloud-init-router.yaml, hybridserve-router.service).
"""

from __future__ import annotations

import base64
import re
import shutil
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from string import Template

_S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/[^\s'\"]*)?$")
_S3_OBJECT = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/[A-Za-z0-9!_.*()/=+-]*[^/]$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_UNIT = re.compile(r"^[A-Za-z0-9@._\-]+\.service$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-]{0,62}$")
_PYTHON = re.compile(r"^python3\.[0-9]+$")
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")
EC2_USER_DATA_LIMIT = 16384  # bytes, before base64
ROUTER_STATE = "hybridserve-router"  # a router replica's systemd StateDirectory, in /var/lib


@dataclass(frozen=True)
class ImageParams:
    deployment: str
    artifact_uri: str  # s3://bucket/prefix/ holding manifest.json and the compressed model
    # what pip installs, each an s3:// object and its sha256 (hybridserve.aws.wheelhouse)
    wheel_uri: str
    wheel_sha256: str
    dependencies_uri: str  # a tar of the dependency wheels
    dependencies_sha256: str
    requirements_uri: str  # every wheel, pinned with --hash=sha256:
    requirements_sha256: str
    port: int = 8000
    max_batch: int = 8
    max_delay_ms: float = 5.0
    threads: int = 2
    python: str = "python3.11"  # the AL2023 package the venv is made with
    fetch_script: str = "/opt/hybridserve/fetch.py"
    wheel_dir: str = "/opt/hybridserve/wheels"
    server_unit: str = "hybridserve-model.service"
    fetch_unit: str = "hybridserve-fetch.service"
    artifact_dir: str = "/opt/hybridserve/artifact"
    cache_dir: str = "/opt/hybridserve/cache"
    region: str = "us-east-1"
    instance_type: str = "c5.large"
    # several models (a repository index at artifact_uri): the server loads at start those its
    # instance's model tags name (a shard's, from the metadata service), else each of these
    models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        errors = []
        bad = [m for m in self.models if not _MODEL.match(m)]
        if bad:
            errors.append(f"models {bad}: letters, digits, '_' and '-', at most 48")
        if not _NAME.match(self.deployment):
            errors.append(f"deployment {self.deployment!r}: letters, digits and '-', at most 63")
        if not _S3_URI.match(self.artifact_uri):
            errors.append(f"artifact_uri {self.artifact_uri!r}: expected s3://bucket/prefix/")
        for what in ("wheel", "dependencies", "requirements"):
            uri, sha = getattr(self, f"{what}_uri"), getattr(self, f"{what}_sha256")
            if not _S3_OBJECT.match(uri):
                errors.append(f"{what}_uri {uri!r}: expected s3://bucket/key")
            if not _SHA256.match(sha):
                errors.append(f"{what}_sha256 {sha!r}: expected 64 lowercase hex digits")
        if not _PYTHON.match(self.python):
            errors.append(f"python {self.python!r}: expected python3.N")
        if not 1 <= self.port <= 65535:
            errors.append(f"port {self.port}: expected 1-65535")
        if self.max_batch < 1 or self.threads < 1 or self.max_delay_ms < 0:
            errors.append("max_batch and threads must be >= 1, max_delay_ms >= 0")
        for unit in (self.server_unit, self.fetch_unit):
            if not _UNIT.match(unit):
                errors.append(f"unit {unit!r}: expected a systemd unit name ending in .service")
        if errors:
            raise ValueError("ec2 image parameters: " + "; ".join(errors))


@dataclass(frozen=True)
class RouterParams:
    """A router replica: the files it runs with (the deployment config first, then the scenario
    files it names), each an s3:// object and its sha256, fetched into `state_dir`."""

    pins: tuple[tuple[str, str], ...]  # ((uri, sha256), ...), deployment.yaml first
    port: int = 8080
    unit: str = "hybridserve-router.service"
    state: str = ROUTER_STATE

    def __post_init__(self) -> None:
        errors = []
        if not self.pins or self.pins[0][0].rsplit("/", 1)[-1] != "deployment.yaml":
            errors.append("pins: expected the deployment config (deployment.yaml) first")
        names = [uri.rsplit("/", 1)[-1] for uri, _ in self.pins]
        if len(set(names)) != len(names):
            errors.append(f"pins: file names {names} collide in {self.state_dir}")
        for uri, sha in self.pins:
            if not _S3_OBJECT.match(uri):
                errors.append(f"pin {uri!r}: expected s3://bucket/key")
            if not _SHA256.match(sha):
                errors.append(f"pin {uri} sha256 {sha!r}: expected 64 lowercase hex digits")
        if not 1 <= self.port <= 65535:
            errors.append(f"port {self.port}: expected 1-65535")
        if not _UNIT.match(self.unit):
            errors.append(f"unit {self.unit!r}: expected a systemd unit name ending in .service")
        if not _NAME.match(self.state):
            errors.append(f"state {self.state!r}: expected a directory name")
        if errors:
            raise ValueError("router parameters: " + "; ".join(errors))

    @property
    def state_dir(self) -> str:
        return f"/var/lib/{self.state}"

    @property
    def config_path(self) -> str:
        return f"{self.state_dir}/deployment.yaml"


def _read(name: str) -> str:
    return resources.files("ec2_images").joinpath(name).read_text()


def _values(params: ImageParams) -> dict[str, object]:
    # several models: the shard's (the instance's model tags), else every one
    loads = "".join(f" --load {m}" for m in params.models)
    loads += " --load-tagged" if loads else ""
    source = f"--{'repository' if loads else 'artifact'} {params.artifact_dir}{loads}"
    return asdict(params) | {
        "requirements_name": params.requirements_uri.rsplit("/", 1)[-1],
        "serve_source": source,  # what the model server serves: one artifact or the repository
    }


def render_unit(params: ImageParams) -> str:
    return Template(_read("hybridserve-model.service")).substitute(_values(params))


def render_fetch_unit(params: ImageParams) -> str:
    return Template(_read("hybridserve-fetch.service")).substitute(_values(params))


def render_user_data(params: ImageParams) -> str:
    """cloud-init user data that fetches, verifies, installs and starts the server."""
    files = {
        "fetch_script_b64": base64.b64encode(_read("fetch.py").encode()).decode(),
        "fetch_unit_b64": base64.b64encode(render_fetch_unit(params).encode()).decode(),
        "server_unit_b64": base64.b64encode(render_unit(params).encode()).decode(),
    }
    text = Template(_read("cloud-init.yaml")).substitute(_values(params) | files)
    if len(text.encode()) > EC2_USER_DATA_LIMIT:
        raise ValueError(f"user data is {len(text.encode())} bytes; EC2 takes at most 16 KiB")
    return text


def _router_values(params: ImageParams, router: RouterParams) -> dict[str, object]:
    return _values(params) | {
        "router_unit": router.unit,
        "router_state": router.state,
        "router_dir": router.state_dir,
        "router_config": router.config_path,
        "router_port": router.port,
        "router_pins": " ".join(x for pin in router.pins for x in pin),
    }


def render_router_unit(params: ImageParams, router: RouterParams) -> str:
    return Template(_read("hybridserve-router.service")).substitute(_router_values(params, router))


def render_router_user_data(params: ImageParams, router: RouterParams) -> str:
    """cloud-init user data of a router replica: the same install as the model servers', then
    `hybridserve serve` on the config pinned in `router`."""
    unit = render_router_unit(params, router)
    files = {
        "fetch_script_b64": base64.b64encode(_read("fetch.py").encode()).decode(),
        "router_unit_b64": base64.b64encode(unit.encode()).decode(),
    }
    values = _router_values(params, router) | files
    text = Template(_read("cloud-init-router.yaml")).substitute(values)
    if len(text.encode()) > EC2_USER_DATA_LIMIT:
        raise ValueError(f"user data is {len(text.encode())} bytes; EC2 takes at most 16 KiB")
    return text


def render_packer_vars(params: ImageParams) -> str:
    """Variables for hybridserve.pkr.hcl (an .auto.pkrvars.hcl file)."""
    values = {
        "region": params.region,
        "instance_type": params.instance_type,
        "deployment": params.deployment,
        "python": params.python,
        "server_port": params.port,
        "fetch_unit": params.fetch_unit,
        "server_unit": params.server_unit,
    }
    lines = [f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def write_packer_dir(params: ImageParams, out: str | Path, wheelhouse: str | Path) -> Path:
    """A directory Packer can build from: template, variables, the rendered units and the
    wheelhouse (a directory of wheels and their requirements.txt with hashes, as
    hybridserve.aws.wheelhouse.Supply.export writes), so the image installs offline too."""
    out = Path(out)
    wheelhouse = Path(wheelhouse)
    if not (wheelhouse / "requirements.txt").is_file():
        raise FileNotFoundError(f"{wheelhouse}: expected a wheelhouse with requirements.txt")
    (out / "rendered").mkdir(parents=True, exist_ok=True)
    (out / "hybridserve.pkr.hcl").write_text(_read("hybridserve.pkr.hcl"))
    (out / "hybridserve.auto.pkrvars.hcl").write_text(render_packer_vars(params))
    (out / "rendered" / params.server_unit).write_text(render_unit(params))
    (out / "rendered" / params.fetch_unit).write_text(render_fetch_unit(params))
    (out / "rendered" / "fetch.py").write_text(_read("fetch.py"))
    (out / "user-data.yaml").write_text(render_user_data(params))
    shutil.copytree(wheelhouse, out / "wheelhouse", dirs_exist_ok=True)
    return out
