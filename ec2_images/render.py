"""Render the VM files of one deployment from one set of parameters.

The systemd units, the cloud-init user data and the Packer variables all come from the same
`ImageParams`, so the artifact URI, the port and the unit names cannot drift apart.
"""

from __future__ import annotations

import base64
import re
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from string import Template

_S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/[^\s'\"]*)?$")
_UNIT = re.compile(r"^[A-Za-z0-9@._\-]+\.service$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-]{0,62}$")


@dataclass(frozen=True)
class ImageParams:
    deployment: str
    artifact_uri: str  # s3://bucket/prefix/ holding manifest.json and the compressed model
    port: int = 8000
    max_batch: int = 8
    max_delay_ms: float = 5.0
    threads: int = 2
    package_spec: str = "hybridserve[predictors,serve,aws]"
    server_unit: str = "hybridserve-model.service"
    fetch_unit: str = "hybridserve-fetch.service"
    artifact_dir: str = "/opt/hybridserve/artifact"
    cache_dir: str = "/opt/hybridserve/cache"
    region: str = "us-east-1"
    instance_type: str = "c5.large"

    def __post_init__(self) -> None:
        errors = []
        if not _NAME.match(self.deployment):
            errors.append(f"deployment {self.deployment!r}: letters, digits and '-', at most 63")
        if not _S3_URI.match(self.artifact_uri):
            errors.append(f"artifact_uri {self.artifact_uri!r}: expected s3://bucket/prefix/")
        if not 1 <= self.port <= 65535:
            errors.append(f"port {self.port}: expected 1-65535")
        if self.max_batch < 1 or self.threads < 1 or self.max_delay_ms < 0:
            errors.append("max_batch and threads must be >= 1, max_delay_ms >= 0")
        for unit in (self.server_unit, self.fetch_unit):
            if not _UNIT.match(unit):
                errors.append(f"unit {unit!r}: expected a systemd unit name ending in .service")
        if errors:
            raise ValueError("ec2 image parameters: " + "; ".join(errors))


def _template(name: str) -> Template:
    return Template(resources.files("ec2_images").joinpath(name).read_text())


def render_unit(params: ImageParams) -> str:
    return _template("hybridserve-model.service").substitute(asdict(params))


def render_fetch_unit(params: ImageParams) -> str:
    return _template("hybridserve-fetch.service").substitute(asdict(params))


def render_user_data(params: ImageParams) -> str:
    """cloud-init user data that installs, fetches, verifies and starts the server."""
    units = {
        "fetch_unit_b64": base64.b64encode(render_fetch_unit(params).encode()).decode(),
        "server_unit_b64": base64.b64encode(render_unit(params).encode()).decode(),
    }
    return _template("cloud-init.yaml").substitute(asdict(params) | units)


def render_packer_vars(params: ImageParams) -> str:
    """Variables for hybridserve.pkr.hcl (an .auto.pkrvars.hcl file)."""
    values = {
        "region": params.region,
        "instance_type": params.instance_type,
        "deployment": params.deployment,
        "package_spec": params.package_spec,
        "server_port": params.port,
        "fetch_unit": params.fetch_unit,
        "server_unit": params.server_unit,
    }
    lines = [f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def write_packer_dir(params: ImageParams, out: str | Path) -> Path:
    """A directory Packer can build from: template, variables and the rendered units."""
    out = Path(out)
    (out / "rendered").mkdir(parents=True, exist_ok=True)
    (out / "hybridserve.pkr.hcl").write_text(
        resources.files("ec2_images").joinpath("hybridserve.pkr.hcl").read_text()
    )
    (out / "hybridserve.auto.pkrvars.hcl").write_text(render_packer_vars(params))
    (out / "rendered" / params.server_unit).write_text(render_unit(params))
    (out / "rendered" / params.fetch_unit).write_text(render_fetch_unit(params))
    (out / "user-data.yaml").write_text(render_user_data(params))
    return out
