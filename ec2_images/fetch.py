"""Boot-time fetch from the deployment's bucket: nothing an instance installs or serves comes
from anywhere else, and nothing is used before its sha256 is checked.

`files`: objects pinned by sha256 in the user data (the project's wheel, the dependency
bundle, the hashed requirements), saved under --dest by their key's basename; a `.tar` (the
dependency bundle) is unpacked there, wheels only. `artifact`: every object under an S3 prefix,
then verified by the artifact's own manifest (predictors.artifact.load_artifact), or, for a
multi-model deployment's prefix (a repository.yaml at its root), every artifact it lists.

Every step retries with exponential backoff, a bounded number of times: the instance role's
policy and the objects may take seconds to be visible after a deploy. It runs before the venv
exists, on the instance's Python: standard library only, S3 through boto3 when importable,
else the AWS CLI (preinstalled on the standard Amazon Linux 2023 AMI).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
WHEEL_NAME = re.compile(r"^[A-Za-z0-9_.+-]+\.whl$")
MAX_SLEEP_S = 60.0
REPOSITORY_INDEX = "repository.yaml"  # a multi-model deployment's prefix holds one


def split_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"expected s3://bucket/key, got {uri!r}")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def retry(fn: Callable[[], T], what: str, attempts: int, backoff_s: float) -> T:
    """fn(), tried up to `attempts` times, sleeping backoff_s * 2^n (at most 60 s) between."""
    for n in range(attempts):
        try:
            return fn()
        except Exception as e:  # any failure is worth another try, up to the bound
            if n == attempts - 1:
                raise SystemExit(f"fetch: {what}: failed {attempts} times, last: {e}") from e
            print(f"fetch: {what}: attempt {n + 1} failed ({e}); retrying", file=sys.stderr)
            time.sleep(min(backoff_s * 2**n, MAX_SLEEP_S))
    raise SystemExit(f"fetch: {what}: attempts must be >= 1")


class S3:
    """GET and LIST through boto3 when importable, else the AWS CLI."""

    def __init__(self, region: str | None) -> None:
        self.region = region
        try:
            import boto3
        except ImportError:
            self.client = None
        else:
            self.client = boto3.client("s3", region_name=region)

    def get(self, bucket: str, key: str, dest: Path) -> None:
        if self.client is not None:
            self.client.download_file(bucket, key, str(dest))
            return
        cmd = ["aws", "s3api", "get-object", "--bucket", bucket, "--key", key, str(dest)]
        if self.region:
            cmd += ["--region", self.region]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    def keys(self, bucket: str, prefix: str) -> list[str]:
        if self.client is None:
            raise RuntimeError("listing a prefix needs boto3 (the venv's python)")
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


def fetch_pinned(s3: S3, uri: str, sha256: str, dest: Path) -> Path:
    """One object, saved as dest/<basename> only once its sha256 is `sha256`."""
    bucket, key = split_uri(uri)
    out = dest / key.rsplit("/", 1)[-1]
    if out.exists() and sha256_of(out) == sha256:
        return out
    part = out.with_name(f".{out.name}.part")
    s3.get(bucket, key, part)
    got = sha256_of(part)
    if got != sha256:
        part.unlink()
        raise ValueError(f"{uri}: sha256 {got}, expected {sha256}")
    os.replace(part, out)
    return out


def unpack_wheels(bundle: Path, dest: Path) -> list[str]:
    """The wheels of a verified bundle, written under dest; any other member is refused."""
    names = []
    with tarfile.open(bundle) as tar:
        for m in tar.getmembers():
            if not (m.isfile() and WHEEL_NAME.match(m.name)):
                raise ValueError(f"{bundle.name}: unexpected member {m.name!r} (wheels only)")
            src = tar.extractfile(m)
            assert src is not None
            (dest / m.name).write_bytes(src.read())
            names.append(m.name)
    return names


def cmd_files(args: argparse.Namespace) -> None:
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    pins = args.pins
    if not pins or len(pins) % 2:
        raise SystemExit("fetch files: expected pairs of URI SHA256")
    s3 = S3(args.region)
    for uri, sha in zip(pins[::2], pins[1::2], strict=True):
        got = retry(
            lambda u=uri, h=sha: fetch_pinned(s3, u, h, dest), uri, args.attempts, args.backoff_s
        )
        if got.suffix == ".tar":
            unpack_wheels(got, dest)
            got.unlink()


def cmd_artifact(args: argparse.Namespace) -> None:
    bucket, prefix = split_uri(args.uri)
    prefix = prefix.rstrip("/") + "/"
    dest = Path(args.dest)
    s3 = S3(args.region)

    def once() -> None:
        keys = s3.keys(bucket, prefix)
        if not keys:
            raise FileNotFoundError(f"no objects under {args.uri}")
        for key in keys:
            out = dest / key[len(prefix) :]
            out.parent.mkdir(parents=True, exist_ok=True)
            s3.get(bucket, key, out)
        from predictors.artifact import load_artifact  # checks every file's sha256

        if (dest / REPOSITORY_INDEX).is_file():  # several models: each the index lists
            from predictors.repository_index import read_index

            index, problems = read_index(dest)
            if problems or not index:
                raise ValueError("; ".join(problems) or f"{REPOSITORY_INDEX}: no models")
            for variants in index.values():
                for entry in variants.values():
                    load_artifact(str(entry.path), extract_dir=args.cache)
        else:
            load_artifact(str(dest), extract_dir=args.cache)

    retry(once, args.uri, args.attempts, args.backoff_s)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="fetch.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--region", default=None)
    ap.add_argument("--attempts", type=int, default=8)  # about 3 minutes in all
    ap.add_argument("--backoff-s", type=float, default=2.0)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("files", help="objects pinned by sha256: URI SHA256 [URI SHA256 ...]")
    f.add_argument("--dest", required=True)
    f.add_argument("pins", nargs="+")
    a = sub.add_parser("artifact", help="every object under an s3:// prefix, then verified")
    a.add_argument("--dest", required=True)
    a.add_argument("--cache", required=True)
    a.add_argument("uri")
    args = ap.parse_args(argv)
    (cmd_files if args.cmd == "files" else cmd_artifact)(args)


if __name__ == "__main__":
    main()
