"""Tiny real wheels for the wheelhouse tests: pip resolves, downloads and installs them for real,
offline, from a local --find-links directory, in a second where the real dependencies of
hybridserve (hundreds of MB) would need the network."""

from __future__ import annotations

import atexit
import base64
import hashlib
import shutil
import tempfile
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from hybridserve.aws.wheelhouse import EXTRAS  # what the instances install

_DATE = (1980, 1, 1, 0, 0, 0)  # fixed: the same stub is the same bytes


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def write_wheel(
    out: Path, name: str, version: str, requires: tuple[str, ...] = (), module: str | None = None
) -> Path:
    """A valid pure-Python wheel `name==version` (requiring `requires`; with `module`.py
    defining VERSION when given)."""
    dist = f"{name.replace('-', '_')}-{version}"
    meta = "\n".join(
        ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        + [f"Requires-Dist: {r}" for r in requires]
    )
    files = {
        f"{dist}.dist-info/METADATA": meta.encode() + b"\n",
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    if module:
        files[f"{module}.py"] = f"VERSION = {version!r}\n".encode()
    record = [_record_line(n, d) for n, d in files.items()] + [f"{dist}.dist-info/RECORD,,"]
    files[f"{dist}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for n, d in files.items():
            z.writestr(zipfile.ZipInfo(n, _DATE), d)
    return path


def _satisfying(req: Requirement) -> str:
    """A version the requirement admits, from the bounds it names."""
    for cand in sorted({Version(s.version) for s in req.specifier} | {Version("1.0")}):
        if req.specifier.contains(cand):
            return str(cand)
    raise ValueError(f"no simple version satisfies {req}")


def stub_dependencies(out: Path, wheel: Path) -> Path:
    """A --find-links directory with a stub wheel for every dependency of `wheel` (the
    project's) with the extras the instances install (stubs need nothing further)."""
    from hybridserve.aws.wheel import wheel_metadata

    for text in wheel_metadata(wheel).get_all("Requires-Dist") or []:
        req = Requirement(text)
        envs = [{"extra": e} for e in ("", *EXTRAS)]
        if req.marker is None or any(req.marker.evaluate(env) for env in envs):
            write_wheel(out, req.name, _satisfying(req))
    return out


def offline_wheelhouse() -> tuple[Path, Path, Path]:
    """(a cache directory holding the project's real wheel, built from this tree; that wheel;
    a --find-links directory of stubs for its dependencies): what HYBRIDSERVE_CACHE_DIR,
    `ec2.wheel` and `ec2.find_links` take, so a test's deploy ships a wheelhouse offline.
    Built once per test process (the tree does not change under it), removed at exit."""
    if not _SHARED:
        from hybridserve.aws.wheel import build_wheel, source_root

        root = source_root()
        assert root is not None, "the tests run from the source tree"
        out = Path(tempfile.mkdtemp(prefix="hybridserve-test-wheelhouse-"))
        atexit.register(shutil.rmtree, out, True)
        wheel = build_wheel(root, out / "cache")
        _SHARED.append((out / "cache", wheel, stub_dependencies(out / "find-links", wheel)))
    return _SHARED[0]


_SHARED: list[tuple[Path, Path, Path]] = []
