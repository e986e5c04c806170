"""A router replica's id: the instance's own id, from EC2's metadata service (IMDSv2: a session
token first), written as a systemd environment file (`HYBRIDSERVE_REPLICA_ID=i-...`) before
the router starts (hybridserve-router.service). It runs on the venv's Python, where the wheel
installed this package; standard library only, retried as fetch.py retries.

    python -m ec2_images.replica --out /run/hybridserve-router/replica.env
"""

from __future__ import annotations

import argparse
import os
import re
import urllib.request
from pathlib import Path

from ec2_images.fetch import retry

IMDS_URL = "http://169.254.169.254"
INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
REPLICA_ENV = "HYBRIDSERVE_REPLICA_ID"


def instance_id(imds_url: str = IMDS_URL, timeout_s: float = 2.0) -> str:
    """This instance's id, the IMDSv2 way (the templates require session tokens)."""
    put = urllib.request.Request(
        f"{imds_url}/latest/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
    )
    with urllib.request.urlopen(put, timeout=timeout_s) as r:
        token = r.read().decode()
    get = urllib.request.Request(
        f"{imds_url}/latest/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token}
    )
    with urllib.request.urlopen(get, timeout=timeout_s) as r:
        iid = r.read().decode().strip()
    if not INSTANCE_ID.match(iid):
        raise ValueError(f"the metadata service answered {iid[:40]!r}, not an instance id")
    return iid


def write_env(out: str | Path, name: str, value: str) -> Path:
    """`name=value` in `out`, replaced whole (a reader never sees half a file)."""
    if not ENV_NAME.match(name):
        raise ValueError(f"{name!r} is not an environment variable name")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.part")
    part.write_text(f"{name}={value}\n")
    os.replace(part, out)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="replica", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="the environment file to write")
    ap.add_argument("--name", default=REPLICA_ENV)
    ap.add_argument("--imds-url", default=IMDS_URL)
    ap.add_argument("--attempts", type=int, default=8)
    ap.add_argument("--backoff-s", type=float, default=1.0)
    args = ap.parse_args(argv)
    iid = retry(lambda: instance_id(args.imds_url), "instance id", args.attempts, args.backoff_s)
    write_env(args.out, args.name, iid)


if __name__ == "__main__":
    main()
